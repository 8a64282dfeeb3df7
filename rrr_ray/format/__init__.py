"""The RRR format: specification, validation (whole and streaming), repair and guided decoding."""

from rrr_ray.format.chatml import extract_assistant_reply
from rrr_ray.format.regex import guided_regex
from rrr_ray.format.repair import RepairChange, RepairReport, repair
from rrr_ray.format.spec import SECTION_NAMES, SECTIONS, ErrorCode, SectionSpec, WarningCode
from rrr_ray.format.stream import StreamEvent, StreamValidator, describe_rules, validate
from rrr_ray.format.validation import FormatError, FormatWarning, Validation

__all__ = [
    "SECTIONS", "SECTION_NAMES", "SectionSpec", "ErrorCode", "WarningCode",
    "validate", "StreamValidator", "StreamEvent", "describe_rules",
    "repair", "RepairChange", "RepairReport",
    "guided_regex", "extract_assistant_reply",
    "Validation", "FormatError", "FormatWarning",
]
