"""Data preparation: the complete personalisation data of each card of a batch.

Design notes: ``docs/design/batches.md`` (section ``issuance.batches.dataprep``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec import ids, perso
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.perso import CardPersoData
from cardspec.profile import CardProfile, complete_financial, social_security_profile
from cardspec.profile.social import get_profile, register_profile
from cardspec.profile.values import split_name
from hsm.service import CardKeyRef, KeyService
from issuance.audit import Actor
from issuance.bank import CardBankData, bank_data, card_key_ref, require_bank_data
from issuance.batches import items as batch_items
from issuance.batches.stock import BlankStock
from issuance.errors import ConflictError, FieldProblem, ValidationError
from issuance.models import (
    Application,
    ApplicationChannel,
    BatchItem,
    BlankChip,
    Card,
    CardAlgorithm,
    CardKind,
    ChipStatus,
    Person,
    utcnow,
)
from issuance.services.pins import BANK_PIN, SS_PIN, same_digit, step_sequence
from issuance.settings import IssuanceConfig
from printers.prepared import PreparedCard

#: CHOICE: the medical insurance type at issue: employees (employer applications) or residents.
INSURANCE_EMPLOYEES, INSURANCE_RESIDENTS = "310", "390"
_PIN_DOMAIN = b"YKT-INITIAL-PIN/1"
#: Decimalisation of the MAC's hex digits (``bytes.hex`` writes them in lower case): a
#: ``bytes.translate`` table (C, one pass; ``str.translate`` looks each character up in a dict).
_DECIMALISE = bytes.maketrans(b"abcdef", b"012345")


def card_profile(
    settings: IssuanceConfig, algorithm: Algorithm | CardAlgorithm | str, *, temporary: bool = False
) -> CardProfile:
    """The card profile for cards of ``algorithm`` (3DES: generation 2, AES/SM4: generation 3)
    with the city's PIN tries (built once per process); ``temporary``: the temporary card's
    (only the medical application, ``cardspec.profile.social_security_profile``)."""
    return _card_profile(Algorithm(str(algorithm)), settings.lifecycle.pin_tries, temporary)


@functools.lru_cache(maxsize=16)
def _card_profile(alg: Algorithm, pin_tries: int, temporary: bool = False) -> CardProfile:
    prof = social_security_profile(
        generation=2 if alg is Algorithm.DES3 else 3, algorithm=alg, pin_tries=pin_tries,
        temporary=temporary,
    )  # fmt: skip
    try:
        return get_profile(prof.name)
    except Exception:
        return register_profile(prof)


def key_ref(
    card: Card, card_identification_code: str, bank: CardBankData | None = None
) -> CardKeyRef:
    """The key reference of ``card`` made on the chip with this identification code; its EMV
    keys from ``bank`` (the card's bank data, :func:`issuance.bank.bank_data`)."""
    return key_ref_of(card_identification_code, card.key_version,
                      Algorithm(str(card.algorithm)), bank)  # fmt: skip


def key_ref_of(
    card_identification_code: str, key_version: int, algorithm: Algorithm,
    bank: CardBankData | None,
) -> CardKeyRef:  # fmt: skip
    """:func:`issuance.bank.card_key_ref` (the one rule)."""
    return card_key_ref(card_identification_code, key_version, algorithm, bank)


def initial_pin(
    key_service: KeyService, ref: CardKeyRef, digits: int = 6, *, pin_name: str = SS_PIN
) -> str:
    """The card's initial PIN ``pin_name`` (``ss`` or ``bank``), computed in the HSM (see the
    module docstring, CHOICE)."""
    with key_service.card_crypto(ref) as crypto:
        return natural_pin(ref.card_identification_code,
                           lambda data: crypto.mac_block(KeySlot.PUK, data, bytes(8)),
                           digits, pin_name=pin_name)  # fmt: skip


def initial_pins(key_service: KeyService, ref: CardKeyRef, profile: CardProfile) -> dict[str, str]:
    """Every initial PIN of the profile by name, each computed in the HSM (one session)."""
    with key_service.card_crypto(ref) as crypto:
        return {
            spec.name: natural_pin(
                ref.card_identification_code,
                lambda data: crypto.mac_block(KeySlot.PUK, data, bytes(8)),
                pin_name=spec.name,
            )
            for _, spec in profile.pin_specs()
        }


def natural_pin(card_identification_code: str, mac: Callable[[bytes], bytes],
                digits: int = 6, *, pin_name: str = SS_PIN) -> str:  # fmt: skip
    """The initial PIN ``pin_name`` from ``mac(data)``, the MAC (ISO/IEC 9797-1 algorithm 1,
    zero IV) of ``data`` under the card's PUK in the HSM. Each PIN has its own domain: the
    bank PIN is never the social security PIN. Weak values (all digits equal, ascending or
    descending runs: :func:`issuance.services.pins.same_digit`, ``step_sequence``) are skipped
    deterministically."""
    domain = _PIN_DOMAIN if pin_name == SS_PIN else _PIN_DOMAIN + b"/" + pin_name.encode()
    prefix = domain + card_identification_code.encode()
    counter = 0
    while True:
        # the first ``digits`` hex digits of the MAC, A-F decimalised to 0-5
        digits_hex = mac(prefix + bytes((counter,))).hex().encode()[:digits]
        pin = digits_hex.translate(_DECIMALISE).decode()
        if not (same_digit(pin) or step_sequence(pin)):
            return pin
        counter += 1


class CardFields(Protocol):
    """What :func:`perso_data` reads of a card (a :class:`~issuance.models.Card` or a row)."""

    @property
    def id(self) -> int: ...

    @property
    def card_number(self) -> str: ...


class HolderFields(Protocol):
    """What :func:`perso_data` reads of the holder (a :class:`~issuance.models.Person`)."""

    @property
    def name(self) -> str: ...

    @property
    def card_name(self) -> str | None:
        """The name for the chip when ``name`` has characters outside GBK."""
        ...

    @property
    def citizen_id(self) -> str: ...

    @property
    def sex(self) -> str: ...

    @property
    def ethnicity(self) -> str | None: ...

    @property
    def birth_date(self) -> date: ...

    @property
    def region_code(self) -> str: ...


class ApplicationFields(Protocol):
    """What :func:`perso_data` reads of the application."""

    @property
    def decided_at(self) -> datetime | None: ...

    @property
    def channel(self) -> str: ...


#: Constant element values of the records (:func:`perso_values`). Card category (EF05 tag
#: 02): "1" social security card, "2" temporary card (``cardspec.profile.EF05_ELEMENTS``).
CARD_CATEGORY, TEMPORARY_CARD_CATEGORY = "1", "2"
INSURED, PERSONNEL_CATEGORY = "1", "11"
PENSION_TYPES_EMPLOYEES, PENSION_TYPES_RESIDENTS = "11100", "10000"
_FILES: dict[int, tuple[CardProfile, frozenset[str]]] = {}


def _has_file(profile: CardProfile, ef_name: str) -> bool:
    """Whether the profile has the file (SFI01: the financial application, EF16: the pension
    application; remembered per profile object)."""
    known = _FILES.get(id(profile))
    if known is None or known[0] is not profile:
        known = _FILES[id(profile)] = (profile, frozenset(ef.name for _, ef in profile.files()))
    return ef_name in known[1]


def _has_financial(profile: CardProfile) -> bool:
    """Whether the profile has the financial application (a temporary card's has not)."""
    return _has_file(profile, "SFI01")


def holder_ethnicity(person: HolderFields) -> str:
    """The holder's GB 3304 ethnicity code for EF06: never defaulted (the counter intake and
    approval refuse a record without one; a holder recorded before that is refused here)."""
    if not person.ethnicity:
        raise ValidationError(
            "cannot prepare the card",
            [FieldProblem("ethnicity", "the holder's ethnicity (GB 3304) is not recorded; the "
                                       "chip needs it and it is never guessed")],
        )  # fmt: skip
    return person.ethnicity


def perso_values(
    settings: IssuanceConfig,
    card: CardFields,
    person: HolderFields,
    application: ApplicationFields | None,
    card_identification_code: str,
    issue_date: date,
    profile: CardProfile,
    *,
    bank: CardBankData | None = None,
    temporary_until: date | None = None,
) -> dict[str, dict[str, Any]]:
    """What goes on the card: the element values (EF name -> element name -> value) of its
    records (:func:`cardspec.perso.plan_values` encodes them), made directly from the rows
    (data preparation's hot path: no dataclass per card). The one place of these rules;
    :func:`perso_data` is the same as a :class:`CardPersoData`. ``bank``: the card's data from
    its bank, required when the profile has the financial application (:class:`issuance.bank.
    NoBankData` without it: the card waits). ``temporary_until``: a temporary card (card
    category "2") valid until that day; the files are those the profile has (a temporary
    card's: no pension, no financial application)."""
    expiry = temporary_until or _add_years(issue_date, settings.lifecycle.card_validity_years)
    # the chip's GBK name: the recorded substitute of a name outside GBK (issuance.cardname)
    name, extension = split_name(person.card_name or person.name)
    since = application.decided_at.date() if application and application.decided_at else issue_date
    employee = application is not None and application.channel == ApplicationChannel.EMPLOYER
    region = person.region_code
    ssn = person.citizen_id
    values: dict[str, dict[str, Any]] = {
        "EF05": {
            "card_identification_code": card_identification_code,
            "card_category": CARD_CATEGORY if temporary_until is None else TEMPORARY_CARD_CATEGORY,
            "spec_version": profile.spec_version,
            "init_org_code": settings.issuer.init_org_code,
            "issue_date": issue_date,
            "expiry_date": expiry,
            "card_number": card.card_number,
        },
        "EF06": {
            "ssn": ssn,
            "name": name,
            "sex": person.sex,
            "ethnicity": holder_ethnicity(person),
            "birthplace": ssn[:6],
            "birth_date": person.birth_date,
            "name_extension": extension,
        },
        "EF15": {
            "insurance_type": INSURANCE_EMPLOYEES if employee else INSURANCE_RESIDENTS,
            "insured_region": region,
            "status": INSURED,
            "personnel_category": PERSONNEL_CATEGORY,
            "start_date": since,
        },
    }
    if _has_file(profile, "EF16"):
        values["EF16"] = {
            "status": INSURED,
            "insured_region": region,
            "start_date": since,
            "insurance_types": PENSION_TYPES_EMPLOYEES if employee else PENSION_TYPES_RESIDENTS,
        }
    if _has_financial(profile):
        fin = require_bank_data({} if bank is None else {card.id: bank}, card.id,
                                card.card_number)  # fmt: skip
        values["SFI01"] = complete_financial({
            "pan": fin.pan,
            "expiry": fin.expiry,
            "psn": fin.psn,
            "cardholder_name": "",
            "service_code": fin.service_code,
        })  # fmt: skip
    return values


def perso_data(
    settings: IssuanceConfig,
    card: CardFields,
    person: HolderFields,
    application: ApplicationFields | None,
    card_identification_code: str,
    issue_date: date,
    pin: str,
    profile: CardProfile,
    *,
    temporary_until: date | None = None,
    bank_pin: str | None = None,
    bank: CardBankData | None = None,
) -> CardPersoData:
    """Everything written to the chip (personal data: never logged, see CardPersoData):
    :func:`perso_values` with the initial PINs (``bank_pin``: the financial application's own,
    needed when the profile has one; :func:`initial_pins`)."""
    values = perso_values(
        settings, card, person, application, card_identification_code, issue_date, profile,
        temporary_until=temporary_until, bank=bank,
    )  # fmt: skip
    return perso.from_values(values, pin, bank_pin=bank_pin)


@functools.lru_cache(maxsize=64)  # a batch's cards share their issue date
def _add_years(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def prepare_card(
    session: Session,
    settings: IssuanceConfig,
    key_service: KeyService,
    card: Card,
    chip_serial: bytes,
    *,
    issue_date: date,
    profile: CardProfile | None = None,
) -> PreparedCard:
    """The :class:`PreparedCard` of ``card`` on the chip ``chip_serial`` (reads the holder and
    application; writes nothing). A temporary card gets the temporary profile, card category
    "2" and its own expiry date."""
    temporary = card.kind == CardKind.TEMPORARY
    profile = profile or card_profile(settings, card.algorithm, temporary=temporary)
    code = ids.make_card_identification_code(card.region_code, chip_serial)
    bank = bank_data(session, settings, [card.id]).get(card.id)
    if _has_financial(profile):
        require_bank_data({} if bank is None else {card.id: bank}, card.id, card.card_number)
    ref = key_ref(card, code, bank)
    person = session.get(Person, card.person_id)
    assert person is not None
    app = session.get(Application, card.application_id) if card.application_id else None
    pins = initial_pins(key_service, ref, profile)
    data = perso_data(
        settings, card, person, app, code, issue_date, pins[SS_PIN], profile,
        bank_pin=pins.get(BANK_PIN), temporary_until=card.expiry_date if temporary else None,
        bank=bank,
    )  # fmt: skip
    data.validate()
    slots = tuple(spec.slot for _, spec in profile.key_specs() if spec.slot is not KeySlot.KMC)
    return PreparedCard(
        card_id=card.id,
        chip_serial=chip_serial.hex().upper(),
        perso=data,
        key_ref=ref,
        key_slots=slots,
        profile_name=profile.name,
    )


def prepared_for_item(
    session: Session, settings: IssuanceConfig, key_service: KeyService, item: BatchItem
) -> PreparedCard:
    """The PreparedCard of an item that already has its chip (rebuilt: nothing is stored)."""
    if item.chip_serial is None or item.issue_date is None:
        raise ConflictError(f"batch item {item.id} has no chip assigned")
    card = session.get(Card, item.card_id)
    assert card is not None
    return prepare_card(
        session, settings, key_service, card, bytes.fromhex(item.chip_serial),
        issue_date=item.issue_date,
    )  # fmt: skip


def assign_chip(
    session: Session,
    settings: IssuanceConfig,
    key_service: KeyService,
    stock: BlankStock,
    item: BatchItem,
    actor: Actor,
    *,
    station: str | None = None,
    today: date | None = None,
    chip_serial: bytes | None = None,
) -> PreparedCard:
    """Take a blank chip for ``item``, prepare the card's data and move the item to
    ``prepared`` (with the chip recorded and the card's identification code set), in the
    caller's transaction. The blank is made before the commit: a crash in between leaves an
    unregistered blank, never a registered chip without its blank.

    ``chip_serial``: the chip already exists (read from the card fed into a station, stock
    that binds at the station): the stock checks it is an unused chip of its delivery and
    marks it used in the same transaction (``DeliveredBlankStock.bind``, :mod:`.blanks`)."""
    card = session.get(Card, item.card_id)
    assert card is not None
    profile = card_profile(settings, card.algorithm)
    # a new chip gets the newest complete key set (rotation, see hsm.ceremony); the card
    # keeps the version it was prepared under (key_ref reads it back)
    card.key_version = key_service.current_key_version(profile.algorithm)
    serial = chip_serial if chip_serial is not None else stock.new_serial()
    issue = today or date.today()
    if chip_serial is not None:
        bind = getattr(stock, "bind", None)
        if bind is None:
            raise ConflictError("this blank stock does not bind chips at the station")
        bind(session, chip_serial.hex().upper(), card, profile)
    prepared = prepare_card(
        session, settings, key_service, card, serial, issue_date=issue, profile=profile
    )
    if chip_serial is None:
        stock.make_blank(serial, prepared.key_ref, profile)
    item.chip_serial = prepared.chip_serial
    item.issue_date = issue
    item.station = station
    card.card_identification_code = prepared.key_ref.card_identification_code
    session.add(
        BlankChip(
            chip_serial=prepared.chip_serial, batch_id=item.batch_id, item_id=item.id,
            card_id=card.id, status=ChipStatus.ASSIGNED, station=station, created_at=utcnow(),
        )
    )  # fmt: skip
    batch_items.advance(session, item, "prepare", actor, details={"profile": profile.name})
    return prepared


def chips_of_batch(session: Session, batch_id: int) -> list[BlankChip]:
    return list(
        session.scalars(
            sa.select(BlankChip).where(BlankChip.batch_id == batch_id).order_by(BlankChip.id)
        )
    )
