"""Loss / un-report / replacement / temporary card / suspension / death feed / bank flows."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import sqlalchemy as sa

from issuance import services
from issuance.errors import PermissionDenied, TransitionError, ValidationError
from issuance.models import (
    AuditEvent,
    CardStatus,
    Channel,
    ChipAppStatus,
    Deposit,
    LossStatus,
    OutboxMessage,
    utcnow,
)


def test_provisional_loss_blocks_and_lapses(session, settings, actors, new_card):
    card = new_card("active")
    phone = actors["clerk"].via(Channel.PHONE)
    report = services.report_loss(session, settings, card.id, phone, note="hotline")
    assert card.status == CardStatus.LOST_PROVISIONAL and report.kind == "provisional"
    assert card.chip_app("medical").status == ChipAppStatus.BLOCKED
    assert card.chip_app("financial").status == ChipAppStatus.SEALED  # the bank's, untouched
    assert services.card_status(session, card_id=card.id).province_code == "B"
    # not yet due
    assert services.expire_provisional_losses(session) == 0
    later = utcnow() + timedelta(hours=settings.lifecycle.provisional_loss_hours + 1)
    assert services.expire_provisional_losses(session, now=later) == 1
    assert card.status == CardStatus.ACTIVE and report.status == LossStatus.LAPSED
    assert card.chip_app("medical").status == ChipAppStatus.ACTIVE


def test_lazy_lapse_on_read(session, settings, actors, new_card):
    card = new_card("active")
    report = services.report_loss(
        session, settings, card.id, actors["clerk"].via(Channel.WEB), identity_checked=True
    )
    report.lapses_at = utcnow() - timedelta(seconds=1)
    view = services.card_status(session, card_number=card.card_number)
    assert view.status == "active" and view.province_code == "1" and view.usable


def test_web_report_needs_identity_check(session, settings, actors, new_card):
    card = new_card("active")
    with pytest.raises(ValidationError):
        services.report_loss(session, settings, card.id, actors["clerk"].via(Channel.APP))
    assert card.status == CardStatus.ACTIVE


def test_formalise_unreport_and_replacement(session, settings, actors, new_card):
    clerk = actors["clerk"]
    card = new_card("active")
    services.report_loss(session, settings, card.id, clerk.via(Channel.PHONE))
    formal = services.report_loss(session, settings, card.id, clerk, identity_checked=True)
    assert formal.kind == "formal" and card.status == CardStatus.LOST_FORMAL
    later = utcnow() + timedelta(days=365)
    assert services.expire_provisional_losses(session, now=later) == 0  # formal never lapses
    services.unreport_loss(session, card.id, clerk, identity_checked=True, note="found it")
    assert card.status == CardStatus.ACTIVE
    assert card.chip_app("social_security").status == ChipAppStatus.ACTIVE
    # lost again, then replaced: the old card is dead even if found
    services.report_loss(session, settings, card.id, clerk, identity_checked=True)
    new = services.replace_card(session, settings, card.id, clerk)
    assert card.status == CardStatus.REPLACED and card.replaced_by_id == new.id
    assert new.card_number != card.card_number and new.fee_fen == 2000
    assert new.status == CardStatus.NUMBER_ALLOCATED and new.person_id == card.person_id
    assert {a.status for a in card.chip_apps} == {ChipAppStatus.CANCELLED}
    with pytest.raises(TransitionError):
        services.unreport_loss(session, card.id, clerk, identity_checked=True)
    assert services.card_status(session, card_id=card.id).province_code == "3"


def test_temporary_card_and_deposit_refund(session, settings, actors, new_card):
    clerk = actors["clerk"]
    card = new_card("shipped")
    temp = services.issue_temporary_card(session, settings, card.person_id, clerk)
    assert temp.kind == "temporary" and temp.status == CardStatus.ACTIVE
    assert [a.kind for a in temp.chip_apps] == ["medical"]
    assert (temp.expiry_date - temp.issue_date).days == settings.lifecycle.temporary_card_days
    assert len(temp.card_identification_code) == 32
    with pytest.raises(ValidationError, match="already holds temporary"):
        services.issue_temporary_card(session, settings, card.person_id, clerk)
    result = services.collect_card(session, card.id, clerk, temporary_handed_back=True)
    assert result.temporary_cards_returned == [temp.card_number]
    assert result.temporary_cards_kept == []
    assert result.deposits_refunded_fen == settings.lifecycle.temporary_card_deposit_fen
    assert temp.status == CardStatus.CANCELLED
    dep = session.scalars(sa.select(Deposit).where(Deposit.card_id == temp.id)).one()
    assert dep.refunded_at is not None and dep.refunded_by_id == clerk.staff_id
    assert dep.returned_at is not None and dep.returned_by_id == clerk.staff_id


def test_collecting_without_the_temporary_card_keeps_the_deposit(
    session, settings, actors, new_card
):
    clerk = actors["clerk"]
    card = new_card("shipped")
    temp = services.issue_temporary_card(session, settings, card.person_id, clerk)
    result = services.collect_card(session, card.id, clerk)  # the clerk did not confirm
    assert result.temporary_cards_kept == [temp.card_number]
    assert result.temporary_cards_returned == [] and result.deposits_refunded_fen == 0
    assert temp.status == CardStatus.CANCELLED  # no longer usable...
    dep = session.scalars(sa.select(Deposit).where(Deposit.card_id == temp.id)).one()
    assert dep.refunded_at is None and dep.returned_at is None  # ...but the deposit is kept
    with pytest.raises(ValidationError, match="not handed back"):
        services.refund_deposit(session, temp, clerk)
    # weeks later the holder brings it back
    amount = services.hand_back_temporary_card(session, temp, actors["clerk2"])
    assert amount == settings.lifecycle.temporary_card_deposit_fen
    assert dep.returned_by_id == actors["clerk2"].staff_id and dep.refunded_at is not None
    with pytest.raises(TransitionError, match="already handed back"):
        services.hand_back_temporary_card(session, temp, clerk)
    actions = session.scalars(
        sa.select(AuditEvent.action).where(
            AuditEvent.entity_type == "card", AuditEvent.entity_id == str(temp.id)
        )
    ).all()
    assert "card.temporary_returned" in actions and "deposit.refunded" in actions


def test_death_cancels_a_temporary_card_without_refunding_it(
    session, settings, actors, new_card, tmp_path
):
    card = new_card("shipped")
    temp = services.issue_temporary_card(session, settings, card.person_id, actors["clerk"])
    feed = tmp_path / "d.csv"
    feed.write_text(f"{card.person.citizen_id},2024-05-01\n", encoding="utf-8")
    services.cancel_deaths(session, feed, actors["supervisor"].via(Channel.FEED))
    assert temp.status == CardStatus.CANCELLED
    dep = session.scalars(sa.select(Deposit).where(Deposit.card_id == temp.id)).one()
    assert dep.refunded_at is None


def test_temporary_card_needs_pending_application_or_lost_card(session, settings, actors, new_card):
    card = new_card("active")
    with pytest.raises(ValidationError, match="pending application"):
        services.issue_temporary_card(session, settings, card.person_id, actors["clerk"])


def test_suspension_by_fund_supervisor(session, settings, actors, new_card):
    card = new_card("active")
    with pytest.raises(PermissionDenied):
        services.suspend_card(session, card.id, actors["clerk"], "fraud")
    services.suspend_card(session, card.id, actors["fund_supervisor"], "card lent to another")
    assert card.status == CardStatus.SUSPENDED
    assert card.chip_app("medical").status == ChipAppStatus.SUSPENDED
    assert not services.card_status(session, card_id=card.id).usable
    services.lift_suspension(session, card.id, actors["fund_supervisor"], "cleared")
    assert card.status == CardStatus.ACTIVE
    assert card.chip_app("medical").status == ChipAppStatus.ACTIVE


def test_bank_activation_and_new_card_kills_old(session, settings, actors, new_card):
    card = new_card("active")
    teller = actors["bank_teller"].via(Channel.BANK)
    with pytest.raises(ValidationError) as err:
        services.activate_financial(session, card.id, teller, identity_checked=False, pin_set=False)
    assert {p.field for p in err.value.problems} == {"identity_checked", "pin"}
    with pytest.raises(ValidationError, match="branch reader"):  # a teller's flag is no proof
        services.activate_financial(session, card.id, teller, identity_checked=True, pin_set=True)
    evidence = services.PinSetOnCard(card.card_identification_code, "desk", 3, True)
    services.activate_financial(session, card.id, teller, identity_checked=True, pin=evidence)
    fin = card.chip_app("financial")
    assert fin.status == ChipAppStatus.ACTIVE and fin.pin_set
    # renewal: new card replaces the active one (inside the renewal window); activating it
    # kills the old card's functions
    new = services.replace_card(
        session, settings, card.id, actors["clerk"], reason="renewal",
        today=card.expiry_date - timedelta(days=settings.lifecycle.renewal_window_days),
    )  # fmt: skip
    for step in ("start_production", "personalise", "ship"):
        services.advance_production(
            session,
            settings,
            new.id,
            step,
            actors["clerk"],
            chip_serial=b"\x01\x02\x03\x04\x05\x06\x07\x08",
        )
    services.collect_card(session, new.id, actors["clerk"])
    services.activate_card(session, new.id, actors["clerk"])
    assert new.status == CardStatus.ACTIVE
    assert all(a.status == ChipAppStatus.CANCELLED for a in card.chip_apps)
    assert new.card_identification_code.startswith("330100D156000005")


def test_ready_notification_outbox(session, settings, actors, new_card, caplog):
    card = new_card("shipped")
    msg = session.scalars(
        sa.select(OutboxMessage).where(OutboxMessage.person_id == card.person_id)
    ).one()
    assert msg.topic == "card.ready_for_collection" and msg.sent_at is None
    with caplog.at_level(logging.INFO, logger="issuance.outbox"):
        sent = services.drain_outbox(session)
    assert sent >= 1 and msg.sent_at is not None
    assert card.person.citizen_id not in caplog.text
    assert card.card_number in caplog.text and "13800138000" not in caplog.text


def test_death_feed(session, settings, actors, new_card, tmp_path):
    card = new_card("active")
    other = new_card("shipped")
    cid = card.person.citizen_id
    feed = tmp_path / "deaths.csv"
    feed.write_text(
        "citizen_id,death_date\n"
        f"{cid},2024-05-01\n"
        f"{other.person.citizen_id},20240502\n"
        f"{cid[:17]}{'0' if cid[17] != '0' else '1'},2024-05-01\n"
        f"{cid},not-a-date\n"
        "110101199003070011,2024-05-01\n",
        encoding="utf-8",
    )
    operator = actors["supervisor"].via(Channel.FEED)
    report = services.cancel_deaths(session, feed, operator)
    assert report.persons_recorded == 2 and report.cards_cancelled == 2
    cancels = session.scalars(
        sa.select(AuditEvent).where(
            AuditEvent.action == "card.cancel", AuditEvent.entity_id == str(card.id)
        )
    ).all()
    assert [(e.actor_name, e.channel) for e in cancels] == [(operator.username, "feed")]
    assert [r.line for r in report.rejected] == [4, 5, 6]
    assert card.status == CardStatus.CANCELLED and other.status == CardStatus.CANCELLED
    assert {a.status for a in card.chip_apps} == {ChipAppStatus.CANCELLED}
    n_events = session.scalar(sa.select(sa.func.count()).select_from(AuditEvent))
    again = services.cancel_deaths(session, feed, operator)  # idempotent
    assert again.persons_recorded == 0 and again.already_done == 2
    assert session.scalar(sa.select(sa.func.count()).select_from(AuditEvent)) == n_events
    assert all(cid not in e.details for e in session.scalars(sa.select(AuditEvent)))


def test_activating_a_new_card_kills_the_social_function_of_any_other(
    session, settings, actors, new_card
):
    """Defence in depth: whatever other card the holder still has (a temporary card not yet
    cancelled, a card carried over from an older system ...), activating the new card ends its
    social security and medical functions; the bank's own function is left to the bank."""
    clerk = actors["clerk"]
    card = new_card("issued")
    other = services.create_card(
        session, settings, card.person, clerk, kind="temporary", status=CardStatus.ACTIVE,
        chip_serial=b"\x09" * 8, reason="carried over",
    )  # fmt: skip
    assert other.chip_app("medical").status == ChipAppStatus.ACTIVE
    services.activate_card(session, card.id, clerk)
    assert other.chip_app("medical").status == ChipAppStatus.CANCELLED
    assert not services.card_status(session, card_id=other.id).usable
    ev = session.scalars(
        sa.select(AuditEvent).where(
            AuditEvent.action == "chip.cancel", AuditEvent.reason.like("new card % activated")
        )
    ).one()
    assert ev.entity_id == str(other.chip_app("medical").id)
