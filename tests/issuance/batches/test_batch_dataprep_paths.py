"""Data preparation's fast paths give the same bytes as the general ones: the element values
of :func:`dataprep.perso_values` through :class:`bulkprep.RecordPlanner` against
:func:`cardspec.perso.plan_records` of :func:`dataprep.perso_data`, and the card line template
against :func:`persofile.card_line` (itself checked against ``json.dumps`` in
test_batch_dataprep.py). Pure: no HSM, no database."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import date, datetime

import pytest

from cardspec import ids, perso
from cardspec.errors import EncodingError
from issuance.batches import bulkprep, dataprep, persofile
from issuance.models import ApplicationChannel
from yikatong.settings import Settings, load_settings


@dataclass(frozen=True)
class _Card:
    id: int
    card_number: str


@dataclass(frozen=True)
class _Person:
    name: str
    citizen_id: str
    sex: str
    ethnicity: str | None
    birth_date: date
    region_code: str


@dataclass(frozen=True)
class _App:
    decided_at: datetime | None
    channel: str


NAMES = ("王秀英", "欧阳明华", "张伟", "爱新觉罗·溥仪" * 3, "李" * 16, "Li Wei")
APPS = (
    None,
    _App(datetime(2025, 3, 4, 10, 0), ApplicationChannel.EMPLOYER.value),
    _App(datetime(2024, 12, 31, 23, 59), ApplicationChannel.COUNTER.value),
    _App(None, ApplicationChannel.EMPLOYER.value),
)


def _citizen_id(i: int) -> str:
    birth = date.fromordinal(date(1950, 1, 1).toordinal() + 37 * i)
    first17 = f"{('330106', '110101', '440305')[i % 3]}{birth:%Y%m%d}{i % 1000:03d}"
    return first17 + ids.citizen_id_check_char(first17)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings(environ={"YKT_DATA_DIR": str(tmp_path_factory.mktemp("paths"))})


@pytest.mark.parametrize("algorithm", ["3des", "aes"])
def test_perso_values_plan_the_records_plan_records_gives(
    settings: Settings, algorithm: str
) -> None:
    profile = dataprep.card_profile(settings, algorithm)
    planner = bulkprep.RecordPlanner(profile)
    issues = (date(2026, 1, 5), date(2028, 2, 29))
    cases = itertools.product(range(6), NAMES, APPS, ("01", "02"), issues)
    n = 0
    for i, name, app, ethnicity, issue in cases:
        k = n = n + 1
        person = _Person(name, _citizen_id(k), "12"[k % 2], ethnicity,
                         date(1950 + k % 60, 1 + k % 12, 1 + k % 28),
                         ("330106", "110101", "440305")[i % 3])  # fmt: skip
        card = _Card(k * 7919, ids.make_card_number(f"B{k:07d}"))
        cic = ids.make_card_identification_code(person.region_code, k.to_bytes(8, "big"))
        data = dataprep.perso_data(settings, card, person, app, cic, issue, "135792", profile)
        data.validate()
        values = dataprep.perso_values(settings, card, person, app, cic, issue, profile)
        expected = perso.plan_records(data, profile)
        # the same records twice: memo filled, then read
        assert planner.plan_values(values) == expected
        assert planner.plan_values(values) == expected
        assert planner.plan(data) == expected
        pan = dataprep.bank_pan(card.id)
        assert dataprep.perso_values(settings, card, person, app, cic, issue, profile,
                                     pan=pan) == values  # fmt: skip
    assert n == 6 * len(NAMES) * len(APPS) * 2 * len(issues)


def test_a_value_the_chip_cannot_hold_fails_both_paths_alike(settings: Settings) -> None:
    profile = dataprep.card_profile(settings, "3des")
    planner = bulkprep.RecordPlanner(profile)
    person = _Person("王\U0001f600", _citizen_id(3), "1", "01", date(1970, 1, 1), "330106")
    card = _Card(5, ids.make_card_number("B0000005"))
    cic = ids.make_card_identification_code("330106", bytes(8))
    issue = date(2026, 1, 5)
    data = dataprep.perso_data(settings, card, person, None, cic, issue, "135792", profile)
    with pytest.raises(EncodingError) as general:
        perso.plan_records(data, profile)
    values = dataprep.perso_values(settings, card, person, None, cic, issue, profile)
    with pytest.raises(EncodingError) as fast:
        planner.plan_values(values)
    assert str(fast.value) == str(general.value)


def test_card_line_template_gives_the_bytes_of_card_line() -> None:
    files = [("MF/SSSE", "EF05", 5), ("MF/SSSE", "EF06", 6), ("MF/\"FIN\"", "SFI01", 1),
             ("MF/社保", "EF07", 7)]  # fmt: skip
    keys = [("dmk", 1), ("eak", 2), ("fin_ac", 17)]
    pins = [("ss", "MF/SSSE", 0), ("bank", "MF/FIN", 128)]
    tmpl = persofile.CardLineTemplate("ssc2-3des", "3des", files, keys, pins)
    for seq, records in enumerate(
        ([[b"\x01\x02", b"\xff"], [], [b"\x70\x00"], [b""]],
         [[bytes(range(40))], [b"\x00"] * 7, [], []]), start=1,
    ):  # fmt: skip
        kmc, payloads, pin_payloads = (
            bytes([seq]) * 24,
            [bytes([seq, 9]) * 12] * 3,
            [b"\x02" * 8, b""],
        )
        line = tmpl.line(
            seq, item_id=7 * seq, card_id=42, chip_serial="AB12CD34EF567890",
            cic="330106D156000005AB12CD34EF567890", card_number="B0000001X", key_version=2,
            records=records, kmc_wrapped=kmc, key_payloads=payloads, pin_payloads=pin_payloads,
        )  # fmt: skip
        assert line == persofile.card_line(
            seq, item_id=7 * seq, card_id=42, chip_serial="AB12CD34EF567890",
            cic="330106D156000005AB12CD34EF567890", card_number="B0000001X",
            profile="ssc2-3des", algorithm="3des", key_version=2,
            files=[(df, ef, sfi, recs) for (df, ef, sfi), recs in zip(files, records, strict=True)],
            kmc_wrapped=kmc, keys=[(s, k, p) for (s, k), p in zip(keys, payloads, strict=True)],
            pins=[(n, df, r, p) for (n, df, r), p in zip(pins, pin_payloads, strict=True)],
        )  # fmt: skip
        assert json.loads(line)["files"][2]["df"] == 'MF/"FIN"'
    with pytest.raises(ValueError, match="template"):
        tmpl.line(1, item_id=1, card_id=1, chip_serial="00", cic="00", card_number="X",
                  key_version=1, records=[], kmc_wrapped=b"", key_payloads=[],
                  pin_payloads=[])  # fmt: skip


def test_a_missing_ethnicity_is_refused_by_both_paths_never_defaulted(settings: Settings) -> None:
    from issuance.errors import ValidationError

    profile = dataprep.card_profile(settings, "3des")
    person = _Person("王伟", _citizen_id(4), "1", None, date(1970, 1, 1), "330106")
    card = _Card(6, ids.make_card_number("B0000006"))
    cic = ids.make_card_identification_code("330106", bytes(8))
    issue = date(2026, 1, 5)
    with pytest.raises(ValidationError) as general:
        dataprep.perso_data(settings, card, person, None, cic, issue, "135792", profile)
    with pytest.raises(ValidationError) as fast:
        dataprep.perso_values(settings, card, person, None, cic, issue, profile)
    assert [p.field for p in general.value.problems] == ["ethnicity"]
    assert str(fast.value) == str(general.value)
