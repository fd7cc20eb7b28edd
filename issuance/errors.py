"""Exceptions of the issuance domain.

IssuanceError
├── ConfigError            settings file or environment is invalid
├── ValidationError        a record has invalid fields (all reasons listed)
│   └── PhotoRejected          a photo cannot be used on a card
├── NotFound               a person, application, card ... does not exist
├── TransitionError        an undeclared lifecycle transition was asked for
├── ConflictError          another actor changed the same row first
├── PermissionDenied       the actor's role may not do this
└── IntegrityError         audit chain or stored data failed verification
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class IssuanceError(Exception):
    """Root of every error raised by the issuance package."""

    code = "issuance_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigError(IssuanceError):
    code = "config_error"


class StationError(IssuanceError):
    """An encoding station cannot work (no reader, no card fed, a failed quality check:
    :mod:`issuance.batches.stations`)."""

    code = "station_error"


@dataclass(frozen=True)
class FieldProblem:
    """One reason a record was rejected: the field and what is wrong with it."""

    field: str
    reason: str
    #: A stable machine-readable code for the reason, where there is one (a photo's
    #: ``PhotoProblem``, an intake cell's ``CellProblem``).
    code: str | None = None


class ValidationError(IssuanceError):
    code = "validation_error"

    def __init__(self, message: str, problems: list[FieldProblem] | None = None) -> None:
        super().__init__(message)
        self.problems: list[FieldProblem] = list(problems or [])

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        reasons = "; ".join(f"{p.field}: {p.reason}" for p in self.problems)
        return f"{self.message}: {reasons}"


class PhotoRejected(ValidationError):
    """A photo cannot be used on a card (the reason says precisely why; its stable code is
    ``details["reason"]`` and on the field problem)."""

    code = "photo_rejected"

    def __str__(self) -> str:  # the message already says the reason: not repeated
        return self.message


class NotFound(IssuanceError):
    code = "not_found"


class TransitionError(IssuanceError):
    code = "transition_not_allowed"


class ConflictError(IssuanceError):
    code = "conflict"


class PermissionDenied(IssuanceError):
    code = "permission_denied"


class IntegrityError(IssuanceError):
    code = "integrity_error"
