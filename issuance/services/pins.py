"""PINs: the weak-PIN rule and what this system records of each PIN on a card.

* :func:`check_pin_strength` is **the** weak-PIN rule, used by every path where a holder sets a
  PIN (counter change and reset, :mod:`issuance.services.pin_counter`; bank activation,
  :mod:`issuance.services.financial`): the patterns are chosen by ``[pins] weak_rules``
  (repeated digits, ascending/descending sequences, the holder's birth date in its common
  forms, runs of the holder's ID number). Its reasons never quote the PIN.
  The HSM-derived initial PIN (:func:`issuance.batches.dataprep.natural_pin`) skips the
  holder-independent patterns with the same functions (:func:`same_digit`,
  :func:`step_sequence`); the card forces the holder to change it before use.
* :class:`~issuance.models.CardPin` rows hold what a card reported of a PIN at a reader (tries
  left, blocked: ``63Cx`` / ``6983``) and the counter unblocks done: :func:`record_pin_state`,
  read back by :func:`pin_states` and shown by :func:`pin_state_text` ("PIN blocked",
  "2 tries left") in ``ykt cards show``, ``ykt people show``, the person view and the API.
* :class:`PinRefused` is the one error of a PIN the card refused, with the tries left (never
  the PIN), so the caller can record the state in its own transaction.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance import audit
from issuance.audit import Actor
from issuance.db import flush
from issuance.errors import FieldProblem, ValidationError
from issuance.models import Card, CardPin, utcnow
from issuance.settings import IssuanceConfig

#: The profile's PIN names: the social security PIN and the financial (bank) PIN.
SS_PIN, BANK_PIN = "ss", "bank"
PIN_LABELS = {SS_PIN: "social security PIN", BANK_PIN: "bank PIN"}


class PinHolder(Protocol):
    """What the rule reads of the holder (a :class:`~issuance.models.Person`)."""

    @property
    def citizen_id(self) -> str: ...
    @property
    def birth_date(self) -> date: ...


# --- the rule ---------------------------------------------------------------------------------
def same_digit(pin: str) -> bool:
    """One digit repeated (111111)."""
    return pin != "" and pin.count(pin[0]) == len(pin)


#: Every run of ASCII digits ascending or descending by one is a slice of one of these.
_ASCENDING, _DESCENDING = "0123456789", "9876543210"


def step_sequence(pin: str) -> bool:
    """Ascending or descending by one (123456, 654321): two digits or more, each the one
    before plus one (or each minus one). ASCII digits (every PIN the system makes or
    accepts from a pad) are a slice of ``0123456789`` or ``9876543210``; other digits (any
    Unicode decimal digit ``int`` reads) by their values."""
    if pin.isascii() and pin.isdigit():
        return len(pin) > 1 and (pin in _ASCENDING or pin in _DESCENDING)
    steps = {int(b) - int(a) for a, b in itertools.pairwise(pin)}
    return steps in ({1}, {-1})


def repeated_group(pin: str) -> bool:
    """A group of one to three digits repeated (111111, 121212, 123123)."""
    n = len(pin)
    return any(n % k == 0 and n > k and pin == pin[:k] * (n // k) for k in (1, 2, 3))


def birth_date_forms(birth: date) -> set[str]:
    """The birth date as people write it in digits."""
    y, yy, m, d = f"{birth:%Y}", f"{birth:%y}", f"{birth:%m}", f"{birth:%d}"
    return {
        yy + m + d, m + d + yy, d + m + yy, y + m, m + y,
        y + m + d, d + m + y, m + d + y, m + d, d + m,
    }  # fmt: skip


def _citizen_id_run(pin: str, citizen_id: str) -> bool:
    return len(pin) >= 4 and pin in citizen_id


#: The reasons of each rule of ``[pins] weak_rules`` (none quotes the PIN).
_REASONS = {
    "repeated": "repeated digits",
    "sequence": "an ascending or descending sequence",
    "birth_date": "the holder's birth date",
    "citizen_id": "digits of the holder's ID number",
}


def pin_weaknesses(
    pin: str, holder: PinHolder | None, settings: IssuanceConfig
) -> list[FieldProblem]:
    """Every reason ``pin`` is refused under ``[pins] weak_rules`` (empty: acceptable).
    ``holder`` None (not known to the caller): the holder's rules are not applied."""
    if not pin.isdigit():
        return [FieldProblem("pin", "digits only", code="not_digits")]
    found: list[FieldProblem] = []
    for rule in settings.pins.weak_rules:
        if rule == "repeated":
            weak = repeated_group(pin)
        elif rule == "sequence":
            weak = step_sequence(pin)
        elif rule == "birth_date":
            weak = holder is not None and pin in birth_date_forms(holder.birth_date)
        else:
            weak = holder is not None and _citizen_id_run(pin, holder.citizen_id)
        if weak:
            found.append(FieldProblem("pin", f"too weak: {_REASONS[rule]}", code=f"weak_{rule}"))
    return found


