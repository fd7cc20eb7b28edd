"""The resident's own e-card over HTTP (``/console/self/ecard``): the one-time code opens an
e-card session that issues the e-card (proof ``resident_otp``) and shows its codes, which scan
(zxing-cpp) and verify; during a provisional loss the codes are refused until the holder
authorises the e-card from the same session (audited), and the session ends on its own clock.
On SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv
from console_helpers import csrf_of
from fastapi.testclient import TestClient
from qr_scan import scan_qr
from resident_helpers import card_status, holder, make_cid, one_code
from test_resident import ask, give_code

from issuance.models import AuditEvent, Ecard, Person, ResidentSession, utcnow
from issuance.services import ecard_token

pytestmark = pytest.mark.softhsm
SELF = "/console/self"
GO = f"{SELF}/ecard/go"
REFUSED = "无法显示二维码"
AUTHORISE = "授权挂失期间使用电子社保卡"
WITHDRAW = "撤销授权"


def scan(png: bytes) -> str:
    found = scan_qr(png)
    assert len(found) == 1, f"{len(found)} codes in the image"
    return found[0]


def verify(env: ApiEnv, text: str) -> dict[str, Any]:
    r = env.client.post("/v1/ecard/verifications", json={"code": text},
                        headers=env.auth("hospital"))  # fmt: skip
    assert r.status_code == 200, r.text
    return dict(r.json())


def code_of_page(c: TestClient) -> str:
    r = c.get(f"{GO}/code.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    assert r.headers["cache-control"] == "no-store"
    return scan(r.content)


def events(env: ApiEnv, action: str) -> list[tuple[str, str, str | None]]:
    with env.session() as s:  # type: ignore[attr-defined]
        rows = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == action)
                         .order_by(AuditEvent.id))  # fmt: skip
        return [(e.actor_name, str(e.channel), e.after) for e in rows]


def sign_in(env: ApiEnv, cid: str, name: str) -> None:
    c = env.client
    r = ask(c, "ecard", cid, name)
    assert r.status_code == 303 and r.headers["location"] == f"{SELF}/ecard/code"  # type: ignore[attr-defined]
    r = give_code(c, "ecard", one_code(env))
    assert r.status_code == 303 and r.headers["location"] == GO  # type: ignore[attr-defined]


def test_the_resident_gets_the_ecard_by_code_and_authorises_it_during_a_loss(
    api_env: ApiEnv,
) -> None:
    env, c = api_env, api_env.client
    cid, name, number = holder(env)
    # nothing before the code
    assert c.get(GO, follow_redirects=False).headers["location"] == f"{SELF}/ecard"
    assert c.get(f"{GO}/code.png").status_code == 404
    home = c.get(SELF)
    assert f'href="{SELF}/ecard"' in home.text and "我的电子社保卡" in home.text

    sign_in(env, cid, name)
    with env.session() as s:  # type: ignore[attr-defined]
        person_id = s.scalar(sa.select(Person.id).where(Person.citizen_id == cid))
        (ecard,) = s.scalars(sa.select(Ecard)).all()
        assert (ecard.person_id, ecard.proof, ecard.ended_at) == (person_id, "resident_otp", None)
        rs = s.scalars(sa.select(ResidentSession)).one()
        # the e-card session lasts [ecard] session_minutes (it shows codes), not the loss's 10
        minutes = env.settings.ecard.session_minutes
        assert rs.expires_at - rs.created_at == timedelta(minutes=minutes)
        assert rs.purpose == "ecard" and rs.ended_at is None
    resident = f"resident:{person_id}"
    assert events(env, "ecard.issued") == [(resident, "web", "live")]

    page = c.get(GO)
    assert page.status_code == 200 and name in page.text and number[-4:] in page.text
    assert f'src="{GO}/code.png"' in page.text and AUTHORISE not in page.text
    reload_after = int(re.search(r'data-reload-after="(\d+)"', page.text).group(1))  # type: ignore[union-attr]
    assert 0 < reload_after <= env.settings.ecard.session_minutes * 60 + 1
    first = code_of_page(c)
    assert first.startswith(ecard_token.PREFIX)
    v = verify(env, first)
    assert v["valid"] is True and v["card_number"] == number and v["ecard_id"] == ecard.public_id
    assert verify(env, first)["reason"] == "code_reused"
    # each code was made in the resident's name
    assert {e[0] for e in events(env, "ecard.code")} == {resident}

    # the same resident reports the card lost from the same phone: the e-card page stays open
    assert ask(c, "report_loss", cid, name).status_code == 303  # type: ignore[attr-defined]
    assert give_code(c, "report_loss", one_code(env)).status_code == 303  # type: ignore[attr-defined]
    lost = c.get(f"{SELF}/report_loss/go")
    assert c.post(f"{SELF}/report_loss/go", data={"csrf": csrf_of(lost.text)}).status_code == 200
    assert card_status(env, number) == "lost_provisional"
    page = c.get(GO)
    assert page.status_code == 200 and REFUSED in page.text and "ecard-code" not in page.text
    assert AUTHORISE in page.text
    refused = c.get(f"{GO}/code.png")
    assert refused.status_code == 409 and refused.text == "lost"

    # the authorisation: the session's own CSRF token, then codes verify again
    bad = c.post(f"{GO}/authorise", data={"csrf": "x" * 43})
    assert bad.status_code == 403 and events(env, "ecard.loss_authorised") == []
    r = c.post(f"{GO}/authorise", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 200 and "已授权挂失期间使用电子社保卡" in r.text and WITHDRAW in r.text
    during = code_of_page(c)
    assert ecard_token.decode(during).claims.loss_authorised is True
    v = verify(env, during)
    assert v["valid"] is True and v["loss_authorised"] is True and v["card_status"] == (
        "lost_provisional")  # fmt: skip
    # withdrawn: refused again
    r = c.post(f"{GO}/authorise", data={"csrf": csrf_of(page.text), "withdraw": "1"})
    assert r.status_code == 200 and AUTHORISE in r.text
    assert c.get(f"{GO}/code.png").status_code == 409
    assert events(env, "ecard.loss_authorised") == [(resident, "web", "authorised")]
    assert events(env, "ecard.loss_authorisation_withdrawn") == [
        (resident, "web", "not_authorised")]  # fmt: skip

    # the session ends on its clock: back to the first step, no code
    with env.session() as s:  # type: ignore[attr-defined]
        s.scalars(sa.select(ResidentSession).where(ResidentSession.purpose == "ecard")
                  ).one().expires_at = utcnow() - timedelta(seconds=1)  # fmt: skip
    assert c.get(GO, follow_redirects=False).headers["location"] == f"{SELF}/ecard"
    assert c.get(f"{GO}/code.png").status_code == 404
    assert c.post(f"{GO}/authorise", data={"csrf": csrf_of(page.text)},
                  follow_redirects=False).status_code == 303  # fmt: skip
    # a new code opens the same e-card (none issued twice)
    sign_in(env, cid, name)
    assert c.get(GO).status_code == 200
    assert len(events(env, "ecard.issued")) == 1


def test_no_active_card_no_ecard_and_strangers_learn_nothing(api_env: ApiEnv) -> None:
    env, c = api_env, api_env.client
    cid, name, number = holder(env, activate=False)  # issued, not yet activated
    # a stranger's details get the same answer as the holder's
    stranger = ask(c, "ecard", make_cid(), "王小明")
    assert stranger.headers["location"] == f"{SELF}/ecard/code"  # type: ignore[attr-defined]
    wrong = give_code(c, "ecard", "000000")
    assert wrong.status_code in (401, 410) and name not in wrong.text  # type: ignore[attr-defined]
    sign_in(env, cid, name)
    page = c.get(GO)
    assert page.status_code == 200 and "您没有电子社保卡" in page.text
    assert "ecard-code" not in page.text and number not in page.text
    assert c.get(f"{GO}/code.png").status_code == 404
    with env.session() as s:  # type: ignore[attr-defined]
        assert s.scalars(sa.select(Ecard)).all() == []
    assert events(env, "ecard.issued") == []


def test_a_loss_session_does_not_open_the_ecard(api_env: ApiEnv) -> None:
    env, c = api_env, api_env.client
    cid, name, _ = holder(env)
    assert ask(c, "report_loss", cid, name).status_code == 303  # type: ignore[attr-defined]
    assert give_code(c, "report_loss", one_code(env)).status_code == 303  # type: ignore[attr-defined]
    token = c.cookies.get("ykt_resident")
    assert token
    c.cookies.set("ykt_resident_ecard", token, path=SELF)
    assert c.get(GO, follow_redirects=False).status_code == 303
    assert c.get(f"{GO}/code.png").status_code == 404
    # the e-card's code does not open a loss report either
    assert c.post(f"{SELF}/ecard/go", data={"csrf": "x"}).status_code == 404
    with env.session() as s:  # type: ignore[attr-defined]
        assert s.scalars(sa.select(Ecard)).all() == []
