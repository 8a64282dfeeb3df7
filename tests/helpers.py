"""Shared helpers for tests (no fixtures: those live in conftest.py)."""

from __future__ import annotations

import socket
from functools import lru_cache
from typing import AsyncIterator, Iterable, TypeVar

import psutil

from rrr_ray.data.records import read_dialogues
from rrr_ray.paths import REPO

SEED_DIR = REPO / "data" / "seed"
T = TypeVar("T")


@lru_cache(maxsize=1)
def seed_replies() -> list[str]:
    records = read_dialogues(SEED_DIR / "curated_seed_dialogues") + read_dialogues(SEED_DIR / "seed_dialogues.json")
    return [r for rec in records for r in rec.assistant_replies()]


async def tracked_stream(items: Iterable[T], closed: list[bool]) -> AsyncIterator[T]:
    """Yield ``items``; appends False to ``closed`` when it starts and sets it True when the stream
    is closed (finished, cancelled or abandoned)."""
    closed.append(False)
    try:
        for item in items:
            yield item
    finally:
        closed[-1] = True


def port_is_free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1 now (nothing listens there, nothing holds it)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def still_running(processes: Iterable[psutil.Process]) -> list[str]:
    """``"pid name"`` of each of ``processes`` that still runs (zombies count as gone)."""
    out = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {p.name()}")
        except psutil.NoSuchProcess:
            continue
    return out
