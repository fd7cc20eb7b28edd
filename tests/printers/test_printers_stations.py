"""Encoding stations over real PC/SC (isolated pcscd + vpcd + the card emulator) with the card
keys in SoftHSM: personalisation, and a quality check that catches wrong cards."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "issuance" / "batches"))
from batch_helpers import HsmRoot, hsm_root

from cardspec import cardops, ids
from cardspec.emulator import Card
from cardspec.keyscheme import KeySlot
from cardspec.perso import CardPersoData
from cardspec.profile import FinancialData, Holder, MedicalData, PensionData
from cardspec.reader import InProcessReader
from devstack.bank import new_pan
from hsm.service import CardKeyRef, KeyService
from issuance.batches.dataprep import card_profile, initial_pin
from issuance.batches.stations import (
    EncodingStation,
    PrintedFace,
    QualityCheckFailed,
    open_stations,
)
from issuance.batches.stock import VirtualBlankStock
from printers.faces import CardFace, render_back
from printers.layout import DEFAULT_LAYOUT
from printers.prepared import PreparedCard
from yikatong.demo import DEMO_BANK_DOMAIN
from yikatong.settings import Settings, load_settings
from yikatong.wiring import key_service_from_settings

pytestmark = pytest.mark.pcsc


@pytest.fixture(scope="session")
def station_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("station-hsm"))


@dataclass
class Line:
    settings: Settings
    key_service: KeyService
    stock: VirtualBlankStock
    stations: list[EncodingStation]


@pytest.fixture
def line(tmp_path: Path, station_hsm: HsmRoot) -> Iterator[Line]:
    import shutil

    from issuance.batches.stock import manufacturer_key_path

    settings = load_settings(environ={"YKT_DATA_DIR": str(tmp_path), **station_hsm.environ()})
    src = manufacturer_key_path(load_settings(environ={"YKT_DATA_DIR": str(station_hsm.root)}))
    manufacturer_key_path(settings).parent.mkdir(parents=True)
    shutil.copyfile(src, manufacturer_key_path(settings))
    ks = key_service_from_settings(settings)
    with open_stations(settings, 2, run_dir=tmp_path / "st") as stations:
        yield Line(settings, ks, VirtualBlankStock(settings, ks), stations)


def _card(line: Line, n: int) -> PreparedCard:
    profile = card_profile(line.settings, "3des")
    serial = os.urandom(8)
    code = ids.make_card_identification_code("330100", serial)
    pan = new_pan()  # the bank's (throwaway bank side); EMV keys from the bank's key domain
    ref = CardKeyRef(code, pan=pan, psn="00", bank=DEMO_BANK_DOMAIN)
    body = f"33010619800101{n:03d}"
    issue = date(2026, 11, 23)
    data = CardPersoData(
        card_identification_code=code, card_number=ids.make_card_number(f"T{n:07d}"),
        spec_version=profile.spec_version, issue_date=issue, expiry_date=date(2036, 11, 23),
        init_org_code="330100000001",
        holder=Holder(body + ids.citizen_id_check_char(body), "赵六", "1", "01", "330106",
                      date(1980, 1, 1)),
        initial_pin=initial_pin(line.key_service, ref),
        bank_pin=initial_pin(line.key_service, ref, pin_name="bank"),
        medical=MedicalData("390", "330106", "1", "11", issue),
        pension=PensionData("1", "330106", issue, "10000"),
        financial=FinancialData(pan, date(2036, 11, 30), "00", ""),
    )  # fmt: skip
    line.stock.make_blank(serial, ref, profile)
    slots = tuple(s.slot for _, s in profile.key_specs() if s.slot is not KeySlot.KMC)
    return PreparedCard(n, serial.hex().upper(), data, ref, slots, profile.name)


def _printed(line: Line, prepared: PreparedCard) -> PrintedFace:
    """The card back printed for ``prepared`` (no photo), as the pipeline spools it."""
    data = prepared.perso
    face = CardFace(
        name=data.holder.full_name.rstrip(), ssn=data.holder.ssn, card_number=data.card_number,
        issue_date=data.issue_date, photo_jpeg=None, issuer_name="x", bank_name="y",
        expiry_date=data.expiry_date,
    )  # fmt: skip
    path = line.settings.data_dir / f"{prepared.chip_serial}.back.png"
    render_back(face).save(path)
    return PrintedFace(path, DEFAULT_LAYOUT.back.face_code.px(300), None)  # type: ignore[union-attr]


def test_station_personalises_and_quality_check_passes(line: Line) -> None:
    prepared = _card(line, 1)
    station = line.stations[0]
    station.load(line.stock.image(prepared.chip_serial))
    result = station.personalise(prepared, line.key_service)
    assert set(result.keys_loaded) == set(prepared.key_slots)
    assert 30 < result.apdu_count < 60
    report = station.check(prepared, line.key_service, _printed(line, prepared))
    assert report.chip_serial == prepared.chip_serial
    assert report.face is not None and report.face.card_number == prepared.perso.card_number
    assert report.card_identification_code == prepared.key_ref.card_identification_code
    station.eject()
    # the chip image holds the personalised, locked card with the HSM-derived initial PIN
    chip = Card.load(line.stock.image(prepared.chip_serial))
    reader = InProcessReader(chip)
    reader.connect()
    assert cardops.is_locked(reader)
    cardops.verify_pin(reader, prepared.perso.initial_pin, profile=chip.profile)


def test_quality_check_catches_wrong_face_blank_chip_and_foreign_card(line: Line) -> None:
    good, other = _card(line, 2), _card(line, 3)
    st_a, st_b = line.stations
    st_a.load(line.stock.image(good.chip_serial))
    st_a.personalise(good, line.key_service)
    # the face printed for another card
    with pytest.raises(QualityCheckFailed) as wrong_face:
        st_a.check(good, line.key_service, _printed(line, other))
    assert wrong_face.value.problems == [
        f"printed card number {other.perso.card_number} is not the chip's {good.perso.card_number}",
        f"printed social security number {other.perso.holder.ssn} is not the chip's "
        f"{good.perso.holder.ssn}",
    ]
    # a blank (never personalised) chip in the station
    st_b.load(line.stock.image(other.chip_serial))
    with pytest.raises(QualityCheckFailed) as blank:
        st_b.check(other, line.key_service, _printed(line, other))
    assert any("unreadable" in p or "not locked" in p for p in blank.value.problems)
    # the good card checked as if it were the other one: serial, data and key all wrong
    with pytest.raises(QualityCheckFailed) as foreign:
        st_a.check(other, line.key_service, _printed(line, other))
    problems = " | ".join(foreign.value.problems)
    assert "chip serial" in problems and "EF05 differs" in problems
    assert "INTERNAL AUTHENTICATE" in problems
    # a wrong card's PIN counter is never touched (no VERIFY when EF05 is not the expected)
    st_a.eject()
    chip = Card.load(line.stock.image(good.chip_serial))
    reader = InProcessReader(chip)
    reader.connect()
    assert cardops.pin_status(reader, chip.profile)["ss"].tries_left == 3
