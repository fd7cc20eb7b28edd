"""The initial-PIN rules' fast forms (data preparation's hot path) against their earlier
forms, kept here as the reference: equal for any input (Hypothesis)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from issuance.batches.dataprep import natural_pin
from issuance.services.pins import BANK_PIN, SS_PIN, same_digit, step_sequence

_DECIMALISE_UPPER = str.maketrans("ABCDEF", "012345")


def reference_same_digit(pin: str) -> bool:
    return len(set(pin)) == 1


def reference_step_sequence(pin: str) -> bool:
    steps = {int(b) - int(a) for a, b in itertools.pairwise(pin)}
    return steps in ({1}, {-1})


def reference_natural_pin(
    cic: str, mac: Callable[[bytes], bytes], digits: int = 6, *, pin_name: str = SS_PIN
) -> str:
    domain = b"YKT-INITIAL-PIN/1"
    if pin_name != SS_PIN:
        domain += b"/" + pin_name.encode()
    counter = 0
    while True:
        data = domain + cic.encode() + bytes([counter])
        pin = mac(data).hex().upper().translate(_DECIMALISE_UPPER)[:digits]
        if not (reference_same_digit(pin) or reference_step_sequence(pin)):
            return pin
        counter += 1


def outcome(f: Callable[[str], bool], pin: str) -> bool | type[BaseException]:
    try:
        return f(pin)
    except ValueError as exc:
        return type(exc)


digit_strings = st.text(alphabet="0123456789", max_size=14)
# Unicode decimal digits (int reads them), letters and signs (int refuses them)
any_text = st.text(alphabet=st.sampled_from("0123456789\u0661\u0662\u0663\uff11\uff12aF +-_"),
                   max_size=8)  # fmt: skip


@given(st.one_of(digit_strings, any_text, st.text(max_size=6)))
@example("")
@example("7")
@example("0123456789")
@example("9876543210")
@example("1212")
@example("\u0661\u0662\u0663")
@example("\uff11\uff12")
def test_weak_pin_checks_equal_their_reference(pin: str) -> None:
    assert outcome(same_digit, pin) == outcome(reference_same_digit, pin)
    assert outcome(step_sequence, pin) == outcome(reference_step_sequence, pin)


@given(
    key=st.binary(min_size=1, max_size=8),
    cic=st.text(alphabet="0123456789ABCDEF", min_size=32, max_size=32),
    digits=st.integers(min_value=4, max_value=12),
    pin_name=st.sampled_from([SS_PIN, BANK_PIN, "other"]),
    size=st.sampled_from([8, 16]),
    weak=st.integers(min_value=0, max_value=3),
)
def test_natural_pin_equals_its_reference(
    key: bytes, cic: str, digits: int, pin_name: str, size: int, weak: int
) -> None:
    def mac(data: bytes) -> bytes:  # stands for the MAC under the card's PUK in the HSM
        if data[-1] < weak:  # a weak value first: the counter moves on
            return bytes.fromhex(("1234567890ABCDEF" if data[-1] % 2 else "AAAA" * 8)[: 2 * size])
        return hashlib.sha256(key + data).digest()[:size]

    assert natural_pin(cic, mac, digits, pin_name=pin_name) == reference_natural_pin(
        cic, mac, digits, pin_name=pin_name
    )


def test_natural_pin_skips_weak_values_in_order() -> None:
    seen: list[bytes] = []

    def mac(data: bytes) -> bytes:
        seen.append(data)
        return bytes.fromhex(["123456FFFFFFFFFF", "AAAAAAFFFFFFFFFF", "98A7C5FFFFFFFFFF"][data[-1]])

    assert natural_pin("330100D1560000054321A1B2C3D4E5F6", mac) == "980725"
    assert [d[-1] for d in seen] == [0, 1, 2]
    with pytest.raises(ValueError):
        natural_pin("330100D1560000054321A1B2C3D4E5F6", lambda data: bytes(8))
