"""The valid remainders of a reply prefix: what a self-healing stream continues a broken reply with.

A prefix is *valid* when some text completes it into a valid reply. ``prefix_state`` reads where a
prefix stands (before any tag, inside a tag being written, inside a section, between sections, after
the last one) from a ``StreamValidator`` fed with it; ``prefix_violation`` says, cheaply enough to ask
after every token, whether it is still valid. ``remainder_regex`` is the regex of the prefix's
completions, built from the specification and the body patterns of ``guided_regex``.
``valid_prefix_length`` is the cut point of a text that broke the format: the longest valid prefix.

A prefix can break the format before the ``StreamValidator`` reports an error: a section skipped
(reported as missing only at the end), or a tag being written outside the sections that can no
longer become the next section's opening tag (``<ref`` where ``<respond>`` must come).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Optional, Union

from rrr_ray.format.regex import FIRST_CHAR, TEXT_CHAR, free_content_pattern, repeat
from rrr_ray.format.spec import (
    MAX_GUIDED_GAP, SECTION_BY_NAME, SECTION_INDEX, SECTION_NAMES, SECTIONS, ErrorCode, SectionSpec)
from rrr_ray.format.stream import StreamValidator

_TAGS = tuple(tag for s in SECTIONS for tag in (s.open_tag, s.close_tag))
_OPENED_IN_ORDER = tuple(frozenset(SECTION_NAMES[:k]) for k in range(len(SECTIONS) + 1))


@dataclass(frozen=True)
class PrefixState:
    """Where a reply prefix stands."""

    violation: Optional[ErrorCode]
    """None while the prefix is valid; else the violation it is bound to (the first error found)."""
    section: Optional[str]
    """The open section (None outside the sections)."""
    opened: int
    """How many sections have been opened (in a valid prefix: the first ``opened`` of ``SECTIONS``)."""
    pending: str
    """The end of the prefix that may still become a tag (``<resp``, ``</rea``), or ""."""
    has_content: bool
    """The open section already holds non-whitespace content (besides ``pending``)."""

    @property
    def valid(self) -> bool:
        return self.violation is None

    @property
    def complete(self) -> bool:
        """The prefix is a valid reply already (only whitespace may follow)."""
        return self.valid and self.section is None and self.opened == len(SECTIONS) and not self.pending


def prefix_violation(validator: StreamValidator) -> Optional[ErrorCode]:
    """None while the text fed to ``validator`` is a valid prefix; else the violation it is bound to."""
    errors = validator.errors
    if errors:
        return errors[0].code
    opened = validator.opened
    if opened != _OPENED_IN_ORDER[len(opened)]:
        return ErrorCode.MISSING_TAG  # a section was skipped: missing, or out of order if it comes later
    pending = validator.pending_text
    if pending and validator.section is None:
        following = SECTIONS[len(opened)] if len(opened) < len(SECTIONS) else None
        if following is None or not following.open_tag.startswith(pending):
            return _pending_violation(pending, following.open_tag if following else None)
    return None


def _pending_violation(pending: str, open_tag: Optional[str]) -> ErrorCode:
    """What a tag being written outside the sections becomes, when not the next opening tag."""
    low = pending.lower()
    if open_tag is not None and open_tag.startswith(low):
        return ErrorCode.TAG_CASE
    if any(s.close_tag.startswith(low) for s in SECTIONS) and not any(s.open_tag.startswith(low) for s in SECTIONS):
        return ErrorCode.UNEXPECTED_CLOSING_TAG  # it can only become a closing tag
    return ErrorCode.TEXT_OUTSIDE_TAGS


def _validator(source: Union[str, StreamValidator]) -> StreamValidator:
    if isinstance(source, StreamValidator):
        return source
    validator = StreamValidator()
    validator.feed(source)
    return validator


def prefix_state(source: Union[str, StreamValidator]) -> PrefixState:
    """The state of a prefix, given as text or as a ``StreamValidator`` fed with it (not closed)."""
    validator = _validator(source)
    return PrefixState(violation=prefix_violation(validator), section=validator.section,
                       opened=len(validator.opened), pending=validator.pending_text,
                       has_content=bool(validator.section_text.strip()))


def valid_prefix_length(text: str) -> int:
    """The length of the longest valid prefix of ``text`` (``len(text)`` when it is one).

    Valid prefixes are closed under taking prefixes, so this is where the format broke, however
    late the break became certain: ``...</react>\\n<rex`` breaks after ``<re``, which may still open
    ``<respond>``; trailing text after the last section breaks at its first non-space character.
    """
    validator = StreamValidator()
    for i, char in enumerate(text):
        validator.feed(char)
        if prefix_violation(validator) is not None:
            return i
    return len(text)


def remainder_regex(source: Union[str, PrefixState, StreamValidator], bounded: bool = True) -> str:
    """The regex of the valid remainders of a prefix: ``re.fullmatch(remainder_regex(p), s)`` only if
    ``p + s`` is a valid reply, for every remainder of the canonical shapes (section content without
    ``<``, asterisks optional, whitespace between sections).

    With ``bounded`` (the default) each section still to be written, the rest of the open one, and
    each run of whitespace are capped (``SectionSpec.max_guided_chars``, ``MAX_GUIDED_GAP``), so a
    continuation guided by it ends within a finite token budget. Raises ``ValueError`` for a prefix
    that is not valid (cut it first: ``valid_prefix_length``).
    """
    state = source if isinstance(source, PrefixState) else prefix_state(source)
    if state.violation is not None:
        raise ValueError(f"not a valid reply prefix ({state.violation.value}); no remainder makes it valid")
    return _remainder(state.section, state.opened, state.pending, state.has_content, bounded)


@functools.lru_cache(maxsize=512)
def _remainder(section: Optional[str], opened: int, pending: str, has_content: bool, bounded: bool) -> str:
    gap = repeat(r"\s", 0, MAX_GUIDED_GAP if bounded else None)
    parts: list[str] = []
    if section is not None:
        parts.append(_rest_of_section(SECTION_BY_NAME[section], pending, has_content, bounded))
        following = SECTION_INDEX[section] + 1
    else:
        following = opened
        if pending:  # the opening tag of the next section, being written
            spec = SECTIONS[following]
            parts.append(re.escape(spec.open_tag[len(pending):]) + free_content_pattern(spec, bounded)
                         + re.escape(spec.close_tag))
            following += 1
    for spec in SECTIONS[following:]:
        parts.append(gap + re.escape(spec.open_tag) + free_content_pattern(spec, bounded) + re.escape(spec.close_tag))
    parts.append(gap)
    return "".join(parts)


def _rest_of_section(spec: SectionSpec, pending: str, has_content: bool, bounded: bool) -> str:
    """The rest of the open section, up to and including its closing tag."""
    n = spec.max_guided_chars if bounded else None
    close = re.escape(spec.close_tag)
    if not pending:
        if has_content:
            return repeat(TEXT_CHAR, 0, n) + close
        return FIRST_CHAR + repeat(TEXT_CHAR, 0, n - 1 if n else None) + close
    # "<" and what follows may still become a tag. Either it is the closing tag being written (on a
    # section with content), or it stays text: the next character is one that continues no tag
    # (the pending text is then content, so the section is not empty).
    alternatives = []
    if has_content and spec.close_tag.startswith(pending):
        alternatives.append(re.escape(spec.close_tag[len(pending):]))
    breaking = "[^<" + "".join(re.escape(c) for c in sorted(_continuing(pending))) + "]"
    alternatives.append(f"({breaking}{repeat(TEXT_CHAR, 0, n - 1 if n else None)})?{close}")
    return "(" + "|".join(alternatives) + ")"


def _continuing(pending: str) -> set[str]:
    """The characters after which ``pending`` may still become a tag (tags match in any ASCII case)."""
    low = pending.lower()
    chars = {tag[len(low)] for tag in _TAGS if len(tag) > len(low) and tag.startswith(low)}
    return chars | {c.upper() for c in chars}
