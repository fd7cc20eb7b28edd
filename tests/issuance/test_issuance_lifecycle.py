"""The transition tables: every declared transition works and writes one audit event;
undeclared ones raise and change nothing."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa
from issuance_helpers import submit

from issuance import lifecycle
from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.errors import PermissionDenied, TransitionError
from issuance.lifecycle import (
    APPLICATION_TRANSITIONS,
    BATCH_TRANSITIONS,
    CARD_TRANSITIONS,
    CHIP_TRANSITIONS,
    ITEM_TRANSITIONS,
    PROVINCE_STATUS_CODES,
)
from issuance.models import (
    ApplicationStatus,
    AuditEvent,
    Batch,
    BatchItem,
    BatchStage,
    BatchStatus,
    CardStatus,
    Channel,
    ChipAppStatus,
    StaffRole,
)


def _count(session) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(AuditEvent))


def _actor_for(t: lifecycle.Transition) -> Actor:
    role = sorted(t.roles)[0]
    channel = sorted(t.channels)[0] if t.channels else Channel.COUNTER
    return Actor(f"test-{role}", role, channel, None)


@pytest.mark.parametrize("t", CARD_TRANSITIONS, ids=lambda t: f"{t.from_state}-{t.event}")
def test_declared_card_transition(session, new_card, t):
    card = new_card("number_allocated")
    card.status = CardStatus(t.from_state)
    session.flush()
    before = _count(session)
    lifecycle.apply_card_event(session, card, t.event, _actor_for(t), reason="test")
    session.flush()
    assert card.status == t.to_state
    assert _count(session) == before + 1
    ev = session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id.desc())).first()
    assert (ev.action, ev.before, ev.after) == (f"card.{t.event}", t.from_state, t.to_state)
    assert ev.entity_id == str(card.id) and ev.reason == "test"


EVENTS = sorted({t.event for t in CARD_TRANSITIONS})
UNDECLARED = [
    (s, e)
    for s in CardStatus
    for e in EVENTS
    if (str(s), e) not in {(t.from_state, t.event) for t in CARD_TRANSITIONS}
]


def test_undeclared_card_transitions_raise_and_change_nothing(session, new_card):
    assert len(UNDECLARED) > 100
    card = new_card("number_allocated")
    admin = Actor("root", StaffRole.SYSTEM, Channel.SYSTEM)
    for state, event in UNDECLARED:
        card.status = state
        session.flush()
        before = _count(session)
        with pytest.raises(TransitionError):
            lifecycle.apply_card_event(session, card, event, admin)
        assert card.status == state
        assert _count(session) == before


def test_role_and_channel_are_enforced(session, new_card, actors):
    card = new_card("active")
    with pytest.raises(PermissionDenied):  # a clerk cannot suspend
        lifecycle.apply_card_event(session, card, "suspend", actors["clerk"])
    with pytest.raises(PermissionDenied):  # a provisional report cannot come from the counter
        lifecycle.apply_card_event(session, card, "report_loss_provisional", actors["clerk"])
    with pytest.raises(PermissionDenied):  # lapse is the system's
        card.status = CardStatus.LOST_PROVISIONAL
        lifecycle.apply_card_event(session, card, "lapse", actors["supervisor"])
    assert card.status == CardStatus.LOST_PROVISIONAL


def _chip_id(t: lifecycle.Transition) -> str:
    return f"{t.from_state}-{t.event}-{'-'.join(sorted(t.kinds or []))}"


@pytest.mark.parametrize("t", CHIP_TRANSITIONS, ids=_chip_id)
def test_declared_chip_transition(session, new_card, t):
    card = new_card("active")
    app = next(a for a in card.chip_apps if t.kinds is None or a.kind in t.kinds)
    app.status = ChipAppStatus(t.from_state)
    session.flush()
    before = _count(session)
    lifecycle.apply_chip_event(session, app, t.event, _actor_for(t))
    session.flush()
    assert app.status == t.to_state
    assert _count(session) == before + 1


def test_undeclared_chip_transition(session, new_card, actors):
    card = new_card("active")
    fin = card.chip_app("financial")
    assert fin.status == ChipAppStatus.SEALED  # bank function inactive, social active
    assert card.chip_app("social_security").status == ChipAppStatus.ACTIVE
    with pytest.raises(TransitionError):
        lifecycle.apply_chip_event(session, fin, "lift", SYSTEM_ACTOR)
    with pytest.raises(PermissionDenied):  # only a bank teller at a bank activates finance
        lifecycle.apply_chip_event(session, fin, "activate", actors["clerk"])
    fin.status = ChipAppStatus.CANCELLED
    for event in ("activate", "suspend", "lift", "block", "unblock", "cancel"):
        with pytest.raises(TransitionError):
            lifecycle.apply_chip_event(session, fin, event, SYSTEM_ACTOR)
    assert fin.status == ChipAppStatus.CANCELLED


def test_province_codes_cover_every_state():
    assert set(PROVINCE_STATUS_CODES) == set(CardStatus)
    assert set(PROVINCE_STATUS_CODES.values()) == {"0", "1", "A", "B", "2", "3", "4"}
    assert lifecycle.province_status_code("lost_provisional") == "B"
    assert lifecycle.province_status_code(CardStatus.ACTIVE) == "1"


# --- applications, batches, batch items -------------------------------------------------------


def _last_event(session) -> AuditEvent:
    return session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id.desc())).first()


def _undeclared(table, states) -> list[tuple[str, str]]:
    declared = {(t.from_state, t.event) for t in table}
    events = sorted({t.event for t in table})
    return [(str(s), e) for s in states for e in events if (str(s), e) not in declared]


def test_audit_event_names_are_those_written_before_the_tables():
    """The tables keep every audit event name the code wrote before them; batch.started and
    batch.produced are new (the batch status had no event)."""
    assert {t.audit_event for t in APPLICATION_TRANSITIONS} == {
        "application.processed", "application.reviewed", "application.approved",
        "application.rejected", "application.withdrawn",
    }  # fmt: skip
    assert {t.audit_event for t in ITEM_TRANSITIONS} == {
        f"batch_item.{e}" for e in (
            "prepare", "encode", "personalised", "print", "check", "ship", "issue", "export",
            "bureau_made", "spoil", "fail", "retry", "withdraw",
        )
    }  # fmt: skip
    assert {t.audit_event for t in BATCH_TRANSITIONS} == {"batch.started", "batch.produced"}
    assert all(t.audit_event == f"card.{t.event}" for t in CARD_TRANSITIONS)
    assert all(t.audit_event == f"chip.{t.event}" for t in CHIP_TRANSITIONS)


def test_every_state_is_reachable_in_the_new_tables():
    for table, states, initial in (
        (APPLICATION_TRANSITIONS, ApplicationStatus, lifecycle.APPLICATION_INITIAL),
        (BATCH_TRANSITIONS, BatchStatus, lifecycle.BATCH_INITIAL),
        (ITEM_TRANSITIONS, BatchStage, lifecycle.ITEM_INITIAL),
    ):
        assert {t.to_state for t in table} | {initial} == set(states)
        assert {t.from_state for t in table} <= set(states)


@pytest.fixture
def application(session, settings, actors):
    return submit(session, settings, actors["clerk"])


@pytest.mark.parametrize("t", APPLICATION_TRANSITIONS, ids=lambda t: f"{t.from_state}-{t.event}")
def test_declared_application_transition(session, application, t):
    application.status = ApplicationStatus(t.from_state)
    session.flush()
    before = _count(session)
    lifecycle.apply_application_event(session, application, t.event, _actor_for(t), reason="r")
    session.flush()
    assert application.status == t.to_state
    assert _count(session) == before + 1
    ev = _last_event(session)
    assert (ev.action, ev.entity_type, ev.entity_id) == (
        t.audit_event,
        "application",
        str(application.id),
    )
    assert (ev.before, ev.after, ev.reason) == (t.from_state, t.to_state, "r")


def test_undeclared_application_transitions_raise_and_change_nothing(session, application):
    undeclared = _undeclared(APPLICATION_TRANSITIONS, ApplicationStatus)
    assert len(undeclared) == len(ApplicationStatus) * 5 - len(APPLICATION_TRANSITIONS)
    feed = Actor("feed", StaffRole.SYSTEM, Channel.FEED)
    for state, event in undeclared:
        application.status = ApplicationStatus(state)
        session.flush()
        before = _count(session)
        with pytest.raises(TransitionError):
            lifecycle.apply_application_event(session, application, event, feed)
        assert application.status == state
        assert _count(session) == before


def test_application_roles_and_channels_are_enforced(session, application, actors):
    with pytest.raises(PermissionDenied, match="may not review applications"):
        lifecycle.check_application_role("review", actors["clerk"])
    application.status = ApplicationStatus.PROCESSED
    session.flush()
    before = _count(session)
    with pytest.raises(PermissionDenied):  # the reviewer reviews, not the clerk
        lifecycle.apply_application_event(session, application, "review", actors["clerk"])
    with pytest.raises(PermissionDenied):  # a death withdraws through the feed only
        lifecycle.apply_application_event(session, application, "withdraw", actors["supervisor"])
    assert application.status == ApplicationStatus.PROCESSED and _count(session) == before
    lifecycle.apply_application_event(
        session, application, "withdraw", actors["supervisor"].via(Channel.FEED)
    )
    assert application.status == ApplicationStatus.WITHDRAWN


def _batch(session, status: str) -> Batch:
    b = Batch(name=f"t-{random.randrange(10**12)}", status=status)
    session.add(b)
    session.flush()
    return b


@pytest.mark.parametrize("t", BATCH_TRANSITIONS, ids=lambda t: f"{t.from_state}-{t.event}")
def test_declared_batch_transition(session, t):
    batch = _batch(session, t.from_state)
    before = _count(session)
    lifecycle.apply_batch_event(session, batch, t.event, SYSTEM_ACTOR)
    session.flush()
    assert batch.status == t.to_state
    assert (batch.completed_at is not None) == (t.to_state == BatchStatus.PRODUCED)
    assert _count(session) == before + 1
    ev = _last_event(session)
    assert (ev.action, ev.entity_type, ev.entity_id) == (t.audit_event, "batch", str(batch.id))
    assert (ev.before, ev.after) == (t.from_state, t.to_state)


def test_undeclared_batch_transitions_raise_and_change_nothing(session):
    undeclared = _undeclared(BATCH_TRANSITIONS, BatchStatus)
    assert ("produced", "start") in undeclared and ("in_production", "start") in undeclared
    for state, event in undeclared:
        batch = _batch(session, state)
        before = _count(session)
        with pytest.raises(TransitionError):
            lifecycle.apply_batch_event(session, batch, event, SYSTEM_ACTOR)
        assert batch.status == state and batch.completed_at is None
        assert _count(session) == before


@pytest.fixture
def item(session, new_card):
    card = new_card("number_allocated")
    batch = _batch(session, "in_production")
    it = BatchItem(batch_id=batch.id, card_id=card.id, stage=lifecycle.ITEM_INITIAL)
    session.add(it)
    session.flush()
    return it


@pytest.mark.parametrize("t", ITEM_TRANSITIONS, ids=lambda t: f"{t.from_state}-{t.event}")
def test_declared_item_transition(session, item, t):
    item.stage = BatchStage(t.from_state)
    session.flush()
    before = _count(session)
    to = lifecycle.apply_item_event(session, item, t.event, SYSTEM_ACTOR, reason="r")
    session.flush()
    assert item.stage == to == t.to_state
    column = lifecycle.ITEM_STAGE_TIMES.get(BatchStage(t.to_state))
    assert column is None or getattr(item, column) == item.stage_changed_at
    assert _count(session) == before + 1
    ev = _last_event(session)
    assert (ev.action, ev.entity_type, ev.entity_id) == (t.audit_event, "batch_item", str(item.id))
    assert (ev.before, ev.after, ev.reason) == (t.from_state, t.to_state, "r")


def test_undeclared_item_transitions_raise_and_change_nothing(session, item):
    undeclared = _undeclared(ITEM_TRANSITIONS, BatchStage)
    assert len(undeclared) == len(BatchStage) * 13 - len(ITEM_TRANSITIONS)
    for stage, event in undeclared:
        item.stage = BatchStage(stage)
        session.flush()
        before = _count(session)
        with pytest.raises(TransitionError):
            lifecycle.apply_item_event(session, item, event, SYSTEM_ACTOR)
        with pytest.raises(TransitionError):  # the bulk statements' lookup refuses it too
            lifecycle.item_transition(stage, event)
        assert item.stage == stage
        assert _count(session) == before
