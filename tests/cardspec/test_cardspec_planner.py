"""The record planner (:class:`cardspec.perso.RecordPlanner`, data preparation's encoder: tags
encoded once per element, the TLV of repeating values remembered) against the plain codec
(:func:`cardspec.profile.encode_records`), and the element codec's dates against
``strftime``: over random elements (any tag, valid or not, every format), random values
(fitting, too long, of the wrong type, absent) and random dates, the same records or the same
refusal."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardspec import perso
from cardspec.errors import EncodingError, ProfileError, TlvError
from cardspec.keyscheme import Algorithm
from cardspec.profile import CardProfile, encode_records
from cardspec.profile.model import (
    FREE,
    DedicatedFile,
    Element,
    ElementaryFile,
    FileStructure,
    Fmt,
    RecordLayout,
    encode_value,
)

#: tags: one-byte (SIMPLE-TLV's 01..FE, BER's), multi-byte BER, and ones the encoders refuse
_TAGS = st.integers(1, 0xFE) | st.sampled_from([0x00, 0x1F, 0xFF, 0x5F24, 0x9F07, 0x5F80, 0x100])
#: element lengths, often about 127 (where a BER length takes a second byte)
_LENGTHS = st.integers(1, 130) | st.integers(124, 130)
_VALUES = (
    st.none()
    | st.just("")
    | st.text(max_size=40)
    | st.text(st.characters(max_codepoint=0x7E), min_size=100, max_size=130)
    | st.from_regex(r"[0-9]{0,40}", fullmatch=True)
    | st.from_regex(r"[0-9A-F]{0,80}", fullmatch=True)
    | st.dates()
    | st.binary(max_size=140)
    | st.integers(0, 10**12)
)


@st.composite
def _elements(draw: st.DrawFn) -> tuple[Element, ...]:
    n = draw(st.integers(1, 5))
    names = draw(st.lists(st.sampled_from("abcdefgh"), min_size=n, max_size=n, unique=True))
    return tuple(
        Element(draw(_TAGS), name, draw(_LENGTHS), draw(st.sampled_from(Fmt)),
                variable=draw(st.booleans()), optional=draw(st.booleans()))
        for name in names
    )  # fmt: skip


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except (EncodingError, TlvError, ProfileError, ValueError, KeyError, TypeError) as exc:
        return (type(exc).__name__, str(exc))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    elements=_elements(),
    layout=st.sampled_from([RecordLayout.SIMPLE_TLV, RecordLayout.EMV_TEMPLATE]),
    data=st.data(),
)
def test_planner_records_are_the_codecs(
    elements: tuple[Element, ...], layout: RecordLayout, data: Any
) -> None:
    ef = ElementaryFile("EF01", 0x0001, 1, FileStructure.LINEAR_VARIABLE, layout, elements,
                        FREE, FREE, record_count=len(elements), record_size=700)  # fmt: skip
    profile = CardProfile("planner-test", "", Algorithm.DES3, "3.00",
                          DedicatedFile("MF", 0x3F00, files=(ef,)), b"")  # fmt: skip
    planner = perso.RecordPlanner(profile)
    for _ in range(data.draw(st.integers(1, 6))):  # repeats: remembered encodings read back
        values = {
            el.name: data.draw(_VALUES)
            for el in elements
            if data.draw(st.integers(0, 5))  # mostly present
        }
        expected = _outcome(encode_records, ef, values)
        got = _outcome(planner.plan_values, {"EF01": values})
        assert (got["EF01"] if isinstance(got, dict) else got) == expected


def _strftime_date(el: Element, value: date) -> Any:
    return _outcome(bytes.fromhex, value.strftime("%Y%m%d" if el.fmt is Fmt.DATE else "%y%m%d"))


@given(value=st.dates() | st.datetimes(), fmt=st.sampled_from([Fmt.DATE, Fmt.DATE6]))
def test_dates_are_the_bcd_of_strftime(value: date, fmt: Fmt) -> None:
    el = Element(0x05, "d", 4 if fmt is Fmt.DATE else 3, fmt)
    assert _outcome(encode_value, el, value) == _strftime_date(el, value)


def test_a_date_before_year_1000_is_strftimes_own() -> None:
    el = Element(0x05, "d", 4, Fmt.DATE)
    assert _outcome(encode_value, el, date(999, 1, 2)) == _strftime_date(el, date(999, 1, 2))
    assert encode_value(el, datetime(2026, 12, 6, 23, 59)) == bytes.fromhex("20261206")
