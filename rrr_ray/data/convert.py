"""Dialogue files <-> a Hugging Face ``datasets.Dataset`` (``conversation_id``, ``messages``, ``num_turns``),
with the statistics ``rrr convert`` prints."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import statistics
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Sequence

from pydantic import BaseModel, Field

from rrr_ray.data.io import fsync_tree, recover_dir, replace_dir
from rrr_ray.data.records import DialogueRecord, read_dialogues
from rrr_ray.format import validate
from rrr_ray.format.spec import SECTION_NAMES

log = logging.getLogger(__name__)

DEFAULT_SEED_PATHS: tuple[str, ...] = ("data/seed/seed_dialogues.json", "data/seed/curated_seed_dialogues")
"""The seed's dialogues, as the repository holds them (training data of the default model)."""
REFUSAL_DIALOGUES = "data/refusals/dialogues.jsonl"
"""The project's own RRR dialogues that decline harmful requests (training data of the default model;
``data/refusals/README.md`` says how they were made)."""


class ConvertError(RuntimeError):
    """Bad input or output for a conversion; the message is one line."""


class Distribution(BaseModel):
    count: int = 0
    min: float = 0
    mean: float = 0
    median: float = 0
    max: float = 0

    @classmethod
    def of(cls, values: Iterable[float]) -> "Distribution":
        v = list(values)
        if not v:
            return cls()
        return cls(count=len(v), min=min(v), mean=round(statistics.fmean(v), 2), median=statistics.median(v), max=max(v))


class DatasetStats(BaseModel):
    dialogues: int
    messages: int
    turns: Distribution = Field(description="Assistant replies per dialogue.")
    user_chars: Distribution = Field(description="Characters per user message.")
    assistant_chars: Distribution = Field(description="Characters per assistant reply.")
    section_chars: dict[str, Distribution] = Field(description="Characters per section of the valid replies.")
    replies: int
    valid_replies: int
    valid_dialogues: int
    error_codes: dict[str, int] = Field(default_factory=dict, description="Replies breaking each rule.")

    def lines(self) -> list[str]:
        def d(x: Distribution) -> str:
            return f"min {x.min:g} / mean {x.mean:g} / median {x.median:g} / max {x.max:g}"

        out = [f"dialogues: {self.dialogues} ({self.valid_dialogues} fully valid), messages: {self.messages}",
               f"turns per dialogue: {d(self.turns)}",
               f"user message chars: {d(self.user_chars)}",
               f"assistant reply chars: {d(self.assistant_chars)}"]
        out += [f"  {name} chars: {d(dist)}" for name, dist in self.section_chars.items()]
        pct = 100 * self.valid_replies / self.replies if self.replies else 0
        out.append(f"valid replies: {self.valid_replies}/{self.replies} ({pct:.1f}%)"
                   + (f"; errors: {', '.join(f'{k} {v}' for k, v in self.error_codes.items())}" if self.error_codes else ""))
        return out


def dataset_stats(records: list[DialogueRecord]) -> DatasetStats:
    user, assistant, valid_dialogues, valid_replies = [], [], 0, 0
    sections: dict[str, list[int]] = {n: [] for n in SECTION_NAMES}
    codes: dict[str, int] = {}
    for r in records:
        ok = True
        for m in r.messages:
            if m.role == "user":
                user.append(len(m.content))
            elif m.role == "assistant":
                assistant.append(len(m.content))
                v = validate(m.content)
                if v.valid:
                    valid_replies += 1
                    for n in SECTION_NAMES:
                        sections[n].append(len(v.sections.get(n, "")))
                else:
                    ok = False
                    for c in set(v.error_codes):
                        codes[c] = codes.get(c, 0) + 1
        valid_dialogues += ok
    return DatasetStats(
        dialogues=len(records), messages=sum(len(r.messages) for r in records),
        turns=Distribution.of(r.num_turns for r in records), user_chars=Distribution.of(user),
        assistant_chars=Distribution.of(assistant), section_chars={n: Distribution.of(v) for n, v in sections.items()},
        replies=len(assistant), valid_replies=valid_replies, valid_dialogues=valid_dialogues, error_codes=codes)


def load_records(paths: Iterable[str | Path], unique_ids: bool = False) -> list[DialogueRecord]:
    """All dialogue records of ``paths``: seed files or folders, JSONL shards, or saved Hugging Face
    dataset folders (``save_to_disk``).

    Raises ``FileNotFoundError`` for a missing path, :class:`DialogueFormatError` for a file that
    cannot be read, and ``ValueError`` when nothing is found or, with ``unique_ids``, when a
    conversation id occurs twice.
    """
    paths = [Path(p) for p in paths]
    records: list[DialogueRecord] = []
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        if is_hf_dataset_folder(p):
            records += records_from_hf(load_hf_dataset(str(p)))
        else:
            records += read_dialogues(p)
    if unique_ids:
        counts = Counter(r.conversation_id for r in records)
        dups = [k for k, n in counts.items() if n > 1]
        if dups:
            raise ValueError(f"duplicated conversation ids: {', '.join(dups[:5])}{' ...' if len(dups) > 5 else ''}")
    if not records:
        raise ValueError(f"no dialogues found in {', '.join(map(str, paths))}")
    return records


