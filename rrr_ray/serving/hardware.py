"""The dtype a model is served in when its config says ``dtype: auto``, chosen at start-up from the
machine the engine runs on.

On a CPU node, ``auto`` is bfloat16 where the CPU has native bfloat16 arithmetic (AVX-512 BF16 or
AMX, flags ``avx512_bf16``/``amx_bf16`` in ``/proc/cpuinfo``): decoding reads every weight once per
step, so half the bytes is close to half the time. Elsewhere it is float32: without those
instructions bfloat16 is converted in software and runs slower than float32. Where a CUDA device is
visible, ``auto`` is passed on to vLLM (the model's own dtype). An explicit dtype always wins.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

logger = logging.getLogger(__name__)

AUTO = "auto"
BF16_CPU_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16"})
"""CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic that oneDNN's bfloat16 kernels use."""
CPUINFO = Path("/proc/cpuinfo")


def cpu_dtype(flags: Iterable[str]) -> str:
    """The fastest serving dtype for a CPU with these flags: bfloat16 with native bfloat16
    arithmetic, float32 otherwise."""
    return "bfloat16" if BF16_CPU_FLAGS & set(flags) else "float32"


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags every CPU in ``/proc/cpuinfo`` text lists (x86 ``flags``; aarch64 ``Features``)."""
    per_cpu = [frozenset(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines()
               if line.split(":", 1)[0].strip() in ("flags", "Features") and ":" in line]
    return frozenset.intersection(*per_cpu) if per_cpu else frozenset()


def _torch_cpu_flags() -> frozenset[str]:
    """The bfloat16 flags as torch's own CPU probe sees them (where ``/proc/cpuinfo`` is missing)."""
    try:
        import torch

        probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
        return frozenset(flag for flag, fn in probes.items() if getattr(torch._C._cpu, fn, lambda: False)())
    except Exception:  # noqa: BLE001 - no probe: no flags, float32
        return frozenset()


@lru_cache(maxsize=1)
def machine_cpu_flags() -> frozenset[str]:
    """This machine's CPU flags: ``/proc/cpuinfo``, else torch's probe."""
    try:
        flags = parse_cpu_flags(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        flags = frozenset()
    return flags or _torch_cpu_flags()


@lru_cache(maxsize=1)
def _cuda_visible() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def resolve_dtype(dtype: str, flags: Optional[Iterable[str]] = None, cuda: Optional[bool] = None) -> str:
    """``dtype`` as the engine should load the weights: an explicit dtype as given; ``auto`` on a
    CPU node is :func:`cpu_dtype` of ``flags`` (default: this machine's); ``auto`` with CUDA stays
    ``auto`` (vLLM then takes the model's own dtype)."""
    if dtype != AUTO:
        return dtype
    if cuda if cuda is not None else _cuda_visible():
        return AUTO
    found = BF16_CPU_FLAGS & set(machine_cpu_flags() if flags is None else flags)
    chosen = cpu_dtype(found)
    logger.info("dtype auto -> %s (CPU bfloat16 flags: %s)", chosen, ", ".join(sorted(found)) or "none")
    return chosen
