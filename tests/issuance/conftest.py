"""Fixtures of the issuance tests: a stand-in photo processor, staff actors and cards brought
to a given state through the real services (helpers: ``issuance_helpers``)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from issuance_helpers import FakePhoto, fake_process_photo, submit, unique_tag
from sqlalchemy.orm import Session

from issuance import services
from issuance.audit import Actor
from issuance.models import Card, Channel, StaffRole
from yikatong.settings import PhotoSettings, Settings


@pytest.fixture
def photo_processor() -> Callable[[bytes, PhotoSettings], FakePhoto]:
    return fake_process_photo


@pytest.fixture
def actors(session: Session) -> dict[str, Actor]:
    """One staff user per role (plus a second clerk), as actors at the counter."""
    tag = unique_tag()
    out: dict[str, Actor] = {}
    for role in StaffRole:
        if role == StaffRole.SYSTEM:
            continue
        staff = services.create_staff(session, f"{role}-{tag}", role)
        out[str(role)] = services.actor_for(session, staff.username, Channel.COUNTER)
    clerk2 = services.create_staff(session, f"clerk2-{tag}", StaffRole.CLERK)
    out["clerk2"] = services.actor_for(session, clerk2.username)
    return out


@pytest.fixture
def new_card(
    session: Session, settings: Settings, actors: dict[str, Actor]
) -> Callable[[str], Card]:
    """Make an approved card and drive it through the real services up to ``state``
    (number_allocated, in_production, personalised, shipped, issued, active)."""

    def make(state: str = "active") -> Card:
        app = submit(session, settings, actors["clerk"])
        services.process_application(session, app.id, actors["clerk"])  # type: ignore[attr-defined]
        services.review_application(session, app.id, actors["reviewer"])  # type: ignore[attr-defined]
        card = services.approve_application(session, settings, app.id, actors["approver"])  # type: ignore[attr-defined]
        steps = ["start_production", "personalise", "ship"]
        order = ["number_allocated", "in_production", "personalised", "shipped", "issued", "active"]
        for step in steps[: order.index(state) if state in order[:4] else 3]:
            services.advance_production(
                session, settings, card.id, step, actors["clerk"], chip_serial=random.randbytes(8)
            )
        if order.index(state) >= 4:
            services.collect_card(session, card.id, actors["clerk"])
        if state == "active":
            services.activate_card(session, card.id, actors["clerk"])
        assert card.status == state
        return card

    return make
