"""Validate (and repair) the assistant replies of dialogue files, per dialogue and per rule."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, Field

from rrr_ray.data.io import backup_files
from rrr_ray.data.records import (
    DialogueRecord, Message, dialogue_files, read_curated_header, read_dialogues, write_dialogues,
)
from rrr_ray.format import repair, validate
from rrr_ray.format.spec import RULES, ErrorCode

log = logging.getLogger(__name__)


class ReplyIssue(BaseModel):
    turn: int = Field(description="1-based index of the assistant reply in the dialogue.")
    codes: list[str] = Field(description="Error codes of the reply (before any fix).")
    summary: str
    fixed: bool = Field(default=False, description="repair made it valid.")
    changes: list[str] = Field(default_factory=list, description="What repair changed.")


class DialogueCheck(BaseModel):
    file: str
    conversation_id: str
    num_turns: int
    valid: bool = Field(description="Every reply valid, as read.")
    valid_after_fix: bool = Field(description="Every reply valid after repair (same as valid without --fix).")
    issues: list[ReplyIssue] = Field(default_factory=list)
    warnings: int = 0


class FileCheck(BaseModel):
    file: str
    dialogues: list[DialogueCheck] = Field(default_factory=list)
    error: Optional[str] = Field(default=None, description="Why the file could not be read.")
    written: bool = Field(default=False, description="The repaired file was written.")
    backup: Optional[str] = None


class CheckReport(BaseModel):
    files: list[FileCheck]
    fix: bool
    dry_run: bool

    @property
    def dialogues(self) -> list[DialogueCheck]:
        return [d for f in self.files for d in f.dialogues]

    def per_rule(self) -> dict[str, int]:
        """Error code -> number of replies that break it."""
        c: Counter = Counter()
        for d in self.dialogues:
            for issue in d.issues:
                c.update(set(issue.codes))
        return dict(c.most_common())

    def totals(self) -> dict[str, int]:
        ds = self.dialogues
        return {
            "files": len(self.files), "unreadable_files": sum(f.error is not None for f in self.files),
            "dialogues": len(ds), "valid": sum(d.valid for d in ds), "invalid": sum(not d.valid for d in ds),
            "valid_after_fix": sum(d.valid_after_fix for d in ds),
            "replies_fixed": sum(i.fixed for d in ds for i in d.issues),
            "files_written": sum(f.written for f in self.files),
        }

    @property
    def ok(self) -> bool:
        """Everything readable and valid (after the fix, when fixing for real)."""
        if any(f.error for f in self.files):
            return False
        key = "valid_after_fix" if self.fix and not self.dry_run else "valid"
        return all(getattr(d, key) for d in self.dialogues)

    def to_json(self) -> dict:
        return {**self.model_dump(mode="json"), "per_rule": self.per_rule(), "totals": self.totals(), "ok": self.ok,
                "rules": {c.value: RULES[c] for c in ErrorCode}}

    def text(self, verbose: bool = False) -> str:
        lines = []
        for f in self.files:
            if f.error:
                lines.append(f"{f.file}: ERROR {f.error}")
                continue
            for d in f.dialogues:
                if d.valid and not verbose:
                    continue
                state = "valid" if d.valid else ("fixed" if d.valid_after_fix and self.fix else "INVALID")
                lines.append(f"{f.file} {d.conversation_id}: {state} ({d.num_turns} turns)")
                for i in d.issues:
                    tail = f" -> fixed ({', '.join(i.changes)})" if i.fixed and self.fix else ""
                    lines.append(f"  turn {i.turn}: {i.summary}{tail}")
            if f.written:
                lines.append(f"{f.file}: repaired file written (backup: {f.backup})")
        rules = self.per_rule()
        lines.append("per rule:" if rules else "per rule: no violations")
        for code, n in rules.items():
            lines.append(f"  {code:<24} {n:>5} replies  ({RULES[ErrorCode(code)]})")
        t = self.totals()
        lines.append(f"{t['dialogues']} dialogues in {t['files']} files: {t['valid']} valid, {t['invalid']} invalid"
                     + (f", {t['valid_after_fix']} valid after repair" if self.fix else "")
                     + (f", {t['unreadable_files']} unreadable files" if t["unreadable_files"] else "")
                     + (" (dry run: nothing written)" if self.fix and self.dry_run else ""))
        return "\n".join(lines)


def check_record(record: DialogueRecord, file: str) -> tuple[DialogueCheck, DialogueRecord]:
    """The check of one dialogue, and the dialogue with every repairable reply repaired."""
    issues, fixed_msgs, warnings, turn = [], [], 0, 0
    for m in record.messages:
        if m.role != "assistant":
            fixed_msgs.append(m)
            continue
        turn += 1
        v = validate(m.content)
        warnings += len(v.warnings)
        new_text, report = repair(m.content)
        if not v.valid:
            issues.append(ReplyIssue(turn=turn, codes=v.error_codes, summary=v.summary(), fixed=report.valid_after,
                                     changes=[c.code for c in report.changes]))
        fixed_msgs.append(Message(role="assistant", content=new_text) if report.changed else m)
    fixed = DialogueRecord.from_messages(record.conversation_id, fixed_msgs)
    check = DialogueCheck(file=file, conversation_id=record.conversation_id, num_turns=record.num_turns,
                          valid=not issues, valid_after_fix=all(i.fixed for i in issues), issues=issues, warnings=warnings)
    return check, fixed


def check_paths(paths: list[Path], fix: bool = False, dry_run: bool = False,
                backup_root: Optional[Path] = None) -> CheckReport:
    """Validate every dialogue in ``paths`` (files or folders); with ``fix`` write repaired files back
    in their own format (after a timestamped backup), unless ``dry_run``."""
    files: list[FileCheck] = []
    for path in paths:
        for file in dialogue_files(Path(path)):
            fc = FileCheck(file=str(file))
            files.append(fc)
            try:
                records = read_dialogues(file)
            except Exception as exc:  # DialogueFormatError and pydantic errors: report, go on
                fc.error = str(exc).splitlines()[0]
                continue
            fixed_records, changed = [], False
            for rec in records:
                check, fixed = check_record(rec, str(file))
                fc.dialogues.append(check)
                fixed_records.append(fixed)
                changed |= fixed != rec
            if fix and changed and not dry_run:
                header = read_curated_header(file) if file.suffix == ".txt" else None
                root = backup_root or file.parent / ".backups"
                fc.backup = str(backup_files([file], root, "validate-fix") / file.name)
                write_dialogues(file, fixed_records, header=header)
                fc.written = True
                log.info("repaired %s (backup %s)", file, fc.backup)
    return CheckReport(files=files, fix=fix, dry_run=dry_run)
