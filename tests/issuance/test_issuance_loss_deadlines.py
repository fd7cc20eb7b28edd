"""Loss reports from every state where the holder has the card, their deadlines (provisional
lapse, formal cancellation where the city does so), and the formal loss -> replacement path."""

from __future__ import annotations

from datetime import timedelta

import pytest

from issuance import services
from issuance.errors import TransitionError
from issuance.lifecycle import CARD_TRANSITIONS, CardEvent
from issuance.models import CardStatus, Channel, ChipAppStatus, LossStatus, utcnow
from yikatong.settings import load_settings


def _social(card) -> set[str]:
    return {str(card.chip_app(k).status) for k in ("social_security", "medical", "pension")}


def test_loss_is_declared_exactly_where_the_holder_has_the_card():
    for event in (CardEvent.REPORT_LOSS_PROVISIONAL, CardEvent.REPORT_LOSS_FORMAL):
        froms = {t.from_state for t in CARD_TRANSITIONS if t.event == event}
        # the holder has it: issued, active, or suspended (issue 16; a city setting)
        assert froms == {CardStatus.ISSUED, CardStatus.ACTIVE, CardStatus.SUSPENDED}, event


def test_card_lost_before_activation_lapses_back_to_issued(session, settings, actors, new_card):
    card = new_card("issued")
    report = services.report_loss(
        session, settings, card.id, actors["clerk"].via(Channel.PHONE), note="lost on the bus"
    )
    assert card.status == CardStatus.LOST_PROVISIONAL
    assert _social(card) == {"sealed"}  # never unsealed: nothing to block
    assert services.card_status(session, card_id=card.id).province_code == "B"
    due = report.lapses_at
    assert due is not None
    assert due - report.reported_at == timedelta(hours=settings.lifecycle.provisional_loss_hours)
    assert services.expire_provisional_losses(session, now=due - timedelta(seconds=1)) == 0
    r = services.run_loss_deadlines(session, settings, now=due + timedelta(seconds=1))
    assert (r.lapsed, r.cancelled) == (1, 0)
    assert card.status == CardStatus.ISSUED and report.status == LossStatus.LAPSED
    # still sealed: it must be activated like any issued card
    services.activate_card(session, card.id, actors["clerk"])
    assert card.status == CardStatus.ACTIVE and _social(card) == {"active"}


def test_lazy_lapse_of_an_unactivated_card_on_read(session, settings, actors, new_card):
    card = new_card("issued")
    report = services.report_loss(
        session, settings, card.id, actors["clerk"].via(Channel.WEB), identity_checked=True
    )
    report.lapses_at = utcnow() - timedelta(seconds=1)
    view = services.card_status(session, card_number=card.card_number)
    assert view.status == "issued" and view.province_code == "A" and not view.usable
    assert report.status == LossStatus.LAPSED


def test_formal_loss_of_issued_card_unreported_back_to_issued(session, settings, actors, new_card):
    clerk = actors["clerk"]
    card = new_card("issued")
    services.report_loss(session, settings, card.id, clerk, identity_checked=True)
    assert card.status == CardStatus.LOST_FORMAL
    services.unreport_loss(session, card.id, clerk, identity_checked=True, note="in a drawer")
    assert card.status == CardStatus.ISSUED and _social(card) == {"sealed"}


def test_suspended_card_cannot_be_reported_lost_where_the_city_says_so(
    session, settings, actors, new_card
):
    strict = settings.model_copy(
        update={"lifecycle": settings.lifecycle.model_copy(
            update={"loss_of_suspended_card": False})}
    )  # fmt: skip
    card = new_card("active")
    services.suspend_card(session, card.id, actors["fund_supervisor"], "lent to another person")
    for actor in (actors["clerk"], actors["clerk"].via(Channel.PHONE)):
        with pytest.raises(TransitionError, match="loss_of_suspended_card"):
            services.report_loss(session, strict, card.id, actor, identity_checked=True)
    assert card.status == CardStatus.SUSPENDED
    assert card.chip_app("medical").status == ChipAppStatus.SUSPENDED


