"""Card verification end to end: emulated chip personalised with HSM keys, the real app, on
SQLite and PostgreSQL; replays, expiry, lifecycle changes, temporary cards, scopes."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import ApiEnv
from fastapi.testclient import TestClient

from api.client import YktClient, verify_card_in_reader
from cardspec.cardops import internal_authenticate, read_card_public
from cardspec.reader import InProcessReader
from issuance import services
from issuance.models import AuditEvent, Card, VerificationChallenge

pytestmark = pytest.mark.softhsm


def client_for(env: ApiEnv, who: str) -> YktClient:
    return YktClient(TestClient(env.client.app, headers=env.auth(who)))


def answer(chip: InProcessReader, challenge_hex: str) -> tuple[str, str, bytes]:
    pub = read_card_public(chip)
    ch = bytes.fromhex(challenge_hex)
    resp = internal_authenticate(chip, ch[:8], ch[8:])
    chip.disconnect()
    return pub.card_identification_code, pub.card_number, resp


def test_genuine_active_card_verifies_with_holder_and_photo(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader]
) -> None:
    card, chip = card_and_chip
    hospital = client_for(api_env, "hospital")
    v = verify_card_in_reader(
        hospital, chip, application="medical", include_holder=True, include_photo=True
    )
    assert v["valid"] is True and "reason" not in v
    assert v["card_number"] == card.card_number
    assert v["holder"]["name"] == "张三"
    assert "*" in v["holder"]["citizen_id"]  # masked for a hospital
    assert base64.b64decode(v["photo_jpeg_base64"]).startswith(b"\xff\xd8")
    # a supervisor (holder:full_id) sees the full number
    sup = verify_card_in_reader(client_for(api_env, "supervisor"), chip, include_holder=True)
    assert sup["valid"] and "*" not in sup["holder"]["citizen_id"]
    with api_env.session() as s:  # type: ignore[attr-defined]
        events = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "card.verified")).all()
    assert len(events) == 2
    assert {e.actor_name for e in events} == {
        f"agency:{api_env.clients['hospital'][0].rsplit('-', 1)[0]}",
        api_env.actors["supervisor"].username,
    }


def test_replayed_expired_unknown_challenges_are_refused(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader]
) -> None:
    _card, chip = card_and_chip
    c = client_for(api_env, "hospital")
    ch = c.challenge()
    cic, number, resp = answer(chip, ch["challenge"])
    assert c.verify(ch["challenge_id"], cic, number, resp)["valid"] is True
    again = c.verify(ch["challenge_id"], cic, number, resp)
    assert again == {"valid": False, "reason": "challenge_reused", "application": "social_security"}
    # a challenge issued to the hospital is unknown to the bank
    ch2 = c.challenge()
    cic, number, resp = answer(chip, ch2["challenge"])
    assert (
        client_for(api_env, "bank").verify(ch2["challenge_id"], cic, number, resp)["reason"]
        == "challenge_unknown"
    )
    # expiry
    ch3 = c.challenge()
    cic, number, resp = answer(chip, ch3["challenge"])
    with api_env.session() as s:  # type: ignore[attr-defined]
        row = s.get(VerificationChallenge, ch3["challenge_id"])
        row.expires_at = row.created_at - timedelta(seconds=1)
    assert c.verify(ch3["challenge_id"], cic, number, resp)["reason"] == "challenge_expired"


def test_forged_answers_and_unknown_cards(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader]
) -> None:
    card, chip = card_and_chip
    c = client_for(api_env, "hospital")
    ch = c.challenge()
    cic, number, resp = answer(chip, ch["challenge"])
    forged = bytes([resp[0] ^ 1]) + resp[1:]
    assert c.verify(ch["challenge_id"], cic, number, forged)["reason"] == "not_genuine"
    ch = c.challenge()
    cic, number, resp = answer(chip, ch["challenge"])
    other = services.allocate_card_numbers  # a card number that is not this chip's
    assert other is not None
    v = c.verify(ch["challenge_id"], cic, "A00000019" if number != "A00000019" else "A00000027",
                 resp)  # fmt: skip
    assert v["reason"] == "not_genuine" and "card_status" not in v
    ch = c.challenge()
    v = c.verify(ch["challenge_id"], "330100D156000005" + "00" * 8, number, resp)
    assert v["reason"] == "unknown_card"
    assert card.card_number == number


@pytest.mark.parametrize(
    ("action", "reason"),
    [("loss", "lost"), ("suspend", "suspended"), ("cancel", "cancelled")],
)
def test_lifecycle_change_makes_the_next_verification_fail(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader], action: str, reason: str
) -> None:
    card, chip = card_and_chip
    hospital = client_for(api_env, "hospital")
    assert verify_card_in_reader(hospital, chip)["valid"] is True
    n = card.card_number
    if action == "loss":
        r = api_env.client.post(
            f"/v1/cards/{n}/loss-reports", json={"channel": "phone"}, headers=api_env.auth("clerk")
        )
    elif action == "suspend":
        r = api_env.client.post(
            f"/v1/cards/{n}/suspend", json={"reason": "fraud"},
            headers=api_env.auth("fund_supervisor"),
        )  # fmt: skip
    else:
        r = api_env.client.post(
            f"/v1/cards/{n}/cancel", json={"reason": "death record"},
            headers=api_env.auth("supervisor"),
        )  # fmt: skip
    assert r.status_code in (200, 201), r.text
    v = verify_card_in_reader(hospital, chip)
    assert v["valid"] is False and v["reason"] == reason
    if action == "loss":  # withdrawn: valid again
        r = api_env.client.post(
            f"/v1/cards/{n}/unreport", json={"channel": "phone"}, headers=api_env.auth("clerk")
        )
        assert r.status_code == 200, r.text
        assert verify_card_in_reader(hospital, chip)["valid"] is True


def test_temporary_card_verifies_for_medical_only(api_env: ApiEnv) -> None:
    with api_env.session() as s:  # type: ignore[attr-defined]
        from api_helpers import PHOTO, fake_photo, make_cid

        app = services.submit_application(
            s, api_env.settings,
            services.ApplicationInput(citizen_id=make_cid(), name="李四", phone="13800138001",
                                      photo=PHOTO),
            api_env.actors["clerk"], photo_processor=fake_photo,
        )  # fmt: skip
        person_id = app.person_id
    r = api_env.client.post(
        "/v1/temporary-cards", json={"person_id": person_id}, headers=api_env.auth("clerk")
    )
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "temporary" and r.json()["chip_apps"] == {"medical": "active"}
    with api_env.session() as s:  # type: ignore[attr-defined]
        temp = services.find_card(s, card_number=r.json()["card_number"])
    chip = api_env.chip(temp)
    hospital = client_for(api_env, "hospital")
    assert verify_card_in_reader(hospital, chip, application="medical")["valid"] is True
    for app_kind in ("social_security", "financial", "pension"):
        v = verify_card_in_reader(hospital, chip, application=app_kind)
        assert v == v | {"valid": False, "reason": "wrong_application"}


def test_holder_and_photo_need_their_scopes(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader]
) -> None:
    _card, chip = card_and_chip
    other = client_for(api_env, "selfservice")  # an "other" agency: verify without holder
    assert verify_card_in_reader(other, chip)["valid"] is True
    ch = other.challenge()
    cic, number, resp = answer(chip, ch["challenge"])
    r = other.http.post(
        "/v1/verifications",
        json={"challenge_id": ch["challenge_id"], "card_identification_code": cic,
              "card_number": number, "response": resp.hex(), "include_photo": True},
    )  # fmt: skip
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    with api_env.session() as s:  # type: ignore[attr-defined]
        denied = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "api.denied")).all()
    assert any("holder:photo" in (e.details or "") for e in denied)
