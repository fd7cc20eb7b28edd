"""Temporary cards: issued on the spot to someone with a pending application or a lost card;
medical function only, short expiry, a deposit taken and refunded when the card is handed back.

One live temporary card per person: checked here, and enforced by the partial unique index
``uq_cards_live_temporary_person`` (migration 0004), so two counters issuing at the same moment
cannot both win: the loser's insert fails and is reported as :class:`ConflictError`. A
temporary card past its expiry date is expired first (lazily) and no longer counts.

The deposit is refunded only when the card itself is handed back and the clerk records it
(:func:`hand_back_temporary_card`); collecting the formal card without the temporary card
cancels the temporary card and keeps the deposit until it is brought back.

The chip: given a ``desk`` (:class:`TemporaryChipDesk`, the counter's reader and printer:
:class:`issuance.batches.counter.CounterDesk`), the card is personalised on a chip at the
counter (card category "2", only the medical application, its validity, per-card keys from the
HSM), its temporary face printed and quality-checked, in the same transaction as the card
record and the deposit (a failure leaves neither); at hand-back the returned chip is blocked
by its own command with keys from the HSM before anything is recorded. Both audited
(``card.temporary_chip_made``, ``card.temporary_chip_blocked``). Without a desk only the
record is kept (a counter without a reader; the card then has no working chip).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance import audit, lifecycle
from issuance.audit import Actor
from issuance.db import flush
from issuance.errors import (
    ConflictError,
    FieldProblem,
    PermissionDenied,
    TransitionError,
    ValidationError,
)
from issuance.lifecycle import CardEvent, ChipEvent
from issuance.models import (
    TERMINAL_CARD_STATUSES,
    Application,
    ApplicationStatus,
    Card,
    CardKind,
    CardStatus,
    Deposit,
    Person,
    StaffRole,
    utcnow,
)
from issuance.services import cash
from issuance.services.card_steps import cancel, expire_if_due, live_temporary_cards
from issuance.services.common import create_card, random_chip_serial
from issuance.settings import IssuanceConfig

ISSUERS = {StaffRole.CLERK, StaffRole.SUPERVISOR, StaffRole.ADMIN, StaffRole.BANK_TELLER}
_WAITING = (
    CardStatus.NUMBER_ALLOCATED,
    CardStatus.IN_PRODUCTION,
    CardStatus.PERSONALISED,
    CardStatus.SHIPPED,
    CardStatus.LOST_PROVISIONAL,
    CardStatus.LOST_FORMAL,
    CardStatus.DAMAGED,
)


class TemporaryChipDesk(Protocol):
    """The counter's reader and printer (:class:`issuance.batches.counter.CounterDesk`)."""

    def chip_serial(self) -> bytes:
        """The serial of the blank chip the card is made on."""
        ...

    def make_chip(
        self, session: Session, card: Card, actor: Actor, *, today: date
    ) -> dict[str, Any]:
        """Personalise, print and check ``card``; the audit details (nothing personal)."""
        ...

    def block_chip(self, session: Session, card: Card, actor: Actor) -> dict[str, Any]:
        """Block the returned chip of ``card``; the audit details."""
        ...


def _eligible(session: Session, person: Person) -> bool:
    pending = session.scalars(
        sa.select(Application.id).where(
            Application.person_id == person.id,
            Application.status.in_(
                [
                    ApplicationStatus.RECEIVED,
                    ApplicationStatus.PROCESSED,
                    ApplicationStatus.REVIEWED,
                ]
            ),
        )
    ).first()
    waiting = session.scalars(
        sa.select(Card.id).where(
            Card.person_id == person.id, Card.kind == CardKind.FORMAL, Card.status.in_(_WAITING)
        )
    ).first()
    return pending is not None or waiting is not None


