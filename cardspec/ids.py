"""Identifiers carried on and around the card, with their check characters.

Design notes: ``docs/design/cardspec.md`` (section ``cardspec.ids``).
"""

from __future__ import annotations

import operator
import re
import unicodedata
from dataclasses import dataclass
from datetime import date

from cardspec import regions
from cardspec.errors import InvalidIdentifier

CITIZEN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CITIZEN_ID_CHECK_MAP = "10X98765432"
CARD_NUMBER_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
CARD_ID_MARKER = "D156000005"
"""Country code 156 and the issuer marker, characters 7..16 of the card identification code."""
EARLIEST_BIRTH_DATE = date(1900, 1, 1)

_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ALNUM_VALUE = {ch: i for i, ch in enumerate(_ALNUM)}
_HEX16 = re.compile(r"[0-9A-F]{16}")
_CITIZEN_ID_ZEROS = 48 * sum(CITIZEN_ID_WEIGHTS)
_BODY8 = re.compile(r"[0-9A-Z]{8}")
#: each of 0-9 A-Z to the character whose code is its value (0..35)
_ALNUM_CODES = str.maketrans({ch: chr(i) for i, ch in enumerate(_ALNUM)})


def mask_citizen_id(value: str) -> str:
    """Keep the first 4 and last 4 characters, star the rest (safe to log or display)."""
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


@dataclass(frozen=True)
class CitizenId:
    """A validated 18-character citizen ID number."""

    value: str
    region_code: str
    birth_date: date
    sex: str
    """"1" male (17th digit odd), "2" female (GB/T 2261.1 codes, as in EF06 tag 0A)."""

    def masked(self) -> str:
        return mask_citizen_id(self.value)

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:  # never print the full number
        return f"CitizenId({self.masked()!r})"


def citizen_id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character over the first 17 digits."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise InvalidIdentifier("citizen_id", "check needs exactly 17 digits")
    # each digit's value is its ASCII code less 48: summed over the codes, the 48s come off
    # at once (the same sum, mod 11, as digit by digit)
    total = sum(map(operator.mul, first17.encode(), CITIZEN_ID_WEIGHTS)) - _CITIZEN_ID_ZEROS
    return CITIZEN_ID_CHECK_MAP[total % 11]


def validate_region_code(code: str, *, strict: bool = False, field: str = "region_code") -> str:
    """Return ``code`` if it is a GB/T 2260 code.

    Known codes (any revision 1980-2019) are accepted; an unknown code is accepted when its
    province prefix is valid and ``strict`` is false (codes created after the data snapshot,
    see :mod:`cardspec.regions`).
    """
    if len(code) != 6 or not code.isascii() or not code.isdigit():
        raise InvalidIdentifier(field, "must be 6 digits")
    if regions.province_name(code) is None:
        raise InvalidIdentifier(field, f"unknown province prefix {code[:2]}")
    if regions.is_known(code):
        return code
    if strict:
        raise InvalidIdentifier(field, f"{code} is not a GB/T 2260 code")
    if code[2:4] == "00" and code[4:] != "00":
        raise InvalidIdentifier(field, f"{code} has a county part without a prefecture")
    return code


def validate_citizen_id(value: str, *, today: date | None = None) -> CitizenId:
    """Validate a GB 11643-1999 citizen ID number (a lowercase ``x`` is normalised)."""
    return CitizenId(*_citizen_id_fields(value, today))


def check_citizen_id(value: str, *, today: date | None = None) -> str:
    """The checks of :func:`validate_citizen_id` (the same: raises the same
    :class:`InvalidIdentifier`) without the :class:`CitizenId`: the normalised number (data
    preparation checks every holder's number and needs nothing more)."""
    return _citizen_id_fields(value, today)[0]


def _citizen_id_fields(value: str, today: date | None) -> tuple[str, str, date, str]:
    """The checks of a citizen ID number: (number, region code, birth date, sex)."""
    field = "citizen_id"
    if not isinstance(value, str):
        raise InvalidIdentifier(field, "must be a string")
    if len(value) != 18:
        raise InvalidIdentifier(field, f"must be 18 characters, got {len(value)}")
    value = value.upper()
    body, check = value[:17], value[17]
    if not body.isascii() or not body.isdigit():
        raise InvalidIdentifier(field, "the first 17 characters must be digits")
    if check not in "0123456789X":
        raise InvalidIdentifier(field, "the 18th character must be a digit or X")
    expected = citizen_id_check_char(body)
    if check != expected:
        raise InvalidIdentifier(field, "check character does not match (ISO 7064 MOD 11-2)")
    try:
        region = validate_region_code(body[:6], field=field)
    except InvalidIdentifier as exc:
        raise InvalidIdentifier(field, f"region code: {exc.reason}") from None
    try:
        birth = date(int(body[6:10]), int(body[10:12]), int(body[12:14]))
    except ValueError:
        raise InvalidIdentifier(field, "birth date (characters 7-14) is not a date") from None
    if birth < EARLIEST_BIRTH_DATE:
        raise InvalidIdentifier(field, "birth date is before 1900")
    if birth > (today or date.today()):
        raise InvalidIdentifier(field, "birth date is in the future")
    sex = "1" if int(body[16]) % 2 else "2"
    return value, region, birth, sex


