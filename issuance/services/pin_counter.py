"""PIN change, reset and unblock at the counter or the branch, by the card's own commands.

The clerk (or a bank teller) checks the holder's identity document (``identity_checked``, as
loss reports do); the card goes in the desk reader; the holder types at the PIN pad
(:class:`issuance.services.financial.PinPad`: a branch PIN pad, the CLI's hidden prompts).
The sequence keeps the database out of the holder's typing, like bank activation:

1. :func:`check_can_serve` (a transaction): the actor's role, identity checked, the card's
   state, the chip recorded, and for reset/unblock the ``[lifecycle] pin_unblocks`` left;
   gives the :class:`PinTarget` (the card's identification code, key reference, holder facts);
2. :func:`serve_pin_at_reader` (no transaction): the card in the reader must be that card (EF05
   identification code; INTERNAL AUTHENTICATE checked in the HSM), then

   * **change** (holder knows the PIN): the current PIN and the new one from the pad; the new
     one through the weak-PIN rule (:func:`issuance.services.pins.check_pin_strength`) before
     the card sees anything; the social security PIN by PBOC ``80 5E 01 00`` (old FF new),
     others by CHANGE REFERENCE DATA ``00 24 00 ref`` (:func:`cardspec.cardops.change_pin`);
   * **unblock** (holder knows the PIN, it was blocked by wrong tries): RESET RETRY COUNTER
     ``84 24 00 ref`` with no data, MAC'd under the card's PIN-unblock key PUK **computed in the
     HSM** (:func:`cardspec.cardops.unblock_pin`); then the holder types the PIN, which the
     card verifies (VERIFY ``00 20``);
   * **reset** (holder forgot the PIN): the new PIN from the pad (checked by the rule); RESET
     RETRY COUNTER ``84 24 00 ref`` reloads a one-time PIN derived in the HSM (the MAC under
     PUK of fresh random bytes, encrypted under PUK in the HSM), which the card marks "to be
     changed", then CHANGE sets the holder's PIN at once. The one-time PIN exists only in local
     variables of this call.

   A refusal by the card raises :class:`issuance.services.pins.PinRefused` with the tries left;
3. :func:`record_pin_service` / :func:`record_refusal` (a transaction): the PIN state the card
   reported (:func:`issuance.services.pins.record_pin_state`) and the audit event
   (``card.pin_changed``, ``card.pin_reset``, ``card.pin_unblocked``, ``card.pin_refused``;
   ``card.pin_blocked`` when it became blocked). No PIN is stored, logged, audited or put in an
   error.

CHOICE: the counter serves the social security PIN (its unblock key PUK is the card centre's);
the bank PIN's unblock key is the bank's (EMV issuer script ``84 24``, the bank's own process):
the counter may change it with the holder (``00 24``), not reset or unblock it.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from cardspec import cardops
from cardspec.errors import CardSpecError, PinError
from cardspec.keyscheme import KeySlot
from cardspec.profile import DEFAULT_PROFILE, CardProfile
from cardspec.reader import Reader
from issuance import audit
from issuance.audit import Actor
from issuance.errors import FieldProblem, PermissionDenied, ValidationError
from issuance.models import Card, CardStatus, ChipAppKind, StaffRole
from issuance.services.common import find_card
from issuance.services.financial import CardCheck, PinPad
from issuance.services.pins import (
    BANK_PIN,
    PIN_LABELS,
    SS_PIN,
    PinRefused,
    check_pin_strength,
    pin_refused,
    record_pin_state,
    same_digit,
    step_sequence,
    unblocks_left,
)
from issuance.settings import IssuanceConfig

if TYPE_CHECKING:
    from hsm.service import CardKeyRef, KeyService


class PinService(enum.StrEnum):
    CHANGE = "change"
    RESET = "reset"
    UNBLOCK = "unblock"


#: The audit event of each service (the refusal of any: ``card.pin_refused``).
EVENTS = {
    PinService.CHANGE: "card.pin_changed",
    PinService.RESET: "card.pin_reset",
    PinService.UNBLOCK: "card.pin_unblocked",
}
#: Who serves PINs: counter clerks and supervisors, bank tellers at a branch.
SERVING_ROLES = frozenset({StaffRole.CLERK, StaffRole.SUPERVISOR, StaffRole.BANK_TELLER})
#: Cards whose PINs are served: handed to the holder (issued or active).
SERVED_STATUSES = frozenset({CardStatus.ISSUED, CardStatus.ACTIVE})
_RESET_DOMAIN = b"YKT-RESET-PIN/1"


@dataclass(frozen=True)
class HolderFacts:
    """What the weak-PIN rule reads of the holder (no session needed while they type)."""

    citizen_id: str
    birth_date: date


@dataclass(frozen=True)
class PinTarget:
    """The card being served, as checked in the database (see :func:`check_can_serve`)."""

    card_id: int
    card_identification_code: str
    holder: HolderFacts
    pin_name: str


@dataclass(frozen=True)
class PinServiceDone:
    """Evidence of a PIN service done on the card in the reader (no PIN)."""

    service: PinService
    pin_name: str
    card_identification_code: str
    reader: str
    tries_left: int | None
    card_authenticated: bool


def check_can_serve(
    session: Session,
    settings: IssuanceConfig,
    card_id: int,
    actor: Actor,
    *,
    service: PinService,
    identity_checked: bool,
    pin_name: str = SS_PIN,
) -> PinTarget:
    """Everything that must hold before the holder types a PIN; PermissionDenied, or
    ValidationError with every reason."""
    if actor.staff_id is None or actor.role not in SERVING_ROLES:
        raise PermissionDenied(f"role {actor.role} may not serve PINs (counter or bank staff)")
    card = find_card(session, card_id=card_id)
    problems = []
    if not identity_checked:
        problems.append(FieldProblem("identity_checked", "the holder's identity must be checked"))
    if card.status not in SERVED_STATUSES:
        problems.append(FieldProblem("card", f"the card is {card.status}, not issued or active"))
    if card.card_identification_code is None:
        problems.append(FieldProblem("card", "the card has no chip recorded"))
    if pin_name not in PIN_LABELS:
        problems.append(FieldProblem("pin", f"no PIN {pin_name!r} (ss or bank)"))
    elif pin_name == BANK_PIN and service is not PinService.CHANGE:
        problems.append(FieldProblem(
            "pin", "the bank PIN is reset and unblocked by the bank (its issuer script)",
        ))  # fmt: skip
    elif pin_name == BANK_PIN and card.chip_app(ChipAppKind.FINANCIAL) is None:
        problems.append(FieldProblem("pin", "the card has no financial application"))
    if service is not PinService.CHANGE and not unblocks_left(session, settings, card.id, pin_name):
        problems.append(FieldProblem(
            "card", f"the PIN was unblocked or reset {settings.lifecycle.pin_unblocks} times "
                    "already ([lifecycle] pin_unblocks): replace the card",
        ))  # fmt: skip
    if problems:
        raise ValidationError(f"cannot {service} the PIN", problems)
    assert card.card_identification_code is not None
    person = card.person
    return PinTarget(card.id, card.card_identification_code,
                     HolderFacts(person.citizen_id, person.birth_date), pin_name)  # fmt: skip


def _one_time_pin(crypto: object, card_identification_code: str) -> str:
    """A one-time PIN derived in the HSM: the MAC under PUK of fresh random bytes."""
    while True:
        data = _RESET_DOMAIN + card_identification_code.encode() + os.urandom(8)
        mac = crypto.mac_block(KeySlot.PUK, data, bytes(8))  # type: ignore[attr-defined]
        pin = f"{int.from_bytes(mac, 'big') % 1_000_000:06d}"
        if not (same_digit(pin) or step_sequence(pin)):
            return pin


def serve_pin_at_reader(
    reader: Reader,
    target: PinTarget,
    service: PinService,
    pin_pad: PinPad,
    settings: IssuanceConfig,
    *,
    key_service: KeyService | None = None,
    key_ref: CardKeyRef | None = None,
    profile: CardProfile = DEFAULT_PROFILE,
    authenticate: CardCheck | None = None,
) -> PinServiceDone:
    """Do ``service`` on the card in ``reader`` (see the module docstring). ``key_service``
    and ``key_ref`` (the card's keys in the HSM) are needed for reset and unblock. Raises
    :class:`~issuance.services.pins.PinRefused` (tries left) when the card refuses a PIN,
    :class:`~issuance.services.pins.WeakPin` before touching the card for a weak new PIN."""
    name = target.pin_name
    if service is not PinService.CHANGE and (key_service is None or key_ref is None):
        raise ValidationError(
            f"cannot {service} the PIN",
            [FieldProblem("hsm", "the card's keys in the HSM are needed")],
        )
    try:
        public = cardops.read_card_public(reader, profile)
        if public.card_identification_code != target.card_identification_code:
            raise ValidationError(
                "wrong card in the reader",
                [FieldProblem("card", "the card in the reader is not the card being served")],
            )
        if authenticate is not None:
            authenticate(reader)
        unblocked = False
        try:
            if service is PinService.CHANGE:
                current, new = pin_pad.current_pin(), pin_pad.new_pin()
                check_pin_strength(new, target.holder, settings)
                cardops.change_pin(reader, current, new, pin_name=name, profile=profile)
            elif service is PinService.UNBLOCK:
                assert key_service is not None and key_ref is not None
                with key_service.card_crypto(key_ref) as crypto:
                    cardops.unblock_pin(reader, crypto, pin_name=name, profile=profile)
                unblocked = True
                cardops.verify_pin(reader, pin_pad.current_pin(), pin_name=name, profile=profile)
            else:
                new = pin_pad.new_pin()
                check_pin_strength(new, target.holder, settings)
                assert key_service is not None and key_ref is not None
                with key_service.card_crypto(key_ref) as crypto:
                    once = _one_time_pin(crypto, target.card_identification_code)
                    cardops.unblock_pin(reader, crypto, new_pin=once, pin_name=name,
                                        profile=profile)  # fmt: skip
                unblocked = True
                cardops.change_pin(reader, once, new, pin_name=name, profile=profile)
        except PinError as exc:
            refused = pin_refused(name, exc.tries_left, "PIN")
            refused.unblocked = unblocked  # counted against [lifecycle] pin_unblocks
            raise refused from None  # no APDU, no PIN
        except CardSpecError as exc:
            sw = getattr(exc, "sw", None)
            raise ValidationError(
                f"the card refused the PIN {service}",
                [FieldProblem("pin", f"refused by the card (SW {sw:04X})" if sw else str(exc))],
            ) from None
        tries = cardops.pin_status(reader, profile).get(name)
        return PinServiceDone(
            service, name, target.card_identification_code, reader.name,
            tries.tries_left if tries else None, authenticate is not None,
        )  # fmt: skip
    finally:
        reader.disconnect()


def record_pin_service(
    session: Session, done: PinServiceDone, card_id: int, actor: Actor, *, identity_checked: bool
) -> Card:
    """Record a PIN service done at a reader: the PIN's state, the unblock count, the audit
    event (no PIN)."""
    card = find_card(session, card_id=card_id)
    if not identity_checked:
        raise ValidationError(
            "not recorded", [FieldProblem("identity_checked", "the identity must be checked")]
        )
    if done.card_identification_code != card.card_identification_code:
        raise ValidationError("not recorded", [FieldProblem("card", "done on another card")])
    record_pin_state(
        session, card, done.pin_name, done.tries_left, actor, reader=done.reader,
        unblocked=done.service is not PinService.CHANGE,
    )  # fmt: skip
    audit.record(
        session, actor, EVENTS[done.service], "card", card.id,
        details={"pin": done.pin_name, "reader": done.reader, "tries_left": done.tries_left,
                 "card_authenticated": done.card_authenticated, "identity_checked": True},
    )  # fmt: skip
    return card


def record_refusal(
    session: Session,
    card_id: int,
    actor: Actor,
    refused: PinRefused,
    *,
    service: str,
    reader: str | None = None,
) -> Card:
    """Record a PIN the card refused at a reader (any service, bank activation included): the
    tries left it reported (blocked at 0) and ``card.pin_refused`` (no PIN)."""
    card = find_card(session, card_id=card_id)
    record_pin_state(session, card, refused.pin_name, refused.tries_left, actor, reader=reader,
                     unblocked=refused.unblocked)  # fmt: skip
    audit.record(
        session, actor, "card.pin_refused", "card", card.id,
        details={"pin": refused.pin_name, "service": service, "reader": reader,
                 "tries_left": refused.tries_left, "unblocked": refused.unblocked},
    )  # fmt: skip
    return card


__all__ = [
    "EVENTS",
    "HolderFacts",
    "PinService",
    "PinServiceDone",
    "PinTarget",
    "check_can_serve",
    "record_pin_service",
    "record_refusal",
    "serve_pin_at_reader",
]
