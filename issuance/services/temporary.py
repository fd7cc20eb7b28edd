"""Temporary cards: issued on the spot to someone with a pending application or a lost card;
medical function only, short expiry, a deposit taken and refunded when handed back."""

from __future__ import annotations

from datetime import date, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance import audit, lifecycle
from issuance.audit import Actor
from issuance.db import flush
from issuance.errors import FieldProblem, PermissionDenied, ValidationError
from issuance.lifecycle import CardEvent, ChipEvent
from issuance.models import (
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
from issuance.services.common import create_card, random_chip_serial
from issuance.settings import Settings

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
    settings: Settings,
    person_id: int,
    actor: Actor,
    *,
    chip_serial: bytes | None = None,
    today: date | None = None,
) -> Card:
    """Issue a temporary card at the counter (active at once, medical function only)."""
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
    live_temp = session.scalars(
        sa.select(Card.card_number).where(
            Card.person_id == person.id,
            Card.kind == CardKind.TEMPORARY,
            Card.status == CardStatus.ACTIVE,
        )
    ).first()
    if live_temp is not None:
        problems.append(FieldProblem("person", f"already holds temporary card {live_temp}"))
    if problems:
        raise ValidationError("cannot issue a temporary card", problems)
    card = create_card(
        session, settings, person, actor, kind=CardKind.TEMPORARY, status=CardStatus.ACTIVE,
        chip_serial=chip_serial or random_chip_serial(), issue_date=today,
        expiry_date=today + timedelta(days=settings.lifecycle.temporary_card_days),
        reason="temporary card issued at the counter",
    )  # fmt: skip
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
    return card


def refund_deposit(session: Session, card: Card, actor: Actor) -> int:
    """Refund the deposit of a temporary card once (returns the amount refunded, in fen)."""
    deposit = session.scalars(sa.select(Deposit).where(Deposit.card_id == card.id)).one_or_none()
    if deposit is None or deposit.refunded_at is not None:
        return 0
    deposit.refunded_at, deposit.refunded_by_id = utcnow(), actor.staff_id
    audit.record(
        session,
        actor,
        "deposit.refunded",
        "card",
        card.id,
        details={"amount_fen": deposit.amount_fen},
    )
    return deposit.amount_fen


def hand_back_temporary_card(session: Session, card: Card, actor: Actor) -> int:
    """The holder returns the temporary card: cancelled, deposit refunded (amount returned)."""
    if card.kind != CardKind.TEMPORARY:
        raise ValidationError("cannot hand back", [FieldProblem("card", "not a temporary card")])
    lifecycle.apply_card_event(
        session, card, CardEvent.HAND_BACK, actor, reason="formal card collected"
    )
    lifecycle.cascade_chips(session, card, ChipEvent.CANCEL, actor, reason="handed back")
    amount = refund_deposit(session, card, actor)
    flush(session)
    return amount
