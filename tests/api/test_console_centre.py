"""The card centre's, the administrator's and the bank branch's console pages through HTTP
(their Chromium journeys are in test_console_centre_browser.py): every action calls the
services, is audited with channel ``console``, and the services' refusals show on the page."""

from __future__ import annotations

import json

import sqlalchemy as sa
from api_helpers import PHOTO, fake_photo, make_cid
from conftest import ApiEnv
from console_helpers import csrf_of, give_passwords, sign_in

from issuance import services
from issuance.models import AuditEvent, Batch


def _approved(env: ApiEnv, n: int) -> list[str]:
    """``n`` approved applications (their card numbers), through the real services."""
    numbers = []
    with env.session() as s:  # type: ignore[attr-defined]
        for _ in range(n):
            app = services.submit_application(
                s, env.settings,
                services.ApplicationInput(citizen_id=make_cid(), name="林小雨",
                                          phone="13800138000", photo=PHOTO, ethnicity="01"),
                env.actors["clerk"], photo_processor=fake_photo,
            )  # fmt: skip
            services.process_application(s, app.id, env.actors["clerk"])
            services.review_application(s, app.id, env.actors["reviewer"])
            numbers.append(
                services.approve_application(
                    s, env.settings, app.id, env.actors["approver"]
                ).card_number
            )
    return numbers


def test_a_batch_from_a_selection_and_the_empty_selection_refused(api_env: ApiEnv) -> None:
    give_passwords(api_env)
    numbers = _approved(api_env, 2)
    c = api_env.client
    csrf = sign_in(c, api_env.actors["supervisor"].username)
    page = c.get("/console/centre")
    assert page.status_code == 200 and "新建批次" in page.text
    # a region nobody lives in: nothing to produce, said so, nothing created
    r = c.post("/console/centre/batches", data={"csrf": csrf, "name": "b-empty", "region": "4401"})
    assert r.status_code == 422 and "nothing to produce" in r.text and 'value="4401"' in r.text
    r = c.post(
        "/console/centre/batches",
        data={"csrf": csrf, "name": "b-bad", "approved_from": "2026-13-01", "limit": "x"},
    )
    assert r.status_code == 422 and "approved_from" in r.text and "limit" in r.text
    r = c.post("/console/centre/batches", data={"csrf": csrf, "name": "b-1", "region": "3301"})
    assert r.status_code == 200, r.text
    assert "批次已创建" in r.text and "b-1" in r.text
    with api_env.session() as s:  # type: ignore[attr-defined]
        batch = s.scalars(sa.select(Batch).where(Batch.name == "b-1")).one()
        assert batch.card_count == 2
        assert s.scalar(sa.select(sa.func.count()).select_from(Batch).where(
            Batch.name.in_(["b-empty", "b-bad"]))) == 0  # fmt: skip
        ev = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "batch.created")).one()
        assert ev.channel == "console" and ev.actor_name == api_env.actors["supervisor"].username
        assert sorted(json.loads(ev.details)["card_numbers"]) == sorted(numbers)
    # an auditor reads the batch, cannot make one
    c.cookies.clear()
    sign_in(c, api_env.actors["auditor"].username)
    page = c.get(f"/console/centre/batches/{batch.id}")
    assert page.status_code == 200 and "运行批次" not in page.text
    csrf = csrf_of(page.text)
    r = c.post("/console/centre/batches", data={"csrf": csrf, "name": "b-aud"})
    assert r.status_code == 422 and "may not create production batches" in r.text


def test_admin_pages_staff_clients_places_and_ones_own_account(api_env: ApiEnv) -> None:
    give_passwords(api_env)
    c = api_env.client
    admin = api_env.actors["admin"].username
    csrf = sign_in(c, admin)
    for path in ("/console/admin/staff", "/console/admin/clients", "/console/admin/places"):
        assert c.get(path).status_code == 200, path
    # one's own account cannot be disabled; nothing changes
    r = c.post(f"/console/admin/staff/{admin}/disable", data={"csrf": csrf})
    assert r.status_code == 409 and "cannot disable themselves" in r.text
    form = {"csrf": csrf, "username": "wang.li", "display_name": "王丽", "role": "bank_teller"}
    r = c.post("/console/admin/staff", data=form)
    assert r.status_code == 200 and "wang.li" in r.text
    shown = r.text.split('class="mono secret">')[1].split("<")[0]
    assert len(shown) >= 20
    with api_env.session() as s:  # type: ignore[attr-defined]
        from issuance.services.staff import authenticate_staff

        assert authenticate_staff(s, "wang.li", shown).role == "bank_teller"
        logged = " ".join(str(e.details) for e in s.scalars(sa.select(AuditEvent)))
        assert shown not in logged  # never in the audit log
    form = {"csrf": csrf, "code": "icbc-xh", "name": "工行西湖支行", "kind": "bank",
            "region": "330106"}  # fmt: skip
    r = c.post("/console/admin/clients", data=form)
    assert r.status_code == 200 and "client_secret" in r.text and "icbc-xh-" in r.text
    r = c.post("/console/admin/places", data={"csrf": csrf, "code": "xh-1", "name": "西湖社区中心",
                                              "kind": "community", "region": "33010"})  # fmt: skip
    assert r.status_code == 422 and "region_code" in r.text
    # a clerk has no administration
    c.cookies.clear()
    sign_in(c, api_env.actors["clerk"].username)
    assert c.get("/console/admin/staff").status_code == 403
