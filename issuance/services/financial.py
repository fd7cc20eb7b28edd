"""Financial (bank) function activation at a bank branch.

The holder's identity is checked by the teller; the holder then sets the bank PIN **on the
card**, in a reader at the branch: the PIN pad hands the PIN mailer's initial PIN and the new
PIN to :func:`set_financial_pin`, which runs CHANGE REFERENCE DATA on the chip's financial PIN
(:func:`cardspec.cardops.change_pin`, ``00 24 00 80``) after checking that the card in the
reader is the genuine card being activated (EF05 identification code; INTERNAL AUTHENTICATE
checked by the HSM when a key service is given). The PINs live only in local variables of that
call: they are never stored, logged, audited or put in an exception message. The database
records only that it happened: :class:`PinSetOnCard` (which card, which reader, tries left) goes
into the audit event of :func:`activate_financial`.

A bank's own system may instead attest, through the API with its agency credential, that its
terminal set the PIN (:class:`BankAttestation`): the bank runs its function. A bare "PIN set"
flag from a teller is not accepted.

CHOICE: the alternative of carrying the PIN as an ISO 9564 format-4 block encrypted under an
HSM key (for an issuer-script PIN change relayed by the terminal) is not implemented: SoftHSM has
no PIN-translation mechanism, and the reader path keeps the PIN between the PIN pad and the chip.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import Session

from cardspec import cardops
from cardspec.errors import CardSpecError, PinError
from cardspec.keyscheme import Algorithm
from cardspec.profile import DEFAULT_PROFILE, CardProfile
from cardspec.reader import Reader
from hsm.errors import HsmError
from hsm.service import CardKeyRef
from issuance import audit, lifecycle
from issuance.audit import Actor
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
from issuance.services.pins import pin_refused

if TYPE_CHECKING:
    from hsm.service import KeyService

#: ``check(reader)``: raise unless the card in the reader proves itself genuine.
CardCheck = Callable[[Reader], None]

#: Name of the financial application's PIN in the card profile.
BANK_PIN = "bank"


class PinPad(Protocol):
    """Where the holder types PINs (a branch PIN pad; the CLI's hidden prompt)."""

    def current_pin(self) -> str:
        """The PIN the card holds now (the initial PIN from the PIN mailer)."""
        ...

    def new_pin(self) -> str:
        """The holder's new PIN (the pad has them type it twice)."""
        ...


@dataclass(frozen=True)
class PinSetOnCard:
    """Evidence that the holder set the financial PIN on this chip in a branch reader."""

    card_identification_code: str
    reader: str
    tries_left: int | None
    card_authenticated: bool

    method = "card_change_pin"


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
    *,
    profile: CardProfile = DEFAULT_PROFILE,
    authenticate: CardCheck | None = None,
) -> PinSetOnCard:
    """Have the holder set the financial PIN on the card in ``reader``.

    ``authenticate(reader)``, when given, must raise unless the card proves itself genuine
    (INTERNAL AUTHENTICATE checked by the HSM; see :func:`hsm_card_check`). Errors never carry
    a PIN: a refused PIN is reported with the tries left only.
    """
    try:
        public = cardops.read_card_public(reader, profile)
        if public.card_identification_code != card_identification_code:
            raise ValidationError(
                "wrong card in the reader",
                [FieldProblem("card", "the card in the reader is not the card being activated")],
            )
        if authenticate is not None:
            authenticate(reader)
        try:
            cardops.change_pin(
                reader, pin_pad.current_pin(), pin_pad.new_pin(), pin_name=BANK_PIN,
                profile=profile,
            )  # fmt: skip
        except PinError as exc:
            # PinRefused (a ValidationError) carries the tries left, for the caller to record
            # (issuance.services.pins.record_pin_state); the chained error holds the APDU,
            # not the PIN: kept out anyway
            raise pin_refused(
                BANK_PIN, exc.tries_left, "current PIN", message="the card refused the PIN change"
            ) from None
        except CardSpecError as exc:
            sw = getattr(exc, "sw", None)
            raise ValidationError(
                "the card refused the PIN change",
                [FieldProblem("pin", f"refused by the card (SW {sw:04X})" if sw else str(exc))],
            ) from None
        tries = cardops.pin_status(reader, profile).get(BANK_PIN)
        return PinSetOnCard(
            card_identification_code, reader.name, tries.tries_left if tries else None,
            authenticate is not None,
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
                    "card_authenticated": pin.card_authenticated}  # fmt: skip
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
    "activate_financial",
    "check_can_activate",
    "hsm_card_check",
    "set_financial_pin",
]