def test_suspended_card_reported_lost_stays_suspended(session, settings, actors, new_card):
    """Issue 16: a suspended card can be reported lost (the default); the loss report never
    gets round the suspension: lapse and un-report go back to suspended, no replacement while
    suspended, the fund supervisor lifts it once the card is back, or it is cancelled."""
    clerk, fund = actors["clerk"], actors["fund_supervisor"]
    card = new_card("active")
    services.suspend_card(session, card.id, fund, "lent to another person")
    r = services.report_loss(session, settings, card.id, clerk.via(Channel.PHONE),
                             identity_checked=True)  # fmt: skip
    assert card.status == CardStatus.LOST_PROVISIONAL and r.kind == "provisional"
    assert _social(card) == {"suspended"}
    later = utcnow() + timedelta(hours=settings.lifecycle.provisional_loss_hours + 1)
    assert services.expire_provisional_losses(session, now=later) == 1
    assert card.status == CardStatus.SUSPENDED and _social(card) == {"suspended"}
    services.report_loss(session, settings, card.id, clerk, identity_checked=True)
    assert card.status == CardStatus.LOST_FORMAL
    with pytest.raises(TransitionError, match="not replaced while suspended"):
        services.replace_card(session, settings, card.id, clerk)
    services.unreport_loss(session, card.id, clerk, identity_checked=True, note="found")
    assert card.status == CardStatus.SUSPENDED and _social(card) == {"suspended"}
    services.lift_suspension(session, card.id, fund, "returned")
    assert card.status == CardStatus.ACTIVE and _social(card) == {"active"}
    # lost again while suspended, and cancelled by the counter
    services.suspend_card(session, card.id, fund, "again")
    services.report_loss(session, settings, card.id, clerk, identity_checked=True)
    services.cancel_card(session, card.id, actors["supervisor"], "holder moved away")
    assert card.status == CardStatus.CANCELLED


def test_formal_loss_leads_to_replacement_and_new_card_in_use(session, settings, actors, new_card):
    clerk = actors["clerk"]
    old = new_card("active")
    services.report_loss(session, settings, old.id, clerk.via(Channel.PHONE))
    services.formalise_loss(session, old.id, clerk, identity_checked=True)
    assert old.status == CardStatus.LOST_FORMAL
    new = services.replace_card(session, settings, old.id, clerk, reason="lost")
    assert old.status == CardStatus.REPLACED and old.replaced_by_id == new.id
    assert {str(a.status) for a in old.chip_apps} == {"cancelled"}
    for step in ("start_production", "personalise", "ship"):
        services.advance_production(
            session, settings, new.id, step, clerk, chip_serial=bytes.fromhex("0011223344556677")
        )
    assert new.card_identification_code != old.card_identification_code
    services.collect_card(session, new.id, clerk)
    services.activate_card(session, new.id, clerk)
    assert new.status == CardStatus.ACTIVE and _social(new) == {"active"}
    # the old card stays dead: found again, it cannot be un-reported nor lapse
    with pytest.raises(TransitionError):
        services.unreport_loss(session, old.id, clerk, identity_checked=True)
    assert services.run_loss_deadlines(session, settings, now=utcnow() + timedelta(days=400)) == (
        services.LossDeadlineReport(0, 0)
    )
    assert old.status == CardStatus.REPLACED


def test_formal_loss_turns_into_cancellation_where_the_city_says_so(
    session, tmp_path, actors, new_card
):
    city = load_settings(
        environ={"YKT_DATA_DIR": str(tmp_path), "YKT_LIFECYCLE__FORMAL_LOSS_CANCEL_DAYS": "15"}
    )
    clerk = actors["clerk"]
    card = new_card("active")
    found = new_card("active")
    start = utcnow()
    report = services.report_loss(session, city, card.id, clerk, identity_checked=True, now=start)
    services.report_loss(session, city, found.id, clerk, identity_checked=True, now=start)
    services.unreport_loss(session, found.id, clerk, identity_checked=True)
    assert services.cancel_overdue_formal_losses(session, city, start + timedelta(days=14)) == 0
    assert card.status == CardStatus.LOST_FORMAL
    r = services.run_loss_deadlines(session, city, now=start + timedelta(days=15, seconds=1))
    assert r.cancelled == 1
    assert card.status == CardStatus.CANCELLED and report.status == LossStatus.CANCELLED
    assert {str(a.status) for a in card.chip_apps} == {"cancelled"}
    assert found.status == CardStatus.ACTIVE  # un-reported in time: untouched
    with pytest.raises(TransitionError):
        services.unreport_loss(session, card.id, clerk, identity_checked=True)


def test_formal_loss_never_cancelled_by_default(session, settings, actors, new_card):
    assert settings.lifecycle.formal_loss_cancel_days == 0
    card = new_card("active")
    services.report_loss(session, settings, card.id, actors["clerk"], identity_checked=True)
    far = utcnow() + timedelta(days=3650)
    assert services.cancel_overdue_formal_losses(session, settings, far) == 0
    assert card.status == CardStatus.LOST_FORMAL
