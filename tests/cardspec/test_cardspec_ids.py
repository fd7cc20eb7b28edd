"""Identifier validation: vectors from GB 11643-1999 samples and the public card-number samples."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardspec import ids, regions
from cardspec.errors import InvalidIdentifier

# The sample number printed in GB 11643-1999 explanations (Beijing Chaoyang, 1949-12-31, female).
SAMPLE_ID = "11010519491231002X"


def test_known_sample_citizen_id() -> None:
    cid = ids.validate_citizen_id(SAMPLE_ID)
    assert cid.region_code == "110105"
    assert cid.birth_date == date(1949, 12, 31)
    assert cid.sex == "2"
    assert cid.masked() == "1101**********002X"
    assert SAMPLE_ID not in repr(cid)
    assert ids.citizen_id_check_char(SAMPLE_ID[:17]) == "X"


def test_lowercase_x_is_normalised() -> None:
    assert ids.validate_citizen_id(SAMPLE_ID.lower()).value == SAMPLE_ID


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("11010519491231002", "18 characters"),
        ("1101051949123100A2", "first 17"),
        ("110105194912310029", "check character"),
        ("99010519491231002" + "?", "digit or X"),
    ],
)
def test_citizen_id_rejections(value: str, fragment: str) -> None:
    with pytest.raises(InvalidIdentifier) as err:
        ids.validate_citizen_id(value)
    assert fragment in err.value.reason
    assert err.value.field == "citizen_id"


def _with_check(first17: str) -> str:
    return first17 + ids.citizen_id_check_char(first17)


def test_citizen_id_bad_date_future_old_region() -> None:
    with pytest.raises(InvalidIdentifier, match="not a date"):
        ids.validate_citizen_id(_with_check("11010519490231002"))
    with pytest.raises(InvalidIdentifier, match="future"):
        ids.validate_citizen_id(_with_check("11010520300101002"), today=date(2024, 1, 1))
    with pytest.raises(InvalidIdentifier, match="before 1900"):
        ids.validate_citizen_id(_with_check("11010518991231002"))
    with pytest.raises(InvalidIdentifier, match="province prefix 99"):
        ids.validate_citizen_id(_with_check("99010519491231002"))


def test_male_sex_from_17th_digit() -> None:
    assert ids.validate_citizen_id(_with_check("33018219800101001")).sex == "1"


@given(
    st.sampled_from(["110105", "330182", "440305", "510104"]),
    st.dates(min_value=date(1900, 1, 1), max_value=date(2020, 12, 31)),
    st.integers(0, 999),
)
def test_generated_ids_validate(region: str, birth: date, seq: int) -> None:
    value = _with_check(f"{region}{birth:%Y%m%d}{seq:03d}")
    cid = ids.validate_citizen_id(value, today=date(2024, 1, 1))
    assert cid.birth_date == birth
    assert cid.sex == ("1" if seq % 2 else "2")
    # Any single-character substitution of the body breaks the check (MOD 11-2 detects it).
    pos = seq % 17
    wrong = value[:pos] + str((int(value[pos]) + 1) % 10) + value[pos + 1 :]
    with pytest.raises(InvalidIdentifier):
        ids.validate_citizen_id(wrong, today=date(2024, 1, 1))


# Public card-number samples from DOMAIN.md: all three satisfy the check rule.
@pytest.mark.parametrize("number", ["X00000019", "B7K334774", "188347080"])
def test_public_card_number_samples(number: str) -> None:
    assert ids.validate_card_number(number) == number
    assert ids.make_card_number(number[:8]) == number


def test_card_number_check_mapping() -> None:
    # 11 - (sum mod 11) == 11 -> "0": body 18834708 sums to 253 = 23 * 11.
    assert ids.card_number_check_char("18834708") == "0"
    with pytest.raises(InvalidIdentifier, match="check character"):
        ids.validate_card_number("X00000018")
    with pytest.raises(InvalidIdentifier, match="0-9 or A-Z"):
        ids.card_number_check_char("x0000001")
    with pytest.raises(InvalidIdentifier, match="9 characters"):
        ids.validate_card_number("X0000001")


@given(st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=8, max_size=8))
def test_card_number_roundtrip(body: str) -> None:
    number = ids.make_card_number(body)
    assert ids.validate_card_number(number) == number
    check = number[8]
    assert check in "0123456789X"


def test_card_identification_code() -> None:
    code = ids.make_card_identification_code("330182", bytes.fromhex("0123456789abcdef"))
    assert code == "330182D1560000050123456789ABCDEF"
    assert ids.validate_card_identification_code(code.lower()) == code
    assert ids.chip_serial_of(code) == bytes.fromhex("0123456789ABCDEF")
    with pytest.raises(InvalidIdentifier, match="D156000005"):
        ids.validate_card_identification_code("330182D1560000060123456789ABCDEF")
    with pytest.raises(InvalidIdentifier, match="hexadecimal"):
        ids.validate_card_identification_code("330182D1560000050123456789ABCDEG")
    with pytest.raises(InvalidIdentifier, match="8 bytes"):
        ids.make_card_identification_code("330182", b"\x01")


def test_region_codes() -> None:
    assert ids.validate_region_code("330182") == "330182"
    assert regions.lookup("330182") is not None
    assert regions.lookup("110105").name == "朝阳区"  # type: ignore[union-attr]
    # Unknown code in a valid province: accepted unless strict.
    assert ids.validate_region_code("330199") == "330199"
    with pytest.raises(InvalidIdentifier, match="not a GB/T 2260"):
        ids.validate_region_code("330199", strict=True)
    with pytest.raises(InvalidIdentifier, match="6 digits"):
        ids.validate_region_code("33018")
    assert len(regions.all_codes()) > 5000


def test_mask() -> None:
    assert ids.mask_citizen_id("33010219900101123X") == "3301**********123X"
    assert ids.mask_citizen_id("1234") == "****"


# --- the check characters summed in C (ASCII codes) against the textbook digit-by-digit sums --


_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _mod11_2(first17: str) -> str:
    """GB 11643 / ISO 7064 MOD 11-2, digit by digit (the reference)."""
    total = sum(int(c) * w for c, w in zip(first17, ids.CITIZEN_ID_WEIGHTS, strict=True))
    return "10X98765432"[total % 11]


def _card_check(body8: str) -> str:
    total = sum(_ALNUM.index(c) * w for c, w in zip(body8, ids.CARD_NUMBER_WEIGHTS, strict=True))
    check = 11 - total % 11
    return "X" if check == 10 else "0" if check == 11 else str(check)


def _luhn(body: str) -> str:
    """ISO/IEC 7812-1 Annex B, digit by digit from the right (the reference)."""
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


_NOT_BODY = st.text(min_size=8, max_size=8).filter(lambda s: not all(c in _ALNUM for c in s))


@given(
    first17=st.from_regex(r"[0-9]{17}", fullmatch=True),
    body8=st.from_regex(r"[0-9A-Z]{8}", fullmatch=True),
    pan=st.from_regex(r"[0-9]{0,25}", fullmatch=True),
    bad=_NOT_BODY,
)
def test_check_characters_are_the_digit_by_digit_sums(
    first17: str, body8: str, pan: str, bad: str
) -> None:
    assert ids.citizen_id_check_char(first17) == _mod11_2(first17)
    assert ids.card_number_check_char(body8) == _card_check(body8)
    assert ids.luhn_digit(pan) == _luhn(pan)
    assert ids.luhn_ok(pan + _luhn(pan)) is (len(pan) >= 1)
    with pytest.raises(InvalidIdentifier, match="0-9 or A-Z"):
        ids.card_number_check_char(bad)
    with pytest.raises(KeyError):  # not digits: as ever
        ids.luhn_digit(pan + "a")


@given(
    value=st.from_regex(r"[0-9]{17}[0-9Xx]", fullmatch=True)
    | st.text(max_size=20)
    | st.sampled_from([SAMPLE_ID, SAMPLE_ID.lower(), "110105194912310021"]),
    today=st.none() | st.dates(date(1900, 1, 1), date(2100, 1, 1)),
)
def test_check_citizen_id_is_validate_citizen_id_without_the_object(value: str, today) -> None:
    try:
        expected: object = ids.validate_citizen_id(value, today=today).value
    except InvalidIdentifier as exc:
        expected = str(exc)
    try:
        got: object = ids.check_citizen_id(value, today=today)
    except InvalidIdentifier as exc:
        got = str(exc)
    assert got == expected
