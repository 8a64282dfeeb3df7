"""Repair what can be repaired in an RRR reply without inventing content.

Fixed and reported: tag-name case, a missing closing tag at the end of a section, asterisks
around the react text, whitespace inside and between sections, and the order of sections when
each appears exactly once. Never fixed: missing, empty or repeated sections and text outside the
sections; those stay as they are and are reported as ``unrepaired``. Nothing is ever padded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from pydantic import BaseModel, Field

from rrr_ray.format.spec import SECTION_BY_NAME, SECTION_INDEX, SECTION_NAMES, SEPARATOR, STAR
from rrr_ray.format.stream import _TAG, validate
from rrr_ray.format.validation import FormatError


class RepairChange(BaseModel):
    """One edit that ``repair`` made."""

    code: str = Field(description="tag_case, inserted_closing_tag, added_asterisks, whitespace or reordered.")
    message: str
    section: Optional[str] = None


class RepairReport(BaseModel):
    """What ``repair`` changed and what it could not fix."""

    changes: list[RepairChange] = Field(default_factory=list)
    unrepaired: list[FormatError] = Field(default_factory=list, description="Violations left in the output.")
    valid_before: bool
    valid_after: bool

    @property
    def changed(self) -> bool:
        return bool(self.changes)


_WHITESPACE = re.compile(r"\s+")


@dataclass
class _Piece:
    section: Optional[str]  # None: text outside the sections, or a stray closing tag
    content: str
    closed: bool = True
    stray: bool = False


@dataclass
class _Parse:
    pieces: list[_Piece] = field(default_factory=list)
    tag_case_fixes: int = 0


def _parse(text: str) -> _Parse:
    result = _Parse()
    current: Optional[_Piece] = None
    last = 0
    for match in _TAG.finditer(text):
        between = text[last:match.start()]
        last = match.end()
        closing, raw_name = match.group(1) == "/", match.group(2)
        name = raw_name.lower()
        result.tag_case_fixes += raw_name != name
        if current is not None:
            current.content += between
            if closing and name == current.section:
                result.pieces.append(current)
                current = None
                continue
            if not closing and name == current.section:  # nested: keep it as text
                current.content += match.group(0).lower()
                continue
            if closing:  # a stray closing tag inside another section: keep as text
                current.content += match.group(0).lower()
                continue
            current.closed = False
            result.pieces.append(current)
            current = None
        elif between:
            result.pieces.append(_Piece(None, between))
        if closing:
            result.pieces.append(_Piece(None, match.group(0).lower(), stray=True))
        else:
            current = _Piece(name, "")
    tail = text[last:]
    if current is not None:
        current.content += tail
        current.closed = False
        result.pieces.append(current)
    elif tail:
        result.pieces.append(_Piece(None, tail))
    return result


def _fix_content(piece: _Piece, changes: list[RepairChange]) -> str:
    content = piece.content.strip()
    if not content:
        return content
    spec = SECTION_BY_NAME[piece.section]  # type: ignore[index]
    if spec.starred and not (len(content) >= 2 and content.startswith(STAR) and content.endswith(STAR)):
        content = STAR + content.strip(STAR).strip() + STAR
        changes.append(RepairChange(code="added_asterisks", section=spec.name,
                                    message=f"wrapped the {spec.name} text in asterisks"))
    return content


def repair(text: str) -> tuple[str, RepairReport]:
    """Return the repaired reply and a report of every change and of what is left unrepaired."""
    before = validate(text)
    parse = _parse(text)
    changes: list[RepairChange] = []
    if parse.tag_case_fixes:
        changes.append(RepairChange(code="tag_case", message=f"lower-cased {parse.tag_case_fixes} tag name(s)"))
    sections = [p for p in parse.pieces if p.section is not None]
    outside = [p for p in parse.pieces if p.section is None and (p.stray or p.content.strip())]
    for piece in sections:
        if not piece.closed:
            changes.append(RepairChange(code="inserted_closing_tag", section=piece.section,
                                        message=f"inserted the missing </{piece.section}>"))
    names = [p.section for p in sections]
    can_reorder = not outside and sorted(names, key=SECTION_INDEX.__getitem__) != names and \
        sorted(names) == sorted(SECTION_NAMES)
    if can_reorder:
        sections.sort(key=lambda p: SECTION_INDEX[p.section])  # type: ignore[index]
        changes.append(RepairChange(code="reordered", message="put the sections in the order " +
                                    ", ".join(SECTION_NAMES)))
        pieces = sections
    else:
        pieces = [p for p in parse.pieces if p.section is not None or p.stray or p.content.strip()]
    out: list[str] = []
    for piece in pieces:
        if piece.section is None:
            out.append(piece.content.strip())
        else:
            out.append(f"<{piece.section}>{_fix_content(piece, changes)}</{piece.section}>")
    repaired = SEPARATOR.join(out)
    if sorted(_WHITESPACE.findall(repaired)) != sorted(_WHITESPACE.findall(text)):
        changes.append(RepairChange(code="whitespace", message="normalised whitespace"))
    after = validate(repaired)
    return repaired, RepairReport(changes=changes, unrepaired=after.errors,
                                  valid_before=before.valid, valid_after=after.valid)
