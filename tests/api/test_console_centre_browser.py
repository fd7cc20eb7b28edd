"""The card centre, the bank branch and the administrator in Debian's Chromium (Playwright),
against the product's own composition root (:func:`yikatong.wiring.api_app`: the HSM, the
virtual readers, the file spool), served by uvicorn on a free port. Each journey makes the
mistakes people make and asserts what the page shows; screenshots go to
``$YKT_CONSOLE_SCREENSHOTS`` (default: the test's tmp dir), 1366×768.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import Hsm, make_cid
from console_helpers import PASSWORD
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy.engine import Engine

from devstack.dbserver import free_port
from issuance import migrations, services
from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import (
    AuditEvent,
    BatchItem,
    Card,
    Channel,
    ChipAppKind,
    StaffRole,
)
from issuance.services import staff as staff_service
from yikatong.settings import Settings, load_settings

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PHOTOS = Path(__file__).resolve().parents[2] / "issuance/sample_data/photos"
BRANCH = "ICBC-XH-01"
pytestmark = [pytest.mark.slow, pytest.mark.pcsc]


@dataclass
class Centre:
    url: str
    engine: Engine
    settings: Settings
    actors: dict[str, Actor]

    def session(self) -> object:
        return transaction(make_sessionmaker(self.engine))


@pytest.fixture
def browser() -> Iterator[Browser]:
    """One browser per test (Playwright's sync API must not outlive the test)."""
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


@pytest.fixture(scope="session")
def maker_key(tmp_path_factory: pytest.TempPathFactory, api_hsm: Hsm) -> Path:
    """The blank-stock maker's copy of the transport key (made once in the tests' token;
    each test's data directory gets a copy, as the maker's delivery would bring it)."""
    from issuance.batches.stock import ensure_manufacturer_key, manufacturer_key_path

    assert api_hsm.config.softhsm_conf is not None and api_hsm.config.tokens_dir is not None
    # the maker's copy lives beside the tests' token, where every test using that token keeps
    # it (the token holds one transport key, whoever made it first)
    settings = load_settings(environ={
        "YKT_DATA_DIR": str(api_hsm.config.tokens_dir.parent.parent),
        "YKT_HSM__SOFTHSM_CONF": str(api_hsm.config.softhsm_conf),
    })  # fmt: skip
    ensure_manufacturer_key(settings)
    return manufacturer_key_path(settings)


@pytest.fixture
def centre(tmp_path: Path, fresh_db_url: str, api_hsm: Hsm, maker_key: Path) -> Iterator[Centre]:
    """The service as ``ykt serve`` builds it (the composition root), on a fresh database,
    the tests' HSM token, one virtual reader; staff with passwords, a bank branch."""
    import uvicorn

    from yikatong.wiring import api_app

    assert api_hsm.config.softhsm_conf is not None
    from devstack.bank import demo_bank_toml
    from yikatong.demo import DEMO_BANK_DOMAIN

    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    # the branch's bank co-operates: its BIN and key domain (its issuer master keys imported
    # into the tests' token by key ceremony)
    (data / "yikatong.toml").write_text(demo_bank_toml(BRANCH, DEMO_BANK_DOMAIN), encoding="utf-8")
    settings = load_settings(environ={
        "YKT_DATA_DIR": str(data), "YKT_DATABASE__URL": fresh_db_url,
        "YKT_HSM__SOFTHSM_CONF": str(api_hsm.config.softhsm_conf), "YKT_READERS__COUNT": "1",
    })  # fmt: skip
    ensure_bank_keys_for(settings)
    import shutil

    from issuance.batches.stock import manufacturer_key_path

    copy = manufacturer_key_path(settings)
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(maker_key, copy)
    engine = make_engine(settings)
    migrations.upgrade(engine)
    actors: dict[str, Actor] = {}
    with transaction(make_sessionmaker(engine)) as s:
        branch = services.create_agency(s, BRANCH, "中国工商银行杭州西湖支行", "bank", "330106")
        for role in (StaffRole.CLERK, StaffRole.REVIEWER, StaffRole.APPROVER,
                     StaffRole.SUPERVISOR, StaffRole.BANK_TELLER, StaffRole.ADMIN):  # fmt: skip
            name = f"{role}-1"
            services.create_staff(
                s, name, role, display_name=f"{role} 测试",
                agency_id=branch.id if role == StaffRole.BANK_TELLER else None,
            )  # fmt: skip
            staff_service.set_password(s, name, PASSWORD, SYSTEM_ACTOR)
            actors[str(role)] = services.actor_for(s, name)
    app = api_app(settings, engine=engine)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning", access_log=False))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield Centre(f"http://127.0.0.1:{port}", engine, settings, actors)
    server.should_exit = True
    thread.join(10)
    engine.dispose()


def _page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    ctx = browser.new_context(viewport={"width": 1366, "height": 768}, locale="zh-CN",
                              base_url=url)  # fmt: skip
    errors: list[str] = []
    pg = ctx.new_page()
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error"
          and not m.text.startswith("Failed to load resource") else None)  # fmt: skip
    pg.on("pageerror", lambda e: errors.append(str(e)))
    return pg, errors


