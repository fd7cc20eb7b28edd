"""The console in a real browser: Debian's Chromium driven by Playwright, against the product's
own app served by uvicorn on a free port. Each journey makes the mistake a person makes and
asserts what the page shows. Screenshots of the main pages go to ``$YKT_CONSOLE_SCREENSHOTS``
(default: the test's tmp dir), 1366×768.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv, fake_photo, make_cid
from console_helpers import PASSWORD, give_passwords
from playwright.sync_api import Browser, Page, sync_playwright

from cardspec.ids import card_number_check_char
from devstack.dbserver import free_port
from issuance import services
from issuance.batches.selection import create_batch
from issuance.db import make_sessionmaker, transaction
from issuance.models import Application, AuditEvent

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PHOTO = Path(__file__).resolve().parents[2] / "issuance/sample_data/photos/resident-02.jpg"
pytestmark = pytest.mark.slow


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A browser for one test: Playwright's sync API marks an event loop as running in this
    thread while it is open, so it must not stay open past the test (the next test in this
    worker may run asyncio itself)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("YKT_CONSOLE_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("console-shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def console(api_env: ApiEnv) -> Iterator[str]:
    """The app of ``api_env`` served over HTTP (uvicorn in a thread)."""
    import uvicorn

    give_passwords(api_env)
    port = free_port()
    config = uvicorn.Config(api_env.client.app, host="127.0.0.1", port=port, lifespan="off",
                            log_level="warning", access_log=False)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def page(browser: Browser, console: str) -> Iterator[Page]:
    ctx = browser.new_context(
        viewport={"width": 1366, "height": 768}, locale="zh-CN", base_url=console
    )
    errors: list[str] = []
    pg = ctx.new_page()
    # script errors and Content-Security-Policy violations (not the 4xx answers the journeys
    # provoke on purpose)
    pg.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    # a Content-Security-Policy violation or a script error shows up here
    assert errors == []


def _sign_in(page: Page, username: str, password: str = PASSWORD) -> None:
    page.goto("/console/login")
    page.get_by_label("用户名").fill(username)
    page.get_by_label("密码").fill(password)
    page.get_by_role("button", name="登录").click()


def _application(env: ApiEnv, *, reviewed_by: str | None = None) -> int:
    """An application received and processed by the clerk (the real photo processing)."""
    with transaction(make_sessionmaker(env.engine)) as s:
        app = services.submit_application(
            s, env.settings,
            services.ApplicationInput(
                citizen_id=make_cid(), name="欧阳娜娜", phone="13912345678",
                address="浙江省杭州市西湖区文三路 90 号", ethnicity="01", photo=PHOTO.read_bytes(),
            ),
            env.actors["clerk"],
        )  # fmt: skip
        services.process_application(s, app.id, env.actors["clerk"])
        if reviewed_by:
            services.review_application(s, app.id, env.actors[reviewed_by])
        return app.id


def test_wrong_password_then_the_right_one_by_keyboard(
    api_env: ApiEnv, page: Page, shots: Path
) -> None:
    p = page
    clerk = api_env.actors["clerk"].username
    p.goto("/console/home")
    assert "/console/login" in p.url
    # keyboard only: the user name field has the focus, Tab to the password, Enter to send
    p.keyboard.type(clerk)
    p.keyboard.press("Tab")
    p.keyboard.type("not-my-password")
    p.keyboard.press("Enter")
    alert = p.get_by_role("alert")
    assert alert.inner_text() == "用户名或密码错误。"
    p.screenshot(path=str(shots / "login-wrong-password.png"))
    assert p.get_by_label("用户名").input_value() == clerk
    p.get_by_label("密码").fill(PASSWORD)
    p.keyboard.press("Enter")
    p.wait_for_url("**/console/home")
    assert "您好" in p.inner_text("main") and "柜员" in p.inner_text("main")
    p.screenshot(path=str(shots / "home-clerk.png"))
    # English, switched by the link in the header
    p.get_by_role("link", name="English").click()
    assert "Welcome" in p.inner_text("main")


def test_approving_ones_own_work_is_refused(api_env: ApiEnv, page: Page, shots: Path) -> None:
    p = page
    app_id = _application(api_env)
    supervisor = api_env.actors["supervisor"].username
    _sign_in(p, supervisor)
    p.get_by_role("link", name="待办队列").first.click()
    p.get_by_role("link", name=f"#{app_id}").click()
    # the data and the photo side by side
    img = p.get_by_role("img", name="制卡照片：欧阳娜娜", exact=True)
    assert img.evaluate("i => i.complete && i.naturalWidth > 0")
    assert "欧阳娜娜" in p.inner_text("dl.data")
    p.screenshot(path=str(shots / "application-review.png"))
    p.get_by_role("button", name="复核通过").click()
    assert "已复核，等待审批人审批。" in p.get_by_role("status").inner_text()
    # the supervisor may approve in general, but not what they reviewed themself
    p.get_by_role("button", name="批准").click()
    alert = p.get_by_role("alert").inner_text()
    assert "may not approve it (maker-checker)" in alert and "双人复核" in alert
    p.screenshot(path=str(shots / "application-own-work-refused.png"))
    with api_env.session() as s:
        assert s.get(Application, app_id).status == "reviewed"
    # another approver can
    p.get_by_role("button", name="退出").click()
    _sign_in(p, api_env.actors["approver"].username)
    p.goto(f"/console/applications/{app_id}")
    p.get_by_role("button", name="批准").click()
    status = p.get_by_role("status").inner_text()
    assert status.startswith("已批准。卡号")
    # the same page in English: every label from the catalog, no message id shows through
    p.get_by_role("link", name="English").click()
    main = p.inner_text("main")
    assert "Application #" in main and "approved" in main and "Card photo" in main
    assert "do:" not in main and "filter:" not in main and "_" not in main
    assert status.split("卡号")[1].strip() in p.inner_text("dl.data")  # its card number
    p.screenshot(path=str(shots / "application-approved-en.png"))
    with api_env.session() as s:
        app = s.get(Application, app_id)
        assert app.status == "approved" and app.card_id is not None
        ev = s.scalars(sa.select(AuditEvent).where(
            AuditEvent.action == "application.approved", AuditEvent.entity_id == str(app_id)
        )).one()  # fmt: skip
        assert ev.channel == "console" and ev.actor_name == api_env.actors["approver"].username


def test_reject_needs_a_reason(api_env: ApiEnv, page: Page) -> None:
    p = page
    app_id = _application(api_env)
    _sign_in(p, api_env.actors["reviewer"].username)
    p.goto(f"/console/applications/{app_id}")
    p.get_by_label("驳回原因").fill("照片背景不是白色，姓名用字“𠮷”请核对")
    p.get_by_role("button", name="驳回").click()
    assert p.get_by_role("status").inner_text() == "已驳回。"
    assert "照片背景不是白色，姓名用字“𠮷”请核对" in p.inner_text("dl.data")


def test_card_number_check_character_then_loss_and_unreport(
    api_env: ApiEnv, card_and_chip: tuple, page: Page, shots: Path
) -> None:
    p = page
    card, _ = card_and_chip
    number = card.card_number
    wrong = number[:8] + ("1" if number[8] != "1" else "2")
    assert card_number_check_char(number[:8]) != wrong[8]
    _sign_in(p, api_env.actors["clerk"].username)
    p.get_by_role("link", name="卡片").first.click()
    field = p.get_by_label("社会保障卡卡号（9 位）")
    field.fill(wrong)
    field.press("Enter")
    alert = p.get_by_role("alert").inner_text()
    assert "check character does not match" in alert and "卡号有误" in alert
    p.screenshot(path=str(shots / "card-wrong-check-character.png"))
    with api_env.session() as s:
        reads = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "console.card_read"))
        assert reads.all() == []  # nothing was looked up for the typo
    field = p.get_by_label("社会保障卡卡号（9 位）")
    field.fill(number.lower())
    field.press("Enter")
    assert "正常" in p.inner_text("dl.data") and "张三" in p.inner_text("dl.data")
    # formal report without the identity check: refused, the card unchanged
    p.get_by_role("button", name="挂失", exact=True).click()
    alert = p.get_by_role("alert").inner_text()
    assert "identity must be checked" in alert and "请先核验持卡人身份并勾选" in alert
    assert "正常" in p.inner_text("dl.data")
    p.get_by_label("已核验持卡人身份").first.check()
    p.get_by_label("备注").first.fill("在地铁上丢失")
    p.get_by_role("button", name="挂失", exact=True).click()
    assert p.get_by_role("status").inner_text() == "挂失已登记，卡片已锁定。"
    assert "正式挂失" in p.inner_text("dl.data")
    assert "在地铁上丢失" in p.inner_text("table")
    p.screenshot(path=str(shots / "card-lost-formal.png"), full_page=True)
    # the card was found: un-report, with the identity check
    p.get_by_label("已核验持卡人身份").check()
    p.get_by_role("button", name="解除挂失").click()
    assert p.get_by_role("status").inner_text() == "已解除挂失，卡片恢复使用。"
    assert "正常" in p.inner_text("dl.data")
    with api_env.session() as s:
        events = s.scalars(sa.select(AuditEvent).where(
            AuditEvent.entity_type == "card", AuditEvent.entity_id == str(card.id),
            AuditEvent.action.in_(["card.report_loss_formal", "card.unreport"]))).all()  # fmt: skip
        assert [e.channel for e in events] == ["console", "console"]
        assert {e.actor_name for e in events} == {api_env.actors["clerk"].username}


def test_a_form_without_its_csrf_token_is_refused(
    api_env: ApiEnv, card_and_chip: tuple, page: Page
) -> None:
    p = page
    card, _ = card_and_chip
    _sign_in(p, api_env.actors["clerk"].username)
    p.goto(f"/console/cards?number={card.card_number}")
    # a forged form: the page's form without its token (as another site would post it)
    p.evaluate("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")
    p.get_by_label("已核验持卡人身份").first.check()
    p.get_by_role("button", name="挂失", exact=True).click()
    assert "安全令牌缺失或已过期" in p.get_by_role("alert").inner_text()
    p.goto(f"/console/cards?number={card.card_number}")
    assert "正常" in p.inner_text("dl.data")


def test_auditor_searches_and_verifies_the_chain(api_env: ApiEnv, page: Page, shots: Path) -> None:
    p = page
    _sign_in(p, api_env.actors["auditor"].username)
    p.get_by_role("link", name="审计日志").first.click()
    p.get_by_label("渠道").fill("console")
    p.get_by_role("button", name="查询").click()
    rows = p.locator("table.audit tbody tr")
    assert rows.count() >= 1 and "console.signed_in" in p.inner_text("table.audit")
    p.get_by_role("button", name="校验哈希链").click()
    result = p.locator("#verify-result")
    result.get_by_text("哈希链完整").wait_for()
    assert "/console/audit?" in p.url  # a partial update, no reload
    p.screenshot(path=str(shots / "audit.png"))


def test_batch_list_refreshes_itself(api_env: ApiEnv, page: Page, shots: Path) -> None:
    p = page
    with transaction(make_sessionmaker(api_env.engine)) as s:
        app = services.submit_application(
            s, api_env.settings,
            services.ApplicationInput(citizen_id=make_cid(), name="李四", phone="13800138001",
                                      ethnicity="01", photo=PHOTO.read_bytes()),
            api_env.actors["clerk"], photo_processor=fake_photo,
        )  # fmt: skip
        services.process_application(s, app.id, api_env.actors["clerk"])
        services.review_application(s, app.id, api_env.actors["reviewer"])
        services.approve_application(s, api_env.settings, app.id, api_env.actors["approver"])
    _sign_in(p, api_env.actors["clerk"].username)
    p.goto("/console/batches")
    name = f"console-{app.id}"
    assert name not in p.inner_text("#batch-rows")
    with transaction(make_sessionmaker(api_env.engine)) as s:
        create_batch(s, api_env.actors["clerk"], name)
    # no reload: the table polls
    p.locator("#batch-rows").get_by_text(name).wait_for(timeout=15000)
    assert "已选入 1" in p.inner_text("#batch-rows")
    p.screenshot(path=str(shots / "batches.png"))
    # the batch's report, its chart drawn by the same code as ``ykt batch report``
    p.get_by_role("link", name=name).click()
    assert "已选入 1" in p.inner_text("#batch-report")
    chart = p.get_by_role("img", name="批次报告图表")
    chart.wait_for()
    p.wait_for_function("() => document.querySelector('img.chart').naturalWidth > 0")
    assert chart.evaluate("i => i.naturalWidth") == 1200
    p.screenshot(path=str(shots / "batch-report.png"), full_page=True)


def test_a_loss_report_by_keyboard_alone(api_env: ApiEnv, card_and_chip: tuple, page: Page) -> None:
    p = page
    card, _ = card_and_chip
    _sign_in(p, api_env.actors["clerk"].username)
    p.goto("/console/cards")

    def focused() -> str:
        return str(p.evaluate("document.activeElement.id || document.activeElement.textContent"))

    assert focused() == "number"  # the card number field has the focus
    p.keyboard.type(card.card_number)
    p.keyboard.press("Enter")
    p.wait_for_url(f"**/console/cards?number={card.card_number}")
    assert focused() == "number"
    steps = [("Tab", "查询"), ("Tab", "kind-formal"), ("Tab", "loss-identity"), ("Space", None),
             ("Tab", "loss-note")]  # fmt: skip
    for key, expect in steps:
        p.keyboard.press(key)
        if expect is not None:
            assert focused() == expect, (key, expect, focused())
    p.keyboard.type("持卡人本人到柜台")
    p.keyboard.press("Tab")
    assert focused() == "挂失"
    p.keyboard.press("Enter")
    assert p.get_by_role("status").inner_text() == "挂失已登记，卡片已锁定。"
    assert "正式挂失" in p.inner_text("dl.data")


def test_loss_then_temporary_card_with_its_receipt(
    api_env: ApiEnv, card_and_chip: tuple, page: Page, shots: Path
) -> None:
    """The counter task of the issue's before/after: a lost card reported, a temporary card
    with its deposit receipt. An active card is not eligible yet: the service says why."""
    p = page
    card, _ = card_and_chip
    _sign_in(p, api_env.actors["clerk"].username)
    p.goto(f"/console/cards?number={card.card_number}")
    p.get_by_role("button", name="发放临时卡").click()
    assert "needs a pending application or a card in production, lost or damaged" in (
        p.get_by_role("alert").inner_text()
    )
    started = time.monotonic()
    p.get_by_label("已核验持卡人身份").first.check()
    p.get_by_role("button", name="挂失", exact=True).click()
    p.get_by_role("button", name="发放临时卡").click()
    p.wait_for_url("**/receipt")
    seconds = time.monotonic() - started
    assert p.get_by_role("status").inner_text() == "临时卡已发放。请连同本收据交给持卡人。"
    text = p.inner_text("dl.data")
    assert "张三" in text and "¥5.00" in text
    p.screenshot(path=str(shots / "temporary-card-receipt.png"))
    # 3 clicks after the card is on screen (the identity check, report, temporary card)
    print(f"console: loss report + temporary card in 3 clicks, {seconds:.2f} s of server+browser")
    with api_env.session() as s:  # type: ignore[attr-defined]
        ev = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "deposit.taken")).one()
        assert ev.channel == "console" and ev.actor_name == api_env.actors["clerk"].username
    # printing uses the page's own script (no inline script): the button is there
    assert p.get_by_role("button", name="打印").is_visible()
    p.emulate_media(media="print")  # the printed receipt: no header, no buttons
    assert not p.locator("header.top").is_visible()
    assert not p.get_by_role("button", name="打印").is_visible()
    assert p.get_by_text("¥5.00").is_visible()
