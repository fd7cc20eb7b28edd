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
PAN = "6217000012345678907"
PSN = "01"
SSN = "11010519491231002X"
INITIAL_PIN = "123456"
#: The initial bank PIN (its own: never the social security PIN).
BANK_PIN = "802413"


def masters(seed: str = "test") -> dict[KeySlot, bytes]:
    """Deterministic throwaway issuer master keys (never real keys)."""
    return {slot: sha256(f"{seed}:{slot.value}".encode()).digest()[:16] for slot in KeySlot}


def klk_master(seed: str = "test") -> bytes:
    """Deterministic throwaway master of the cards' key-loading keys (AES)."""
    return sha256(f"{seed}:klk".encode()).digest()[:16]


def card_code(serial: bytes = SERIAL, region: str = "330182") -> str:
    return ids.make_card_identification_code(region, serial)


def software_crypto(
    serial: bytes = SERIAL, algorithm: Algorithm = Algorithm.DES3, seed: str = "test"
) -> SoftwareCardCrypto:
    return SoftwareCardCrypto(
        masters(seed),
        (keyscheme.card_factor(card_code(serial)),),
        algorithm,
        (keyscheme.emv_factor(PAN, PSN, algorithm),),
        klk_master=klk_master(seed),
    )


def blank(
    serial: bytes = SERIAL,
    profile: CardProfile = DEFAULT_PROFILE,
    *,
    seed: str = "test",
    path: Path | None = None,
) -> Card:
    """A blank chip as its maker delivers it for ``software_crypto(serial, ..., seed)``."""
    crypto = software_crypto(serial, profile.algorithm, seed)
    return blank_card(serial, crypto.card_key(KeySlot.KMC), profile.algorithm,
                      klk=crypto.key_loading_key(), profile=profile, path=path)  # fmt: skip


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
        bank_pin=BANK_PIN,
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
    card = blank(serial, profile, path=path)
    reader = InProcessReader(card)
    data = perso_data(serial, spec_version=profile.spec_version)
    result = perso.personalise(reader, crypto, data, profile)
    reader.connect()
    return Personalised(card, reader, crypto, data, result)


def rfc5649_unwrap(kek: bytes, wrapped: bytes) -> bytes:
    """RFC 5649 (AES key wrap with padding) unwrap written from the RFC with plain AES-ECB:
    an oracle independent of ``cryptography``'s keywrap (checked against the RFC's section 6
    vectors in ``vectors/``). Raises ValueError on an integrity failure."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    dec = Cipher(algorithms.AES(kek), modes.ECB()).decryptor()
    if len(wrapped) % 8 or len(wrapped) < 16:
        raise ValueError("RFC 5649: length")
    n = len(wrapped) // 8 - 1
    if n == 1:  # section 4.2: one 64-bit block, a single AES decryption
        plain = dec.update(wrapped)
        a, r = plain[:8], [plain[8:]]
    else:  # RFC 3394 section 2.2.2 unwrap, index-based
        a = wrapped[:8]
        r = [wrapped[8 * i : 8 * i + 8] for i in range(1, n + 1)]
        for j in range(5, -1, -1):
            for i in range(n, 0, -1):
                t = n * j + i
                a_t = bytes(x ^ y for x, y in zip(a, t.to_bytes(8, "big"), strict=True))
                b = dec.update(a_t + r[i - 1])
                a, r[i - 1] = b[:8], b[8:]
    if a[:4] != bytes.fromhex("A65959A6"):
        raise ValueError("RFC 5649: alternative initial value mismatch")
    mli = int.from_bytes(a[4:], "big")
    data = b"".join(r)
    if not 8 * (n - 1) < mli <= 8 * n or data[mli:].strip(b"\x00"):
        raise ValueError("RFC 5649: bad message length indicator or padding")
    return data[:mli]
