"""A small character-level parser of RRR replies that accepts text in deltas of any size.

``StreamValidator`` is the only implementation of the rules: ``validate(text)`` feeds the whole
text at once, so that ``close()`` returns exactly what ``validate`` returns on the concatenation,
however the text was split. Tags are matched case-insensitively (a wrong case is itself a
violation); any other ``<`` is ordinary text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Optional

from rrr_ray.format.spec import (
    RULES,
    SECTION_BY_NAME,
    SECTION_INDEX,
    SECTION_NAMES,
    STAR,
    ErrorCode,
    WarningCode,
)
from rrr_ray.format.validation import FormatError, FormatWarning, Validation

# ASCII case folding only: under Unicode folding "ſ" would match "s" and "<reſpond>" name no section.
_TAG = re.compile(r"<(/?)(" + "|".join(SECTION_NAMES) + r")>", re.IGNORECASE | re.ASCII)
_TAG_PREFIXES = frozenset(
    tag[:k] for name in SECTION_NAMES for tag in (f"<{name}>", f"</{name}>") for k in range(1, len(tag))
)
_MAX_TAG_LEN = max(len(f"</{name}>") for name in SECTION_NAMES)

EventKind = Literal["section_start", "text", "section_end", "error"]


@dataclass(slots=True)
class StreamEvent:
    """What one ``feed`` learned: text (with the section it belongs to), a section boundary, or an error."""

    kind: EventKind
    section: Optional[str]
    text: str = ""
    position: int = 0
    error: Optional[FormatError] = None


@dataclass(slots=True)
class _Tag:
    closing: bool
    name: str
    raw: str
    position: int


class StreamValidator:
    """Validate a reply incrementally: ``feed(delta)`` returns events, ``close()`` the ``Validation``.

    A violation is reported as an ``error`` event as soon as it is certain (a stray character
    outside the sections, a section out of order, an empty section at its closing tag); what can
    only be known at the end (a missing or unclosed section) is reported by ``close()``.
    """

    def __init__(self) -> None:
        self._offset = 0  # absolute offset of the first character not yet consumed
        self._pending = ""  # a possible tag prefix, starting with "<", held until it resolves
        self._section: Optional[str] = None  # the open section
        self._section_open_pos = 0
        self._is_duplicate = False  # the open section repeats one already seen
        self._content: list[str] = []
        self._sections: dict[str, str] = {}
        self._seen: set[str] = set()
        self._max_index = -1
        self._outside_flagged = False
        self._errors: list[FormatError] = []
        self._warnings: list[FormatWarning] = []
        self._result: Optional[Validation] = None

    # -- public API -------------------------------------------------------------------------

    @property
    def section(self) -> Optional[str]:
        """The section the text fed so far ends in (None outside all sections)."""
        return self._section

    @property
    def next_section(self) -> Optional[str]:
        """The section a valid reply opens next (None once all have been opened)."""
        return next((name for name in SECTION_NAMES if name not in self._seen), None)

    @property
    def pending(self) -> bool:
        """True while the end of the text fed so far might still become a tag."""
        return bool(self._pending)

    @property
    def pending_text(self) -> str:
        """The end of the text fed so far that might still become a tag ("" when none)."""
        return self._pending

    @property
    def opened(self) -> frozenset[str]:
        """The sections opened so far."""
        return frozenset(self._seen)

    @property
    def section_text(self) -> str:
        """The content of the open section so far, without ``pending_text`` ("" outside the sections)."""
        return "".join(self._content) if self._section is not None else ""

    @property
    def errors(self) -> list[FormatError]:
        """The violations found so far."""
        return list(self._errors)

    def feed(self, delta: str) -> list[StreamEvent]:
        """Consume a text delta of any size and return what it revealed."""
        if self._result is not None:
            raise RuntimeError("feed() after close()")
        events: list[StreamEvent] = []
        self._scan(delta, events, final=False)
        return events

    def close(self) -> Validation:
        """End the stream and return the verdict on everything fed."""
        if self._result is not None:
            return self._result
        events: list[StreamEvent] = []
        self._scan("", events, final=True)
        if self._section is not None:
            self._error(ErrorCode.UNCLOSED_TAG, self._section_open_pos, self._section,
                        f"<{self._section}> is never closed", events)
            self._end_section(self._offset, events)
        for name in SECTION_NAMES:
            if name not in self._seen:
                self._error(ErrorCode.MISSING_TAG, self._offset, name, f"<{name}> is missing", events)
        self._result = Validation(
            valid=not self._errors,
            errors=self._errors,
            warnings=self._warnings,
            sections=self._sections,
        )
        return self._result

    # -- scanning -----------------------------------------------------------------------------

    def _scan(self, delta: str, events: list[StreamEvent], final: bool) -> None:
        buf = self._pending + delta
        base = self._offset
        self._pending = ""
        i, n = 0, len(buf)
        while i < n:
            j = buf.find("<", i)
            if j < 0:
                self._text(buf[i:], base + i, events)
                break
            if j > i:
                self._text(buf[i:j], base + i, events)
            match = _TAG.match(buf, j)
            if match is not None:
                self._tag(_Tag(match.group(1) == "/", match.group(2), match.group(0), base + j), events)
                i = match.end()
                continue
            rest = buf[j:j + _MAX_TAG_LEN]
            if not final and len(rest) == n - j and rest.lower() in _TAG_PREFIXES:
                self._pending = rest  # might still become a tag
                n = j
                break
            self._text("<", base + j, events)
            i = j + 1
        self._offset = base + n

    def _text(self, text: str, position: int, events: list[StreamEvent]) -> None:
        if self._section is not None:
            self._content.append(text)
        elif not self._outside_flagged:
            stripped = text.lstrip()
            if stripped:
                self._outside_flagged = True
                self._error(ErrorCode.TEXT_OUTSIDE_TAGS, position + len(text) - len(stripped), None,
                            "text outside the sections", events)
        events.append(StreamEvent("text", self._section, text, position))

    def _tag(self, tag: _Tag, events: list[StreamEvent]) -> None:
        name = tag.name.lower()
        if tag.name != name:
            self._error(ErrorCode.TAG_CASE, tag.position, name, f"{tag.raw} should be lower case", events)
        if tag.closing:
            if self._section == name:
                self._end_section(tag.position, events)
            else:
                where = f"inside <{self._section}>" if self._section else "outside any section"
                self._error(ErrorCode.UNEXPECTED_CLOSING_TAG, tag.position, name,
                            f"</{name}> {where}", events)
            return
        if self._section == name:
            self._error(ErrorCode.NESTED_TAG, tag.position, name, f"<{name}> opened inside itself", events)
            self._text(tag.raw, tag.position, events)
            return
        if self._section is not None:
            self._error(ErrorCode.UNCLOSED_TAG, self._section_open_pos, self._section,
                        f"<{self._section}> is not closed before <{name}>", events)
            self._end_section(tag.position, events)
        self._start_section(name, tag.position, events)

    def _start_section(self, name: str, position: int, events: list[StreamEvent]) -> None:
        self._outside_flagged = False
        index = SECTION_INDEX[name]
        self._is_duplicate = name in self._seen
        if self._is_duplicate:
            self._error(ErrorCode.DUPLICATE_TAG, position, name, f"<{name}> appears more than once", events)
        elif index < self._max_index:
            self._error(ErrorCode.WRONG_ORDER, position, name,
                        f"<{name}> comes after <{SECTION_NAMES[self._max_index]}>", events)
        self._seen.add(name)
        self._max_index = max(self._max_index, index)
        self._section = name
        self._section_open_pos = position
        self._content = []
        events.append(StreamEvent("section_start", name, position=position))

    def _end_section(self, position: int, events: list[StreamEvent]) -> None:
        name = self._section
        assert name is not None
        content = "".join(self._content).strip()
        if not content:
            self._error(ErrorCode.EMPTY_SECTION, self._section_open_pos, name, f"<{name}> is empty", events)
        elif not self._is_duplicate and SECTION_BY_NAME[name].starred and not (
            len(content) >= 2 and content.startswith(STAR) and content.endswith(STAR)
        ):
            self._warnings.append(FormatWarning(
                code=WarningCode.NOT_STARRED, position=self._section_open_pos, section=name,
                message=f"<{name}> content is not wrapped in asterisks"))
        if not self._is_duplicate:
            self._sections[name] = content
        self._section = None
        self._content = []
        self._outside_flagged = False
        events.append(StreamEvent("section_end", name, position=position))

    def _error(self, code: ErrorCode, position: int, section: Optional[str], message: str,
               events: list[StreamEvent]) -> None:
        error = FormatError(code=code, message=message, position=position, section=section)
        self._errors.append(error)
        events.append(StreamEvent("error", section, position=position, error=error))


def validate(text: str) -> Validation:
    """Validate one reply (the assistant turn only; see ``extract_assistant_reply``).

    Valid iff ``<react>``, ``<respond>``, ``<reflect>`` each appear exactly once, opened and
    closed, in that order, each with non-empty content, with nothing but whitespace outside them.
    """
    validator = StreamValidator()
    validator.feed(text)
    return validator.close()


def describe_rules() -> dict[str, str]:
    """The rules by error code, for reports and docs."""
    return {code.value: rule for code, rule in RULES.items()}
