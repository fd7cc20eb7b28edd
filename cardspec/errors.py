"""Exceptions of the card-specification package.

Design notes: ``docs/design/cardspec.md`` (section ``cardspec.errors``).
"""

from __future__ import annotations


class CardSpecError(Exception):
    """Root of every error raised by the cardspec package."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidIdentifier(CardSpecError, ValueError):
    """An identifier (citizen ID, card number, region code ...) is invalid.

    ``field`` names the identifier, ``reason`` says precisely what is wrong (never the full
    value: identifiers are personal data).
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class EncodingError(CardSpecError, ValueError):
    """A value does not fit the element it should be written to."""

    def __init__(self, element: str, reason: str) -> None:
        super().__init__(f"{element}: {reason}")
        self.element = element
        self.reason = reason


class TlvError(CardSpecError, ValueError):
    """Malformed TLV data; ``tag`` is the tag being parsed (if known), ``offset`` the byte
    offset in the input where the problem was found."""

    def __init__(self, reason: str, *, offset: int, tag: int | None = None) -> None:
        where = f" in tag {tag:X}" if tag is not None else ""
        super().__init__(f"{reason}{where} at offset {offset}")
        self.reason = reason
        self.offset = offset
        self.tag = tag


class ApduError(CardSpecError, ValueError):
    """A malformed command or response APDU."""


class ProfileError(CardSpecError):
    """The card profile is inconsistent or a name is not in it."""


class ImageError(CardSpecError):
    """A persistent card image cannot be loaded or saved."""


class CardError(CardSpecError):
    """The card answered a command with an unexpected status word."""

    def __init__(self, message: str, sw: int, *, command: str = "") -> None:
        super().__init__(f"{message} (SW {sw:04X})" + (f" [{command}]" if command else ""))
        self.sw = sw
        self.command = command

    @property
    def sw1(self) -> int:
        return self.sw >> 8

    @property
    def sw2(self) -> int:
        return self.sw & 0xFF


class SecurityError(CardError):
    """Authentication failed or the security status is not satisfied."""


class PinError(SecurityError):
    """A PIN was refused; ``tries_left`` is the remaining count (0: blocked) when known."""

    def __init__(
        self, message: str, sw: int, *, tries_left: int | None = None, command: str = ""
    ) -> None:
        super().__init__(message, sw, command=command)
        self.tries_left = tries_left


class CardNotFoundError(CardError):
    """File, application, record or data object not found on the card."""


class CardStateError(CardError):
    """Conditions of use not satisfied (e.g. card locked, PIN must be changed first)."""


class ResponseError(CardError):
    """The card answered 9000 but the response data is truncated or malformed."""
