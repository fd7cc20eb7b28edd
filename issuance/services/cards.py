"""Card services: production steps, collection, activation, suspension, bank activation,
cancellation, and the status view (with the lazy lapse of provisional loss reports)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.ids import make_card_identification_code, mask_citizen_id
from issuance import lifecycle
from issuance.audit import Actor
from issuance.db import flush
from issuance.errors import FieldProblem, ValidationError
from issuance.lifecycle import SOCIAL_KINDS, CardEvent, ChipEvent
from issuance.models import (
    Card,
    CardKind,
    CardStatus,
    ChipAppKind,
    ChipAppStatus,
    LossReport,
    LossStatus,
    utcnow,
)
from issuance.services.common import find_card
from issuance.services.outbox import enqueue
from issuance.settings import Settings


def _add_years(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def advance_production(
    session: Session,
    settings: Settings,
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


def collect_card(session: Session, card_id: int, actor: Actor) -> CollectResult:
    """Hand the formal card to its holder (status ``issued``, still sealed); any temporary card
    of the holder is handed back, cancelled, and its deposit refunded."""
    from issuance.services.temporary import hand_back_temporary_card

    card = find_card(session, card_id=card_id)
    if card.kind != CardKind.FORMAL:
        raise ValidationError("cannot collect", [FieldProblem("card", "not a formal card")])
    lifecycle.apply_card_event(session, card, CardEvent.COLLECT, actor)
    returned, refunded = [], 0
    temps = session.scalars(
        sa.select(Card).where(
            Card.person_id == card.person_id,
            Card.kind == CardKind.TEMPORARY,
            Card.status == CardStatus.ACTIVE,
        )
    ).all()
    for temp in temps:
        refunded += hand_back_temporary_card(session, temp, actor)
        returned.append(temp.card_number)
    flush(session)
    return CollectResult(card, returned, refunded)


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
    _cancel(session, card, actor, reason)
    flush(session)
    return card


def _cancel(session: Session, card: Card, actor: Actor, reason: str) -> None:
    lifecycle.apply_card_event(session, card, CardEvent.CANCEL, actor, reason=reason)
    lifecycle.cascade_chips(session, card, ChipEvent.CANCEL, actor, reason=reason)
    for report in session.scalars(
        sa.select(LossReport).where(
            LossReport.card_id == card.id, LossReport.status == LossStatus.OPEN
        )
    ):
        report.status, report.closed_at = LossStatus.CANCELLED, utcnow()
    if card.kind == CardKind.TEMPORARY:
        from issuance.services.temporary import refund_deposit

        refund_deposit(session, card, actor)


def activate_financial(
    session: Session,
    card_id: int,
    actor: Actor,
    *,
    identity_checked: bool,
    pin_set: bool,
    bank_agency_id: int | None = None,
) -> Card:
    """A bank branch activates the financial function after checking the holder's identity;
    the holder set the PIN on the card at the branch terminal (the PIN never reaches us: only
    the fact that it was set is recorded)."""
    card = find_card(session, card_id=card_id)
    problems = []
    if not identity_checked:
        problems.append(FieldProblem("identity_checked", "the holder's identity must be checked"))
    if not pin_set:
        problems.append(FieldProblem("pin_set", "the holder must set a PIN on the card"))
    if card.status != CardStatus.ACTIVE:
        problems.append(FieldProblem("card", f"the card is {card.status}, it must be active"))
    fin = card.chip_app(ChipAppKind.FINANCIAL)
    if fin is None:
        problems.append(FieldProblem("card", "the card has no financial application"))
    if problems:
        raise ValidationError("cannot activate the financial function", problems)
    assert fin is not None
    lifecycle.apply_chip_event(
        session, fin, ChipEvent.ACTIVATE, actor, reason="bank activation after identity check"
    )
    fin.pin_set = True
    fin.bank_agency_id = bank_agency_id
    flush(session)
    return card


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

    @property
    def usable(self) -> bool:
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
    """The status of one card (by an indexed key); an overdue provisional loss lapses first."""
    from issuance.services.loss import lapse_if_due

    card = find_card(
        session,
        card_id=card_id,
        card_number=card_number,
        card_identification_code=card_identification_code,
    )
    if card.status == CardStatus.LOST_PROVISIONAL:
        lapse_if_due(session, card)
    person = card.person
    return CardView(
        card.id, card.card_number, card.card_identification_code, str(card.kind),
        str(card.status), lifecycle.province_status_code(card.status), person.name,
        mask_citizen_id(person.citizen_id), card.issue_date, card.expiry_date,
        {str(a.kind): str(a.status) for a in card.chip_apps},
    )  # fmt: skip
