"""Helpers of the issuance tests (imported by name: ``from issuance_helpers import ...``;
the fixtures are in ``conftest.py``): citizen IDs, a stand-in photo processor, an application
submitted through the real services, an emulated chip for a card record, a bank's answer and a
PIN pad."""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy.orm import Session

from cardspec.ids import citizen_id_check_char
from issuance import services
from issuance.audit import Actor
from issuance.errors import FieldProblem, PhotoRejected
from issuance.models import Card
from yikatong.settings import PhotoSettings, Settings

_seq = itertools.count(random.randrange(0, 10_000_000))


def unique_tag() -> int:
    """A number unique within the test run (names of staff, IDs)."""
    return next(_seq)


def make_cid(birth: date | None = None, *, male: bool = True, region: str = "330106") -> str:
    """A valid citizen ID number, unique within the test run."""
    n = unique_tag()
    if birth is None:
        birth = date(1960, 1, 1) + timedelta(days=(n // 500) % 15000)
    seq = (n * 2 + (1 if male else 0)) % 1000
    body = f"{region}{birth:%Y%m%d}{seq:03d}"
    return body + citizen_id_check_char(body)


@dataclass
class FakePhoto:
    jpeg: bytes
    sha256: str
    notes: tuple[str, ...] = ()


JPEG_FIXTURE = b"\xff\xd8\xff\xe0" + b"fixture-photo" * 100 + b"\xff\xd9"


def fake_process_photo(data: bytes, settings: PhotoSettings) -> FakePhoto:
    """Stand-in for issuance.photos.process_photo (owned elsewhere): accepts JPEG bytes."""
    if not data.startswith(b"\xff\xd8"):
        raise PhotoRejected("photo rejected", [FieldProblem("photo", "not a JPEG or PNG image")])
    return FakePhoto(data, hashlib.sha256(data).hexdigest())


def submit(session: Session, settings: Settings, actor: Actor, **kw: object) -> object:
    data = services.ApplicationInput(
        citizen_id=str(kw.pop("citizen_id", make_cid())),
        name=str(kw.pop("name", "张三")),
        phone=str(kw.pop("phone", "13800138000")),
        photo=kw.pop("photo", JPEG_FIXTURE),  # type: ignore[arg-type]
        ethnicity=kw.pop("ethnicity", "01"),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    return services.submit_application(
        session, settings, data, actor, photo_processor=fake_process_photo
    )


# --- an emulated chip for a card record (financial activation through a reader) -------------
BANK_PAN = "6212260012345678903"  # from the bank (Luhn-valid, the demo BIN)
INITIAL_BANK_PIN = "135790"


def emulated_chip(
    card: Card, key_service: object, path: object = None, *, pan: str = BANK_PAN,
    bank: str | None = None, profile: object = None,
) -> object:  # fmt: skip
    """A real emulator chip personalised (cardspec.perso, keys of ``key_service``) as ``card``:
    its identification code, number, holder; bank PIN = INITIAL_BANK_PIN. ``path``: keep the
    image there (the reader backends load it from ``<data_dir>/cards``). ``profile``: the
    card profile (default: the second-generation 3DES one)."""
    from typing import Any

    from cardspec import perso
    from cardspec.emulator import blank_card
    from cardspec.keyscheme import Algorithm, KeySlot
    from cardspec.profile import DEFAULT_PROFILE, FinancialData, Holder
    from cardspec.reader import InProcessReader
    from hsm.service import DEMO_BANK, CardKeyRef

    prof: Any = DEFAULT_PROFILE if profile is None else profile
    cic = card.card_identification_code
    assert cic is not None and card.issue_date and card.expiry_date
    ref = CardKeyRef(cic, card.key_version, Algorithm(str(card.algorithm)), pan=pan, psn="00",
                     bank=bank or DEMO_BANK)  # the EMV keys: the bank's key domain  # fmt: skip
    crypto = key_service.card_crypto(ref)  # type: ignore[attr-defined]
    chip = blank_card(
        bytes.fromhex(cic[-16:]), crypto.card_key(KeySlot.KMC), prof.algorithm,
        klk=crypto.key_loading_key(), profile=prof, path=path,  # type: ignore[arg-type]
    )  # fmt: skip
    person = card.person
    data = perso.CardPersoData(
        cic, card.card_number, prof.spec_version, card.issue_date, card.expiry_date,
        "330100000001",
        Holder(person.citizen_id, person.name, person.sex, "01", person.region_code,
               person.birth_date),
        initial_pin="802413", bank_pin=INITIAL_BANK_PIN,
        financial=FinancialData(pan, card.expiry_date, "00", "ZHANG SAN"),
    )  # fmt: skip
    perso.personalise(InProcessReader(chip), crypto, data, prof)
    return chip


def bank_account(session: Session, settings: Settings, card: Card) -> Settings:
    """The bank's answer for ``card`` as loaded from its response file (a ``bank_accounts``
    row: BANK_PAN, PSN 00) and ``settings`` with that bank (key domain ``DEMO_BANK`` of the
    software key service): what :func:`issuance.services.financial.script_keys` reads."""
    import sqlalchemy as sa

    from hsm.service import DEMO_BANK
    from issuance.models import Agency, AgencyKind, BankAccount, utcnow
    from issuance.settings import BankSettings

    agency = session.scalars(sa.select(Agency).where(Agency.code == "BANK-TEST")).first()
    if agency is None:
        agency = services.create_agency(session, "BANK-TEST", "Test bank", AgencyKind.BANK,
                                        "330100")  # fmt: skip
    assert card.expiry_date is not None
    session.add(BankAccount(card_id=card.id, bank_agency_id=agency.id, request_id="YKTB-T",
                            pan=BANK_PAN, psn="00", expiry=card.expiry_date,
                            service_code="220", account_ref="AC1", opened_at=utcnow()))  # fmt: skip
    session.flush()
    conf = BankSettings(key_domain=DEMO_BANK, bins=("621226",))
    return settings.model_copy(update={"banks": {"BANK-TEST": conf}})


class FixedPinPad:
    """A PIN pad whose holder types the given PINs (counts what was asked)."""

    def __init__(self, current: str, new: str) -> None:
        self.current, self.new, self.asked = current, new, 0

    def current_pin(self) -> str:
        self.asked += 1
        return self.current

    def new_pin(self) -> str:
        self.asked += 1
        return self.new
