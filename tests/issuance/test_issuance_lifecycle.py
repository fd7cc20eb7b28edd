"""The transition tables: every declared transition works and writes one audit event;
undeclared ones raise and change nothing."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from issuance import lifecycle
from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.errors import PermissionDenied, TransitionError
from issuance.lifecycle import CARD_TRANSITIONS, CHIP_TRANSITIONS, PROVINCE_STATUS_CODES
from issuance.models import AuditEvent, CardStatus, Channel, ChipAppStatus, StaffRole


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
