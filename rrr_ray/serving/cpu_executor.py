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
Selected with ``EngineConfig.engine_cpus``; vLLM loads it by import path.
"""

from __future__ import annotations

import logging
import os

from vllm.v1.executor.uniproc_executor import UniProcExecutor

from rrr_ray.serving.engine import ENGINE_CPUS_KEY

logger = logging.getLogger(__name__)


def bind_process(cpus: set[int], pid: int = 0) -> int:
    """Bind every thread of process ``pid`` (default: this one) to ``cpus``; threads started later
    inherit the binding of the thread that starts them. Returns how many threads were bound."""
    import psutil

    bound = 0
    for thread in psutil.Process(pid or os.getpid()).threads():
        try:
            os.sched_setaffinity(thread.id, cpus)
            bound += 1
        except ProcessLookupError:  # the thread ended meanwhile
            continue
    return bound


def engine_cpus(additional_config: object) -> set[int]:
    """The CPUs named in the engine's ``additional_config``, or the first CPU this process may use."""
    allowed = os.sched_getaffinity(0)
    wanted = additional_config.get(ENGINE_CPUS_KEY) if isinstance(additional_config, dict) else None
    if not wanted:
        return {min(allowed)}
    cpus = {int(c) for c in wanted}
    if not cpus <= allowed:
        raise ValueError(f"engine_cpus {sorted(cpus)} are not all among this process's CPUs {sorted(allowed)}")
    return cpus


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
