"""The compound lifecycle steps several services take: cancelling a card with its functions
and open loss reports, expiring a card past its date, lapsing an overdue provisional loss.

Each is one rule used by the card, loss, temporary-card and death services alike (and on every
read of a card's status), so it lives here, below all of them, and is public.
"""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance import audit, lifecycle
from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.db import flush
from issuance.lifecycle import SOCIAL_KINDS, CardEvent, ChipEvent
from issuance.models import (
    TERMINAL_CARD_STATUSES,
    Card,
    CardKind,
    CardStatus,
    ChipAppKind,
    ChipAppStatus,
    Ecard,
    LossKind,
    LossReport,
    LossStatus,
    utcnow,
)


def live_temporary_cards(session: Session, person_id: int) -> list[Card]:
    return list(session.scalars(
        sa.select(Card).where(
            Card.person_id == person_id, Card.kind == CardKind.TEMPORARY,
            Card.status.not_in(TERMINAL_CARD_STATUSES),
        )
    ))  # fmt: skip


def close_open_reports(session: Session, card: Card) -> None:
    for report in session.scalars(
        sa.select(LossReport).where(
            LossReport.card_id == card.id, LossReport.status == LossStatus.OPEN
        )
    ):
        report.status, report.closed_at = LossStatus.CANCELLED, utcnow()


def cancel(session: Session, card: Card, actor: Actor, reason: str) -> None:
    """Cancel with every function. A temporary card's deposit is NOT refunded here: only
    when the card itself is handed back (``hand_back_temporary_card``)."""
    lifecycle.apply_card_event(session, card, CardEvent.CANCEL, actor, reason=reason)
    lifecycle.cascade_chips(session, card, ChipEvent.CANCEL, actor, reason=reason)
    close_open_reports(session, card)
    ecard_follows_card(session, card, actor)


#: States from which a card expires (before personalisation it has no expiry date).
EXPIRABLE = frozenset(
    t.from_state for t in lifecycle.CARD_TRANSITIONS if t.event == CardEvent.EXPIRE
)


def is_past_expiry(card: Card, today: date | None = None) -> bool:
    """True once the card's expiry date has passed (a card is valid through that day)."""
    return card.expiry_date is not None and card.expiry_date < (today or date.today())


def expire_if_due(session: Session, card: Card, today: date | None = None) -> bool:
    """Expire ``card`` if its expiry date has passed (run on every read and by the worker):
    every function stops, open loss reports close. A temporary card's deposit stays until the
    card is handed back. Returns True when the card was expired now."""
    if not is_past_expiry(card, today) or str(card.status) not in EXPIRABLE:
        return False
    reason = f"expired on {card.expiry_date}"
    lifecycle.apply_card_event(session, card, CardEvent.EXPIRE, SYSTEM_ACTOR, reason=reason)
    lifecycle.cascade_chips(session, card, ChipEvent.CANCEL, SYSTEM_ACTOR, reason=reason)
    close_open_reports(session, card)
    ecard_follows_card(session, card, SYSTEM_ACTOR)
    flush(session)
    return True


def restore_event(card: Card, event: str) -> str:
    """The event that puts a lost card back where it was: ``event`` (-> active), or its
    ``*_to_issued`` twin when the card was lost before activation (its social security
    function is still sealed: only activation unseals it)."""
    social = card.chip_app(ChipAppKind.SOCIAL_SECURITY)
    if social is not None and social.status == ChipAppStatus.SUSPENDED:
        return {
            CardEvent.LAPSE: CardEvent.LAPSE_TO_SUSPENDED,
            CardEvent.UNREPORT: CardEvent.UNREPORT_TO_SUSPENDED,
        }[event]
    if social is not None and social.status == ChipAppStatus.SEALED:
        return {
            CardEvent.LAPSE: CardEvent.LAPSE_TO_ISSUED,
            CardEvent.UNREPORT: CardEvent.UNREPORT_TO_ISSUED,
        }[event]
    return event


def open_reports(session: Session, card_id: int) -> list[LossReport]:
    return list(session.scalars(
        sa.select(LossReport).where(LossReport.card_id == card_id,
                                    LossReport.status == LossStatus.OPEN)
    ))  # fmt: skip


def lapse_if_due(session: Session, card: Card, now: datetime | None = None) -> bool:
    """Lapse the card's provisional loss report if its time is up (also run on every read)."""
    now = now or utcnow()
    if card.status != CardStatus.LOST_PROVISIONAL:
        return False
    reports = [r for r in open_reports(session, card.id) if r.kind == LossKind.PROVISIONAL]
    if not reports or any(r.lapses_at is None or r.lapses_at > now for r in reports):
        return False
    lifecycle.apply_card_event(
        session,
        card,
        restore_event(card, CardEvent.LAPSE),
        SYSTEM_ACTOR,
        reason="provisional loss report lapsed",
    )
    lifecycle.cascade_chips(
        session,
        card,
        ChipEvent.UNBLOCK,
        SYSTEM_ACTOR,
        kinds=SOCIAL_KINDS,
        reason="provisional loss report lapsed",
    )
    for r in reports:
        r.status, r.closed_at = LossStatus.LAPSED, now
    flush(session)
    return True


def ecard_follows_card(session: Session, card: Card, actor: Actor) -> None:
    """The e-card follows its card (the one rule; issue 21): once the card it is bound to has
    ended, the e-card moves to the card that replaced it (``ecard.moved``), or ends with the
    card's status as its reason (``ecard.ended``: cancelled - a death record cancels too -,
    expired, or replaced without a successor). Run where a card ends (cancellation, expiry,
    replacement) and again on every read of an e-card (idempotent), so a card ended by any
    other path is caught too."""
    if card.status not in TERMINAL_CARD_STATUSES:
        return
    live = session.scalars(
        sa.select(Ecard).where(Ecard.card_id == card.id, Ecard.ended_at.is_(None))
    ).first()
    if live is None:
        return
    successor = session.get(Card, card.replaced_by_id) if card.replaced_by_id else None
    if card.status == CardStatus.REPLACED and successor is not None:
        live.card_id, live.loss_authorised_report_id = successor.id, None
        flush(session)
        audit.record(
            session, actor, "ecard.moved", "ecard", live.id, before=card.card_number,
            after=successor.card_number, reason=f"card {card.card_number} replaced",
            details={"from_card": card.card_number, "to_card": successor.card_number},
        )  # fmt: skip
        ecard_follows_card(session, successor, actor)
        return
    live.ended_at, live.end_reason = utcnow(), str(card.status)
    flush(session)
    audit.record(
        session, actor, "ecard.ended", "ecard", live.id, after="ended",
        reason=f"card {card.card_number} {card.status}",
        details={"card_number": card.card_number, "card_status": str(card.status)},
    )  # fmt: skip
