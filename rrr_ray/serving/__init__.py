"""Serving: the stages of the graph as plain Python, testable without Ray (``deployments/`` wraps
them in Ray Serve deployments).

- ``config``: the graph's typed configuration and its defaults (``EngineConfig``, ``AppArgs``).
- ``messages``: what passes between the stages; ``errors``: the serving errors.
- ``engine`` (the interface), ``vllm_engine`` (vLLM), ``fake_engine`` (tests);
  ``vllm_compat``: the workarounds for the vLLM version in use.
- ``model_server`` and ``streams.model_stream``: the model stage; ``batching``: tokens per hop.
- ``postprocessing`` and ``streams.postprocess``: the RRR post-processing; ``labeling``, ``healing``.
- ``service``, ``replies``, ``api``, ``guard``, ``limits``: the HTTP ingress; ``protocol`` and
  ``sampling``: its bodies.
"""
