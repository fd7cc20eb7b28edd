"""Issue 15 item 3, replayed: holder identity without the card.

* ``GET /v1/cards/{n}`` gave every ``cards:read`` agency the holder's name, masked ID number
  and card identification code: now only staff, or an agency an administrator granted
  ``holder:lookup``; agencies learn the holder from a verification (the chip present);
* 404s counted toward no limit (649 requests enumerated every card): misses count now;
* the hotline (``other``) blocked any card by number alone and ``unreport`` answered the
  holder's name: a remote report now needs the holder's full ID number and name, or the
  one-time code sent to the phone on file, and answers nothing the caller did not supply.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv

from cardspec.ids import make_card_number
from issuance import services
from issuance.models import Card, OutboxMessage, Person
from issuance.services import credentials

pytestmark = pytest.mark.softhsm

HOLDER_FIELDS = ("holder_name", "holder_citizen_id_masked", "card_identification_code")


def _holder(env: ApiEnv, card: Card) -> tuple[str, str]:
    with env.session() as s:  # type: ignore[attr-defined]
        p = s.execute(
            sa.select(Person.citizen_id, Person.name).where(Person.id == card.person_id)
        ).one()
        return p.citizen_id, p.name


def test_card_reads_give_agencies_no_holder_identity(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    c, url = api_env.client, f"/v1/cards/{card.card_number}"
    for agency in ("hospital", "bank"):
        r = c.get(url, headers=api_env.auth(agency))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "active"
        assert all(body.get(f) is None for f in HOLDER_FIELDS), body
    staff = c.get(url, headers=api_env.auth("clerk")).json()
    assert staff["holder_name"] == "张三" and "*" in staff["holder_citizen_id_masked"]
    # a person (an administrator) grants holder:lookup to one agency's client
    with api_env.session() as s:  # type: ignore[attr-defined]
        agency = services.create_agency(s, "lookup-agency", "Lookup", "hospital", "330100")
        new = credentials.register_agency_client(s, agency, scopes=["cards:read", "holder:lookup"])
        token = credentials.issue_token(s, new.client_id, new.client_secret or "").access_token
    body = c.get(url, headers={"Authorization": f"Bearer {token}"}).json()
    assert body["holder_name"] == "张三" and body["card_identification_code"]


def test_misses_count_toward_the_limit(api_env: ApiEnv) -> None:
    limit = api_env.settings.api.auth_failures_per_minute
    hospital = api_env.auth("hospital")
    codes = [
        api_env.client.get(
            f"/v1/cards/{make_card_number(f'Z{i:07d}')}", headers=hospital
        ).status_code
        for i in range(limit + 1)
    ]
    assert codes[0] == 404 and codes[-1] == 429, codes


def test_a_remote_loss_report_needs_the_holders_identity(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    citizen_id, name = _holder(api_env, card)
    c, hotline = api_env.client, api_env.auth("selfservice")
    base = f"/v1/cards/{card.card_number}"
    attempts = [
        {"channel": "phone"},  # the card number alone (the attack)
        {"channel": "phone", "identity_checked": True},  # a flag is no evidence
        {"channel": "phone", "holder_citizen_id": citizen_id, "holder_name": "李四"},
        {"channel": "phone", "holder_citizen_id": "11010519491231002X", "holder_name": name},
    ]
    messages = set()
    for body in attempts:
        r = c.post(f"{base}/loss-reports", json=body, headers=hotline)
        assert r.status_code == 422, (body, r.text)
        messages.add(r.text)
    assert len(messages) == 1  # the same answer whatever was wrong: it tells nothing
    assert c.get(base, headers=api_env.auth("clerk")).json()["status"] == "active"
    proof = {"holder_citizen_id": citizen_id, "holder_name": name}
    r = c.post(f"{base}/loss-reports", json={"channel": "phone", **proof}, headers=hotline)
    assert r.status_code == 201, r.text
    assert name not in r.text and citizen_id[-4:] not in r.text
    assert r.json()["card_status"] == "lost_provisional"
    r = c.post(f"{base}/unreport", json={"channel": "phone"}, headers=hotline)
    assert r.status_code == 422
    r = c.post(f"{base}/unreport", json={"channel": "phone", **proof}, headers=hotline)
    assert r.status_code == 200, r.text
    assert all(r.json().get(f) is None for f in HOLDER_FIELDS)
    assert name not in r.text and citizen_id[-4:] not in r.text


def test_a_remote_loss_report_with_the_code_sent_to_the_phone(api_env: ApiEnv) -> None:
    card = api_env.new_card()  # its holder has a phone on file
    c, hotline = api_env.client, api_env.auth("selfservice")
    base = f"/v1/cards/{card.card_number}"
    r = c.post(f"{base}/loss-codes", headers=hotline)
    assert r.status_code == 202 and r.json() == {"accepted": True}

    def sent_codes() -> list[str]:
        with api_env.session() as s:  # type: ignore[attr-defined]
            rows = s.scalars(
                sa.select(OutboxMessage).where(OutboxMessage.topic == "loss.code")
            ).all()
            return [m.payload["code"] for m in rows if m.person_id == card.person_id]

    (code,) = sent_codes()
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    r = c.post(f"{base}/loss-reports", json={"channel": "phone", "one_time_code": wrong},
               headers=hotline)  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["field"] == "holder_citizen_id"
    r = c.post(f"{base}/loss-reports", json={"channel": "phone", "one_time_code": code},
               headers=hotline)  # fmt: skip
    assert r.status_code == 201, r.text
    r = c.post(f"{base}/unreport", json={"channel": "phone", "one_time_code": code},
               headers=hotline)  # fmt: skip
    assert r.status_code == 422  # single use
    # tries are counted even though each refusal rolls nothing back: 5 wrong, then the right
    # code of a new message is refused too once its tries are spent
    c.post(f"{base}/loss-codes", headers=hotline)
    code2 = sent_codes()[-1]
    bad = f"{(int(code2) + 1) % 10**6:06d}"
    for _ in range(5):
        c.post(f"{base}/unreport", json={"channel": "phone", "one_time_code": bad},
               headers=hotline)  # fmt: skip
    r = c.post(f"{base}/unreport", json={"channel": "phone", "one_time_code": code2},
               headers=hotline)  # fmt: skip
    assert r.status_code == 422
    # at most three codes an hour: a caller cannot flood the holder's phone; same answer
    assert c.post(f"{base}/loss-codes", headers=hotline).json() == {"accepted": True}
    assert c.post(f"{base}/loss-codes", headers=hotline).json() == {"accepted": True}
    assert len(sent_codes()) == 3