class WeakPin(ValidationError):
    """A PIN the weak-PIN rule refuses (the reasons name the pattern, never the PIN)."""

    code = "weak_pin"


def check_pin_strength(pin: str, holder: PinHolder | None, settings: IssuanceConfig) -> None:
    """Raise :class:`WeakPin` with every reason unless ``pin`` passes ``[pins] weak_rules``
    for this holder. The one weak-PIN rule: call it wherever a holder sets a PIN."""
    problems = pin_weaknesses(pin, holder, settings)
    if problems:
        raise WeakPin("the PIN is too weak, choose another", problems)


class StrengthCheckedPad:
    """A PIN pad whose new PINs pass :func:`check_pin_strength` before anything uses them
    (wrap the pad given to :func:`issuance.services.financial.set_financial_pin`)."""

    def __init__(self, pad: _Pad, holder: PinHolder | None, settings: IssuanceConfig) -> None:
        self.pad, self.holder, self.settings = pad, holder, settings

    def current_pin(self) -> str:
        return self.pad.current_pin()

    def new_pin(self) -> str:
        pin = self.pad.new_pin()
        check_pin_strength(pin, self.holder, self.settings)
        return pin


class _Pad(Protocol):
    def current_pin(self) -> str: ...
    def new_pin(self) -> str: ...


# --- what the card reported ---------------------------------------------------------------------
class PinRefused(ValidationError):
    """The card refused a PIN (wrong PIN ``63Cx``, blocked ``6983``): ``tries_left`` as the
    card said (None: not said). The message and problems never carry the PIN."""

    code = "pin_refused"

    def __init__(
        self, message: str, problems: list[FieldProblem], *, pin_name: str, tries_left: int | None
    ) -> None:
        super().__init__(message, problems)
        self.pin_name = pin_name
        self.tries_left = tries_left
        #: the counter had reset the retry counter before the refusal (counted all the same:
        #: unblock + wrong tries cannot go round ``[lifecycle] pin_unblocks``)
        self.unblocked = False

    @property
    def blocked(self) -> bool:
        return self.tries_left == 0


def pin_refused(
    pin_name: str, tries_left: int | None, what: str, *, message: str = "the card refused the PIN"
) -> PinRefused:
    """The :class:`PinRefused` of a card's refusal (the one wording)."""
    label = PIN_LABELS.get(pin_name, pin_name)
    if tries_left == 0:
        reason = f"the {label} is blocked (0 tries left)"
    else:
        left = "unknown" if tries_left is None else str(tries_left)
        reason = f"the {what} is wrong ({left} tries left)"
    return PinRefused(
        message, [FieldProblem("pin", reason, code="pin_refused")],
        pin_name=pin_name, tries_left=tries_left,
    )  # fmt: skip