def issue_temporary_card(
    session: Session,
    settings: IssuanceConfig,
    person_id: int,
    actor: Actor,
    *,
    chip_serial: bytes | None = None,
    today: date | None = None,
    desk: TemporaryChipDesk | None = None,
) -> Card:
    """Issue a temporary card at the counter (active at once, medical function only);
    ``desk``: personalise its chip and print its face there (see the module docstring)."""
    if actor.role not in ISSUERS:
        raise PermissionDenied(f"role {actor.role} may not issue temporary cards")
    today = today or date.today()
    person = session.get(Person, person_id)
    problems = []
    if person is None:
        raise ValidationError("cannot issue", [FieldProblem("person", "unknown person")])
    if person.death_date is not None:
        problems.append(FieldProblem("person", "recorded as deceased"))
    if not _eligible(session, person):
        problems.append(
            FieldProblem(
                "person", "needs a pending application or a card in production, lost or damaged"
            )
        )
    live_temps = [
        t for t in live_temporary_cards(session, person.id) if not expire_if_due(session, t, today)
    ]
    if live_temps:
        t = live_temps[0]
        problems.append(
            FieldProblem("person", f"already holds temporary card {t.card_number} ({t.status})")
        )
    if problems:
        raise ValidationError("cannot issue a temporary card", problems)
    if chip_serial is None and desk is not None:
        chip_serial = desk.chip_serial()
    try:
        with session.begin_nested():
            card = create_card(
                session, settings, person, actor, kind=CardKind.TEMPORARY,
                status=CardStatus.ACTIVE, chip_serial=chip_serial or random_chip_serial(),
                issue_date=today,
                expiry_date=today + timedelta(days=settings.lifecycle.temporary_card_days),
                reason="temporary card issued at the counter",
            )  # fmt: skip
    except sa.exc.IntegrityError as exc:
        raise ConflictError(
            "a temporary card was issued to this person at the same time; reload and check"
        ) from exc
    if desk is not None:
        made = desk.make_chip(session, card, actor, today=today)
        audit.record(session, actor, "card.temporary_chip_made", "card", card.id,
                     details={"card_number": card.card_number, **made})  # fmt: skip
    deposit = Deposit(
        card_id=card.id,
        amount_fen=settings.lifecycle.temporary_card_deposit_fen,
        taken_by_id=actor.staff_id,
    )
    session.add(deposit)
    flush(session)
    audit.record(
        session, actor, "deposit.taken", "card", card.id, details={"amount_fen": deposit.amount_fen}
    )
    cash.issue_receipt(session, actor, cash.ReceiptKind.DEPOSIT, deposit.amount_fen, card,
                       "temporary card deposit", at=deposit.taken_at)  # fmt: skip
    return card


def _deposit(session: Session, card: Card) -> Deposit | None:
    return find_deposit(session, card.id)


def find_deposit(session: Session, card_id: int) -> Deposit | None:
    """The deposit taken for a (temporary) card, if any."""
    return session.scalars(sa.select(Deposit).where(Deposit.card_id == card_id)).one_or_none()


def refund_deposit(session: Session, card: Card, actor: Actor) -> int:
    """Refund the deposit of a temporary card that was handed back, once (returns the amount
    refunded, in fen; 0 when already refunded or none was taken)."""
    deposit = _deposit(session, card)
    if deposit is None or deposit.refunded_at is not None:
        return 0
    if deposit.returned_at is None:
        raise ValidationError(
            "cannot refund the deposit",
            [FieldProblem("card", f"temporary card {card.card_number} was not handed back")],
        )
    deposit.refunded_at, deposit.refunded_by_id = utcnow(), actor.staff_id
    audit.record(
        session,
        actor,
        "deposit.refunded",
        "card",
        card.id,
        details={"amount_fen": deposit.amount_fen},
    )
    cash.issue_receipt(session, actor, cash.ReceiptKind.REFUND, deposit.amount_fen, card,
                       "temporary card deposit refund", at=deposit.refunded_at)  # fmt: skip
    return deposit.amount_fen


def hand_back_temporary_card(
    session: Session, card: Card, actor: Actor, *, desk: TemporaryChipDesk | None = None
) -> int:
    """The holder hands the temporary card back: the return is recorded on the deposit, the
    card is cancelled if it was still live (``hand_back``), the deposit refunded. Works also for
    a temporary card already cancelled at collection or expired. Returns the amount refunded.
    ``desk``: the returned chip, in the desk reader, is blocked first (refused, nothing
    recorded, if it is another card or does not block)."""
    if card.kind != CardKind.TEMPORARY:
        raise ValidationError("cannot hand back", [FieldProblem("card", "not a temporary card")])
    deposit = _deposit(session, card)
    if deposit is not None and deposit.returned_at is not None:
        raise TransitionError(
            f"temporary card {card.card_number} was already handed back",
            from_state=str(card.status), event=CardEvent.HAND_BACK,
        )  # fmt: skip
    if desk is not None:
        blocked = desk.block_chip(session, card, actor)
        audit.record(session, actor, "card.temporary_chip_blocked", "card", card.id,
                     details={"card_number": card.card_number, **blocked})  # fmt: skip
    if card.status == CardStatus.ACTIVE:
        lifecycle.apply_card_event(
            session, card, CardEvent.HAND_BACK, actor, reason="temporary card handed back"
        )
        lifecycle.cascade_chips(session, card, ChipEvent.CANCEL, actor, reason="handed back")
    elif card.status not in TERMINAL_CARD_STATUSES:  # e.g. reported lost, then found
        cancel(session, card, actor, "temporary card handed back")
    else:
        audit.record(
            session, actor, "card.temporary_returned", "card", card.id,
            before=str(card.status), after=str(card.status),
            details={"card_number": card.card_number},
        )  # fmt: skip
    if deposit is None:
        flush(session)
        return 0
    deposit.returned_at, deposit.returned_by_id = utcnow(), actor.staff_id
    amount = refund_deposit(session, card, actor)
    flush(session)
    return amount
