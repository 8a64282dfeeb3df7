"""Shared helpers for tests (no fixtures: those live in conftest.py)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from rrr_ray.data.records import read_dialogues

REPO = Path(__file__).resolve().parent.parent
SEED_DIR = REPO / "data" / "seed"


@lru_cache(maxsize=1)
def seed_replies() -> list[str]:
    records = read_dialogues(SEED_DIR / "curated_seed_dialogues") + read_dialogues(SEED_DIR / "seed_dialogues.json")
    return [r for rec in records for r in rec.assistant_replies()]