def _row(session: Session, card_id: int, pin_name: str) -> CardPin:
    row = session.scalars(
        sa.select(CardPin).where(CardPin.card_id == card_id, CardPin.pin_name == pin_name)
    ).one_or_none()
    if row is None:
        row = CardPin(card_id=card_id, pin_name=pin_name, tries_left=None, blocked=False,
                      unblocks=0)  # fmt: skip
        session.add(row)
    return row


def record_pin_state(
    session: Session,
    card: Card,
    pin_name: str,
    tries_left: int | None,
    actor: Actor,
    *,
    reader: str | None = None,
    unblocked: bool = False,
) -> CardPin:
    """Record what the card reported of a PIN (tries left; 0 = blocked); ``unblocked``: the
    counter reset its retry counter (counted). A PIN that becomes blocked or is unblocked is
    audited (``card.pin_blocked``, the unblock by its own service's event)."""
    row = _row(session, card.id, pin_name)
    was_blocked = row.blocked
    row.tries_left = tries_left
    row.blocked = tries_left == 0
    row.seen_at = utcnow()
    if unblocked:
        row.unblocks += 1
    if row.blocked and not was_blocked:
        audit.record(
            session, actor, "card.pin_blocked", "card", card.id, before="usable",
            after="blocked", details={"pin": pin_name, "reader": reader},
        )  # fmt: skip
    flush(session)
    return row


@dataclass(frozen=True)
class PinStateView:
    """One PIN of a card as recorded: tries left (None: not known), blocked, unblocks done."""

    pin_name: str
    tries_left: int | None
    blocked: bool
    unblocks: int
    seen_at: datetime

    @property
    def text(self) -> str:
        return pin_state_text(self)


def pin_states(session: Session, card_id: int) -> dict[str, PinStateView]:
    """What is recorded of each PIN of a card (PINs never seen at a reader are absent)."""
    rows = session.scalars(
        sa.select(CardPin).where(CardPin.card_id == card_id).order_by(CardPin.pin_name)
    )
    return {
        r.pin_name: PinStateView(r.pin_name, r.tries_left, r.blocked, r.unblocks, r.seen_at)
        for r in rows
    }


def pin_state_text(state: PinStateView | None) -> str:
    """What a person reads: "PIN blocked", "PIN: 2 tries left", or not known."""
    if state is None:
        return "PIN not seen at a reader"
    if state.blocked:
        return "PIN blocked"
    if state.tries_left is None:
        return "PIN state unknown"
    return f"PIN: {state.tries_left} tries left"


def app_status_text(kind: str, status: str, states: Mapping[str, PinStateView]) -> str:
    """A chip function's status as people read it: "PIN blocked" when the PIN that guards it
    is (never "sealed" or "active" then), else the status with the PIN's tries left if a
    reader reported fewer than all."""
    state = states.get(APP_PIN.get(kind, SS_PIN))
    if state is None:
        return status
    if state.blocked:
        return "PIN blocked"
    if state.tries_left is not None:
        return f"{status}; {pin_state_text(state)}"
    return status


def unblocks_left(session: Session, settings: IssuanceConfig, card_id: int, pin_name: str) -> int:
    """How many more counter unblocks/resets ``[lifecycle] pin_unblocks`` allows this PIN."""
    done = session.scalar(
        sa.select(CardPin.unblocks).where(CardPin.card_id == card_id, CardPin.pin_name == pin_name)
    )
    return max(0, settings.lifecycle.pin_unblocks - (done or 0))


#: Chip application kind -> the PIN that guards it (for the views).
APP_PIN = {"social_security": SS_PIN, "medical": SS_PIN, "pension": SS_PIN, "financial": BANK_PIN}

__all__ = [
    "APP_PIN",
    "BANK_PIN",
    "SS_PIN",
    "PinRefused",
    "PinStateView",
    "StrengthCheckedPad",
    "WeakPin",
    "app_status_text",
    "birth_date_forms",
    "check_pin_strength",
    "pin_refused",
    "pin_state_text",
    "pin_states",
    "pin_weaknesses",
    "record_pin_state",
    "repeated_group",
    "same_digit",
    "step_sequence",
    "unblocks_left",
]
