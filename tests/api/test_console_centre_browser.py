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


# --- the card centre's files: bureau export and import, a supplier's delivery -----------------

BUREAU_KEY = "bureau-xh"
SUPPLIER = "xh-chips"
#: The supplier's delivery key set, agreed in a key ceremony (fixed components: the tests'
#: token is shared, whichever test imports them first).
SUPPLIER_KMC = (bytes.fromhex("3b8e1c5a7f2d4e6091a2b3c4d5e6f708"),
                bytes.fromhex("c41f0e2d3c4b5a69788796a5b4c3d2e1"))  # fmt: skip
SUPPLIER_KLK = (bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
                bytes.fromhex("5566778899aabbccddeeff0011223344"))  # fmt: skip


def _token(settings: Settings) -> object:
    from hsm.pkcs11 import open_token
    from yikatong.wiring import hsm_config

    return open_token(hsm_config(settings))


def _ensure_key(settings: Settings, label: str, make: object) -> None:
    from hsm import ceremony

    token = _token(settings)
    if label not in {k.label for k in ceremony.list_keys(token)}:  # type: ignore[arg-type]
        make(token)  # type: ignore[operator]


def _xor(parts: tuple[bytes, ...]) -> bytes:
    return bytes(a ^ b for a, b in zip(*parts, strict=True))


