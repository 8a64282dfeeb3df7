"""Dialogue records in the Hugging Face format of the project, and the seed's text formats.

A record is ``{"conversation_id": str, "messages": [{"role", "content"}], "num_turns": int}``,
where ``num_turns`` counts the assistant replies (back-and-forth exchanges).

Two seed formats are read and written:
- curated ``dialog_NNN.txt``: a header line, a line of ``=`` signs, then turns separated by blank
  lines: ``User: ...`` and ``Virtual Human:`` followed by indented tag lines;
- ``seed_dialogues.json``: a JSON list of ``{"conversation_id", "dialogue"}`` where ``dialogue``
  is the same turn text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

USER_PREFIX = "User:"
ASSISTANT_PREFIX = "Virtual Human:"
_SPEAKER = re.compile(r"^(User:|Virtual Human:)", re.MULTILINE)


class DialogueFormatError(ValueError):
    """A dialogue file that cannot be read; the message says where and why."""


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class DialogueRecord(BaseModel):
    """One conversation, as stored in the Hugging Face dataset."""

    conversation_id: str = Field(min_length=1)
    messages: list[Message]
    num_turns: int = Field(ge=0, description="Number of assistant replies.")

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, messages: list[Message]) -> list[Message]:
        if not messages:
            raise ValueError("a dialogue needs at least one message")
        return messages

    @model_validator(mode="after")
    def _turns_match(self) -> "DialogueRecord":
        assistants = sum(m.role == "assistant" for m in self.messages)
        if self.num_turns != assistants:
            raise ValueError(f"num_turns is {self.num_turns} but there are {assistants} assistant messages")
        return self

    @classmethod
    def from_messages(cls, conversation_id: str, messages: Iterable[dict[str, str] | Message]) -> "DialogueRecord":
        msgs = [m if isinstance(m, Message) else Message(**m) for m in messages]
        return cls(conversation_id=conversation_id, messages=msgs,
                   num_turns=sum(m.role == "assistant" for m in msgs))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def assistant_replies(self) -> list[str]:
        return [m.content for m in self.messages if m.role == "assistant"]


# -- the seed's turn text ----------------------------------------------------------------------

def parse_turns(text: str, source: str = "<text>") -> list[Message]:
    """Parse ``User: ...`` / ``Virtual Human:`` turn text into messages."""
    matches = list(_SPEAKER.finditer(text))
    if not matches:
        raise DialogueFormatError(f"{source}: no 'User:' or 'Virtual Human:' turn found")
    if text[:matches[0].start()].strip():
        raise DialogueFormatError(f"{source}: text before the first turn: {text[:matches[0].start()].strip()[:60]!r}")
    messages: list[Message] = []
    for match, nxt in zip(matches, matches[1:] + [None]):
        body = text[match.end(): nxt.start() if nxt else len(text)]
        role = "user" if match.group(1) == USER_PREFIX else "assistant"
        lines = [line.strip() for line in body.strip("\n").splitlines()]
        content = "\n".join(line for line in lines if line)
        if not content:
            line_no = text.count("\n", 0, match.start()) + 1
            raise DialogueFormatError(f"{source}: line {line_no}: empty {role} turn")
        messages.append(Message(role=role, content=content))
    return messages


def format_turns(messages: Iterable[Message]) -> str:
    """The inverse of ``parse_turns``: user lines flush, assistant lines indented by two spaces."""
    blocks = []
    for m in messages:
        if m.role == "user":
            blocks.append(f"{USER_PREFIX} {m.content}")
        elif m.role == "assistant":
            body = "\n".join(f"  {line}" for line in m.content.splitlines())
            blocks.append(f"{ASSISTANT_PREFIX}\n{body}")
        else:
            raise DialogueFormatError("the seed's turn text has no place for system messages")
    return "\n\n".join(blocks) + "\n"


# -- curated dialog_NNN.txt files --------------------------------------------------------------

def parse_curated_text(text: str, conversation_id: str, source: str = "<text>") -> tuple[str, DialogueRecord]:
    """Parse a curated file's text; returns its header line and the record."""
    lines = text.split("\n", 2)
    if len(lines) < 3 or not lines[1].strip() or set(lines[1].strip()) != {"="}:
        raise DialogueFormatError(f"{source}: expected a header line and a line of '=' signs")
    return lines[0].strip(), DialogueRecord.from_messages(conversation_id, parse_turns(lines[2], source))


