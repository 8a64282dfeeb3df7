"""A vLLM general plugin (entry point ``vllm.general_plugins``): how engine processes wait.

vLLM's engine core and its worker hand each step to each other through a shared-memory ring
buffer, and a reader that has read within the last second spins (``sched_yield`` in a loop)
instead of sleeping until the writer's notification. On a GPU node the spinning costs a CPU
core nobody else needs. On a small CPU node the cores it burns also run the Serve replicas and
the HTTP proxy: measured here with 16 streams, the engine core spent about 80% of its time
spinning while the post-processor and the ingress waited for a CPU.

``RRR_VLLM_BUSY_LOOP_S`` (seconds; unset keeps vLLM's default of 1) sets that spinning window
for engine processes that share their CPUs. A process bound to a single CPU (vLLM's CPU worker
binds its thread to its own core) keeps spinning: nobody else runs there. A sleeping reader is
woken by the writer's notification, or after ``RRR_VLLM_RECHECK_MS`` (default 1 ms) at the
latest, since vLLM's notifications can be dropped under load (its own bound is 5 s).
vLLM loads this plugin in every engine process when rrr-ray is installed; ``VLLM_PLUGINS``
can exclude it.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

logger = logging.getLogger(__name__)

ENV_BUSY_LOOP = "RRR_VLLM_BUSY_LOOP_S"
ENV_RECHECK = "RRR_VLLM_RECHECK_MS"


def _env_number(name: str, default: Optional[float]) -> Optional[float]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        logger.warning("%s=%r is not a non-negative number; ignored", name, raw)
        return default
    return value


def busy_loop_seconds() -> Optional[float]:
    """The configured spinning window for shared-CPU processes, or None to keep vLLM's default."""
    return _env_number(ENV_BUSY_LOOP, None)


def owns_a_cpu() -> bool:
    """Whether this process is bound to one CPU (then spinning costs nobody anything)."""
    try:
        return len(os.sched_getaffinity(0)) == 1
    except (AttributeError, OSError):
        return False


def register() -> None:
    """Entry point: CPU top-p without a vocabulary sort (``rrr_ray.serving.cpu_sampling``); patch the
    ring buffer's reader wait when ``RRR_VLLM_BUSY_LOOP_S`` is set."""
    from rrr_ray.serving.cpu_sampling import install

    install()
    seconds = busy_loop_seconds()
    if seconds is None:
        return
    try:
        from vllm.distributed.device_communicators import shm_broadcast
    except ImportError:  # a vLLM without the shared-memory ring buffer: nothing to tune
        return
    cond = getattr(shm_broadcast, "SpinCondition", None)
    if cond is None or not hasattr(cond, "wait") or getattr(cond, "_rrr_patched", False):
        return
    recheck_ms = max(1, int(_env_number(ENV_RECHECK, 1.0)))
    original_wait = cond.wait

    def wait(self, timeout_ms: Optional[int] = None) -> None:
        shared = getattr(self, "_rrr_shared_cpu", None)
        if shared is None:  # decided on first use: the worker binds its CPU after start-up
            shared = self._rrr_shared_cpu = not owns_a_cpu()
            if shared:
                self.busy_loop_s = seconds
        if shared:
            timeout_ms = recheck_ms if timeout_ms is None else min(timeout_ms, recheck_ms)
        original_wait(self, timeout_ms)

    cond.wait = wait
    cond._rrr_patched = True
    logger.debug("vLLM shared-memory readers on shared CPUs spin for %.4f s after a read", seconds)