def _shot(p: Page, *, path: str, full_page: bool = False) -> None:
    """A screenshot for the docs. Chromium sometimes answers "Unable to capture screenshot"
    while a busy machine is still compositing a long page: one more try after a moment."""
    from playwright.sync_api import Error

    try:
        p.screenshot(path=path, full_page=full_page)
    except Error as exc:
        if "Unable to capture screenshot" not in str(exc):
            raise
        p.wait_for_timeout(1000)
        p.screenshot(path=path, full_page=full_page)


def _sign_in(p: Page, username: str) -> None:
    p.goto("/console/login")
    p.get_by_label("用户名").fill(username)
    p.get_by_label("密码").fill(PASSWORD)
    p.get_by_role("button", name="登录").click()
    p.wait_for_url("**/console/home")


def _approved(c: Centre, names: list[str]) -> list[tuple[str, str]]:
    """Applications with the sample photos (real processing), approved by three people:
    ``[(card number, citizen id)]``."""
    photos = sorted(PHOTOS.glob("resident-*.jpg"))
    out = []
    with c.session() as s:  # type: ignore[attr-defined]
        for i, name in enumerate(names):
            cid = make_cid()
            app = services.submit_application(s, c.settings, services.ApplicationInput(
                citizen_id=cid, name=name, phone="13912345678", ethnicity="01",
                address="浙江省杭州市西湖区北山街道 12 号", photo=photos[i].read_bytes(),
            ), c.actors["clerk"])  # fmt: skip
            services.process_application(s, app.id, c.actors["clerk"])
            services.review_application(s, app.id, c.actors["reviewer"])
            card = services.approve_application(s, c.settings, app.id, c.actors["approver"])
            out.append((card.card_number, cid))
    # the bank data exchange: the request file, the bank's answer (the throwaway bank side),
    # the response loaded: the cards' PANs are the bank's
    from devstack.bank import answer_request
    from issuance import bank

    with c.session() as s:  # type: ignore[attr-defined]
        request = bank.request_file(s, c.settings, BRANCH, c.actors["supervisor"])
    answer = answer_request(request.text, c.settings.banks[BRANCH].bins[0])
    with c.session() as s:  # type: ignore[attr-defined]
        loaded = bank.load_response(s, c.settings, BRANCH, answer, c.actors["supervisor"])
    assert loaded.loaded == len(names)
    return out


def ensure_bank_keys_for(settings: Settings) -> None:
    """The branch bank's issuer master keys in the tests' token (once: the token is shared)."""
    from cardspec.keyscheme import Algorithm
    from devstack.bank import IMK_SLOTS, imk_components
    from hsm import ceremony
    from hsm.pkcs11 import open_token
    from yikatong.wiring import hsm_config

    conf = settings.banks[BRANCH]
    token = open_token(hsm_config(settings))
    if conf.key_version in ceremony.bank_versions(token, conf.key_domain, Algorithm.DES3):
        return
    for slot in IMK_SLOTS:
        _, comps, kcvs = imk_components(Algorithm.DES3)
        ceremony.import_bank_master(token, conf.key_domain, slot, comps, kcvs, Algorithm.DES3,
                                    conf.key_version)  # fmt: skip


