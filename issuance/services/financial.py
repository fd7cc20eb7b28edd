"""Financial (bank) function activation at a bank branch.

Design notes: ``docs/design/issuance.md`` (section ``issuance.services.financial``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import Session

from cardspec import cardops
from cardspec.errors import CardSpecError, EncodingError
from cardspec.keyscheme import Algorithm
from cardspec.profile import DEFAULT_PROFILE, CardProfile
from cardspec.reader import Reader
from hsm.errors import HsmError
from hsm.service import CardKeyRef
from issuance import audit, lifecycle
from issuance.audit import Actor
from issuance.bank import bank_data, card_key_ref, require_bank_data
from issuance.db import flush
from issuance.errors import FieldProblem, ValidationError
from issuance.lifecycle import ChipEvent
from issuance.models import (
    Agency,
    AgencyKind,
    Card,
    CardStatus,
    ChipAppKind,
    ChipAppStatus,
)
from issuance.services.common import find_card
from issuance.settings import IssuanceConfig

if TYPE_CHECKING:
    from hsm.service import KeyService

#: ``check(reader)``: raise unless the card in the reader proves itself genuine.
CardCheck = Callable[[Reader], None]

#: Name of the financial application's PIN in the card profile.
BANK_PIN = "bank"


class PinPad(Protocol):
    """Where the holder types PINs (a branch PIN pad; the CLI's hidden prompt)."""

    def current_pin(self) -> str:
        """The PIN the card holds now (the initial PIN from the PIN mailer); not asked by the
        issuer-script activation (the bank sets the PIN with its own authority)."""
        ...

    def new_pin(self) -> str:
        """The holder's new PIN (the pad has them type it twice)."""
        ...


#: ``check(pin)``: raise ValidationError for a PIN the holder may not choose (the PIN rules).
PinCheck = Callable[[str], None]


@dataclass(frozen=True)
class ScriptKeys:
    """The keys of a card's issuer scripts: the key service (the HSM) and the card's key
    reference with its bank's key domain, PAN and PSN (:func:`script_keys`)."""

    key_service: KeyService
    ref: CardKeyRef


def script_keys(session: Session, settings: IssuanceConfig, key_service: KeyService,
                card: Card) -> ScriptKeys:  # fmt: skip
    """The :class:`ScriptKeys` of ``card``: ValidationError when its bank gave no account data
    (the card has no EMV keys)."""
    assert card.card_identification_code is not None
    data = bank_data(session, settings, [card.id])
    found = require_bank_data(data, card.id, card.card_number)
    ref = card_key_ref(card.card_identification_code, card.key_version,
                       Algorithm(str(card.algorithm)), found)  # fmt: skip
    return ScriptKeys(key_service, ref)


@dataclass(frozen=True)
class PinSetOnCard:
    """Evidence that the holder set the financial PIN on this chip in a branch reader."""

    card_identification_code: str
    reader: str
    tries_left: int | None
    card_authenticated: bool
    application_unblocked: bool = False

    method = "issuer_script"


@dataclass(frozen=True)
class BankAttestation:
    """A bank's system (API, agency credential) attests its own terminal set the PIN."""

    bank_agency_id: int
    reference: str | None = None

    method = "bank_attestation"


PinEvidence = PinSetOnCard | BankAttestation


def check_can_activate(
    session: Session, card_id: int, actor: Actor, *, identity_checked: bool
) -> Card:
    """Everything that must hold before the holder is asked for a PIN (the actor may activate
    the financial function: a bank teller through the bank channel); raise
    PermissionDenied, or ValidationError with every reason."""
    card = find_card(session, card_id=card_id)
    problems = _activation_problems(card, actor, identity_checked)
    if problems:
        raise ValidationError("cannot activate the financial function", problems)
    return card


def _activation_problems(card: Card, actor: Actor, identity_checked: bool) -> list[FieldProblem]:
    problems = []
    if not identity_checked:
        problems.append(FieldProblem("identity_checked", "the holder's identity must be checked"))
    if card.status != CardStatus.ACTIVE:
        problems.append(FieldProblem("card", f"the card is {card.status}, it must be active"))
    fin = card.chip_app(ChipAppKind.FINANCIAL)
    if fin is None:
        problems.append(FieldProblem("card", "the card has no financial application"))
    elif fin.status != ChipAppStatus.SEALED:
        problems.append(FieldProblem("card", f"the financial function is {fin.status}"))
    else:
        lifecycle.check_chip_event(fin, ChipEvent.ACTIVATE, actor)
    if card.card_identification_code is None:
        problems.append(FieldProblem("card", "the card has no chip recorded"))
    return problems


def set_financial_pin(
    reader: Reader,
    card_identification_code: str,
    pin_pad: PinPad,
    keys: ScriptKeys,
    *,
    profile: CardProfile = DEFAULT_PROFILE,
    authenticate: CardCheck | None = None,
    pin_check: PinCheck | None = None,
    today: date | None = None,
) -> PinSetOnCard:
    """Have the holder set the financial PIN on the card in ``reader`` by the bank's issuer
    script (see the module docstring).

    ``authenticate(reader)``, when given, must raise unless the card proves itself genuine
    (INTERNAL AUTHENTICATE checked by the HSM; see :func:`hsm_card_check`). ``pin_check(pin)``:
    the PIN rules (raise ValidationError for a PIN the holder may not choose). Errors never
    carry a PIN."""
    try:
        public = cardops.read_card_public(reader, profile)
        if public.card_identification_code != card_identification_code:
            raise ValidationError(
                "wrong card in the reader",
                [FieldProblem("card", "the card in the reader is not the card being activated")],
            )
        if authenticate is not None:
            authenticate(reader)
        day = f"{today or date.today():%y%m%d}"
        try:
            script = cardops.open_emv_script_session(reader, profile, os.urandom(4), day)
            unblocked = False
            with keys.key_service.card_crypto(keys.ref) as crypto:
                if script.cryptogram_type == 0x00:  # declined: the application is blocked
                    mac = crypto.issuer_script_mac(b"\x84\x18\x00\x00", script.atc, script.ac, b"")
                    cardops.send_issuer_script(reader, 0x18, 0x00, mac, "APPLICATION UNBLOCK")
                    unblocked = True
                pin = pin_pad.new_pin()
                # PIN rules (the "pin" helper's check_pin_strength, wired at merge): the one
                # call site of the weak-PIN check for the bank PIN
                if pin_check is not None:
                    pin_check(pin)
                block = script.pin.encode(pin)
                del pin
                enciphered = crypto.encipher_pin_block(script.ac, block)
                del block
                mac = crypto.issuer_script_mac(b"\x84\x24\x00\x02", script.atc, script.ac,
                                               enciphered)  # fmt: skip
            cardops.send_issuer_script(reader, 0x24, 0x02, enciphered + mac, "PIN CHANGE")
        except EncodingError:
            raise ValidationError(
                "the PIN was refused", [FieldProblem("pin", "the PIN must be 4 to 6 digits")]
            ) from None
        except CardSpecError as exc:
            sw = getattr(exc, "sw", None)
            raise ValidationError(
                "the card refused the issuer script",
                [FieldProblem("pin", f"refused by the card (SW {sw:04X})" if sw else str(exc))],
            ) from None  # the chained error holds the APDU, not the PIN; keep it out anyway
        tries = cardops.pin_status(reader, profile).get(BANK_PIN)
        return PinSetOnCard(
            card_identification_code, reader.name, tries.tries_left if tries else None,
            authenticate is not None, unblocked,
        )  # fmt: skip
    finally:
        reader.disconnect()


def hsm_card_check(key_service: KeyService, card: Card) -> CardCheck:
    """A ``CardCheck`` for :func:`set_financial_pin`: INTERNAL AUTHENTICATE with a fresh
    factor and random, the answer checked by the key service (the HSM) against this card's
    keys; raises ValidationError when the card is not genuine."""
    assert card.card_identification_code is not None
    ref = CardKeyRef(card.card_identification_code, key_version=card.key_version,
                     algorithm=Algorithm(str(card.algorithm)))  # fmt: skip

    def check(reader: Reader) -> None:
        factor, random = os.urandom(8), os.urandom(8)
        response = cardops.internal_authenticate(reader, factor, random)
        try:
            key_service.verify_internal_auth(ref, factor, random, response)
        except HsmError as exc:
            raise ValidationError(
                "card not genuine",
                [FieldProblem("card", "the card failed internal authentication")],
            ) from exc

    return check


def bind_bank(session: Session, card_id: int, bank_code: str, actor: Actor) -> Card:
    """Record the bank a card's financial application was issued for (the co-operating bank
    the holder chose); audited (``chip.bank_bound``). Only that bank's system may then
    activate the function through the API. Not once the function is active."""
    import sqlalchemy as sa

    from issuance import audit

    card = find_card(session, card_id=card_id)
    fin = card.chip_app(ChipAppKind.FINANCIAL)
    bank = session.scalars(sa.select(Agency).where(Agency.code == bank_code)).one_or_none()
    problems = []
    if fin is None:
        problems.append(FieldProblem("card", "the card has no financial application"))
    elif fin.status != ChipAppStatus.SEALED:
        problems.append(FieldProblem("card", f"the financial function is {fin.status}"))
    if bank is None or bank.kind != AgencyKind.BANK:
        problems.append(FieldProblem("bank", f"no bank agency {bank_code!r}"))
    if problems:
        raise ValidationError("cannot bind the card to the bank", problems)
    assert fin is not None and bank is not None
    before = fin.bank_agency_id
    fin.bank_agency_id = bank.id
    audit.record(
        session, actor, "chip.bank_bound", "chip_application", fin.id,
        before=None if before is None else str(before), after=str(bank.id),
        details={"card_id": card.id, "bank": bank.code},
    )  # fmt: skip
    flush(session)
    return card


def activate_financial(
    session: Session,
    card_id: int,
    actor: Actor,
    *,
    identity_checked: bool,
    pin: PinEvidence | None = None,
    pin_set: bool = False,
    bank_agency_id: int | None = None,
) -> Card:
    """Activate the financial function once the holder's identity was checked and the PIN set.

    ``pin``: the evidence (:class:`PinSetOnCard` from :func:`set_financial_pin`, or a
    :class:`BankAttestation`). ``pin_set=True`` without evidence is accepted only as the
    attestation of a bank agency's own system (``bank_agency_id`` of a bank agency, and the
    actor is not a staff user of this system): a teller's flag is not evidence.
    """
    card = find_card(session, card_id=card_id)
    problems = _activation_problems(card, actor, identity_checked)
    if pin is None and pin_set and bank_agency_id is not None and actor.staff_id is None:
        pin = BankAttestation(bank_agency_id)
    if pin is None:
        problems.append(FieldProblem(
            "pin", "the holder must set the PIN on the card in a branch reader "
                   "(ykt cards activate-financial), or the bank's system must attest it",
        ))  # fmt: skip
    elif isinstance(pin, PinSetOnCard):
        if pin.card_identification_code != card.card_identification_code:
            problems.append(FieldProblem("pin", "the PIN was set on another card"))
    else:
        agency = session.get(Agency, pin.bank_agency_id)
        if agency is None or agency.kind != AgencyKind.BANK:
            problems.append(FieldProblem("pin", "only a bank may attest its terminal set the PIN"))
    fin_app = card.chip_app(ChipAppKind.FINANCIAL)
    bound = None if fin_app is None else fin_app.bank_agency_id
    if isinstance(pin, BankAttestation) and bound != pin.bank_agency_id:
        # a bank's system activates only the cards issued for that bank
        problems.append(FieldProblem("card", "the card's financial function is not this bank's"))
    elif bound is not None and bank_agency_id is not None and bound != bank_agency_id:
        problems.append(FieldProblem("card", "the card's financial function is another bank's"))
    if problems:
        raise ValidationError("cannot activate the financial function", problems)
    assert pin is not None
    fin = card.chip_app(ChipAppKind.FINANCIAL)
    assert fin is not None
    details: dict[str, object] = {"card_id": card.id, "pin_method": pin.method}
    if isinstance(pin, PinSetOnCard):
        details |= {"reader": pin.reader, "pin_tries_left": pin.tries_left,
                    "card_authenticated": pin.card_authenticated,
                    "application_unblocked": pin.application_unblocked}  # fmt: skip
    elif pin.reference:
        details["bank_reference"] = pin.reference
    lifecycle.apply_chip_event(
        session, fin, ChipEvent.ACTIVATE, actor,
        reason=f"bank activation after identity check; PIN set ({pin.method})",
    )  # fmt: skip
    audit.record(session, actor, "chip.financial_pin_set", "chip_application", fin.id,
                 details=details)  # fmt: skip
    fin.pin_set = True
    fin.bank_agency_id = bank_agency_id if bank_agency_id is not None else fin.bank_agency_id
    flush(session)
    return card


__all__ = [
    "BankAttestation",
    "CardCheck",
    "PinEvidence",
    "PinPad",
    "PinSetOnCard",
    "ScriptKeys",
    "activate_financial",
    "check_can_activate",
    "hsm_card_check",
    "script_keys",
    "set_financial_pin",
]
