"""Resident self-service in a real browser at phone size (390×844, touch): Debian's Chromium
driven by Playwright against the product's app served by uvicorn. The one-time code is read
as the resident gets it: the outbox drained through the product's log sink (no backdoor).
Screenshots go to ``$YKT_CONSOLE_SCREENSHOTS`` (default: the test's tmp dir)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv
from playwright.sync_api import Browser, Page
from resident_helpers import card_status, delivered_codes, holder, make_cid, one_code
from test_console_browser import browser, console, shots  # noqa: F401  (fixtures)

from issuance import services
from issuance.db import make_sessionmaker, transaction
from issuance.models import AuditEvent, Card, Channel

pytestmark = pytest.mark.slow
PHONE = {"width": 390, "height": 844}
CODE_LABEL = "短信验证码（6 位数字）"


@pytest.fixture
def phone(browser: Browser, console: str) -> Iterator[Page]:  # noqa: F811
    """A phone-sized page (touch, Chinese), failing the test on any script error or
    Content-Security-Policy violation."""
    ctx = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, locale="zh-CN",
                              base_url=console)  # fmt: skip
    errors: list[str] = []
    pg = ctx.new_page()
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error"
          and not m.text.startswith("Failed to load resource") else None)  # fmt: skip
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert errors == []


def _details(p: Page, tile: str, cid: str, name: str) -> None:
    p.goto("/console/self")
    p.get_by_role("link", name=tile).click()
    p.get_by_label("身份证号码").fill(cid)
    p.get_by_label("姓名").fill(name)
    p.get_by_role("button", name="获取短信验证码").click()


def _code(p: Page, code: str) -> None:
    p.get_by_label(CODE_LABEL).fill(code)
    p.get_by_role("button", name="确认").click()


def _fits(p: Page) -> None:
    """Nothing wider than the phone: no sideways scrolling."""
    assert p.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_report_a_lost_card_with_the_code_from_the_phone(
    api_env: ApiEnv,
    phone: Page,
    shots: Path,  # noqa: F811
) -> None:
    p = phone
    cid, name, number = holder(api_env)
    p.goto("/console/self")
    assert p.get_by_role("heading").inner_text() == "您要办理什么业务？"
    _fits(p)
    p.screenshot(path=str(shots / "resident-home.png"))
    _details(p, "社保卡挂失", cid, name)
    assert p.get_by_role("status").inner_text().startswith("如果您填写的信息与我们的记录一致")
    assert "138" not in p.inner_text("main")  # not even the masked phone
    _fits(p)
    p.screenshot(path=str(shots / "resident-code.png"))
    _code(p, one_code(api_env))
    assert number in p.inner_text("dl.rdata") and "正常" in p.inner_text("dl.rdata")
    _fits(p)
    p.screenshot(path=str(shots / "resident-report-confirm.png"), full_page=True)
    p.get_by_role("button", name="确认挂失我的卡").click()
    assert p.get_by_role("status").inner_text() == "您的卡已临时挂失，现已停用。"
    assert "临时挂失" in p.inner_text("dl.rdata")
    p.screenshot(path=str(shots / "resident-reported.png"), full_page=True)
    assert card_status(api_env, number) == "lost_provisional"
    # the session ended with its action: going back does not offer the button again
    p.go_back()
    p.reload()
    assert p.get_by_label("身份证号码").is_visible()


def test_a_wrong_code_is_refused_and_too_many_lock_it(
    api_env: ApiEnv,
    phone: Page,
    shots: Path,  # noqa: F811
) -> None:
    p = phone
    cid, name, number = holder(api_env)
    _details(p, "社保卡挂失", cid, name)
    right = one_code(api_env)
    wrong = f"{(int(right) + 500_001) % 10**6:06d}"
    tries = api_env.settings.resident.code_tries
    _code(p, wrong)
    assert p.get_by_role("alert").inner_text() == f"验证码不正确。剩余尝试次数： {tries - 1}"
    p.screenshot(path=str(shots / "resident-wrong-code.png"))
    for _ in range(tries - 1):
        _code(p, wrong)
    alert = p.get_by_role("alert").inner_text()
    assert alert.startswith("错误次数过多：该验证码已失效。")
    assert p.get_by_label(CODE_LABEL).count() == 0  # no field left to try again
    p.screenshot(path=str(shots / "resident-locked.png"))
    p.get_by_role("link", name="重新获取验证码").click()
    assert p.get_by_label("身份证号码").is_visible()
    assert card_status(api_env, number) == "active"


def test_an_unknown_person_sees_what_a_known_one_with_a_wrong_name_sees(
    api_env: ApiEnv,
    browser: Browser,  # noqa: F811
    console: str,  # noqa: F811
    shots: Path,  # noqa: F811
) -> None:
    cid, _name, _ = holder(api_env)
    seen = []
    for who, (c, n) in {"wrong name": (cid, "李四"), "unknown": (make_cid(), "李四")}.items():
        ctx = browser.new_context(viewport=PHONE, is_mobile=True, locale="zh-CN",
                                  base_url=console)  # fmt: skip
        p = ctx.new_page()
        _details(p, "社保卡挂失", c, n)
        seen.append((p.url, p.inner_text("main")))
        _code(p, "123456")
        seen.append((p.url, p.inner_text("main")))
        if who == "unknown":
            p.screenshot(path=str(shots / "resident-unknown-person.png"))
        ctx.close()
    assert seen[0] == seen[2] and seen[1] == seen[3], seen
    assert "剩余尝试次数： 4" in seen[1][1]
    assert delivered_codes(api_env) == []
    # a mistyped ID number (its check character) is said at once: arithmetic, no lookup
    ctx = browser.new_context(viewport=PHONE, is_mobile=True, locale="zh-CN", base_url=console)
    p = ctx.new_page()
    bad = cid[:17] + ("0" if cid[17] != "0" else "1")
    _details(p, "社保卡挂失", bad, "张三")
    assert "最后一位校验码" in p.get_by_role("alert").inner_text()
    p.screenshot(path=str(shots / "resident-bad-id-number.png"))
    ctx.close()


def test_withdraw_a_provisional_report_in_english(
    api_env: ApiEnv,
    phone: Page,
    shots: Path,  # noqa: F811
) -> None:
    p = phone
    cid, name, number = holder(api_env)
    with transaction(make_sessionmaker(api_env.engine)) as s:
        card = s.scalars(sa.select(Card).where(Card.card_number == number)).one()
        services.report_loss(s, api_env.settings, card.id,
                             api_env.actors["clerk"].via(Channel.PHONE))  # fmt: skip
    p.goto("/console/self")
    p.get_by_role("link", name="English").click()
    assert p.get_by_role("heading").inner_text() == "What would you like to do?"
    p.get_by_role("link", name="Withdraw a loss report").click()
    p.get_by_label("ID card number").fill(cid)
    p.get_by_label("Name").fill(name)
    p.get_by_role("button", name="Send me a code").click()
    p.get_by_label("One-time code (6 digits)").fill(one_code(api_env))
    p.get_by_role("button", name="Confirm").click()
    assert "lost provisional" in p.inner_text("dl.rdata")
    p.get_by_role("button", name="Withdraw the loss report").click()
    assert p.get_by_role("status").inner_text() == (
        "Your loss report is withdrawn: the card works again."
    )
    _fits(p)
    p.screenshot(path=str(shots / "resident-withdrawn-en.png"), full_page=True)
    assert card_status(api_env, number) == "active"
    with api_env.session() as s:  # type: ignore[attr-defined]
        event = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "card.unreport")).one()
        assert event.channel == "web" and event.actor_name.startswith("resident:")


def test_see_where_the_new_card_is(api_env: ApiEnv, phone: Page, shots: Path) -> None:  # noqa: F811
    p = phone
    cid, name, old = holder(api_env)
    # the old card lost at the counter and replaced: the new one is being made
    with transaction(make_sessionmaker(api_env.engine)) as s:
        card = s.scalars(sa.select(Card).where(Card.card_number == old)).one()
        clerk = api_env.actors["clerk"]
        services.report_loss(s, api_env.settings, card.id, clerk, identity_checked=True)
        new = services.replace_card(s, api_env.settings, card.id, clerk)
        for step in ("start_production", "personalise"):
            services.advance_production(s, api_env.settings, new.id, step, clerk,
                                        chip_serial=bytes.fromhex("0011223344556677"))  # fmt: skip
        number = new.card_number
    _details(p, "新卡进度", cid, name)
    _code(p, one_code(api_env))
    track = p.inner_text("ol.rtrack")
    assert track.splitlines()[0] == "已申请" and "制卡中" in track
    assert p.inner_text("li.now").startswith("制卡中")
    assert number in p.inner_text("main")
    _fits(p)
    p.screenshot(path=str(shots / "resident-progress.png"), full_page=True)
    # the page may be looked at again while the session lasts (read only)
    p.reload()
    assert p.inner_text("li.now").startswith("制卡中")
