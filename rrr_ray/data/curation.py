"""The curation workflow: candidates (any dialogue files) are listed, shown, accepted into or
rejected from a curated set, and curated dialogues are edited.

The curated set keeps the seed's structure: a folder of ``dialog_NNN.txt`` files whose header
reads ``Dialog N of M``. Decisions live in ``<set>/.curation/state.json``; before every change
the files it touches (and the state) are copied to ``<set>/.curation/backups/<timestamp>-<action>/``,
and every file is written atomically.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, Field

from rrr_ray.data.io import atomic_write_text, backup_files, timestamp
from rrr_ray.data.records import (
    DialogueFormatError, DialogueRecord, dialogue_files, format_curated_text, parse_curated_text, parse_turns,
    read_curated_file, read_dialogues,
)
from rrr_ray.format import validate

log = logging.getLogger(__name__)

CURATED_RE = re.compile(r"^dialog_(\d{3,})\.txt$")
STATE_DIR = ".curation"


class CurationError(RuntimeError):
    """A curation request that cannot be done; the message is one line."""


class Decision(BaseModel):
    status: Literal["accepted", "rejected"]
    file: Optional[str] = Field(default=None, description="Curated file name, when accepted.")
    source: Optional[str] = Field(default=None, description="File the candidate came from.")
    reason: Optional[str] = None
    at: str = Field(default_factory=timestamp)


class CurationState(BaseModel):
    decisions: dict[str, Decision] = Field(default_factory=dict, description="Candidate id -> decision.")
    edits: list[dict] = Field(default_factory=list, description="Edit log: file, at, backup.")


class Candidate(BaseModel):
    conversation_id: str
    source: str
    num_turns: int
    valid: bool
    errors: list[str] = Field(default_factory=list)
    status: str = "pending"
    record: DialogueRecord = Field(exclude=True)


def record_errors(record: DialogueRecord) -> list[str]:
    return sorted({c for t in record.assistant_replies() for c in validate(t).error_codes})


class CuratedSet:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise CurationError(f"{self.folder} is not a folder")

    # -- reading --
    @property
    def state_path(self) -> Path:
        return self.folder / STATE_DIR / "state.json"

    @property
    def backup_root(self) -> Path:
        return self.folder / STATE_DIR / "backups"

    def state(self) -> CurationState:
        if not self.state_path.is_file():
            return CurationState()
        try:
            return CurationState.model_validate_json(self.state_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CurationError(f"{self.state_path}: unreadable curation state: {str(exc).splitlines()[0]}") from None

    def files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted((p for p in self.folder.iterdir() if CURATED_RE.match(p.name)),
                      key=lambda p: int(CURATED_RE.match(p.name).group(1)))

    def resolve(self, ref: str) -> Path:
        """A curated file from ``dialog_007``, ``dialog_007.txt``, ``7`` or an accepted candidate's id."""
        names = {p.name: p for p in self.files()}
        for name in (ref, f"{ref}.txt"):
            if name in names:
                return names[name]
        if ref.isdigit():
            for p in names.values():
                if int(CURATED_RE.match(p.name).group(1)) == int(ref):
                    return p
        d = self.state().decisions.get(ref)
        if d and d.status == "accepted" and d.file in names:
            return names[d.file]
        raise CurationError(f"no curated dialogue {ref!r} in {self.folder}")

    # -- writing --
    def _commit(self, writes: dict[Path, str], state: CurationState, action: str) -> Path:
        """Back up what will change, then write every file atomically, the state last."""
        backup = backup_files([*writes, self.state_path], self.backup_root, action)
        for path, text in writes.items():
            atomic_write_text(path, text)
        atomic_write_text(self.state_path, state.model_dump_json(indent=2) + "\n")
        return backup

    def _renumbered(self, extra: list[DialogueRecord]) -> tuple[dict[Path, str], list[Path]]:
        """Texts of the existing files with ``Dialog N of M`` headers for the new total, plus the new files."""
        files = self.files()
        last = max((int(CURATED_RE.match(p.name).group(1)) for p in files), default=0)
        total = len(files) + len(extra)
        writes: dict[Path, str] = {}
        for i, p in enumerate(files, 1):
            text = p.read_text(encoding="utf-8")
            header = parse_curated_text(text, p.stem, str(p))[0]
            new_header = re.sub(r"^Dialog \d+ of \d+$", f"Dialog {i} of {total}", header)
            if new_header != header:  # only the header line changes; the rest stays byte for byte
                writes[p] = new_header + "\n" + text.split("\n", 1)[1]
        new_paths = []
        for j, rec in enumerate(extra, 1):
            p = self.folder / f"dialog_{last + j:03d}.txt"
            new_paths.append(p)
            writes[p] = format_curated_text(f"Dialog {len(files) + j} of {total}", rec)
        return writes, new_paths

    def accept(self, candidates: list[Candidate], force: bool = False) -> tuple[list[tuple[str, str]], Optional[Path]]:
        """Add candidates to the set; returns ``[(candidate id, file name)]`` and the backup folder."""
        state = self.state()
        todo = []
        for c in candidates:
            d = state.decisions.get(c.conversation_id)
            if d and d.status == "accepted":
                raise CurationError(f"{c.conversation_id} is already accepted as {d.file}")
            if not c.valid and not force:
                raise CurationError(f"{c.conversation_id} is not valid ({', '.join(c.errors)}); "
                                    "fix it first (rrr validate --fix) or pass --force")
            todo.append(c)
        if not todo:
            return [], None
        self.folder.mkdir(parents=True, exist_ok=True)
        writes, new_paths = self._renumbered([c.record for c in todo])
        done = []
        for c, p in zip(todo, new_paths):
            state.decisions[c.conversation_id] = Decision(status="accepted", file=p.name, source=c.source)
            done.append((c.conversation_id, p.name))
        backup = self._commit(writes, state, "accept")
        return done, backup

    def reject(self, candidates: list[Candidate], reason: Optional[str] = None) -> Path:
        state = self.state()
        for c in candidates:
            d = state.decisions.get(c.conversation_id)
            if d and d.status == "accepted":
                raise CurationError(f"{c.conversation_id} is already accepted as {d.file}; edit or remove that file instead")
            state.decisions[c.conversation_id] = Decision(status="rejected", source=c.source, reason=reason)
        self.folder.mkdir(parents=True, exist_ok=True)
        return self._commit({}, state, "reject")

    def edit(self, ref: str, new_text: str, force: bool = False) -> Optional[Path]:
        """Replace a curated dialogue with ``new_text`` (curated file text, or bare turn text).

        Returns the backup folder, or None when nothing changed."""
        path = self.resolve(ref)
        old = path.read_text(encoding="utf-8")
        header, old_rec = parse_curated_text(old, path.stem, str(path))
        try:
            if re.match(r"^[^\n]*\n=+\s*\n", new_text):
                header, rec = parse_curated_text(new_text, path.stem, "edited text")
            else:
                rec = DialogueRecord.from_messages(path.stem, parse_turns(new_text, "edited text"))
        except (DialogueFormatError, ValueError) as exc:
            raise CurationError(f"edit of {path.name} not saved: {str(exc).splitlines()[0]}") from None
        if rec.num_turns == 0 or rec.messages[0].role != "user" or any(
                a.role == b.role for a, b in zip(rec.messages, rec.messages[1:])):
            raise CurationError(f"edit of {path.name} not saved: turns must alternate User / Virtual Human, "
                                "starting with User, with at least one Virtual Human reply")
        errors = record_errors(rec)
        if errors and not force:
            raise CurationError(f"edit of {path.name} not saved: invalid replies ({', '.join(errors)}); pass --force to keep it")
        if rec.messages == old_rec.messages and header == parse_curated_text(old, path.stem)[0]:
            return None
        text = format_curated_text(header, rec)
        state = self.state()
        state.edits.append({"file": path.name, "at": timestamp()})
        return self._commit({path: text}, state, "edit")


