"""Shared test data for the cardspec tests: throwaway issuer master keys, a sample card's
personalisation data and a ready-made personalised emulator card. Importable by other test
modules in this directory (``from cardspec_helpers import ...``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from hashlib import sha256
from pathlib import Path

from cardspec import ids, keyscheme, perso
from cardspec.crypto import SoftwareCardCrypto
from cardspec.emulator import Card, blank_card
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import (
    DEFAULT_PROFILE,
    CardProfile,
    FinancialData,
    Holder,
    MedicalData,
    PensionData,
)
from cardspec.reader import InProcessReader

SERIAL = bytes.fromhex("0123456789ABCDEF")
PAN = "6217000012345678901"
PSN = "01"
SSN = "11010519491231002X"
INITIAL_PIN = "123456"


def masters(seed: str = "test") -> dict[KeySlot, bytes]:
    """Deterministic throwaway issuer master keys (never real keys)."""
    return {slot: sha256(f"{seed}:{slot.value}".encode()).digest()[:16] for slot in KeySlot}


def card_code(serial: bytes = SERIAL, region: str = "330182") -> str:
    return ids.make_card_identification_code(region, serial)


def software_crypto(
    serial: bytes = SERIAL, algorithm: Algorithm = Algorithm.DES3, seed: str = "test"
) -> SoftwareCardCrypto:
    return SoftwareCardCrypto(
        masters(seed),
        (keyscheme.card_factor(card_code(serial)),),
        algorithm,
        (keyscheme.emv_factor(PAN, PSN),),
    )


def perso_data(serial: bytes = SERIAL, *, spec_version: str = "2.00") -> perso.CardPersoData:
    return perso.CardPersoData(
        card_identification_code=card_code(serial),
        card_number=ids.make_card_number("X0000001"),
        spec_version=spec_version,
        issue_date=date(2024, 3, 1),
        expiry_date=date(2034, 3, 1),
        init_org_code="330100000001",
        holder=Holder(SSN, "张三", "2", "01", "110105", date(1949, 12, 31)),
        initial_pin=INITIAL_PIN,
        medical=MedicalData("310", "330182", "1", "11", date(2020, 1, 1)),
        pension=PensionData("1", "330182", date(2020, 1, 1), "11100"),
        financial=FinancialData(PAN, date(2034, 3, 31), PSN, "ZHANG SAN"),
    )


@dataclass
class Personalised:
    card: Card
    reader: InProcessReader
    crypto: SoftwareCardCrypto
    data: perso.CardPersoData
    result: perso.PersoResult


def personalised_card(
    path: Path | None = None,
    *,
    profile: CardProfile = DEFAULT_PROFILE,
    serial: bytes = SERIAL,
) -> Personalised:
    crypto = software_crypto(serial, profile.algorithm)
    card = blank_card(serial, crypto.card_key(KeySlot.KMC), profile.algorithm, profile=profile,
                      path=path)  # fmt: skip
    reader = InProcessReader(card)
    data = perso_data(serial, spec_version=profile.spec_version)
    result = perso.personalise(reader, crypto, data, profile)
    reader.connect()
    return Personalised(card, reader, crypto, data, result)
