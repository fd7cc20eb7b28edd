"""The web console through its HTTP interface (the browser journeys are in
test_console_browser.py): sign-in and the session cookie, CSRF, the backoff, the idle timeout,
the security headers, and the audit of every action with channel ``console``."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from api_helpers import ApiEnv
from console_helpers import PASSWORD, csrf_of, give_passwords, sign_in
from fastapi.testclient import TestClient

from console import i18n
from console.web import CSP, SESSION_COOKIE
from issuance.models import AuditEvent, ConsoleSession, utcnow


def _events(env: ApiEnv, action: str) -> list[AuditEvent]:
    with env.session() as s:  # type: ignore[attr-defined]
        return list(s.scalars(sa.select(AuditEvent).where(AuditEvent.action == action)))


def test_sign_in_cookie_headers_and_audit(api_env: ApiEnv) -> None:
    give_passwords(api_env)
    c = api_env.client
    page = c.get("/console/login")
    assert page.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert "<script>" not in page.text and "style=" not in page.text
    assert 'lang="zh-CN"' in page.text and "用户名" in page.text  # Chinese by default
    clerk = api_env.actors["clerk"].username
    r = c.post("/console/login", data={"csrf": csrf_of(page.text), "username": clerk,
               "password": PASSWORD, "next": "/console/home"}, follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == "/console/home"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    home = c.get("/console/home")
    assert home.status_code == 200 and "柜员" in home.text
    (ev,) = [e for e in _events(api_env, "console.signed_in") if e.actor_name == clerk]
    assert ev.channel == "console" and ev.actor_staff_id == api_env.actors["clerk"].staff_id
    # a console session is not an API token
    token = c.cookies.get(SESSION_COOKIE)
    assert token
    api = c.get("/v1/applications", headers={"Authorization": f"Bearer {token}"})
    assert api.status_code == 401
    # the static files come from the package, with the same policy
    js = c.get("/console/static/htmx.min.js")
    assert js.status_code == 200 and js.headers["content-security-policy"] == CSP
    # English on request
    en = c.get("/console/lang/en?next=/console/home")
    assert en.status_code == 200 and "Sign out" in en.text and 'lang="en"' in en.text


def test_csrf_missing_or_wrong_is_refused_and_changes_nothing(
    api_env: ApiEnv, card_and_chip: tuple
) -> None:
    give_passwords(api_env)
    card, _ = card_and_chip
    c = api_env.client
    sign_in(c, api_env.actors["clerk"].username)
    for data in ({}, {"csrf": "forged"}):
        r = c.post(f"/console/cards/{card.card_number}/loss",
                   data={**data, "kind": "formal", "identity_checked": "yes"})  # fmt: skip
        assert r.status_code == 403 and "安全令牌" in r.text
    page = c.get(f"/console/cards?number={card.card_number}")
    assert "正常" in page.text  # still active
    refused = [e for e in _events(api_env, "console.refused") if e.reason and "CSRF" in e.reason]
    assert len(refused) == 2 and all(e.channel == "console" for e in refused)
    # the sign-in form too: no form cookie, or a token that is not its own
    fresh = TestClient(c.app)
    r = fresh.post("/console/login", data={"username": "x", "password": "y", "csrf": "z"})
    assert r.status_code == 403


def test_backoff_is_per_user_and_address_and_never_permanent(api_env: ApiEnv) -> None:
    give_passwords(api_env)
    conf = api_env.settings.console
    clerk = api_env.actors["clerk"].username
    c = api_env.client
    page = c.get("/console/login")
    token = csrf_of(page.text)
    for i in range(conf.sign_in_free_failures):
        r = c.post("/console/login", data={"csrf": token, "username": clerk, "password": "no"})
        assert r.status_code == 401 and "用户名或密码错误" in r.text, i
    # the next one waits; the right password is not even checked while it waits
    r = c.post("/console/login", data={"csrf": token, "username": clerk, "password": "no"})
    assert r.status_code == 401 and "登录失败次数过多" in r.text
    r = c.post("/console/login", data={"csrf": token, "username": clerk, "password": PASSWORD})
    assert r.status_code == 401 and "登录失败次数过多" in r.text
    # another address is not affected (an attacker elsewhere cannot lock the clerk out)
    other = TestClient(c.app, client=("10.1.2.3", 5000))
    assert sign_in(other, clerk)
    # the wait ends: move it into the past, then the right password works and clears it
    from issuance.models import ConsoleSignInFailure

    with api_env.session() as s:  # type: ignore[attr-defined]
        row = s.get(ConsoleSignInFailure, (clerk, "testclient"))
        assert row is not None and row.failures == conf.sign_in_free_failures
        row.wait_until = utcnow() - timedelta(seconds=1)
    assert sign_in(c, clerk)
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.get(ConsoleSignInFailure, (clerk, "testclient")) is None
    refused = [e for e in _events(api_env, "console.sign_in_refused") if e.entity_id == clerk]
    assert len(refused) == conf.sign_in_free_failures + 2
    assert not any(PASSWORD in (e.details or "") + (e.reason or "") for e in refused)


def test_idle_timeout_and_sign_out_end_the_session(api_env: ApiEnv) -> None:
    give_passwords(api_env)
    c = api_env.client
    csrf = sign_in(c, api_env.actors["auditor"].username)
    assert c.get("/console/audit").status_code == 200
    with api_env.session() as s:  # type: ignore[attr-defined]
        live = s.scalars(sa.select(ConsoleSession).where(ConsoleSession.ended_at.is_(None))).one()
        live.last_seen_at = utcnow() - timedelta(minutes=api_env.settings.console.idle_minutes + 1)
    r = c.get("/console/audit", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.scalars(sa.select(ConsoleSession.end_reason)).all() == ["idle"]
    csrf = sign_in(c, api_env.actors["auditor"].username)
    r = c.post("/console/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert c.get("/console/home", follow_redirects=False).status_code == 303
    assert [e.reason for e in _events(api_env, "console.signed_out")] == ["signed_out"]


def test_a_role_without_the_scope_is_refused(api_env: ApiEnv) -> None:
    give_passwords(api_env)
    c = api_env.client
    sign_in(c, api_env.actors["reviewer"].username)
    r = c.get("/console/audit")
    assert r.status_code == 403 and "无权" in r.text
    (ev,) = _events(api_env, "console.refused")
    assert ev.actor_name == api_env.actors["reviewer"].username and ev.channel == "console"


def test_times_are_in_the_issuer_zone_with_offset() -> None:
    from datetime import datetime

    assert i18n.when(datetime(2026, 12, 6, 1, 2, 3), "zh_CN", "Asia/Shanghai") == (
        "2026-12-06 09:02:03 +08:00"
    )
    assert i18n.when(datetime(2026, 7, 1, 12, 0), "en", "Europe/Berlin").endswith("+02:00")


def test_vendored_htmx_is_the_pinned_file() -> None:
    import hashlib
    from pathlib import Path

    static = Path(i18n.__file__).parent / "static"
    digest = hashlib.sha256((static / "htmx.min.js").read_bytes()).hexdigest()
    assert digest in (static / "THIRD_PARTY.md").read_text()


def test_every_message_of_the_pages_has_a_chinese_translation() -> None:
    import re
    from pathlib import Path

    from issuance import models as m

    templates = Path(i18n.__file__).parent / "templates"
    used: set[str] = set()
    for page in templates.rglob("*.html"):
        used |= set(re.findall(r"""_\(["']([^"']+)["']\)""", page.read_text()))
    for enum in (m.ApplicationStatus, m.BatchStage, m.BatchStatus, m.CardKind, m.CardStatus,
                 m.Channel, m.ChipAppKind, m.ChipAppStatus, m.LossKind, m.LossStatus,
                 m.StaffRole):  # fmt: skip
        used |= {m.value for m in enum}
    from console.web import FIELD_KEYS, REFUSAL_KEYS

    used |= {"do:review", "do:approve", "do:reject", "male", "female", "unstated"}
    used |= set(FIELD_KEYS.values()) | set(REFUSAL_KEYS.values())
    used |= {f"filter:{k}" for k in ("entity_type", "entity_id", "action", "actor", "channel")}
    zh = i18n.translations("zh_CN")
    missing = sorted(m for m in used if zh.gettext(m) == m)
    assert missing == []
    en = i18n.translations("en")
    assert en.gettext("lost_provisional") == "lost provisional"
    assert en.gettext("do:reject") == "Reject"


def test_a_disabled_user_cannot_sign_in_and_their_session_ends(api_env: ApiEnv) -> None:
    from issuance.models import Staff

    give_passwords(api_env)
    c = api_env.client
    clerk = api_env.actors["clerk"]
    sign_in(c, clerk.username)
    with api_env.session() as s:  # type: ignore[attr-defined]
        staff = s.get(Staff, clerk.staff_id)
        assert staff is not None
        staff.active = False
    r = c.get("/console/home", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.scalars(sa.select(ConsoleSession.end_reason)).all() == ["disabled"]
    page = c.get("/console/login")
    r = c.post("/console/login", data={"csrf": csrf_of(page.text), "username": clerk.username,
                                       "password": PASSWORD})  # fmt: skip
    assert r.status_code == 401 and "该用户已停用" in r.text


def test_a_polling_page_does_not_keep_the_session_alive(api_env: ApiEnv) -> None:
    give_passwords(api_env)
    c = api_env.client
    sign_in(c, api_env.actors["clerk"].username)
    page = c.get("/console/batches")
    assert 'hx-headers=\'{"X-Console-Poll": "1"}\'' in page.text
    idle = timedelta(minutes=api_env.settings.console.idle_minutes)
    with api_env.session() as s:  # type: ignore[attr-defined]
        live = s.scalars(sa.select(ConsoleSession)).one()
        live.last_seen_at = utcnow() - idle + timedelta(seconds=30)
        before = live.last_seen_at
    poll = {"HX-Request": "true", "X-Console-Poll": "1"}
    assert c.get("/console/batches/rows", headers=poll).status_code == 200
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.scalars(sa.select(ConsoleSession.last_seen_at)).one() == before
        s.scalars(sa.select(ConsoleSession)).one().last_seen_at = utcnow() - idle
    r = c.get("/console/batches/rows", headers=poll)
    assert r.status_code == 401 and r.headers["HX-Redirect"] == "/console/login"


def test_system_page_shows_keys_and_settings_never_a_secret(api_env: ApiEnv) -> None:
    import re

    from console.web import _settings_rows
    from yikatong.settings import load_settings

    give_passwords(api_env)
    c = api_env.client
    sign_in(c, api_env.actors["auditor"].username)
    page = c.get("/console/system")
    assert page.status_code == 200, page.text
    # the test token's keys with their check values, computed in the HSM
    assert '<td class="mono">ykt:dmk:3des:v1</td><td>master</td>' in page.text
    assert "<td>signing</td>" in page.text
    assert re.search(r'<td class="mono">[0-9A-F]{6} <span class="hint">hsm</span>', page.text)
    pin = api_env.settings.hsm.pin.get_secret_value()
    assert '<td class="mono">hsm.pin</td><td class="mono">**********</td>' in page.text
    assert f">{pin}<" not in page.text
    assert api_env.actors["clerk"].username in page.text
    rows = dict(_settings_rows(load_settings(environ={
        "YKT_DATA_DIR": "/tmp/x", "YKT_DATABASE__URL": "postgresql://ykt:s3cret-pw@db/ykt",
        "YKT_NOTIFY__HTTP_TOKEN": "tok-very-secret",
    })))  # fmt: skip
    assert rows["database.url"] == "postgresql://ykt:***@db/ykt"
    assert rows["notify.http_token"] == "**********"
    assert "s3cret-pw" not in str(rows) and "tok-very-secret" not in str(rows)
    # a reviewer may not see it
    c2 = TestClient(c.app)
    sign_in(c2, api_env.actors["reviewer"].username)
    assert c2.get("/console/system").status_code == 403


def test_each_role_has_a_home_page(api_env: ApiEnv) -> None:
    give_passwords(api_env)
    expected = {
        "clerk": ["卡片", "制卡批次"], "reviewer": ["待办队列"], "approver": ["待办队列"],
        "supervisor": ["待办队列", "卡片", "制卡批次", "审计日志", "系统"],
        "auditor": ["制卡批次", "审计日志", "系统"], "admin": ["卡片", "审计日志", "系统"],
        "fund_supervisor": ["审计日志", "网点"], "bank_teller": ["网点", "金融功能"],
    }  # fmt: skip
    for role, words in expected.items():
        c = TestClient(api_env.client.app)
        sign_in(c, api_env.actors[role].username)
        home = c.get("/console/home").text
        main = home[home.index("<main") :]
        assert all(w in main for w in words), (role, main)


def test_old_failures_of_any_user_are_forgotten(api_env: ApiEnv) -> None:
    from issuance.models import ConsoleSignInFailure

    give_passwords(api_env)
    with api_env.session() as s:  # type: ignore[attr-defined]
        s.add(ConsoleSignInFailure(username="tried-once", source="10.9.9.9", failures=1,
                                   last_failure_at=utcnow() - timedelta(days=2)))  # fmt: skip
    c = api_env.client
    page = c.get("/console/login")
    r = c.post("/console/login", data={"csrf": csrf_of(page.text), "username": "nobody-here",
                                       "password": "wrong-password"})  # fmt: skip
    assert r.status_code == 401
    with api_env.session() as s:  # type: ignore[attr-defined]
        left = s.scalars(sa.select(ConsoleSignInFailure.username)).all()
    assert left == ["nobody-here"]


def test_the_cookie_is_secure_under_tls(api_env: ApiEnv) -> None:
    give_passwords(api_env)
    c = TestClient(api_env.client.app, base_url="https://console.example")
    page = c.get("/console/login")
    assert "Secure" in page.headers["set-cookie"]
    r = c.post("/console/login", data={"csrf": csrf_of(page.text), "password": PASSWORD,
               "username": api_env.actors["clerk"].username}, follow_redirects=False)  # fmt: skip
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "Secure" in cookie and "HttpOnly" in cookie


def test_redirects_stay_in_the_console(api_env: ApiEnv) -> None:
    c = api_env.client
    for target in ("//evil.example/x", "https://evil.example/", "/console/../v1/cards",
                   "/consolex", "/console//evil.example", "/console/\\evil"):  # fmt: skip
        r = c.get("/console/lang/en", params={"next": target}, follow_redirects=False)
        assert r.headers["location"] == "/console/home", target
    r = c.get("/console/lang/en", params={"next": "/console/audit"}, follow_redirects=False)
    assert r.headers["location"] == "/console/audit"


def test_no_template_has_inline_script_style_or_handler() -> None:
    import re
    from pathlib import Path

    for page in (Path(i18n.__file__).parent / "templates").rglob("*.html"):
        text = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), page.name
        assert not re.search(r"\sstyle=|<style|\son[a-z]+=|javascript:", text), page.name
        assert "hx-on" not in text and "hx-vals='js:" not in text, page.name


def test_failed_sign_ins_at_once_all_count(api_env: ApiEnv) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from issuance.models import ConsoleSignInFailure

    give_passwords(api_env)
    clerk = api_env.actors["clerk"].username

    def fail(_: int) -> int:
        r = TestClient(api_env.client.app, client=("10.7.7.7", 4000))
        page = r.get("/console/login")
        form = {"csrf": csrf_of(page.text), "username": clerk, "password": "wrong-password"}
        return r.post("/console/login", data=form).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(fail, range(4))) == [401] * 4
    with api_env.session() as s:  # type: ignore[attr-defined]
        row = s.get(ConsoleSignInFailure, (clerk, "10.7.7.7"))
        assert row is not None and row.failures == 4


def test_every_catalog_file_agrees_with_the_others() -> None:
    """All ``*.po`` files of a locale are read together: one message, one translation (an
    empty one falls back to the message itself)."""
    for locale in i18n.LOCALES:
        i18n.translations.cache_clear()
        assert len(i18n.catalog_paths(locale)) > 1
        i18n.translations(locale)  # raises ValueError on two translations of one message
    zh = i18n.translations("zh_CN")
    assert zh.gettext("Handled by") == "经办人" and zh.gettext("Staff") == "人员"
    assert zh.gettext("One-time code") == "验证码" and zh.gettext("Code") == "代码"


def test_the_card_page_says_pin_blocked_never_sealed(api_env: ApiEnv, card_and_chip: tuple) -> None:
    """A PIN the card reported blocked is shown as blocked on the counter's card page (the
    same state ``ykt cards show`` and the person page show), and tries left when fewer."""
    from issuance.models import Card
    from issuance.services import pins

    give_passwords(api_env)
    card, _ = card_and_chip
    c = api_env.client
    sign_in(c, api_env.actors["clerk"].username)
    with api_env.session() as s:  # type: ignore[attr-defined]
        row = s.get(Card, card.id)
        assert row is not None
        pins.record_pin_state(s, row, pins.SS_PIN, 1, api_env.actors["clerk"])
    page = c.get(f"/console/cards?number={card.card_number}")
    assert page.status_code == 200 and "密码剩余次数 1" in page.text
    with api_env.session() as s:  # type: ignore[attr-defined]
        row = s.get(Card, card.id)
        assert row is not None
        pins.record_pin_state(s, row, pins.SS_PIN, 0, api_env.actors["clerk"])
    page = c.get(f"/console/cards?number={card.card_number}")
    assert "<strong>密码已锁</strong>" in page.text
    assert page.text.count("密码已锁") == 3  # social security, medical and pension: one PIN
