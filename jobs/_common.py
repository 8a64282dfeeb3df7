"""Shared bits of the job CLIs."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from rrr_ray.env import apply_cpu_node_env


def env_defaults() -> None:
    """The CPU-node environment (``rrr_ray.env``), before a job imports Ray or vLLM."""
    apply_cpu_node_env()


def die(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        s = json.dumps(v)
        return s if len(s) <= 100 else s[:97] + "..."
    return str(v)


def print_summary(title: str, summary: dict[str, Any]) -> None:
    """A one-screen summary at the end of a job."""
    width = max((len(k) for k in summary), default=0)
    print("\n" + "=" * 72)
    print(title)
    print("-" * 72)
    for k, v in summary.items():
        print(f"  {k:<{width}}  {_fmt(v)}")
    print("=" * 72)
