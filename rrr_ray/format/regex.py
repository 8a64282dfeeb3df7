"""The guided-decoding regular expression, derived from the format specification."""

from __future__ import annotations

import re

from rrr_ray.format.spec import SECTIONS, SEPARATOR, STAR, SectionSpec


def _content_pattern(spec: SectionSpec, bounded: bool) -> str:
    # Content never contains "<", so no tag can be opened or closed inside a section; it starts
    # with a non-space character, so it is never empty once stripped.
    n = spec.max_guided_chars
    if spec.starred:
        star = re.escape(STAR)
        inner = f"[^<]{{1,{n - 2}}}" if bounded else "[^<]+"
        return f"{star}{inner}{star}"
    rest = f"[^<]{{0,{n - 1}}}" if bounded else "[^<]*"
    return rf"[^<\s]{rest}"


def guided_regex(bounded: bool = True) -> str:
    """A regex that admits only valid single-turn replies in the canonical layout.

    With ``bounded`` (the default) each section's length is capped (``SectionSpec.max_guided_chars``),
    so that a constrained reply always closes within a finite token budget.
    """
    parts = [
        re.escape(s.open_tag) + _content_pattern(s, bounded) + re.escape(s.close_tag) for s in SECTIONS
    ]
    return re.escape(SEPARATOR).join(parts)
