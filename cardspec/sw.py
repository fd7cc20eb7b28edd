"""ISO/IEC 7816-4 status words (clause 5.1.3, tables 5-6), with their meanings.

Meanings follow the standard's wording as tabulated in pyscard's
``smartcard/sw/ISO7816_4ErrorChecker.py``. Families with a variable SW2 (``61xx`` bytes
available, ``6Cxx`` wrong Le, ``63Cx`` counter) are described by :func:`describe`.
:func:`raise_for_sw` maps a status word to the matching :mod:`cardspec.errors` class.
"""

from __future__ import annotations

from enum import IntEnum

from cardspec import errors


class SW(IntEnum):
    """Status words SW1SW2 of ISO/IEC 7816-4 used by the card and the terminal code."""

    OK = (0x9000, "Normal processing: no further qualification.")
    WARNING = (0x6200, "State of non-volatile memory unchanged: no information given.")
    DATA_CORRUPTED = (0x6281, "Part of returned data may be corrupted.")
    END_OF_FILE = (0x6282, "End of file or record reached before reading Le bytes.")
    FILE_INVALIDATED = (0x6283, "Selected file invalidated.")
    FCI_NOT_FORMATTED = (0x6284, "FCI not formatted according to ISO/IEC 7816-4.")
    AUTH_FAILED = (
        0x6300,
        "State of non-volatile memory changed: no information (authentication failed).",
    )
    FILE_FILLED = (0x6381, "File filled up by the last write.")
    MEMORY_UNCHANGED = (0x6400, "Execution error: state of non-volatile memory unchanged.")
    MEMORY_FAILURE = (0x6581, "Execution error: memory failure.")
    WRONG_LENGTH = (0x6700, "Wrong length (Lc or Le).")
    CLA_FUNCTION_NOT_SUPPORTED = (0x6800, "Functions in CLA not supported: no information given.")
    LOGICAL_CHANNEL_NOT_SUPPORTED = (0x6881, "Logical channel not supported.")
    SM_NOT_SUPPORTED = (0x6882, "Secure messaging not supported.")
    LAST_COMMAND_EXPECTED = (0x6883, "Last command of the chain expected.")
    CHAINING_NOT_SUPPORTED = (0x6884, "Command chaining not supported.")
    COMMAND_NOT_ALLOWED = (0x6900, "Command not allowed: no information given.")
    INCOMPATIBLE_FILE_STRUCTURE = (0x6981, "Command incompatible with file structure.")
    SECURITY_STATUS_NOT_SATISFIED = (0x6982, "Security status not satisfied.")
    AUTH_METHOD_BLOCKED = (0x6983, "Authentication method blocked (e.g. PIN blocked).")
    REFERENCE_DATA_INVALIDATED = (
        0x6984,
        "Referenced data invalidated (e.g. challenge used or missing).",
    )
    CONDITIONS_NOT_SATISFIED = (0x6985, "Conditions of use not satisfied.")
    NO_CURRENT_EF = (0x6986, "Command not allowed (no current EF).")
    SM_DATA_MISSING = (0x6987, "Expected secure messaging data objects missing.")
    SM_DATA_INCORRECT = (0x6988, "Secure messaging data objects incorrect (e.g. wrong MAC).")
    WRONG_PARAMETERS = (0x6A00, "Wrong parameters P1-P2: no information given.")
    WRONG_DATA = (0x6A80, "Incorrect parameters in the data field.")
    FUNCTION_NOT_SUPPORTED = (0x6A81, "Function not supported.")
    FILE_NOT_FOUND = (0x6A82, "File or application not found.")
    RECORD_NOT_FOUND = (0x6A83, "Record not found.")
    NOT_ENOUGH_MEMORY = (0x6A84, "Not enough memory space in the file.")
    LC_INCONSISTENT_TLV = (0x6A85, "Lc inconsistent with TLV structure.")
    INCORRECT_P1P2 = (0x6A86, "Incorrect parameters P1-P2.")
    LC_INCONSISTENT_P1P2 = (0x6A87, "Lc inconsistent with P1-P2.")
    REFERENCED_DATA_NOT_FOUND = (0x6A88, "Referenced data (key, PIN, data object) not found.")
    WRONG_P1P2 = (0x6B00, "Wrong parameters P1-P2 (offset outside the EF).")
    INS_NOT_SUPPORTED = (0x6D00, "Instruction code not supported or invalid.")
    CLA_NOT_SUPPORTED = (0x6E00, "Class not supported.")
    NO_PRECISE_DIAGNOSIS = (0x6F00, "Technical problem, no precise diagnosis.")

    phrase: str

    def __new__(cls, value: int, phrase: str = "") -> SW:
        member = int.__new__(cls, value)
        member._value_ = value
        member.phrase = phrase
        return member


def describe(sw: int) -> str:
    """Human-readable meaning of any status word, including the variable families."""
    sw1, sw2 = sw >> 8, sw & 0xFF
    if sw1 == 0x61:
        return f"{sw2 or 256} response bytes still available (GET RESPONSE)"
    if sw1 == 0x6C:
        return f"wrong Le: {sw2 or 256} bytes available"
    if sw1 == 0x63 and sw2 & 0xF0 == 0xC0:
        return f"verification failed, {sw2 & 0x0F} tries left"
    try:
        return SW(sw).phrase
    except ValueError:
        return f"unknown status {sw:04X}"


def tries_left(sw: int) -> int | None:
    """The counter of a ``63Cx`` status (0 after ``6983``), else None."""
    if sw >> 8 == 0x63 and sw & 0xF0 == 0xC0:
        return sw & 0x0F
    if sw == SW.AUTH_METHOD_BLOCKED:
        return 0
    return None


_SECURITY = {
    SW.AUTH_FAILED,
    SW.SECURITY_STATUS_NOT_SATISFIED,
    SW.AUTH_METHOD_BLOCKED,
    SW.REFERENCE_DATA_INVALIDATED,
    SW.SM_DATA_MISSING,
    SW.SM_DATA_INCORRECT,
}
_NOT_FOUND = {SW.FILE_NOT_FOUND, SW.RECORD_NOT_FOUND, SW.REFERENCED_DATA_NOT_FOUND}
_STATE = {SW.CONDITIONS_NOT_SATISFIED, SW.NO_CURRENT_EF, SW.COMMAND_NOT_ALLOWED}


def error_for_sw(sw: int, command: str = "", *, pin: bool = False) -> errors.CardError:
    """The exception matching ``sw`` (``pin=True`` for VERIFY / CHANGE / UNBLOCK commands)."""
    text = describe(sw)
    left = tries_left(sw)
    if pin and (left is not None or sw in _SECURITY):
        return errors.PinError(text, sw, tries_left=left, command=command)
    if left is not None or sw in _SECURITY:
        return errors.SecurityError(text, sw, command=command)
    if sw in _NOT_FOUND:
        return errors.CardNotFoundError(text, sw, command=command)
    if sw in _STATE:
        return errors.CardStateError(text, sw, command=command)
    return errors.CardError(text, sw, command=command)


def raise_for_sw(sw: int, command: str = "", *, pin: bool = False) -> None:
    """Raise the matching :class:`cardspec.errors.CardError` unless ``sw`` is 9000."""
    if sw != SW.OK:
        raise error_for_sw(sw, command, pin=pin)