def format_curated_text(header: str, record: DialogueRecord) -> str:
    return f"{header}\n{'=' * 50}\n\n{format_turns(record.messages)}"


def read_curated_file(path: Path) -> DialogueRecord:
    return parse_curated_text(_read_text(path), path.stem, str(path))[1]


# -- seed_dialogues.json -----------------------------------------------------------------------

def read_seed_json(path: Path) -> list[DialogueRecord]:
    try:
        items = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DialogueFormatError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise DialogueFormatError(f"{path}: expected a JSON list of dialogues")
    records = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "dialogue" not in item:
            raise DialogueFormatError(f"{path}: item {i} has no 'dialogue' field")
        cid = str(item.get("conversation_id") or f"{path.stem}_{i}")
        records.append(DialogueRecord.from_messages(cid, parse_turns(item["dialogue"], f"{path}[{i}]")))
    return records


def records_to_seed_json(records: Iterable[DialogueRecord]) -> list[dict[str, str]]:
    return [{"conversation_id": r.conversation_id, "dialogue": format_turns(r.messages)} for r in records]


# -- JSONL shards ------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[DialogueRecord]:
    records = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(DialogueRecord.model_validate_json(line))
        except ValueError as exc:
            raise DialogueFormatError(f"{path}: line {n}: {str(exc).splitlines()[0]}") from None
    return records


def read_dialogues(path: Path) -> list[DialogueRecord]:
    """Read any supported file (or a folder of them) into records."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in {".txt", ".json", ".jsonl"})
        if not files:
            raise DialogueFormatError(f"{path}: no .txt, .json or .jsonl dialogue files")
        return [r for f in files for r in read_dialogues(f)]
    if path.suffix == ".txt":
        return [read_curated_file(path)]
    if path.suffix == ".json":
        return read_seed_json(path)
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    raise DialogueFormatError(f"{path}: unsupported file type (expected .txt, .json or .jsonl)")


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DialogueFormatError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise DialogueFormatError(f"{path}: not UTF-8 text") from None


# -- writers -----------------------------------------------------------------------------------

def records_to_jsonl(records: Iterable[DialogueRecord]) -> str:
    """JSONL text: one ``{conversation_id, messages, num_turns}`` object per line."""
    return "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)


def write_dialogues(path: Path, records: list[DialogueRecord], header: str | None = None) -> Path:
    """Write records atomically in the format the suffix names (the inverse of ``read_dialogues``).

    ``.txt`` holds exactly one dialogue (``header`` defaults to ``Dialog 1 of 1``).
    """
    from rrr_ray.data.io import atomic_write_text

    path = Path(path)
    if path.suffix == ".txt":
        if len(records) != 1:
            raise DialogueFormatError(f"{path}: a .txt dialogue file holds exactly one dialogue, not {len(records)}")
        text = format_curated_text(header or "Dialog 1 of 1", records[0])
    elif path.suffix == ".json":
        text = json.dumps(records_to_seed_json(records), indent=2, ensure_ascii=False) + "\n"
    elif path.suffix == ".jsonl":
        text = records_to_jsonl(records)
    else:
        raise DialogueFormatError(f"{path}: unsupported file type (expected .txt, .json or .jsonl)")
    return atomic_write_text(path, text)


def dialogue_files(path: Path) -> list[Path]:
    """The dialogue files ``read_dialogues`` reads for ``path`` (itself, or a folder's files)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in {".txt", ".json", ".jsonl"} and p.is_file())
    if not path.exists():
        raise DialogueFormatError(f"{path}: no such file or folder")
    return [path]


def read_curated_header(path: Path) -> str:
    """The header line of a curated ``.txt`` file."""
    return parse_curated_text(_read_text(path), Path(path).stem, str(path))[0]
