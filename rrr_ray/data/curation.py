"""The curation workflow: candidates (any dialogue files) are listed, shown, accepted into or
rejected from a curated set, and curated dialogues are edited.

The curated set keeps the seed's structure: a folder of ``dialog_NNN.txt`` files whose header
reads ``Dialog N of M``. Decisions live in ``<set>/.curation/state.json``; before every change
the files it touches (and the state) are copied to ``<set>/.curation/backups/<timestamp>-<action>/``,
and every file is written atomically. One change runs at a time (``.curation/lock``); while it
runs, ``.curation/pending`` names its backup, so a change killed half-way is rolled back by the
next one. ``restore`` puts a backup back byte for byte (itself backed up first).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Literal, Optional

from pydantic import BaseModel, Field

from rrr_ray.data.io import MANIFEST, atomic_write_bytes, atomic_write_text, backup_files, fsync_dir, sha256, timestamp
from rrr_ray.data.records import (
    DialogueFormatError, DialogueRecord, dialogue_files, format_curated_text, parse_curated_text, parse_turns,
    read_curated_file, read_dialogues,
)
from rrr_ray.format import validate

log = logging.getLogger(__name__)

CURATED_RE = re.compile(r"^dialog_(\d{3,})\.txt$")
STATE_DIR = ".curation"
STATE_FILE = f"{STATE_DIR}/state.json"


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


class BackupInfo(BaseModel):
    name: str
    action: str
    files: list[str] = Field(default_factory=list, description="Paths in the set that a restore writes back.")
    absent: list[str] = Field(default_factory=list, description="Paths that did not exist; a restore removes them.")
    error: Optional[str] = None


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
    @property
    def journal_path(self) -> Path:
        return self.folder / STATE_DIR / "pending"

    @contextmanager
    def _exclusive(self) -> Iterator[Optional[str]]:
        """Hold the set's lock; first roll back a change that was interrupted (yields its backup's name)."""
        (self.folder / STATE_DIR).mkdir(parents=True, exist_ok=True)
        with open(self.folder / STATE_DIR / "lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield self._roll_back()

    def recover(self) -> Optional[str]:
        """Roll back a change killed half-way, if any; returns the name of the backup it came from."""
        if not self.journal_path.is_file():
            return None
        with self._exclusive() as rolled_back:
            return rolled_back

    def _roll_back(self) -> Optional[str]:
        """Under the lock: remove temp files of killed writes and undo the journalled change, if any."""
        for tmp in [*self.folder.glob(".dialog_*.tmp"), *(self.folder / STATE_DIR).glob(".*.tmp")]:
            tmp.unlink(missing_ok=True)  # we hold the lock: no live writer owns them
        for staging in self.backup_root.glob(".*.partial"):
            shutil.rmtree(staging, ignore_errors=True)
        if not self.journal_path.is_file():
            return None
        name = self.journal_path.read_text(encoding="utf-8").strip()
        try:
            self._apply(*self._backup_plan(self.backup_root / name))
        except CurationError as exc:
            raise CurationError(f"an interrupted change cannot be rolled back ({exc}); delete {self.journal_path} "
                                "to keep the files as they are") from None
        self.journal_path.unlink()
        fsync_dir(self.journal_path.parent)
        log.warning("%s: rolled back an interrupted change (files as in backup %s)", self.folder, name)
        return name

    def _commit(self, writes: dict[Path, str | bytes], action: str, removes: Iterable[Path] = ()) -> Path:
        """Back up what will change, journal it, write every file atomically (the state last), unjournal."""
        removes = [p for p in removes if p not in writes]
        backup = backup_files([*writes, *removes], self.backup_root, action, base=self.folder)
        atomic_write_text(self.journal_path, backup.name + "\n")
        try:
            self._apply(writes, removes)
        except Exception:
            log.error("%s: %s failed half-way; rolling back", self.folder, action)
            self._roll_back()  # if this fails too, the journal stays for the next command
            raise
        self.journal_path.unlink()
        fsync_dir(self.journal_path.parent)
        return backup

    def _apply(self, writes: dict[Path, str | bytes], removes: Iterable[Path]) -> None:
        """Write each file atomically and remove ``removes``, the state last."""
        ops = [*writes.items(), *((p, None) for p in removes)]
        for path, data in sorted(ops, key=lambda op: op[0] == self.state_path):
            if data is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
        fsync_dir(self.folder)
        fsync_dir(self.state_path.parent)

    def _state_text(self, state: CurationState) -> str:
        return state.model_dump_json(indent=2) + "\n"

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
        with self._exclusive():
            return self._accept(candidates, force)

    def _accept(self, candidates: list[Candidate], force: bool) -> tuple[list[tuple[str, str]], Optional[Path]]:
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
        writes, new_paths = self._renumbered([c.record for c in todo])
        done = []
        for c, p in zip(todo, new_paths):
            state.decisions[c.conversation_id] = Decision(status="accepted", file=p.name, source=c.source)
            done.append((c.conversation_id, p.name))
        writes[self.state_path] = self._state_text(state)
        return done, self._commit(writes, "accept")

    def reject(self, candidates: list[Candidate], reason: Optional[str] = None) -> Path:
        """Mark candidates as rejected; returns the backup folder."""
        with self._exclusive():
            state = self.state()
            for c in candidates:
                d = state.decisions.get(c.conversation_id)
                if d and d.status == "accepted":
                    raise CurationError(f"{c.conversation_id} is already accepted as {d.file}; "
                                        "edit or remove that file instead")
                state.decisions[c.conversation_id] = Decision(status="rejected", source=c.source, reason=reason)
            return self._commit({self.state_path: self._state_text(state)}, "reject")

    def edit(self, ref: str, new_text: str, force: bool = False) -> Optional[Path]:
        """Replace a curated dialogue with ``new_text`` (curated file text, or bare turn text).

        Returns the backup folder, or None when nothing changed."""
        self.resolve(ref)  # an unknown ref fails before the lock creates anything
        with self._exclusive():
            return self._edit(ref, new_text, force)

    def _edit(self, ref: str, new_text: str, force: bool) -> Optional[Path]:
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
        return self._commit({path: text, self.state_path: self._state_text(state)}, "edit")

    # -- backups --
    def backups(self) -> list[BackupInfo]:
        """The set's backups, oldest first."""
        out = []
        for p in sorted(self.backup_root.iterdir()) if self.backup_root.is_dir() else []:
            if not p.is_dir() or p.name.startswith("."):
                continue
            info = BackupInfo(name=p.name, action=re.sub(r"^[^-]*-?|-\d+$", "", p.name) or "?")
            try:
                writes, removes = self._backup_plan(p)
                info.files = [t.relative_to(self.folder).as_posix() for t in writes]
                info.absent = [t.relative_to(self.folder).as_posix() for t in removes]
            except CurationError as exc:
                info.error = str(exc)
            out.append(info)
        return out

    def find_backup(self, ref: str) -> Path:
        """A backup folder of this set, by name (as ``curate backups`` lists) or path."""
        candidate = (Path(ref) if os.sep in ref else self.backup_root / ref).resolve()
        if (candidate.parent != self.backup_root.resolve() or candidate.name.startswith(".")
                or not candidate.is_dir()):
            raise CurationError(f"no backup {ref!r} of {self.folder} (its backups are in {self.backup_root})")
        return candidate

    def restore(self, ref: str) -> tuple[Path, Optional[Path]]:
        """Put every file of backup ``ref`` back byte for byte, and remove the files it records as
        absent, after backing up their current versions (so that a restore can be undone too).

        Returns the backup restored and the new backup (None when the files already match it)."""
        folder = self.find_backup(ref)
        with self._exclusive():
            writes, removes = self._backup_plan(folder)
            if (all(p.is_file() and p.read_bytes() == d for p, d in writes.items())
                    and not any(p.exists() for p in removes)):
                return folder, None
            return folder, self._commit(writes, "restore", removes)

    def _backup_plan(self, folder: Path) -> tuple[dict[Path, bytes], list[Path]]:
        """What restoring ``folder`` writes (path -> bytes, checked against the manifest) and removes."""
        if not folder.is_dir():
            raise CurationError(f"backup {folder.name} is missing from {self.backup_root}")
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            entries = [(e["name"], e["path"], e["sha256"]) for e in manifest["files"]]
            absent = [str(a) for a in manifest["absent"]]
        except FileNotFoundError:  # a backup made before manifests: files by name, no record of absent ones
            entries = [(p.name, STATE_FILE if p.name == "state.json" else p.name, None)
                       for p in sorted(folder.iterdir()) if p.is_file()]
            absent = []
        except (ValueError, KeyError, TypeError) as exc:
            raise CurationError(f"backup {folder.name}: unreadable {MANIFEST} ({exc})") from None
        writes: dict[Path, bytes] = {}
        for name, rel, digest in entries:
            try:
                data = (folder / name).read_bytes()
            except FileNotFoundError:
                raise CurationError(f"backup {folder.name} is damaged: {name} is missing") from None
            if digest is not None and sha256(data) != digest:
                raise CurationError(f"backup {folder.name} is damaged: {name} does not match its recorded SHA-256")
            writes[self._target(rel, folder)] = data
        return writes, [self._target(rel, folder) for rel in absent]

    def _target(self, rel: str, backup: Path) -> Path:
        """The set's file at ``rel`` (a curated dialogue or the state: a backup may hold nothing else)."""
        if rel == STATE_FILE:
            return self.state_path
        if CURATED_RE.match(rel):
            return self.folder / rel
        raise CurationError(f"backup {backup.name}: {rel!r} is not a file of a curated set")


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
