"""Result types of validation: what ``validate`` and ``StreamValidator.close`` return."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, Field

from rrr_ray.format.spec import SECTION_NAMES, ErrorCode, WarningCode


class FormatError(BaseModel):
    """One violation of the format, with the character offset where it was found."""

    code: ErrorCode = Field(description="Machine-readable rule that was broken.")
    message: str = Field(description="What is wrong, for people.")
    position: int = Field(description="Character offset in the reply where the violation was found.")
    section: Optional[str] = Field(default=None, description="Section concerned, if any.")

    model_config = {"frozen": True}


class FormatWarning(BaseModel):
    """A style deviation that does not make the reply invalid."""

    code: WarningCode
    message: str
    position: int
    section: Optional[str] = None

    model_config = {"frozen": True}


class Validation(BaseModel):
    """The verdict on one reply."""

    valid: bool = Field(description="True iff there are no errors.")
    errors: list[FormatError] = Field(default_factory=list, description="Every violation, in order found.")
    warnings: list[FormatWarning] = Field(default_factory=list, description="Style deviations (not violations).")
    sections: dict[str, str] = Field(
        default_factory=dict,
        description="Stripped content of each section found (the first occurrence when repeated).",
    )

    @property
    def react(self) -> Optional[str]:
        return self.sections.get("react")

    @property
    def respond(self) -> Optional[str]:
        return self.sections.get("respond")

    @property
    def reflect(self) -> Optional[str]:
        return self.sections.get("reflect")

    @property
    def error_codes(self) -> list[str]:
        return [e.code.value for e in self.errors]

    def summary(self) -> str:
        """One line for logs and CLIs."""
        if self.valid:
            return "valid"
        return "invalid: " + "; ".join(f"{e.code.value}@{e.position}: {e.message}" for e in self.errors)


__all__ = ["FormatError", "FormatWarning", "Validation", "SECTION_NAMES"]
