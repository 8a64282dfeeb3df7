"""The React-Respond-Reflect format, specified once.

Everything that knows the format (the validator, the streaming validator, the repairer, the
guided-decoding regex and the remainder regex of self-healing) reads it from here; no other module
spells a tag name or a rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class SectionSpec:
    """One section of a reply: ``<name>content</name>``."""

    name: str
    meaning: str
    starred: bool = False
    """Canonical style wraps the content in asterisks (``*leans in*``); absence is a warning."""
    max_guided_chars: int = 400
    """Upper bound on the content length admitted by the guided-decoding regex."""

    @property
    def open_tag(self) -> str:
        return f"<{self.name}>"

    @property
    def close_tag(self) -> str:
        return f"</{self.name}>"


SECTIONS: tuple[SectionSpec, ...] = (
    SectionSpec("react", "body language, in asterisks", starred=True, max_guided_chars=140),
    SectionSpec("respond", "what is said", max_guided_chars=320),
    SectionSpec("reflect", "inner analysis", max_guided_chars=280),
)
"""The sections, in the order they must appear. Each appears exactly once, closed and non-empty,
with nothing but whitespace outside them."""

SECTION_NAMES: tuple[str, ...] = tuple(s.name for s in SECTIONS)
SECTION_INDEX: dict[str, int] = {s.name: i for i, s in enumerate(SECTIONS)}
SECTION_BY_NAME: dict[str, SectionSpec] = {s.name: s for s in SECTIONS}

STAR = "*"
SEPARATOR = "\n"
"""What the canonical layout puts between two sections."""
MAX_GUIDED_GAP = 4
"""Most whitespace characters the remainder regex of self-healing admits before, between and after
the sections (unbounded whitespace could keep a guided continuation from ever ending)."""


class ErrorCode(str, Enum):
    """Machine-readable violation codes. ``valid`` is true iff a reply has none."""

    MISSING_TAG = "missing_tag"
    WRONG_ORDER = "wrong_order"
    UNCLOSED_TAG = "unclosed_tag"
    EMPTY_SECTION = "empty_section"
    TEXT_OUTSIDE_TAGS = "text_outside_tags"
    DUPLICATE_TAG = "duplicate_tag"
    NESTED_TAG = "nested_tag"
    UNEXPECTED_CLOSING_TAG = "unexpected_closing_tag"
    TAG_CASE = "tag_case"


class WarningCode(str, Enum):
    """Style deviations that do not make a reply invalid; ``repair`` fixes them."""

    NOT_STARRED = "not_starred"


RULES: dict[ErrorCode, str] = {
    ErrorCode.MISSING_TAG: "every section (react, respond, reflect) must appear",
    ErrorCode.WRONG_ORDER: "sections must appear in the order react, respond, reflect",
    ErrorCode.UNCLOSED_TAG: "every opened section must be closed before the next one opens",
    ErrorCode.EMPTY_SECTION: "no section may be empty or whitespace only",
    ErrorCode.TEXT_OUTSIDE_TAGS: "nothing but whitespace may stand outside the sections",
    ErrorCode.DUPLICATE_TAG: "each section must appear exactly once",
    ErrorCode.NESTED_TAG: "a section must not be opened again inside itself",
    ErrorCode.UNEXPECTED_CLOSING_TAG: "a closing tag must close the section that is open",
    ErrorCode.TAG_CASE: "tag names are lower case",
}


def _system_prompt() -> str:
    layout = ", ".join(f"{s.open_tag}{s.meaning}{s.close_tag}" for s in SECTIONS)
    return ("You are a warm, attentive conversation partner. Answer every message in three sections, "
            f"each once, in this order: {layout}.")


SYSTEM_PROMPT: str = _system_prompt()
"""rrr-ray's default system prompt: what a model fine-tuned on a pretrained instruct base is trained
and served with when a conversation brings no system message of its own."""