def is_hf_dataset_folder(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` (or ``DatasetDict``'s)."""
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())


def load_hf_dataset(name_or_path: str, split: str = "train"):
    """A dialogue dataset from disk (``save_to_disk`` folder) or by hub name where reachable."""
    import datasets

    p = Path(name_or_path)
    if p.exists():
        ds = datasets.load_from_disk(str(p))
    elif "/" in name_or_path and not p.is_absolute() and not name_or_path.startswith("."):
        ds = datasets.load_dataset(name_or_path)
    else:
        raise FileNotFoundError(f"{name_or_path}: no such dataset folder (and not a hub dataset name)")
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"{name_or_path}: no split {split!r} (has {', '.join(ds)})")
        ds = ds[split]
    missing = {"conversation_id", "messages"} - set(ds.column_names)
    if missing:
        raise ValueError(f"{name_or_path}: not a dialogue dataset, missing columns {sorted(missing)}")
    return ds


def records_from_hf(ds) -> list[DialogueRecord]:
    """The records of a dialogue dataset (rows of ``conversation_id`` and ``messages``)."""
    return [DialogueRecord.from_messages(str(row["conversation_id"]), row["messages"]) for row in ds]


def to_dataset(records: Sequence[DialogueRecord]):
    """The ``datasets.Dataset`` of ``records`` (messages as lists of ``{role, content}``)."""
    import datasets

    features = datasets.Features({
        "conversation_id": datasets.Value("string"),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "num_turns": datasets.Value("int32"),
    })
    return datasets.Dataset.from_list([r.to_dict() for r in records], features=features)


class ConvertReport(BaseModel):
    output: Optional[str]
    stats: DatasetStats
    pushed_to: Optional[str] = None


def save_atomically(ds, output: Path) -> None:
    """``ds.save_to_disk`` into a hidden temp folder beside ``output``, then swap it in: a crash
    leaves ``output`` old or new, never partial. Temp folders of dead earlier runs are removed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp(output)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.{os.getpid()}.", suffix=".tmp", dir=output.parent))
    try:
        ds.save_to_disk(str(tmp))
        fsync_tree(tmp)
        replace_dir(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_temp(output: Path) -> None:
    """Remove ``.<name>.<pid>.*.tmp`` folders beside ``output`` whose process no longer runs."""
    for p in output.parent.glob(f".{glob.escape(output.name)}.*.tmp"):
        pid, *rest = p.name[len(output.name) + 2:].split(".")
        if not (p.is_dir() and pid.isdigit() and len(rest) == 2):
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running (or the pid is reused): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        log.warning("removing %s, left by an interrupted conversion", p)
        shutil.rmtree(p, ignore_errors=True)


def convert(paths: list[Path], output: Optional[Path], push_to_hub: Optional[str] = None,
            overwrite: bool = False, only_valid: bool = False, private: bool = True) -> ConvertReport:
    """Read ``paths``, build the dataset, ``save_to_disk(output)`` atomically and optionally push it.

    Everything that can fail is checked before anything is written: the inputs, the output folder,
    and ``HF_TOKEN`` when pushing.
    """
    token = os.environ.get("HF_TOKEN")
    if push_to_hub and not token:
        raise ConvertError("--push-to-hub needs the HF_TOKEN environment variable (a Hugging Face write token)")
    if output is None and not push_to_hub:
        raise ConvertError("nothing to do: give --output DIR and/or --push-to-hub REPO")
    output = Path(output) if output is not None else None
    if output is not None:
        recover_dir(output)
    if output is not None and output.exists() and not overwrite:
        raise ConvertError(f"{output} already exists; pass --overwrite to replace it")
    try:
        records = load_records(paths, unique_ids=True)
    except (FileNotFoundError, ValueError) as exc:
        raise ConvertError(str(exc)) from None
    if only_valid:
        records = [r for r in records if all(validate(t).valid for t in r.assistant_replies())]
        if not records:
            raise ConvertError("no fully valid dialogues left after --only-valid")
    stats = dataset_stats(records)
    ds = to_dataset(records)
    if output is not None:
        save_atomically(ds, output)
        log.info("saved %d dialogues to %s", len(ds), output)
    pushed = None
    if push_to_hub:
        ds.push_to_hub(push_to_hub, token=token, private=private)
        pushed = push_to_hub
    return ConvertReport(output=str(output) if output else None, stats=stats, pushed_to=pushed)