def test_card_centre_to_bank_branch(browser: Browser, centre: Centre, shots: Path) -> None:
    """The supervisor makes a batch (an empty selection first), runs it from the page and
    watches it finish, ships it to the branch; the teller refuses a card reported lost on its
    way and a stranger's ID document, hands the other card over, activates it, and the
    financial function waits for the PIN at the desk reader until the holder sets it there."""
    c = centre
    (good, good_cid), (lost, _) = _approved(c, ["欧阳娜娜", "司马光明"])
    p, errors = _page(browser, c.url)
    _sign_in(p, c.actors["supervisor"].username)
    p.get_by_role("link", name="制卡中心").first.click()
    # a selection nobody matches: said so, nothing made
    p.get_by_label("批次名称").fill("西湖-2026-01")
    p.get_by_label("行政区划代码或前缀").fill("4401")
    p.get_by_role("button", name="创建批次").click()
    alert = p.get_by_role("alert").inner_text()
    assert "nothing to produce" in alert and "filter" in alert
    assert p.get_by_label("行政区划代码或前缀").input_value() == "4401"  # the form kept
    _shot(p, path=str(shots / "centre-empty-selection.png"))
    p.get_by_label("行政区划代码或前缀").fill("3301")
    p.get_by_role("button", name="创建批次").click()
    assert p.get_by_role("status").first.inner_text() == "批次已创建：选入 2 张卡。"
    # run it: the page answers at once, the run goes on in the service
    p.get_by_role("button", name="运行批次").click()
    assert "已在后台开始运行" in p.get_by_role("status").first.inner_text()
    run = p.locator("#batch-run")
    expect(run).to_contain_text("运行中", timeout=10_000)
    expect(run).to_contain_text("已完成", timeout=240_000)
    assert "合格 2" in run.inner_text()
    expect(p.locator("#batch-report")).to_contain_text("已检验 2", timeout=15_000)
    chart = p.get_by_role("img", name="批次报告图表")
    expect(chart).to_have_attribute("src", re.compile(r"chart\.png\?v=0-0-0-0-0-2-"))
    p.wait_for_function("() => document.querySelector('img.chart').complete")
    assert chart.evaluate("i => i.naturalWidth") == 1200
    _shot(p, path=str(shots / "centre-batch-run.png"), full_page=True)
    # ship the good cards to the branch (the next steps: the page again)
    run.get_by_role("link", name="下一步操作").click()
    assert p.get_by_role("button", name="运行批次").count() == 0  # nothing left to make
    p.get_by_label("发往领卡网点").select_option(BRANCH)
    p.get_by_role("button", name="发出 2 张卡").click()
    assert f"已发往 {BRANCH}：2 张卡。" in p.get_by_role("status").first.inner_text()
    # the printer and the readers: the two cards' faces in the file spool
    p.get_by_role("link", name="打印机与读卡器").click()
    printer = p.locator("dl").first.inner_text()
    assert "后端\nfile\n" in printer and "\n已完成作业\n2\n" in printer, printer
    assert "虚拟读卡器" in p.inner_text("main")
    _shot(p, path=str(shots / "centre-equipment.png"), full_page=True)
    p.get_by_role("link", name="空白卡库存").click()
    assert "尚未导入到货" in p.inner_text("main") and "virtual" in p.inner_text("main")
    p.get_by_role("link", name="外包制卡文件").click()
    assert "尚未导出外包制卡文件" in p.inner_text("main")
    with c.session() as s:  # type: ignore[attr-defined]
        started = s.scalars(sa.select(AuditEvent).where(
            AuditEvent.action == "console.batch_run_started")).one()  # fmt: skip
        assert started.channel == "console"
        assert started.actor_name == c.actors["supervisor"].username
        assert s.scalar(sa.select(sa.func.count()).select_from(BatchItem).where(
            BatchItem.stage == "shipped")) == 2  # fmt: skip
        lost_cid = services.find_card(s, card_number=lost).person.citizen_id
    p.get_by_role("button", name="退出").click()

    # the bank branch
    _sign_in(p, c.actors["bank_teller"].username)
    assert "发往本网点的卡：发卡、启用、金融功能" in p.inner_text("main")  # the role's page
    p.get_by_role("link", name="网点").first.click()
    assert "中国工商银行杭州西湖支行" in p.inner_text("h1")
    waiting = p.get_by_role("table").first.inner_text()
    assert good in waiting and lost in waiting
    # a stranger's ID document for the good card
    row = p.get_by_role("row").filter(has_text=good)
    row.get_by_role("textbox").fill(make_cid())
    row.get_by_role("checkbox").check()
    row.get_by_role("button", name=f"发卡 {good}").click()
    assert "not the card holder's" in p.get_by_role("alert").inner_text()
    # the holders' own documents
    for number, cid in ((good, good_cid), (lost, lost_cid)):
        row = p.get_by_role("row").filter(has_text=number)
        row.get_by_role("textbox").fill(cid)
        row.get_by_role("checkbox").check()
        row.get_by_role("button", name=f"发卡 {number}").click()
        assert p.get_by_role("alert").count() == 0, p.get_by_role("alert").inner_text()
        status = p.get_by_role("status").inner_text()
        assert "已交给持卡人" in status and number in status
    _shot(p, path=str(shots / "branch-cards.png"), full_page=True)
    # the second holder loses the card; someone comes with its collection notice
    with c.session() as s:  # type: ignore[attr-defined]
        card = services.find_card(s, card_number=lost)
        services.report_loss(s, c.settings, card.id, c.actors["clerk"], identity_checked=True,
                             kind="formal")  # fmt: skip
    p.get_by_label("社会保障卡卡号（9 位）").fill(lost)
    p.get_by_label("证件上的身份证号码").first.fill(lost_cid)
    p.get_by_label("我已核对本人与证件照片").first.check()
    p.get_by_role("button", name="发卡", exact=True).click()
    alert = p.get_by_role("alert").inner_text()
    assert "lost_formal" in alert and "当前状态下不能执行此操作" in alert
    _shot(p, path=str(shots / "branch-lost-card-refused.png"))
    p.get_by_role("button", name=f"启用社保功能 {good}").click()
    assert "社保功能已启用" in p.get_by_role("status").inner_text()
    # the financial function: the identity box not ticked
    p.get_by_role("button", name=f"启用金融功能 {good}").click()
    assert "identity_checked" in p.get_by_role("alert").inner_text()
    p.get_by_role("row").filter(has_text=good).get_by_role("checkbox").check()
    p.get_by_role("row").filter(has_text=good).get_by_label("柜台读卡器").fill("desk-1")
    p.get_by_role("button", name=f"启用金融功能 {good}").click()
    assert "请求已发往柜台读卡工位" in p.get_by_role("status").first.inner_text()
    assert p.locator("input[type=password]").count() == 0  # no PIN field on the page
    expect(p.locator("#desk")).to_contain_text("等待工位接单")
    _shot(p, path=str(shots / "branch-pin-at-the-reader.png"))
    _holder_sets_the_pin_at_the_desk(c, good)
    expect(p.locator("#desk")).to_contain_text("已启用：密码已在卡上设置。", timeout=15_000)
    _shot(p, path=str(shots / "branch-financial-active.png"))
    with c.session() as s:  # type: ignore[attr-defined]
        fin = services.find_card(s, card_number=good).chip_app(ChipAppKind.FINANCIAL)
        assert fin is not None and fin.status == "active" and fin.pin_set
        handed = s.scalars(sa.select(AuditEvent).where(
            AuditEvent.action == "console.card_handed_over")).all()  # fmt: skip
        assert len(handed) == 2 and {e.channel for e in handed} == {"console"}
        collected = s.scalars(sa.select(AuditEvent).where(
            AuditEvent.action == "card.collect")).all()  # fmt: skip
        assert [e.channel for e in collected] == ["console", "console"]
        assert s.get(Card, services.find_card(s, card_number=lost).id).status == "lost_formal"
    assert errors == []


