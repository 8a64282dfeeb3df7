"""What an RRR reply says aloud: its ``respond`` section, or, for a reply with no usable section
(an untagged model's), the reply with the RRR tags removed."""

from __future__ import annotations

import re

from rrr_ray.format.repair import repair
from rrr_ray.format.spec import SECTION_NAMES
from rrr_ray.format.stream import validate

_ANY_TAG = re.compile(r"</?\s*(?:" + "|".join(SECTION_NAMES) + r")\s*>", re.IGNORECASE)


def strip_tags(text: str) -> str:
    """``text`` with every RRR tag replaced by a space."""
    return _ANY_TAG.sub(" ", text).strip()


def spoken_reply(text: str) -> str:
    """The plain spoken reply of an RRR turn: its ``respond`` section (after ``repair``), or the
    whole text with the tags removed when it has none."""
    fixed, _ = repair(text)
    respond = validate(fixed).sections.get("respond")
    if respond:
        return respond
    return strip_tags(text)