def load_candidates(sources: list[Path], curated: Optional[CuratedSet] = None) -> list[Candidate]:
    decisions = curated.state().decisions if curated else {}
    out: list[Candidate] = []
    for src in sources:
        try:
            files = dialogue_files(Path(src))
        except DialogueFormatError as exc:
            raise CurationError(str(exc)) from None
        for f in files:
            try:
                records = read_dialogues(f)
            except DialogueFormatError as exc:
                raise CurationError(str(exc)) from None
            for r in records:
                errs = record_errors(r)
                d = decisions.get(r.conversation_id)
                out.append(Candidate(conversation_id=r.conversation_id, source=str(f), num_turns=r.num_turns,
                                     valid=not errs, errors=errs, status=d.status if d else "pending", record=r))
    return out


def find_candidates(candidates: list[Candidate], ids: list[str]) -> list[Candidate]:
    by_id = {c.conversation_id: c for c in candidates}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise CurationError(f"no candidate with id {', '.join(missing)} in the sources")
    return [by_id[i] for i in ids]


def edit_with_editor(text: str, editor: Optional[str] = None) -> str:
    """Open ``text`` in ``$VISUAL``/``$EDITOR`` and return what was saved."""
    editor = editor or os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if not editor:
        raise CurationError("set $EDITOR (or pass --from-file FILE) to edit")
    fd, tmp = tempfile.mkstemp(prefix="rrr-edit-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        try:
            rc = subprocess.call([*shlex.split(editor), tmp])
        except FileNotFoundError:
            raise CurationError(f"editor {editor!r} not found") from None
        if rc != 0:
            raise CurationError(f"editor {editor!r} exited with status {rc}; nothing saved")
        return Path(tmp).read_text(encoding="utf-8")
    finally:
        Path(tmp).unlink(missing_ok=True)


def curated_record(path: Path) -> DialogueRecord:
    return read_curated_file(path)


def state_json(curated: CuratedSet) -> str:
    return json.dumps(curated.state().model_dump(mode="json"), indent=2)
