"""Verification reasons not covered elsewhere, end to end (emulated chip personalised with HSM
keys, the real app, SQLite and PostgreSQL): an expired card (by date, and by the lifecycle's
expiry), a card issued but not activated (social security function sealed), and refusals at
the level of one chip application while the card itself is active: suspended, blocked, sealed
(the bank function before bank activation)."""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import PHOTO, ApiEnv, fake_photo, make_cid
from fastapi.testclient import TestClient

from api.client import YktClient, verify_card_in_reader
from cardspec.reader import InProcessReader
from issuance import lifecycle, services
from issuance.audit import SYSTEM_ACTOR
from issuance.lifecycle import CardEvent, ChipEvent
from issuance.models import AuditEvent, Card, ChipAppKind, ChipApplication

pytestmark = pytest.mark.softhsm


def hospital(env: ApiEnv) -> YktClient:
    return YktClient(TestClient(env.client.app, headers=env.auth("hospital")))


def issued_card(env: ApiEnv) -> Card:
    """A formal card collected by its holder but never activated (social functions sealed)."""
    a = env.actors
    with env.session() as s:  # type: ignore[attr-defined]
        app = services.submit_application(
            s, env.settings,
            services.ApplicationInput(citizen_id=make_cid(), name="蒋一", phone="13800138071",
                                      photo=PHOTO, ethnicity="01"),
            a["clerk"], photo_processor=fake_photo,
        )  # fmt: skip
        services.process_application(s, app.id, a["clerk"])
        services.review_application(s, app.id, a["reviewer"])
        card = services.approve_application(s, env.settings, app.id, a["approver"])
        for step in ("start_production", "personalise", "ship"):
            services.advance_production(
                s, env.settings, card.id, step, a["clerk"], chip_serial=random.randbytes(8)
            )
        services.collect_card(s, card.id, a["clerk"])
        return card


def chip_event(env: ApiEnv, card: Card, kind: ChipAppKind, event: str, who: str) -> None:
    """One chip application moved by the lifecycle table (with its audit event)."""
    from issuance.models import Channel

    actor = env.actors[who]
    if who == "bank_teller":
        actor = actor.via(Channel.BANK)
    with env.session() as s:  # type: ignore[attr-defined]
        app = s.scalars(
            sa.select(ChipApplication).where(
                ChipApplication.card_id == card.id, ChipApplication.kind == kind
            )
        ).one()
        lifecycle.apply_chip_event(s, app, event, actor, reason="verification reasons test")


def verdict(env: ApiEnv, chip: InProcessReader, application: str) -> dict[str, Any]:
    return verify_card_in_reader(hospital(env), chip, application=application)


def test_expired_by_date_and_by_the_lifecycle(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    chip = api_env.chip(card)
    assert verdict(api_env, chip, "social_security")["valid"] is True
    with api_env.session() as s:  # type: ignore[attr-defined]
        row = s.get(Card, card.id)
        assert row is not None
        row.expiry_date = date.today() - timedelta(days=1)  # past its validity, status active
    v = verdict(api_env, chip, "medical")
    assert v["valid"] is False and v["reason"] == "expired" and v["card_status"] == "active"
    assert v["expiry_date"] == (date.today() - timedelta(days=1)).isoformat()
    # the expiry job moves it to "expired": still refused, same reason
    with api_env.session() as s:  # type: ignore[attr-defined]
        row = s.get(Card, card.id)
        assert row is not None
        lifecycle.apply_card_event(s, row, CardEvent.EXPIRE, SYSTEM_ACTOR, reason="expired")
    v = verdict(api_env, chip, "social_security")
    assert (v["valid"], v["reason"], v["card_status"]) == (False, "expired", "expired")


def test_issued_but_not_activated(api_env: ApiEnv) -> None:
    card = issued_card(api_env)
    chip = api_env.chip(card)
    for application in ("social_security", "medical"):
        v = verdict(api_env, chip, application)
        assert v["valid"] is False and v["reason"] == "not_activated", v
        assert v["card_status"] == "issued" and v["application_status"] == "sealed"
    # activation at the counter unseals it: the very next verification passes
    r = api_env.client.post(f"/v1/cards/{card.card_number}/activate", json={},
                            headers=api_env.auth("clerk"))  # fmt: skip
    assert r.status_code == 200, r.text
    assert verdict(api_env, chip, "social_security")["valid"] is True


def test_chip_application_suspended_while_the_card_is_active(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    chip = api_env.chip(card)
    chip_event(api_env, card, ChipAppKind.MEDICAL, ChipEvent.SUSPEND, "fund_supervisor")
    v = verdict(api_env, chip, "medical")
    assert (v["valid"], v["reason"], v["card_status"], v["application_status"]) == (
        False, "suspended", "active", "suspended"
    )  # fmt: skip
    assert verdict(api_env, chip, "social_security")["valid"] is True  # the others still work
    chip_event(api_env, card, ChipAppKind.MEDICAL, ChipEvent.LIFT, "fund_supervisor")
    assert verdict(api_env, chip, "medical")["valid"] is True


def test_chip_application_blocked_while_the_card_is_active(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    chip = api_env.chip(card)
    chip_event(api_env, card, ChipAppKind.SOCIAL_SECURITY, ChipEvent.BLOCK, "clerk")
    v = verdict(api_env, chip, "social_security")
    assert (v["valid"], v["reason"], v["application_status"]) == (False, "blocked", "blocked")
    assert verdict(api_env, chip, "pension")["valid"] is True
    chip_event(api_env, card, ChipAppKind.SOCIAL_SECURITY, ChipEvent.UNBLOCK, "clerk")
    assert verdict(api_env, chip, "social_security")["valid"] is True


def test_bank_function_sealed_then_activated_then_suspended_by_the_bank(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    chip = api_env.chip(card)
    v = verdict(api_env, chip, "financial")
    assert (v["valid"], v["reason"], v["application_status"]) == (False, "not_activated", "sealed")
    from test_api_security_bank import bind, presented

    bind(api_env, card)  # issued for this bank; activated with the card presented
    r = api_env.client.post(
        f"/v1/cards/{card.card_number}/financial-activation",
        json=presented(api_env, chip), headers=api_env.auth("bank"),
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert verdict(api_env, chip, "financial")["valid"] is True
    chip_event(api_env, card, ChipAppKind.FINANCIAL, ChipEvent.SUSPEND, "bank_teller")
    v = verdict(api_env, chip, "financial")
    assert (v["valid"], v["reason"]) == (False, "suspended")
    assert verdict(api_env, chip, "medical")["valid"] is True
    with api_env.session() as s:  # type: ignore[attr-defined]
        reasons = [
            e.details
            for e in s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "card.verified"))
        ]
    assert sum('"reason":"suspended"' in d for d in reasons) == 1
    # the hospital's verification, and the card presented at the bank's activation
    assert sum('"reason":"not_activated"' in d for d in reasons) == 2
