"""The RRR format: specification, validation (whole and streaming), repair, guided decoding and the
remainder regex of self-healing."""

from rrr_ray.format.chatml import extract_assistant_reply
from rrr_ray.format.regex import guided_regex
from rrr_ray.format.remainder import PrefixState, prefix_state, prefix_violation, remainder_regex, valid_prefix_length
from rrr_ray.format.repair import RepairChange, RepairReport, repair
from rrr_ray.format.spec import SECTION_NAMES, SECTIONS, ErrorCode, SectionSpec, WarningCode
from rrr_ray.format.stream import StreamEvent, StreamValidator, describe_rules, validate
from rrr_ray.format.validation import FormatError, FormatWarning, Validation

__all__ = [
    "SECTIONS", "SECTION_NAMES", "SectionSpec", "ErrorCode", "WarningCode",
    "validate", "StreamValidator", "StreamEvent", "describe_rules",
    "repair", "RepairChange", "RepairReport",
    "guided_regex", "extract_assistant_reply",
    "remainder_regex", "valid_prefix_length", "prefix_state", "prefix_violation", "PrefixState",
    "Validation", "FormatError", "FormatWarning",
]
