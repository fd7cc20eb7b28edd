"""Hypothesis strategies of random cards and their holders, as the database rows data
preparation reads them (what :func:`issuance.batches.dataprep.perso_values` takes): names
Chinese (common and rare characters, compound surnames, names longer than EF06's name element)
or Latin, citizen ID numbers with their valid check character, birth, issue and decision
dates (29 February included), real region codes, every application channel."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from hypothesis import strategies as st

import cardspec
from cardspec import ids
from issuance.models import ApplicationChannel

REGIONS = sorted(
    code
    for code in json.loads((Path(cardspec.__file__).parent / "regions.json").read_text())["codes"]
    if not code.endswith("00")  # counties (a prefecture or province code is no birthplace)
)


@dataclass(frozen=True)
class Card:
    id: int
    card_number: str


@dataclass(frozen=True)
class Person:
    name: str
    citizen_id: str
    sex: str
    ethnicity: str | None
    birth_date: date
    region_code: str
    #: the chip's GBK name of a name outside GBK (issuance.cardname); None: ``name``
    card_name: str | None = None


@dataclass(frozen=True)
class App:
    decided_at: datetime | None
    channel: str


regions = st.sampled_from(REGIONS)
#: GBK-encodable CJK (the unified block GB 2312/GBK covers), the middle dot of transcribed
#: names, Latin letters and spaces
_cjk = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5)
names = st.one_of(
    st.text(_cjk, min_size=1, max_size=4),  # common lengths
    st.text(_cjk, min_size=14, max_size=40),  # longer than the 30 bytes of EF06's name
    st.builds(
        lambda a, b: a + "·" + b,
        st.text(_cjk, min_size=1, max_size=10),
        st.text(_cjk, min_size=1, max_size=12),
    ),
    st.from_regex(r"[A-Z][a-z]{0,12}( [A-Z][a-z]{0,12}){0,3}", fullmatch=True),
)
birth_dates = st.dates(date(1900, 1, 1), date(2024, 12, 31))


@st.composite
def citizen_ids(draw: st.DrawFn, birth: date | None = None) -> str:
    first17 = f"{draw(regions)}{birth or draw(birth_dates):%Y%m%d}{draw(st.integers(0, 999)):03d}"
    return first17 + ids.citizen_id_check_char(first17)


@st.composite
def people(draw: st.DrawFn) -> Person:
    birth = draw(birth_dates)
    return Person(
        name=draw(names),
        citizen_id=draw(citizen_ids(birth)),
        sex=draw(st.sampled_from("12")),
        # never missing: the chip needs it and it is never defaulted (a missing one is refused,
        # test_a_missing_ethnicity_is_refused_by_both_paths_never_defaulted)
        ethnicity=draw(st.integers(1, 56).map(lambda n: f"{n:02d}")),
        birth_date=birth,
        region_code=draw(regions),
        # sometimes a name outside GBK, the chip holding its recorded substitute
        card_name=draw(st.none() | st.just("王*") | st.just("欧阳吉吉")),
    )


cards = st.builds(
    Card,
    st.integers(1, 10**12 - 1),
    st.from_regex(r"[0-9A-Z]{8}", fullmatch=True).map(ids.make_card_number),
)
applications = st.none() | st.builds(
    App,
    st.none() | st.datetimes(datetime(2000, 1, 1), datetime(2040, 12, 31)),
    st.sampled_from([c.value for c in ApplicationChannel]),
)
issue_dates = st.dates(date(2000, 1, 1), date(2060, 12, 31)) | st.sampled_from(
    [date(2024, 2, 29), date(2028, 2, 29)]
)
chip_serials = st.binary(min_size=8, max_size=8)