def _supplier_kcvs(serial: bytes) -> tuple[str, str]:
    """The supplier's own check values of a chip's KMC (EMV option A, pyemv) and KLK (AES of
    the serial and its complement): an implementation independent of the product's."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from pyemv import kd

    def ecb(alg: object, data: bytes) -> bytes:
        enc = Cipher(alg, modes.ECB()).encryptor()  # type: ignore[arg-type]
        return enc.update(data) + enc.finalize()

    kmc = kd.derive_icc_mk_a(_xor(SUPPLIER_KMC), pan=serial.hex(), psn="")
    klk = ecb(algorithms.AES(_xor(SUPPLIER_KLK)), serial + bytes(b ^ 0xFF for b in serial))
    return (ecb(TripleDES(kmc + kmc[:8]), bytes(8))[:3].hex().upper(),
            ecb(algorithms.AES(klk), b"\x01" * 16)[:3].hex().upper())  # fmt: skip


def _result_file(path: Path, file_id: str, lines: list[dict[str, object]]) -> Path:
    import json

    from issuance.batches.bureau_result import RESULT_FORMAT

    head = {"type": "header", "format": RESULT_FORMAT, "file_id": file_id}
    path.write_text("".join(json.dumps(o) + "\n" for o in (head, *lines)), encoding="utf-8")
    return path


def _stages_of(c: Centre, batch: str) -> list[str]:
    from issuance.models import Batch

    with c.session() as s:  # type: ignore[attr-defined]
        return sorted(s.scalars(sa.select(BatchItem.stage).join(Batch).where(
            Batch.name == batch)))  # fmt: skip


def test_card_centre_bureau_export_and_import(
    browser: Browser, centre: Centre, shots: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor exports two batches to the bureau from the page and downloads the first
    one's file (signed, verifiable with the issuer's public key, no key in clear on the page);
    the result of the other batch's file, a tampered result (a card made on another chip, a
    card reported twice) and a result answering a bureau file altered on the service are each
    refused with every bad line shown, nothing applied; the good result is applied."""
    import json

    from hsm import ceremony
    from issuance.batches.bureau import read_bureau_file, verify_bureau_file
    from issuance.models import Batch
    from yikatong.wiring import key_service_from_settings

    c = centre
    _ensure_key(c.settings, ceremony.transport_label(BUREAU_KEY),
                lambda t: ceremony.generate_transport_key(t, BUREAU_KEY, 2))  # fmt: skip
    _approved(c, ["诸葛亮", "上官婉儿", "欧阳修"])
    p, errors = _page(browser, c.url)
    _sign_in(p, c.actors["supervisor"].username)
    p.get_by_role("link", name="制卡中心").first.click()
    for name, limit in (("外包-A", "2"), ("外包-B", "1")):
        p.goto("/console/centre")
        p.get_by_label("批次名称").fill(name)
        p.get_by_label("最多卡数").fill(limit)
        p.get_by_role("button", name="创建批次").click()
        assert "批次已创建" in p.get_by_role("status").first.inner_text()
    p.get_by_role("link", name="外包制卡文件").click()
    for name, n in (("外包-B", 1), ("外包-A", 2)):
        p.get_by_label("批次", exact=True).select_option(label=f"{name} · 待导出 {n} 张卡")
        p.get_by_label("制卡机构的传输密钥").select_option(BUREAU_KEY)
        p.get_by_role("button", name="导出外包制卡文件").click()
        status = p.get_by_role("status").first.inner_text()
        assert f"批次 {name} 的" in status and "现由制卡机构制作" in status, status
    assert _stages_of(c, "外包-A") == ["at_bureau"] * 2
    with p.expect_download() as dl:
        p.get_by_role("link", name="下载外包制卡文件").click()
    bureau_a = tmp_path / "a.bureau.jsonl"
    dl.value.save_as(bureau_a)
    assert dl.value.suggested_filename.endswith(".bureau.jsonl")
    _shot(p, path=str(shots / "centre-bureau-export.png"), full_page=True)
    # the bureau verifies the file with the issuer's public key; the page shows no key
    pem = key_service_from_settings(c.settings).public_key_pem()
    info = verify_bureau_file(bureau_a, pem)
    assert info.batch == "外包-A" and info.count == 2
    cards = list(read_bureau_file(bureau_a, pem))
    wrapped = [k.wrapped.hex() for card in cards for k in card.keys] + [cards[0].kek.wrapped.hex()]
    html = p.content()
    assert info.file_id in html and not any(w in html for w in wrapped)
    with c.session() as s:  # type: ignore[attr-defined]
        file_b = s.scalars(sa.select(BatchItem.bureau_file_id).join(Batch).where(
            Batch.name == "外包-B")).one()  # fmt: skip
        card_b = s.scalars(sa.select(BatchItem.card_id).join(Batch).where(
            Batch.name == "外包-B")).one()  # fmt: skip
    made = [{"card_id": k.card_id, "result": "made", "chip_serial": k.chip_serial} for k in cards]

    def upload(result: Path, file_id: str, action: str = "核对并应用") -> None:
        p.get_by_label("对应的外包制卡文件").select_option(file_id)
        p.get_by_label("结果文件（制卡机构提供）").set_input_files(str(result))
        p.get_by_role("button", name=action).click()

    # 1. the result of the other batch's bureau file, uploaded for batch A's
    other = [{"card_id": card_b, "result": "made", "chip_serial": "11" * 8}]
    foreign = _result_file(tmp_path / "b.result.jsonl", file_b, other)
    upload(foreign, info.file_id)
    alert = p.get_by_role("alert").inner_text()
    assert "结果文件整体被拒" in alert and f"answers bureau file '{file_b}'" in alert, alert
    assert _stages_of(c, "外包-A") == ["at_bureau"] * 2
    # 2. tampered: the first card made on another chip, the second reported twice
    tampered = _result_file(tmp_path / "t.result.jsonl", info.file_id, [
        {**made[0], "chip_serial": "00" * 8}, made[1], made[1]])  # fmt: skip
    upload(tampered, info.file_id)
    assert "未应用任何内容：2 行被拒" in p.get_by_role("alert").first.inner_text()
    rows = p.locator("#refused-lines tbody tr")
    expect(rows).to_have_count(2)
    assert rows.nth(0).inner_text().startswith("2\t")
    assert "制卡所用芯片不是密钥所准备的那一张" in rows.nth(0).inner_text()
    assert "serial_mismatch" in rows.nth(0).inner_text()
    second = rows.nth(1).inner_text()
    assert second.startswith("4\t") and "该卡被重复报告" in second
    _shot(p, path=str(shots / "centre-bureau-refused-lines.png"), full_page=True)
    assert _stages_of(c, "外包-A") == ["at_bureau"] * 2
    # 3. batch B's bureau file altered on the service: its result is refused
    with c.session() as s:  # type: ignore[attr-defined]
        kept = Path(json.loads(s.scalars(sa.select(AuditEvent.details).where(
            AuditEvent.action == "batch.bureau_exported",
            AuditEvent.entity_id == file_b)).one())["path"])  # fmt: skip
    lines = kept.read_text(encoding="utf-8").splitlines(keepends=True)
    assert '"type":"card"' in lines[2]
    lines[2] = lines[2].replace('"profile":"', '"profile":"x', 1)  # one card line altered
    kept.write_text("".join(lines), encoding="utf-8")
    good_b = _result_file(tmp_path / "b2.result.jsonl", file_b, [])
    upload(good_b, file_b)
    alert = p.get_by_role("alert").inner_text()
    assert "文件已被改动" in alert and "digest does not match" in alert, alert
    assert _stages_of(c, "外包-B") == ["at_bureau"]
    # 4. the good result: checked first, then applied
    good = _result_file(tmp_path / "a.result.jsonl", info.file_id, made)
    upload(good, info.file_id, "仅核对")
    assert "所有行均正确：仅核对，尚未应用" in p.get_by_role("status").first.inner_text()
    assert _stages_of(c, "外包-A") == ["at_bureau"] * 2
    # 5. the tampered file again, its good line applied on purpose (--partial)
    p.get_by_label("即使有行被拒，也应用正确的行").check()
    upload(tampered, info.file_id)
    status = p.get_by_role("status").first.inner_text()
    assert "已应用：制成 1 张卡" in status and "以下被拒的行未应用" in status, status
    assert p.locator("#refused-lines tbody tr").count() == 2
    # a long list of refused lines is cut on the page (its count is not)
    from console.pages import centre as centre_pages

    monkeypatch.setattr(centre_pages, "SHOWN_LINES", 1)
    upload(tampered, info.file_id, "仅核对")
    assert p.locator("#refused-lines tbody tr").count() == 1
    assert "另有 1 行被拒未在此列出" in p.inner_text("main")
    assert "被拒的行\n2" in p.inner_text("dl")
    monkeypatch.undo()
    assert _stages_of(c, "外包-A") == ["at_bureau", "checked"]
    # 6. the good result: the other card made, the first one already applied (idempotent)
    p.get_by_label("即使有行被拒，也应用正确的行").uncheck()
    upload(good, info.file_id)
    status = p.get_by_role("status").first.inner_text()
    assert "已应用：制成 1 张卡" in status and "1 张此前已应用" in status, status
    assert _stages_of(c, "外包-A") == ["checked"] * 2
    _shot(p, path=str(shots / "centre-bureau-applied.png"), full_page=True)
    with c.session() as s:  # type: ignore[attr-defined]
        events = list(s.scalars(sa.select(AuditEvent).where(AuditEvent.action.in_((
            "batch.bureau_exported", "console.bureau_file_downloaded",
            "console.bureau_result_refused", "console.bureau_result_checked",
            "batch.bureau_result_applied")))))  # fmt: skip
        actions = sorted(e.action for e in events)
        assert actions == ["batch.bureau_exported"] * 2 + ["batch.bureau_result_applied"] * 2 + [
                           "console.bureau_file_downloaded"] + [
                           "console.bureau_result_checked"] * 3 + [
                           "console.bureau_result_refused"] * 2, actions  # fmt: skip
        assert {(e.channel, e.actor_name) for e in events} == {
            ("console", c.actors["supervisor"].username)
        }
    # English from the catalogs
    p.get_by_role("link", name="English").click()
    assert p.get_by_role("heading", name="Import the bureau's result file").count() == 1
    assert errors == []


