"""Card expiry: the expiry job, lazy expiry on read, what an expired card still blocks (nothing),
and the renewal window."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
import sqlalchemy as sa
from issuance_helpers import submit

from issuance import services
from issuance.errors import ValidationError
from issuance.models import AuditEvent, CardStatus, ChipAppStatus, Deposit


def test_expiry_job_expires_cards_past_their_date(session, settings, actors, new_card):
    card = new_card("active")
    other = new_card("active")
    assert card.expiry_date is not None
    assert services.expire_cards(session, today=card.expiry_date) == 0  # valid through that day
    day_after = card.expiry_date + timedelta(days=1)
    assert services.expire_cards(session, today=day_after) == 2
    assert card.status == other.status == CardStatus.EXPIRED
    assert {a.status for a in card.chip_apps} == {ChipAppStatus.CANCELLED}
    assert services.expire_cards(session, today=day_after) == 0  # nothing left
    ev = session.scalars(
        sa.select(AuditEvent).where(
            AuditEvent.action == "card.expire", AuditEvent.entity_id == str(card.id)
        )
    ).one()
    assert ev.actor_role == "system" and ev.after == "expired"


def test_cards_not_yet_personalised_do_not_expire(session, settings, actors, new_card):
    card = new_card("in_production")
    assert card.expiry_date is None
    assert services.expire_cards(session, today=date.today() + timedelta(days=5000)) == 0
    assert card.status == CardStatus.IN_PRODUCTION


def test_lazy_expiry_on_read_and_usable(session, settings, actors, new_card):
    card = new_card("active")
    view = services.card_status(session, card_id=card.id)
    assert view.usable and view.usable_on(card.expiry_date)
    assert not view.usable_on(card.expiry_date + timedelta(days=1))  # the view knows the date
    card.expiry_date = date.today() - timedelta(days=1)  # as if ten years went by
    session.flush()
    view = services.card_status(session, card_number=card.card_number)
    assert view.status == "expired" and view.province_code == "4" and not view.usable
    assert card.status == CardStatus.EXPIRED


def test_expired_temporary_card_no_longer_blocks_a_new_one(session, settings, actors, new_card):
    clerk = actors["clerk"]
    card = new_card("shipped")
    temp = services.issue_temporary_card(session, settings, card.person_id, clerk)
    with pytest.raises(ValidationError, match="already holds temporary"):
        services.issue_temporary_card(session, settings, card.person_id, clerk)
    later = temp.expiry_date + timedelta(days=1)
    second = services.issue_temporary_card(session, settings, card.person_id, clerk, today=later)
    assert temp.status == CardStatus.EXPIRED and second.status == CardStatus.ACTIVE
    assert second.expiry_date == later + timedelta(days=settings.lifecycle.temporary_card_days)
    dep = session.scalars(sa.select(Deposit).where(Deposit.card_id == temp.id)).one()
    assert dep.refunded_at is None  # not handed back: the first deposit is kept
    assert services.hand_back_temporary_card(session, temp, clerk) == dep.amount_fen


def test_renewal_window(session, settings, actors, new_card):
    clerk = actors["clerk"]
    card = new_card("active")
    window = settings.lifecycle.renewal_window_days
    opens = card.expiry_date - timedelta(days=window)
    with pytest.raises(ValidationError, match=f"possible from {opens}"):
        services.replace_card(session, settings, card.id, clerk, reason="renewal",
                              today=opens - timedelta(days=1))  # fmt: skip
    assert card.status == CardStatus.ACTIVE  # nothing changed
    new = services.replace_card(session, settings, card.id, clerk, reason="renewal", today=opens)
    assert card.status == CardStatus.REPLACED and card.replaced_by_id == new.id


def test_expired_card_is_renewed_or_reapplied_for(session, settings, actors, new_card):
    clerk = actors["clerk"]
    card = new_card("active")
    after = card.expiry_date + timedelta(days=30)
    new = services.replace_card(session, settings, card.id, clerk, reason="renewal", today=after)
    assert card.status == CardStatus.REPLACED and new.status == CardStatus.NUMBER_ALLOCATED
    # another holder whose card expired may simply apply again: the expired card blocks nothing
    other = new_card("active")
    other.expiry_date = date.today() - timedelta(days=1)
    session.flush()
    app = submit(session, settings, actors["clerk2"], citizen_id=other.person.citizen_id,
                 name=other.person.name)  # fmt: skip
    assert app.person_id == other.person_id and other.status == CardStatus.EXPIRED


def test_lost_damaged_cards_are_replaced_whatever_the_date(session, settings, actors, new_card):
    card = new_card("active")
    services.report_damaged(session, card.id, actors["clerk"], "chip cracked")
    new = services.replace_card(session, settings, card.id, actors["clerk"])
    assert new.fee_fen == settings.lifecycle.replacement_fee_fen
