"""Issue 15 item 7, replayed: any bank activated any card's financial function with
``{"identity_checked": true, "pin_set": true}`` and no evidence. Now the card must be
presented (its INTERNAL AUTHENTICATE answer to a verification challenge, checked in the HSM,
the challenge used up) and a bank's system activates only the cards issued for that bank."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv

from cardspec.cardops import internal_authenticate, read_card_public
from cardspec.reader import InProcessReader
from issuance import services
from issuance.audit import SYSTEM_ACTOR
from issuance.models import AgencyKind, AuditEvent, Card
from issuance.services import credentials
from issuance.services.financial import bind_bank

pytestmark = pytest.mark.softhsm


def bank_code(env: ApiEnv) -> str:
    return env.clients["bank"][0].rsplit("-", 1)[0]


def bind(env: ApiEnv, card: Card, code: str | None = None) -> None:
    with env.session() as s:  # type: ignore[attr-defined]
        bind_bank(s, card.id, code or bank_code(env), SYSTEM_ACTOR)


def presented(env: ApiEnv, chip: InProcessReader, who: str = "bank") -> dict[str, Any]:
    """The activation body with the chip's answer to a fresh challenge of ``who``."""
    ch = env.client.post("/v1/verifications/challenge", headers=env.auth(who)).json()
    pub = read_card_public(chip)
    c = bytes.fromhex(ch["challenge"])
    answer = internal_authenticate(chip, c[:8], c[8:])
    chip.disconnect()
    return {"identity_checked": True, "pin_set": True, "challenge_id": ch["challenge_id"],
            "card_identification_code": pub.card_identification_code,
            "response": answer.hex()}  # fmt: skip


def test_a_bank_activates_only_its_own_card_with_the_card_present(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    chip = api_env.chip(card)
    c, bank = api_env.client, api_env.auth("bank")
    url = f"/v1/cards/{card.card_number}/financial-activation"
    # the attack: flags only
    r = c.post(url, json={"identity_checked": True, "pin_set": True}, headers=bank)
    assert r.status_code == 422, r.text
    # another bank, with the card in its reader: not its card
    with api_env.session() as s:  # type: ignore[attr-defined]
        other = services.create_agency(s, "bank-other", "Other Bank", AgencyKind.BANK, "330100")
        new = credentials.register_agency_client(s, other)
        api_env.tokens["other-bank"] = credentials.issue_token(
            s, new.client_id, new.client_secret or ""
        ).access_token
    bind(api_env, card)
    r = c.post(url, json=presented(api_env, chip, "other-bank"), headers=api_env.auth("other-bank"))
    assert r.status_code == 422 and "not this bank's" in r.text, r.text
    # the right bank, a forged cryptogram: refused, the challenge used up
    body = presented(api_env, chip)
    forged = {**body, "response": ("00" * 8 if len(body["response"]) == 16 else "00" * 16)}
    r = c.post(url, json=forged, headers=bank)
    assert r.status_code == 422 and r.json()["error"]["field"] == "response", r.text
    assert "not_genuine" in r.text
    r = c.post(url, json=body, headers=bank)  # the same challenge again: used
    assert r.status_code == 422 and "challenge_reused" in r.text
    # the right bank, the card itself: activated
    r = c.post(url, json=presented(api_env, chip), headers=bank)
    assert r.status_code == 200, r.text
    assert r.json()["chip_apps"]["financial"] == "active"
    with api_env.session() as s:  # type: ignore[attr-defined]
        verdicts = s.scalars(
            sa.select(AuditEvent.after).where(
                AuditEvent.action == "card.verified",
                AuditEvent.entity_id == body["card_identification_code"].upper(),
            )
        ).all()
    assert len(verdicts) >= 3  # each presentation is a verification on the record