def test_card_centre_delivery_import(browser: Browser, centre: Centre, shots: Path,
                                     tmp_path: Path) -> None:  # fmt: skip
    """The supervisor imports a chip supplier's delivery file from the page: a file with a
    serial twice and one with a wrong check value are refused with every problem, nothing
    loaded; the good file is checked, then imported; the same file again is refused (its
    chips are in stock already). A clerk sees the stock but no import form."""
    import csv

    from cardspec.keyscheme import Algorithm, kcv
    from hsm import ceremony
    from issuance.models import StockChip

    c = centre
    for kind, parts, alg in (("kmc", SUPPLIER_KMC, Algorithm.DES3),
                             ("klk", SUPPLIER_KLK, Algorithm.AES)):  # fmt: skip
        _ensure_key(c.settings, ceremony.supplier_label(SUPPLIER, kind, Algorithm.DES3),
                    lambda t, kind=kind, parts=parts, alg=alg: ceremony.import_supplier_master(
                        t, SUPPLIER, kind, parts, [kcv(x, alg) for x in parts]))  # fmt: skip
    serials = [bytes.fromhex(f"5A17C0DE0000{n:04X}") for n in (1, 2, 3)]

    def delivery(name: str, rows: list[tuple[bytes, str, str]]) -> Path:
        path = tmp_path / name
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["serial", "lot", "kmc_kcv", "klk_kcv"])
            for serial, kmc, klk in rows:
                w.writerow([serial.hex().upper(), "XH-2026-07", kmc, klk])
        return path

    good_rows = [(s, *_supplier_kcvs(s)) for s in serials]

    def chips() -> int:
        with c.session() as s:  # type: ignore[attr-defined]
            return int(s.scalar(sa.select(sa.func.count()).select_from(StockChip)) or 0)

    p, errors = _page(browser, c.url)
    _sign_in(p, c.actors["supervisor"].username)
    p.goto("/console/centre/stock")

    def upload(path: Path, action: str = "核对并导入") -> None:
        p.get_by_label("到货文件（.csv 或 .json）").set_input_files(str(path))
        p.get_by_label("芯片供应商").select_option(SUPPLIER)
        p.get_by_role("button", name=action).click()

    # 1. a chip serial twice in the file
    upload(delivery("twice.csv", [*good_rows, good_rows[0]]))
    alert = p.get_by_role("alert").inner_text()
    assert "该芯片序列号在文件中出现两次" in alert and "also at line 2" in alert, alert
    assert "未导入任何芯片" in p.get_by_role("status").inner_text()
    assert chips() == 0
    _shot(p, path=str(shots / "centre-delivery-refused.png"), full_page=True)
    # 2. a check value that is not the supplier's key set's
    wrong = [*good_rows[:2], (serials[2], "000000", good_rows[2][2])]
    upload(delivery("wrong-kcv.csv", wrong))
    alert = p.get_by_role("alert").inner_text()
    assert "校验值与 HSM 中该供应商的密钥组不符" in alert and "KMC KCV 000000" in alert, alert
    assert chips() == 0
    # 3. the good file: checked, then imported
    good = delivery("到货单-七月.csv", good_rows)  # a Chinese file name
    upload(good, "仅核对")
    status = p.get_by_role("status").first.inner_text()
    assert "到货文件正确" in status and "6 个校验值已在 HSM 中核验" in status, status
    assert chips() == 0
    upload(good)
    status = p.get_by_role("status").first.inner_text()
    assert f"已导入 {SUPPLIER} 的 3 张芯片，批号 XH-2026-07" in status, status
    assert chips() == 3
    assert "XH-2026-07" in p.get_by_role("table").first.inner_text()
    _shot(p, path=str(shots / "centre-delivery-imported.png"), full_page=True)
    # 4. the same delivery again: its chips are in stock
    upload(good)
    alert = p.get_by_role("alert").inner_text()
    assert "该芯片已在库存中" in alert and "is already in stock (lot XH-2026-07" in alert, alert
    assert chips() == 3
    with c.session() as s:  # type: ignore[attr-defined]
        imported = s.scalars(sa.select(AuditEvent).where(
            AuditEvent.action == "stock.delivery_imported")).one()  # fmt: skip
        assert (imported.channel, imported.actor_name) == (
            "console",
            c.actors["supervisor"].username,
        )
        refused = s.scalars(sa.select(AuditEvent.channel).where(
            AuditEvent.action == "console.delivery_refused")).all()  # fmt: skip
        assert refused == ["console"] * 3
    p.get_by_role("button", name="退出").click()
    # an auditor reads the stock; importing is the card centre's (no form; the server refuses)
    with c.session() as s:  # type: ignore[attr-defined]
        services.create_staff(s, "auditor-1", StaffRole.AUDITOR, display_name="审计 测试")
        staff_service.set_password(s, "auditor-1", PASSWORD, SYSTEM_ACTOR)
    _sign_in(p, "auditor-1")
    p.goto("/console/centre/stock")
    assert "XH-2026-07" in p.inner_text("main")
    assert p.get_by_label("到货文件（.csv 或 .json）").count() == 0
    csrf = p.locator("input[name=csrf]").first.get_attribute("value")
    fresh = delivery("fresh.csv", [(bytes.fromhex("5A17C0DE0000FFFF"), "", "")])
    r = p.request.post("/console/centre/stock/import", multipart={
        "csrf": csrf or "", "supplier": SUPPLIER, "action": "import",
        "delivery": {"name": "fresh.csv", "mimeType": "text/csv", "buffer": fresh.read_bytes()},
    })  # fmt: skip
    assert r.status == 422 and "may not import blank chip deliveries" in r.text()
    assert chips() == 3
    assert errors == []
