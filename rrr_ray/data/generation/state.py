"""The output folder: JSONL shards of accepted dialogues, and ``_state/`` for resuming.

``shard-NNNNN.jsonl`` files hold accepted dialogues; ``_state/rejected-NNNNN.json`` the rejected
ids and their reasons, ``_state/config.json`` the job's configuration (without the key) and
``_state/summary.json`` its summary. Every file is written atomically.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from pydantic import BaseModel, Field

from rrr_ray.data.generation.config import GenerationConfig
from rrr_ray.data.generation.errors import GenerationError
from rrr_ray.data.io import atomic_write_text
from rrr_ray.data.records import DialogueRecord, read_jsonl, records_to_jsonl

log = logging.getLogger(__name__)

STATE_DIR = "_state"
SHARD_RE = re.compile(r"^shard-(\d{5})\.jsonl$")


class OutputState(BaseModel):
    """What an output folder already holds."""

    accepted: set[str] = Field(default_factory=set)
    rejected: set[str] = Field(default_factory=set)
    next_seq: int = 0
    duplicates: list[str] = Field(default_factory=list)


def shard_paths(output: Path) -> list[Path]:
    """The shard files in ``output``, in order."""
    output = Path(output)
    return sorted(p for p in output.iterdir() if SHARD_RE.match(p.name)) if output.is_dir() else []


def read_output_state(output: Path) -> OutputState:
    """The ids accepted and rejected so far in ``output``, and the next shard number."""
    state = OutputState()
    seqs = [-1]
    for shard in shard_paths(output):
        seqs.append(int(SHARD_RE.match(shard.name).group(1)))
        for rec in read_jsonl(shard):
            if rec.conversation_id in state.accepted:
                state.duplicates.append(rec.conversation_id)
            state.accepted.add(rec.conversation_id)
    state_dir = Path(output) / STATE_DIR
    if state_dir.is_dir():
        for p in sorted(state_dir.glob("rejected-*.json")):
            seqs.append(int(p.stem.split("-")[1]))
            state.rejected.update(item["conversation_id"] for item in json.loads(p.read_text()))
    state.next_seq = max(seqs) + 1
    return state


def prepare_output(cfg: GenerationConfig) -> OutputState:
    """Create or check ``cfg.output`` (refusing a used folder without ``resume``, or another
    seed), drop temp files left by a crash, record the configuration; returns what it holds."""
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise GenerationError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for tmp in list(out.glob(".shard-*.tmp")) + list(out.glob(f"{STATE_DIR}/.*.tmp")):
        tmp.unlink()  # left by a crash mid-write: never part of the output
    state = read_output_state(out)
    cfg_path = out / STATE_DIR / "config.json"
    if (state.accepted or state.rejected) and not cfg.resume:
        raise GenerationError(f"{out} already holds {len(state.accepted)} generated dialogues; "
                              "pass --resume to continue, or choose an empty folder")
    if cfg.resume and cfg_path.is_file():
        previous = json.loads(cfg_path.read_text())
        if previous.get("seed") != cfg.seed:
            raise GenerationError(f"--seed {cfg.seed} differs from the seed {previous.get('seed')} that {out} was generated with")
    if state.duplicates:
        log.warning("%s holds duplicated ids: %s", out, ", ".join(state.duplicates[:5]))
    atomic_write_text(cfg_path, json.dumps(cfg.model_dump(mode="json", exclude={"api_key"}), indent=2) + "\n")
    return state


class ShardWriter:
    """Buffers accepted dialogues and rejections; each flush writes them under the next number."""

    def __init__(self, output: Path, next_seq: int, shard_size: int):
        self.output = Path(output)
        self.seq = next_seq
        self.shard_size = shard_size
        self.accepted: list[DialogueRecord] = []
        self.rejected: list[dict] = []

    def accept(self, record: DialogueRecord) -> None:
        self.accepted.append(record)

    def reject(self, conversation_id: str, reasons: list[str]) -> None:
        self.rejected.append({"conversation_id": conversation_id, "reasons": reasons})

    @property
    def full(self) -> bool:
        return len(self.accepted) >= self.shard_size or len(self.rejected) >= self.shard_size

    def flush(self) -> None:
        """Write what is buffered (a shard, a rejection file, or both, with the same number)."""
        if not self.accepted and not self.rejected:
            return
        if self.accepted:
            atomic_write_text(self.output / f"shard-{self.seq:05d}.jsonl", records_to_jsonl(self.accepted))
        if self.rejected:
            atomic_write_text(self.output / STATE_DIR / f"rejected-{self.seq:05d}.json",
                              json.dumps(self.rejected, indent=1) + "\n")
        self.seq += 1
        self.accepted, self.rejected = [], []
