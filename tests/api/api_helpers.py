"""Helpers of the API tests: a SoftHSM token with known test master keys (the oracle), an
emulator card personalised with keys from that HSM, staff and agencies with credentials."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from cardspec import keyscheme, perso
from cardspec.crypto import SoftwareCardCrypto
from cardspec.emulator import Card as EmulatorCard
from cardspec.emulator.card import blank_card
from cardspec.ids import citizen_id_check_char
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import CardProfile, Holder, MedicalData, PensionData, social_security_profile
from cardspec.reader import InProcessReader
from hsm import ceremony, softhsm
from hsm.config import HsmConfig
from hsm.pkcs11 import Pkcs11Token, open_token
from hsm.service import CardKeyRef, Pkcs11KeyService
from issuance import services
from issuance.audit import Actor
from issuance.db import make_sessionmaker, transaction
from issuance.models import Card, Channel, StaffRole
from yikatong.settings import Settings, load_settings
from yikatong.wiring import hsm_config

REGION = "330100"
PHOTO = b"\xff\xd8\xff\xe0" + b"api-test-photo" * 50 + b"\xff\xd9"


def master_key(slot: KeySlot, alg: Algorithm) -> bytes:
    return hashlib.sha256(f"ykt-api-test:{slot.value}:{alg.value}".encode()).digest()[:16]


#: The bank key domain of the test cards' EMV keys.
API_BANK = "api-bank"
#: The key-loading key master (always AES, see cardspec.keyscheme "Key loading").
KLK_MASTER = hashlib.sha256(b"ykt-api-test:klk").digest()[:16]


def _components(key: bytes) -> list[bytes]:
    half = hashlib.sha256(key).digest()[:16]
    return [half, bytes(a ^ b for a, b in zip(key, half, strict=True))]


@dataclass
class Hsm:
    config: HsmConfig
    token: Pkcs11Token
    service: Pkcs11KeyService


def make_hsm(root: Path) -> Hsm:
    settings = load_settings(environ={"YKT_DATA_DIR": str(root)})
    config = hsm_config(settings)
    softhsm.ensure_token(config)
    token = open_token(config)
    alg = Algorithm.DES3
    for slot in KeySlot:
        key = master_key(slot, alg)
        comps = _components(key)
        kcvs = [keyscheme.kcv(c, alg) for c in comps]
        if slot.financial:  # the bank's issuer master keys: its own key domain
            ceremony.import_bank_master(token, API_BANK, slot, comps, kcvs, alg, 1,
                                        expected_kcv=keyscheme.kcv(key, alg))  # fmt: skip
            continue
        ceremony.import_master(
            token, slot, comps, kcvs, alg, 1, expected_kcv=keyscheme.kcv(key, alg),
        )  # fmt: skip
    aes = keyscheme.KLK_ALGORITHM
    comps = _components(KLK_MASTER)
    ceremony.import_klk_master(
        token, comps, [keyscheme.kcv(c, aes) for c in comps], 1,
        expected_kcv=keyscheme.kcv(KLK_MASTER, aes),
    )  # fmt: skip
    ceremony.generate_signing_key(token)
    return Hsm(config, token, Pkcs11KeyService(token, REGION))


_seq = iter(range(random.randrange(10**6), 10**9))


def make_cid() -> str:
    n = next(_seq)
    body = f"330106{1960 + n % 40}{1 + n % 12:02d}{1 + n % 28:02d}{n % 1000:03d}"
    return body + citizen_id_check_char(body)


def fake_photo(data: bytes, _settings: object) -> object:
    from dataclasses import make_dataclass

    if not data.startswith(b"\xff\xd8"):
        from issuance.errors import FieldProblem, PhotoRejected

        raise PhotoRejected("photo rejected", [FieldProblem("photo", "not a JPEG")])
    cls = make_dataclass("P", ["jpeg", "sha256", "notes"])
    return cls(data, hashlib.sha256(data).hexdigest(), ())


def staff(session: Session, tag: str) -> dict[str, Actor]:
    out = {}
    for role in StaffRole:
        if role == StaffRole.SYSTEM:
            continue
        s = services.create_staff(session, f"{role}-{tag}", role)
        out[str(role)] = services.actor_for(session, s.username, Channel.COUNTER)
    return out


def active_card(
    session: Session, settings: Settings, actors: dict[str, Actor], *, activate: bool = True
) -> Card:
    """A formal card driven to ``active`` through the real services (chip serial random);
    ``activate=False``: collected by its holder but not activated (``issued``, sealed)."""
    app = services.submit_application(
        session, settings,
        services.ApplicationInput(citizen_id=make_cid(), name="张三", phone="13800138000",
                                  photo=PHOTO, ethnicity="01"),
        actors["clerk"], photo_processor=fake_photo,
    )  # fmt: skip
    services.process_application(session, app.id, actors["clerk"])
    services.review_application(session, app.id, actors["reviewer"])
    card = services.approve_application(session, settings, app.id, actors["approver"])
    for step in ("start_production", "personalise", "ship"):
        services.advance_production(
            session, settings, card.id, step, actors["clerk"], chip_serial=random.randbytes(8)
        )
    services.collect_card(session, card.id, actors["clerk"])
    if activate:
        services.activate_card(session, card.id, actors["clerk"])
    return card


def emulator_for(
    hsm: Hsm, card: Card, *, citizen_id: str = "11010519491231002X"
) -> InProcessReader:
    """A blank emulator chip with this card's serial, personalised with keys from the HSM."""
    cic = card.card_identification_code
    assert cic is not None
    alg = Algorithm.DES3
    oracle = SoftwareCardCrypto(
        {s: master_key(s, alg) for s in KeySlot}, (keyscheme.card_factor(cic),), alg,
        klk_master=KLK_MASTER,
    )  # fmt: skip
    chip: EmulatorCard = blank_card(
        bytes.fromhex(cic[16:]), oracle.card_key(KeySlot.KMC), alg,
        klk=oracle.key_loading_key(), profile=_profile(),
    )  # fmt: skip
    reader = InProcessReader(chip)
    data = perso.CardPersoData(
        card_identification_code=cic, card_number=card.card_number, spec_version="2.00",
        issue_date=card.issue_date or date.today(), expiry_date=card.expiry_date or date.today(),
        init_org_code="330100000001",
        holder=Holder(citizen_id, "张三", "2", "01", "110105", date(1949, 12, 31)),
        initial_pin="123456",
        medical=MedicalData("310", "330100", "1", "11", date(2020, 1, 1)),
        pension=PensionData("1", "330100", date(2020, 1, 1), "11100"),
    )  # fmt: skip
    with hsm.service.card_crypto(CardKeyRef(cic)) as crypto:
        perso.personalise(reader, crypto, data, _profile())
    return reader


def _profile() -> CardProfile:
    return social_security_profile(financial=False)


@dataclass
class ApiEnv:
    client: TestClient
    engine: Engine
    settings: Settings
    hsm: Hsm
    actors: dict[str, Actor]
    tokens: dict[str, str]  # role or agency name -> bearer token
    clients: dict[str, tuple[str, str]]  # agency name -> (client_id, secret)
    agencies: dict[str, int] = field(default_factory=dict)

    def session(self) -> Iterator[Session]:
        return transaction(make_sessionmaker(self.engine))  # type: ignore[return-value]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def new_card(self) -> Card:
        with self.session() as s:  # type: ignore[attr-defined]
            return active_card(s, self.settings, self.actors)

    def chip(self, card: Card) -> InProcessReader:
        return emulator_for(self.hsm, card)
