"""``parse_card_number``: the one rule every entry point (API, CLI, services) applies to a
typed card number before any lookup."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardspec.errors import InvalidIdentifier
from cardspec.ids import make_card_number, parse_card_number

ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@given(st.text(ALNUM, min_size=8, max_size=8))
def test_every_valid_number_parses_however_it_is_typed(body: str) -> None:
    number = make_card_number(body)
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in number.lower())  # an IME's digits
    assert parse_card_number(number) == number
    assert parse_card_number(f"  {number.lower()}\t") == number
    assert parse_card_number(full_width) == number


@given(st.text(ALNUM, min_size=8, max_size=8), st.sampled_from("0123456789X"))
def test_a_wrong_check_character_is_named(body: str, check: str) -> None:
    number = make_card_number(body)
    if check == number[8]:
        return
    with pytest.raises(InvalidIdentifier) as info:
        parse_card_number(body + check)
    assert info.value.reason == "check character does not match"


@pytest.mark.parametrize(
    ("typed", "reason"),
    [("A0000001", "must be 9 characters, got 8"), ("A0000001-", "characters must be 0-9 or A-Z"),
     ("", "must be 9 characters, got 0")],
)  # fmt: skip
def test_shape_reasons(typed: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        parse_card_number(typed)
    assert info.value.reason == reason