def _holder_sets_the_pin_at_the_desk(c: Centre, number: str) -> None:
    """The desk station's work (``ykt branch desk --reader desk-1``, here in the test's
    process: tests/api/test_console_branch_desk_browser.py runs the real station): the
    request claimed, the holder's card in the desk reader, a new PIN typed on the reader side,
    set by the bank's issuer script (keys from the bank's domain) through the one activation
    path, the outcome recorded."""
    from issuance.services import desk
    from yikatong import branch

    teller = c.actors["bank_teller"].via(Channel.BANK)  # the desk, as the CLI acts
    with c.session() as s:  # type: ignore[attr-defined]
        req = desk.claim_next(s, "desk-1", teller, "test-station")
        assert req is not None
        rid, card_id = req.id, req.card_id

    class DeskPinPad:
        def current_pin(self) -> str:
            return ""  # the issuer script needs no current PIN

        def new_pin(self) -> str:
            return "246810"

    done = branch.activate_at_desk(c.settings, c.session, lambda _s: teller, card_id,  # type: ignore[arg-type]
                                   DeskPinPad(), identity_checked=True)  # fmt: skip
    assert done == number
    with c.session() as s:  # type: ignore[attr-defined]
        desk.finish(s, rid, teller, outcome=desk.ACTIVE)


