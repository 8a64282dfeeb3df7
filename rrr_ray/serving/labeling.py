"""Each token of a reply labelled, as it streams, with the RRR section it belongs to."""

from __future__ import annotations

from typing import Optional

from rrr_ray.format import StreamValidator, Validation
from rrr_ray.format.stream import StreamEvent


def _label(events: list[StreamEvent], current: Optional[str]) -> Optional[str]:
    for e in events:
        if e.kind in ("section_start", "section_end") or (e.kind == "text" and e.section and e.text.strip()):
            return e.section
    for e in events:
        if e.kind == "text":
            return e.section
    return current


class SectionLabeler:
    """Feeds tokens to a ``StreamValidator`` and labels each with the section it belongs to.

    No token is held back (that would delay the first token). A token that may start a tag
    (``<``, ``</re``) is labelled as a valid reply would continue: inside a section, with that
    section (its closing tag, or text); outside, with the section a valid reply opens next. So the
    pieces of ``<react>`` are all labelled ``react`` in a valid reply.
    """

    def __init__(self) -> None:
        self.validator = StreamValidator()

    def push(self, token: str) -> list[tuple[str, Optional[str]]]:
        if not token:  # e.g. the end-of-sequence token, skipped in detokenisation
            return []
        v = self.validator
        events = v.feed(token)
        if v.pending and not any(e.kind != "text" or e.text.strip() for e in events):
            return [(token, v.section or v.next_section)]
        return [(token, _label(events, v.section))]

    def close(self) -> Validation:
        return self.validator.close()