def card_number_check_char(body8: str) -> str:
    """Check character of a card number body (8 characters 0-9 A-Z)."""
    if len(body8) != 8:
        raise InvalidIdentifier("card_number", "body must be 8 characters")
    if _BODY8.fullmatch(body8) is None:
        raise InvalidIdentifier("card_number", "characters must be 0-9 or A-Z")
    # the characters' values (0..35) as the codes of the translated text, summed in C
    codes = body8.translate(_ALNUM_CODES).encode("ascii")
    total = sum(map(operator.mul, codes, CARD_NUMBER_WEIGHTS))
    check = 11 - total % 11
    return "X" if check == 10 else "0" if check == 11 else str(check)


def make_card_number(body8: str) -> str:
    """The 9-character card number: body + check character."""
    return body8 + card_number_check_char(body8)


def validate_card_number(value: str) -> str:
    """Return the card number if its 9 characters and check character are valid."""
    if len(value) != 9:
        raise InvalidIdentifier("card_number", f"must be 9 characters, got {len(value)}")
    if value[8] != card_number_check_char(value[:8]):
        raise InvalidIdentifier("card_number", "check character does not match")
    return value


def parse_card_number(value: str) -> str:
    """A card number as typed or read anywhere (API, CLI, file): trimmed, full-width
    characters folded (NFKC), upper-cased, then its length, alphabet and check character
    validated -- the one rule every entry point applies before any lookup."""
    if not isinstance(value, str):
        raise InvalidIdentifier("card_number", "must be a string")
    text = unicodedata.normalize("NFKC", value).strip().upper()
    if len(text) != 9:
        raise InvalidIdentifier("card_number", f"must be 9 characters, got {len(text)}")
    if not all(ch in _ALNUM_VALUE for ch in text):
        raise InvalidIdentifier("card_number", "characters must be 0-9 or A-Z")
    return validate_card_number(text)


def make_card_identification_code(region_code: str, chip_serial: bytes) -> str:
    """Region (6) + ``D156000005`` + the 8-byte chip serial as 16 uppercase hex characters."""
    validate_region_code(region_code)
    if len(chip_serial) != 8:
        raise InvalidIdentifier("chip_serial", f"must be 8 bytes, got {len(chip_serial)}")
    return region_code + CARD_ID_MARKER + chip_serial.hex().upper()


def validate_card_identification_code(value: str) -> str:
    """Return the (uppercased) 32-character card identification code if it is well formed."""
    field = "card_identification_code"
    if len(value) != 32:
        raise InvalidIdentifier(field, f"must be 32 characters, got {len(value)}")
    value = value.upper()
    try:
        validate_region_code(value[:6], field=field)
    except InvalidIdentifier as exc:
        raise InvalidIdentifier(field, f"region code: {exc.reason}") from None
    if value[6:16] != CARD_ID_MARKER:
        raise InvalidIdentifier(field, f"characters 7-16 must be {CARD_ID_MARKER}")
    if not _HEX16.fullmatch(value[16:]):
        raise InvalidIdentifier(field, "the last 16 characters must be hexadecimal")
    return value


def chip_serial_of(card_identification_code: str) -> bytes:
    """The 8-byte chip-unique part of a card identification code (also the card factor)."""
    return bytes.fromhex(validate_card_identification_code(card_identification_code)[16:])


_LUHN_DOUBLED = {str(d): (2 * d if d < 5 else 2 * d - 9) for d in range(10)}
_LUHN_PLAIN = {str(d): d for d in range(10)}
_LUHN_DOUBLED_TEXT = str.maketrans({k: str(v) for k, v in _LUHN_DOUBLED.items()})


def luhn_digit(body: str) -> str:
    """The Luhn check digit of ``body`` (ISO/IEC 7812-1 Annex B)."""
    rev = body[::-1]
    if rev.isascii() and rev.isdigit():
        # digits: the doubled ones by their digit sums as text, then every digit's value as
        # its ASCII code less 48, summed in C (the same total as digit by digit below)
        total = (sum(rev[0::2].translate(_LUHN_DOUBLED_TEXT).encode())
                 + sum(rev[1::2].encode()) - 48 * len(rev))  # fmt: skip
    else:  # empty, or not digits (KeyError, as ever)
        total = sum(map(_LUHN_DOUBLED.__getitem__, rev[0::2])) + sum(
            map(_LUHN_PLAIN.__getitem__, rev[1::2])
        )
    return str((10 - total % 10) % 10)


def luhn_ok(number: str) -> bool:
    """``number`` is digits whose last one is the Luhn check digit of the others."""
    return (
        number.isascii() and number.isdigit() and len(number) >= 2
        and luhn_digit(number[:-1]) == number[-1]
    )  # fmt: skip


def make_pan(bin_: str, account: str, length: int = 19) -> str:
    """The PAN of ``length`` digits (12-19) in ``bin_`` for the account digits ``account``
    (left-padded with zeros to fill the PAN), ending in its Luhn check digit: how test data
    and the throwaway bank make PANs a terminal accepts."""
    if not 12 <= length <= 19:
        raise InvalidIdentifier("PAN", f"length {length} is not 12-19")
    room = length - len(bin_) - 1
    if not (bin_ + account).isdigit() or len(account) > room:
        raise InvalidIdentifier(
            "PAN", f"BIN {bin_!r} and {len(account)} account digits do not fit {length}"
        )
    body = bin_ + account.rjust(room, "0")
    return body + luhn_digit(body)


def mask_pan(pan: str) -> str:
    """First 6 and last 4 digits (PCI DSS display rule): what an audit event, a message or a
    masked file field shows of a PAN."""
    return pan[:6] + "*" * max(len(pan) - 10, 0) + pan[-4:]
