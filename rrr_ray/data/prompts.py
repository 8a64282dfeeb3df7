"""Evaluation prompts: ``{"id", "category", "prompt"[, "reference"]}`` JSON lines.

``data/eval_prompts.jsonl`` holds 50 held-out prompts (never seen in training), 10 in each of the
seed benchmark's five categories. A ``reference`` field, when present, is the reply the benchmark
compares a generation with instead of the one it looks up in the dialogue data.
"""

from __future__ import annotations

import json
from pathlib import Path

CATEGORIES: tuple[str, ...] = ("general", "emotional_support", "practical_advice", "philosophical", "adversarial")
DEFAULT_EVAL_PROMPTS = "data/eval_prompts.jsonl"
"""The held-out prompts of the repository (never seen in training)."""


class PromptsFileError(ValueError):
    """A prompts file that cannot be read, said in one line with the file and line."""


def load_prompts(path: str | Path) -> list[dict[str, str]]:
    """Read the prompts of a JSON-lines file; blank lines are skipped. Each item keeps ``id``
    (default: its line number), ``category`` (default ``general``), ``prompt`` and, when given,
    ``reference``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prompts file")
    prompts: list[dict[str, str]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptsFileError(f"{path}: line {n}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise PromptsFileError(f"{path}: line {n}: expected an object with a non-empty 'prompt'")
        prompt = {"id": str(item.get("id", n)), "category": str(item.get("category", "general")),
                  "prompt": item["prompt"]}
        if isinstance(item.get("reference"), str) and item["reference"].strip():
            prompt["reference"] = item["reference"]
        prompts.append(prompt)
    ids = [p["id"] for p in prompts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise PromptsFileError(f"{path}: the id {dup!r} appears more than once")
    if not prompts:
        raise PromptsFileError(f"{path}: no prompts")
    return prompts
