"""The guided-decoding regular expression, derived from the format specification.

The body patterns here are shared with the remainder regex of self-healing
(``rrr_ray.format.remainder``). Content is a run of characters that are not ``<``: a body regex
that excludes a multi-character sequence such as ``</react>`` instead compiles slowly in xgrammar
(xgrammar#156), and without ``<`` no tag can open or close inside a section.
"""

from __future__ import annotations

import re
from typing import Optional

from rrr_ray.format.spec import SECTIONS, SEPARATOR, STAR, SectionSpec

TEXT_CHAR = "[^<]"
"""One character of section content."""
FIRST_CHAR = r"[^<\s]"
"""The first character of section content: not a space, so the section is never empty once stripped."""


def escape(literal: str) -> str:
    """``re.escape`` with a newline written ``\\n``: xgrammar reads a backslash before a raw newline
    as an unknown escape and warns at every compile."""
    return re.escape(literal).replace("\\\n", "\\n")


def repeat(atom: str, low: int, high: Optional[int]) -> str:
    """``atom`` repeated ``low`` to ``high`` times (``high`` None: no upper bound)."""
    if high is not None:
        return f"{atom}{{{low},{high}}}"
    return atom + {0: "*", 1: "+"}.get(low, f"{{{low},}}")


def free_content_pattern(spec: SectionSpec, bounded: bool) -> str:
    """Any non-empty content of a section, asterisks or not (at most ``max_guided_chars`` with ``bounded``)."""
    return FIRST_CHAR + repeat(TEXT_CHAR, 0, spec.max_guided_chars - 1 if bounded else None)


def _content_pattern(spec: SectionSpec, bounded: bool) -> str:
    """Content in the canonical style: a starred section's in asterisks."""
    if spec.starred:
        star = re.escape(STAR)
        return star + repeat(TEXT_CHAR, 1, spec.max_guided_chars - 2 if bounded else None) + star
    return free_content_pattern(spec, bounded)


def guided_regex(bounded: bool = True) -> str:
    """A regex that admits only valid single-turn replies in the canonical layout.

    With ``bounded`` (the default) each section's length is capped (``SectionSpec.max_guided_chars``),
    so that a constrained reply always closes within a finite token budget.
    """
    parts = [
        re.escape(s.open_tag) + _content_pattern(s, bounded) + re.escape(s.close_tag) for s in SECTIONS
    ]
    return escape(SEPARATOR).join(parts)
