"""rrr-ray: serving, training and measuring React-Respond-Reflect dialogue models."""

from rrr_ray.format import (
    ErrorCode,
    FormatError,
    RepairReport,
    StreamEvent,
    StreamValidator,
    Validation,
    extract_assistant_reply,
    guided_regex,
    remainder_regex,
    repair,
    valid_prefix_length,
    validate,
)

__version__ = "0.1.0"

__all__ = [
    "validate", "StreamValidator", "StreamEvent", "repair", "RepairReport", "guided_regex",
    "extract_assistant_reply", "remainder_regex", "valid_prefix_length", "Validation", "FormatError", "ErrorCode", "__version__",
]