def test_administrator_staff_clients_places(browser: Browser, centre: Centre, shots: Path) -> None:
    """The administrator creates a teller (password shown once, it signs in), is refused
    disabling their own account, disables the teller (whose session ends), registers a bank
    with its API client (the secret shown once) and a collection point (a bad region code
    first)."""
    c = centre
    p, errors = _page(browser, c.url)
    admin = c.actors["admin"].username
    _sign_in(p, admin)
    p.get_by_role("link", name="系统管理").first.click()
    p.get_by_role("button", name=f"停用 {admin}").click()
    assert "cannot disable themselves" in p.get_by_role("alert").inner_text()
    p.get_by_label("用户名").fill("chen.jing")
    p.get_by_label("姓名").fill("陈静")
    p.get_by_label("角色").select_option("bank_teller")
    p.get_by_label("所属网点或机构").select_option(BRANCH)
    p.get_by_role("button", name="创建工作人员账号").click()
    status = p.get_by_role("status").first.inner_text()
    assert "已创建工作人员账号" in status and "chen.jing" in status
    password = p.locator(".secret").inner_text().strip()
    assert len(password) >= 20
    _shot(p, path=str(shots / "admin-staff-created.png"), full_page=True)
    # the new teller signs in with it, in another browser context
    q, q_errors = _page(browser, c.url)
    q.goto("/console/login")
    q.get_by_label("用户名").fill("chen.jing")
    q.get_by_label("密码").fill(password)
    q.get_by_role("button", name="登录").click()
    q.wait_for_url("**/console/home")
    # disabled by the administrator: the teller's next page is the sign-in form
    p.get_by_role("button", name="停用 chen.jing").click()
    assert "工作人员账号已停用" in p.get_by_role("status").first.inner_text()
    q.goto("/console/branch")
    assert "/console/login" in q.url
    # a bank and its API client: the secret once
    p.get_by_role("link", name="机构与 API 客户端").click()
    p.get_by_label("代码", exact=True).fill("ABC-330106-02")
    p.get_by_label("机构名称").fill("中国农业银行杭州北山支行")
    p.get_by_label("类型").select_option("bank")
    p.get_by_label("行政区划代码（6 位）").fill("330106")
    p.get_by_role("button", name="创建机构及其客户端").click()
    secret = p.locator(".secret").inner_text().strip()
    assert len(secret) >= 40 and "financial:activate" in p.get_by_role("status").inner_text()
    _shot(p, path=str(shots / "admin-api-client-secret.png"), full_page=True)
    p.reload()
    assert secret not in p.content()  # shown once
    # a collection point: a 5-digit region first
    p.get_by_role("link", name="领卡网点").click()
    p.get_by_label("代码", exact=True).fill("XH-COMM-01")
    p.get_by_label("网点名称").fill("西湖区北山街道社区服务中心")
    p.get_by_label("社区服务中心").check()
    p.get_by_label("行政区划代码（6 位）").fill("33010")
    p.get_by_role("button", name="创建领卡网点").click()
    assert "region_code" in p.get_by_role("alert").inner_text()
    assert p.get_by_label("网点名称").input_value() == "西湖区北山街道社区服务中心"
    p.get_by_label("行政区划代码（6 位）").fill("330106")
    p.get_by_role("button", name="创建领卡网点").click()
    status = p.get_by_role("status").inner_text()
    assert "领卡网点已创建" in status and "XH-COMM-01" in status
    _shot(p, path=str(shots / "admin-places.png"), full_page=True)
    with c.session() as s:  # type: ignore[attr-defined]
        events = {e.action: e for e in s.scalars(sa.select(AuditEvent).where(
            AuditEvent.actor_name == admin))}  # fmt: skip
        for action in ("staff.created", "staff.password_set", "staff.disabled",
                       "agency.created", "api.credential_created"):  # fmt: skip
            assert events[action].channel == "console", action
        text = " ".join(str(e.details) for e in s.scalars(sa.select(AuditEvent)))
        assert password not in text and secret not in text
    assert errors == [] and q_errors == []
