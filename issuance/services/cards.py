"""Card services: production steps, collection, activation, suspension, cancellation, expiry,
and the status view (with the lazy lapse of provisional loss reports and the lazy expiry).

Bank activation is in :mod:`issuance.services.financial` (re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.ids import make_card_identification_code, mask_citizen_id
from issuance import lifecycle
from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.db import flush
from issuance.errors import FieldProblem, ValidationError
from issuance.lifecycle import SOCIAL_KINDS, CardEvent, ChipEvent
from issuance.models import (
    TERMINAL_CARD_STATUSES,
    Card,
    CardKind,
    CardStatus,
    ChipAppKind,
    ChipAppStatus,
)
from issuance.services.card_steps import (
    EXPIRABLE,
    cancel,
    expire_if_due,
    lapse_if_due,
    live_temporary_cards,
)
from issuance.services.common import find_card
from issuance.services.financial import activate_financial as activate_financial
from issuance.services.outbox import enqueue
from issuance.services.pins import PinStateView, pin_states
from issuance.services.temporary import hand_back_temporary_card
from issuance.settings import IssuanceConfig


def _add_years(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def advance_production(
    session: Session,
    settings: IssuanceConfig,
    card_id: int,
    event: str,
    actor: Actor,
    *,
    chip_serial: bytes | None = None,
    today: date | None = None,
) -> Card:
    """``start_production`` / ``personalise`` / ``ship`` one card.

    Personalising records the chip (card identification code from ``chip_serial``) and the
    issue and expiry dates; shipping queues the "ready for collection" notification.
    """
    if event not in (CardEvent.START_PRODUCTION, CardEvent.PERSONALISE, CardEvent.SHIP):
        raise ValueError(f"{event} is not a production step")
    card = find_card(session, card_id=card_id)
    lifecycle.card_transition(card.status, event)  # fail before touching anything
    if event == CardEvent.PERSONALISE:
        if card.card_identification_code is None:
            if chip_serial is None:
                raise ValidationError(
                    "cannot personalise", [FieldProblem("chip_serial", "required")]
                )
            card.card_identification_code = make_card_identification_code(
                card.region_code, chip_serial
            )
        card.issue_date = today or date.today()
        card.expiry_date = _add_years(card.issue_date, settings.lifecycle.card_validity_years)
    lifecycle.apply_card_event(session, card, event, actor)
    if event == CardEvent.SHIP:
        person = card.person
        enqueue(
            session,
            "card.ready_for_collection",
            person_id=person.id,
            recipient=person.phone,
            payload={
                "card_number": card.card_number,
                "name": person.name,
                "citizen_id": mask_citizen_id(person.citizen_id),
            },
        )
    flush(session)
    return card


@dataclass
class CollectResult:
    card: Card
    temporary_cards_returned: list[str]
    deposits_refunded_fen: int
    #: temporary cards cancelled at collection but not handed back (deposits kept until they are)
    temporary_cards_kept: list[str] = field(default_factory=list)


def collect_card(
    session: Session, card_id: int, actor: Actor, *, temporary_handed_back: bool = False
) -> CollectResult:
    """Hand the formal card to its holder (status ``issued``, still sealed).

    The holder's temporary card is no longer needed: with ``temporary_handed_back`` (the clerk
    confirms it was returned) it is handed back and its deposit refunded; otherwise it is
    cancelled by the system and the deposit stays until the card is handed back
    (:func:`issuance.services.temporary.hand_back_temporary_card`).
    """
    card = find_card(session, card_id=card_id)
    if card.kind != CardKind.FORMAL:
        raise ValidationError("cannot collect", [FieldProblem("card", "not a formal card")])
    lifecycle.apply_card_event(session, card, CardEvent.COLLECT, actor)
    result = CollectResult(card, [], 0)
    for temp in live_temporary_cards(session, card.person_id):
        expire_if_due(session, temp)
        if temporary_handed_back:
            result.deposits_refunded_fen += hand_back_temporary_card(session, temp, actor)
            result.temporary_cards_returned.append(temp.card_number)
        elif temp.status not in TERMINAL_CARD_STATUSES:
            cancel(
                session, temp, SYSTEM_ACTOR,
                f"formal card {card.card_number} collected (by {actor.username}); "
                "temporary card not handed back, deposit kept until it is",
            )  # fmt: skip
            result.temporary_cards_kept.append(temp.card_number)
        else:
            result.temporary_cards_kept.append(temp.card_number)
    flush(session)
    return result


def activate_card(session: Session, card_id: int, actor: Actor) -> Card:
    """Activate the social security function of an issued card; the holder's other cards lose
    their social functions (activating a new card kills the old one's)."""
    card = find_card(session, card_id=card_id)
    lifecycle.apply_card_event(session, card, CardEvent.ACTIVATE, actor)
    lifecycle.cascade_chips(session, card, ChipEvent.ACTIVATE, actor, kinds=SOCIAL_KINDS)
    others = session.scalars(
        sa.select(Card).where(Card.person_id == card.person_id, Card.id != card.id)
    ).all()
    for old in others:
        lifecycle.cascade_chips(
            session,
            old,
            ChipEvent.CANCEL,
            actor,
            kinds=SOCIAL_KINDS,
            reason=f"new card {card.card_number} activated",
        )
    flush(session)
    return card


def suspend_card(session: Session, card_id: int, actor: Actor, reason: str) -> Card:
    """Fund supervisor suspends a card (violation); its social functions are suspended."""
    card = find_card(session, card_id=card_id)
    lifecycle.apply_card_event(session, card, CardEvent.SUSPEND, actor, reason=reason)
    lifecycle.cascade_chips(
        session, card, ChipEvent.SUSPEND, actor, kinds=SOCIAL_KINDS, reason=reason
    )
    flush(session)
    return card


def lift_suspension(session: Session, card_id: int, actor: Actor, reason: str) -> Card:
    card = find_card(session, card_id=card_id)
    lifecycle.apply_card_event(session, card, CardEvent.LIFT, actor, reason=reason)
    lifecycle.cascade_chips(session, card, ChipEvent.LIFT, actor, kinds=SOCIAL_KINDS, reason=reason)
    flush(session)
    return card


def report_damaged(session: Session, card_id: int, actor: Actor, reason: str | None = None) -> Card:
    card = find_card(session, card_id=card_id)
    lifecycle.apply_card_event(session, card, CardEvent.REPORT_DAMAGED, actor, reason=reason)
    flush(session)
    return card


def cancel_card(session: Session, card_id: int, actor: Actor, reason: str) -> Card:
    """Cancel for good (death, emigration, insurance moved away): every function stops."""
    card = find_card(session, card_id=card_id)
    cancel(session, card, actor, reason)
    flush(session)
    return card


def expire_cards(session: Session, today: date | None = None, limit: int = 10_000) -> int:
    """Worker/CLI (``ykt cards expire``): expire every card past its expiry date. Rows are
    taken with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several workers share the work and
    a counter busy with a card is not waited for (it is expired on the next round or read).
    Returns the number of cards expired."""
    today = today or date.today()
    stmt = (
        sa.select(Card)
        .where(Card.expiry_date < today, Card.status.in_(sorted(EXPIRABLE)))
        .order_by(Card.expiry_date, Card.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    count = 0
    for card in list(session.scalars(stmt)):
        if expire_if_due(session, card, today):
            count += 1
    return count


@dataclass(frozen=True)
class CardView:
    """What a hospital, a bank or the API may see of a card (holder number masked)."""

    card_id: int
    card_number: str
    card_identification_code: str | None
    kind: str
    status: str
    province_code: str
    holder_name: str
    holder_citizen_id_masked: str
    issue_date: date | None
    expiry_date: date | None
    chip_apps: dict[str, str]
    #: What readers reported of each PIN (``ss``, ``bank``): tries left, blocked.
    pins: dict[str, PinStateView] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.usable_on(date.today())

    def usable_on(self, day: date) -> bool:
        """Active, not past its expiry date, and its social (or medical) function active."""
        if self.expiry_date is not None and self.expiry_date < day:
            return False
        return self.status == CardStatus.ACTIVE and (
            self.chip_apps.get(ChipAppKind.SOCIAL_SECURITY) == ChipAppStatus.ACTIVE
            or self.chip_apps.get(ChipAppKind.MEDICAL) == ChipAppStatus.ACTIVE
        )


def card_status(
    session: Session,
    *,
    card_id: int | None = None,
    card_number: str | None = None,
    card_identification_code: str | None = None,
) -> CardView:
    """The status of one card (by an indexed key); an overdue provisional loss lapses and a
    card past its expiry date expires first."""
    card = find_card(
        session,
        card_id=card_id,
        card_number=card_number,
        card_identification_code=card_identification_code,
    )
    if card.status == CardStatus.LOST_PROVISIONAL:
        lapse_if_due(session, card)
    expire_if_due(session, card)
    person = card.person
    return CardView(
        card.id, card.card_number, card.card_identification_code, str(card.kind),
        str(card.status), lifecycle.province_status_code(card.status), person.name,
        mask_citizen_id(person.citizen_id), card.issue_date, card.expiry_date,
        {str(a.kind): str(a.status) for a in card.chip_apps}, pin_states(session, card.id),
    )  # fmt: skip
