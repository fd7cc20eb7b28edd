"""The card centre's, the administrator's and the bank branch's console pages through HTTP
(their Chromium journeys are in test_console_centre_browser.py): every action calls the
services, is audited with channel ``console``, and the services' refusals show on the page."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa
from api_helpers import PHOTO, ApiEnv, fake_photo, make_cid
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
    # this app was built without a production line: the page says where to run it
    page = c.get(f"/console/centre/batches/{batch.id}")
    assert "本服务没有连接生产线" in page.text and "运行批次" not in page.text
    r = c.post(f"/console/centre/batches/{batch.id}/run", data={"csrf": csrf})
    assert r.status_code == 409 and "no production line" in r.text
    # an auditor reads the batch, cannot make one
    c.cookies.clear()
    sign_in(c, api_env.actors["auditor"].username)
    page = c.get(f"/console/centre/batches/{batch.id}")
    assert page.status_code == 200 and "运行批次" not in page.text
    csrf = csrf_of(page.text)
    r = c.post("/console/centre/batches", data={"csrf": csrf, "name": "b-aud"})
    assert r.status_code == 422 and "may not create production batches" in r.text
    r = c.post(f"/console/centre/batches/{batch.id}/run", data={"csrf": csrf})
    assert r.status_code == 409 and "may not run production batches" in r.text
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.get(Batch, batch.id).status == "open"  # nothing started
        assert s.scalar(sa.select(sa.func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "console.batch_run_started")) == 0  # fmt: skip


def test_a_batch_runs_once_at_a_time_in_a_service(api_env: ApiEnv) -> None:
    """A second start of a batch running in this service is refused; a service without a
    production line refuses to start one."""
    import threading

    from api.batchruns import BatchRuns
    from issuance.batches.adapters import BatchAdapters
    from issuance.errors import ConfigError, ConflictError

    hold = threading.Event()
    opened: list[int] = []

    def keys() -> object:  # the production line's first step waits until the test lets go
        opened.append(1)
        hold.wait(10)
        raise RuntimeError("HSM away")

    adapters = BatchAdapters(key_service=keys, stock=None, printer=None, stations=None)  # type: ignore[arg-type]
    runs = BatchRuns(api_env.settings, api_env.engine, adapters)
    _approved(api_env, 1)
    with api_env.session() as s:  # type: ignore[attr-defined]
        from issuance.batches.selection import create_batch

        batch_id = create_batch(s, api_env.actors["supervisor"], "b-once").id
    first = runs.start(batch_id, api_env.actors["supervisor"], resume=False)
    try:
        with pytest.raises(ConflictError):
            runs.start(batch_id, api_env.actors["supervisor"], resume=True)
    finally:
        hold.set()
    deadline = time.monotonic() + 10
    while first.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.outcome == "error" and "HSM away" in first.errors[0] and opened == [1]
    # the run ended: the batch may be started again
    again = runs.start(batch_id, api_env.actors["supervisor"], resume=True)
    assert again is not first
    with pytest.raises(ConfigError):
        BatchRuns(api_env.settings, api_env.engine, None).start(
            batch_id, api_env.actors["supervisor"], resume=False)  # fmt: skip


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


def test_the_demo_logins_sign_in_to_the_console(api_env: ApiEnv) -> None:
    """What ``ykt demo`` prints: a password for each demo staff user, once; the teller works
    at the demo branch."""
    from fastapi.testclient import TestClient

    from yikatong.demo import BRANCH_CODE, DEMO_STAFF, ensure_branch, ensure_logins, ensure_staff

    with api_env.session() as s:  # type: ignore[attr-defined]
        ensure_branch(s, api_env.settings)
        ensure_staff(s)
        logins = ensure_logins(s)
    assert [u for u, _, _ in logins] == [u for u, _, _ in DEMO_STAFF]
    assert {r for _, r, _ in logins} >= {"clerk", "reviewer", "approver", "supervisor",
                                         "bank_teller", "admin", "auditor"}  # fmt: skip
    for username, _, password in logins:
        assert password is not None and len(password) >= 20
        c = TestClient(api_env.client.app)
        sign_in(c, username, password)
        if username == "demo-teller":
            assert BRANCH_CODE in c.get("/console/branch").text  # their own branch
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert [p for _, _, p in ensure_logins(s)] == [None] * len(DEMO_STAFF)  # kept


def test_every_message_of_these_pages_is_in_both_catalogs() -> None:
    """The card centre's, branch's and administration's templates: each message has its
    Chinese, and the ids made at run time (a run's outcome, a printer field) have both."""
    import re
    from pathlib import Path

    from console import i18n

    zh, en = i18n.translations("zh_CN"), i18n.translations("en")
    root = Path(i18n.__file__).parent / "templates"
    ids: set[str] = set()
    for folder in ("centre", "branch", "admin"):
        for page in (root / folder).glob("*.html"):
            ids |= set(re.findall(r'_\("((?:[^"\\]|\\.)*)"\)', page.read_text()))
    assert len(ids) > 100
    made = [f"run:{o}" for o in ("finished", "not_finished", "station_error", "interrupted",
                                 "error")]  # fmt: skip
    fields = ("backend", "directory", "jobs_done", "incomplete", "bytes", "latest", "server",
              "queue", "state", "accepting", "message", "jobs_pending")  # fmt: skip
    made += [f"printer:{k}" for k in fields]
    missing = [m for m in sorted(ids) + made if zh.gettext(m) == m]
    assert missing == []
    assert [m for m in made if en.gettext(m) == m] == []


def test_bureau_and_delivery_forms_need_the_csrf_token_the_role_and_a_production_line(
    api_env: ApiEnv,
) -> None:
    """The card centre's file forms (their journeys in Chromium: test_console_centre_browser):
    without the CSRF token refused before anything is read into the services; a role that only
    reads batches refused by the services' own role list; a service without a production line
    says where to export; a body over its route's cap refused by the gate (413)."""
    from api.gate import body_cap
    from issuance.models import StockChip

    give_passwords(api_env)
    c = api_env.client
    csrf = sign_in(c, api_env.actors["supervisor"].username)
    delivery = {"delivery": ("d.csv", b"serial,lot\n5A17C0DE00000001,L1\n", "text/csv")}
    r = c.post("/console/centre/stock/import", data={"supplier": "xh", "action": "import"},
               files=delivery)  # fmt: skip
    assert r.status_code == 403 and "CSRF" not in r.text  # the page says why, not the token
    r = c.post("/console/centre/bureau/import", data={"file_id": "x", "action": "import"},
               files={"result": ("r.jsonl", b"{}\n", "application/x-ndjson")})  # fmt: skip
    assert r.status_code == 403
    # no production line in this app: the export and the import say so, nothing loaded
    r = c.post("/console/centre/bureau/export", data={"csrf": csrf, "batch": "1",
                                                     "transport": "bureau-xh"})  # fmt: skip
    assert r.status_code == 422 and "no batch 1" in r.text
    form = {"csrf": csrf, "supplier": "xh", "action": "import"}
    r = c.post("/console/centre/stock/import", data=form, files=delivery)
    assert r.status_code == 422 and "no production line" in r.text
    # a file with no name refused as the service's field problem
    r = c.post("/console/centre/bureau/import", data={"csrf": csrf, "file_id": "abc"})
    assert r.status_code == 422 and "choose the file to upload" in r.text
    # the gate caps the upload routes (a bureau result file: 64 MB)
    limits = api_env.settings.api.body_limits
    cap = body_cap(limits, "/console/centre/bureau/import")
    assert cap == 64 * 1024 * 1024 and body_cap(limits, "/console/centre/stock/import") > cap
    r = c.post("/console/centre/bureau/import", data={"csrf": csrf, "file_id": "abc"},
               files={"result": ("r.jsonl", b"x" * (cap + 1), "application/x-ndjson")})  # fmt: skip
    assert r.status_code == 413
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.scalar(sa.select(sa.func.count()).select_from(StockChip)) == 0
        refused = s.scalars(sa.select(AuditEvent.reason).where(
            AuditEvent.action == "console.refused")).all()  # fmt: skip
        assert refused.count("CSRF token missing or wrong") == 2
        assert s.scalars(sa.select(AuditEvent.channel).where(
            AuditEvent.action == "console.delivery_refused")).all() == ["console"]  # fmt: skip
    # an auditor reads the pages, the services refuse the actions
    csrf = sign_in(c, api_env.actors["auditor"].username)
    page = c.get("/console/centre/bureau")
    assert page.status_code == 200 and "/centre/bureau/export" not in page.text
    r = c.post("/console/centre/bureau/import", data={"csrf": csrf, "file_id": "abc"},
               files={"result": ("r.jsonl", b"{}\n", "application/x-ndjson")})  # fmt: skip
    assert r.status_code == 422 and "may not import bureau results" in r.text


def test_the_centre_files_refusals_have_their_sentences_in_both_catalogs() -> None:
    """Every kind of bad result line has its sentence; each sentence the file pages choose for
    a refusal is in the Chinese catalog (English: the message itself)."""
    from console import i18n
    from console.pages import centre
    from issuance.batches.bureau_result import ProblemKind

    assert set(centre.RESULT_LINE_KEYS) == {k.value for k in ProblemKind}
    keys = [*centre.RESULT_LINE_KEYS.values(), *(k for _, k in centre.DELIVERY_KEYS),
            centre.BUREAU_FILE_KEY, centre.RESULT_FILE_KEY, centre.TRANSPORT_KEY]  # fmt: skip
    zh, en = i18n.translations("zh_CN"), i18n.translations("en")
    assert [k for k in keys if zh.gettext(k) == k] == []
    assert [k for k in keys if en.gettext(k) != k] == []
