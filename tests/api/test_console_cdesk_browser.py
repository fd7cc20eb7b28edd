"""The counter clerk's pages in a real browser (Debian's Chromium driven by Playwright, one
browser per journey), against the product's app served by uvicorn: the mistakes a clerk makes
(a wrong check character, a photo with two faces, a missing ethnicity), a good photo accepted
and shown, a photo taken with the counter's camera (Chromium's fake camera playing a resident's
picture), and a person found by ID number, then a loss report, a temporary card and its
hand-back with the refund receipt, from their page. Screenshots go to
``$YKT_CONSOLE_SCREENSHOTS`` (default: the test's tmp dir), 1366×768.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv, make_cid
from console_helpers import PASSWORD
from playwright.sync_api import Browser, Page, sync_playwright
from test_console_browser import ARGS, CHROMIUM, console, shots  # noqa: F401  (fixtures)

from cardspec.ids import card_number_check_char
from issuance.models import Application, AuditEvent, Card, Person, Receipt
from issuance.photos import process_photo

ROOT = Path(__file__).resolve().parents[2]
GOOD = ROOT / "issuance/sample_data/photos/resident-02.jpg"
TWO_FACES = ROOT / "tests/fixtures/photos/two_faces.jpg"
pytestmark = pytest.mark.slow


def _y4m(picture: Path, dest: Path, frames: int = 10) -> Path:
    """A Y4M video (what Chromium's fake camera plays) of ``picture``, 4:2:0."""
    from PIL import Image

    img = Image.open(picture).convert("RGB")
    w, h = img.width // 2 * 2, img.height // 2 * 2
    y, cb, cr = img.crop((0, 0, w, h)).convert("YCbCr").split()
    half = (w // 2, h // 2)
    frame = b"FRAME\n" + y.tobytes() + cb.resize(half).tobytes() + cr.resize(half).tobytes()
    dest.write_bytes(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode() + frame * frames)
    return dest


def _open(browser: Browser, console: str, *, camera: bool = False) -> tuple[Page, list[str]]:  # noqa: F811
    ctx = browser.new_context(
        viewport={"width": 1366, "height": 768}, locale="zh-CN", base_url=console
    )
    if camera:
        ctx.grant_permissions(["camera"], origin=console)
    errors: list[str] = []
    pg = ctx.new_page()
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error"
          and not m.text.startswith("Failed to load resource") else None)  # fmt: skip
    pg.on("pageerror", lambda e: errors.append(str(e)))
    return pg, errors


@pytest.fixture
def counter(console: str, tmp_path: Path) -> Iterator[tuple[Page, list[str]]]:  # noqa: F811
    """A page of a browser for this journey (one browser per test), with a fake camera that
    shows a resident's picture."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium")
    video = _y4m(GOOD, tmp_path / "camera.y4m")
    args = [*ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={video}"]  # fmt: skip
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=args)
        pg, errors = _open(b, console, camera=True)
        yield pg, errors
        pg.context.close()
        b.close()
    # a Content-Security-Policy violation or a script error shows up here
    assert errors == []


def _sign_in(p: Page, username: str) -> None:
    p.goto("/console/login")
    p.get_by_label("用户名").fill(username)
    p.get_by_label("密码").fill(PASSWORD)
    p.get_by_role("button", name="登录").click()
    p.wait_for_url("**/console/home")


def _events(env: ApiEnv, action: str) -> list[AuditEvent]:
    with env.session() as s:  # type: ignore[attr-defined]
        return list(s.scalars(sa.select(AuditEvent).where(AuditEvent.action == action)))


def test_wrong_check_character_then_the_person_by_card_number(
    api_env: ApiEnv,
    card_and_chip: tuple,
    counter: tuple,
    shots: Path,  # noqa: F811
) -> None:
    p, _ = counter
    card, _ = card_and_chip
    number = card.card_number
    wrong = number[:8] + ("1" if number[8] != "1" else "2")
    assert card_number_check_char(number[:8]) != wrong[8]
    _sign_in(p, api_env.actors["clerk"].username)
    p.get_by_role("link", name="人员查询").click()
    field = p.get_by_label("社会保障卡卡号（9 位）")
    field.fill(wrong)
    field.press("Enter")
    alert = p.get_by_role("alert").inner_text()
    assert "check character does not match" in alert and "卡号有误" in alert
    assert p.get_by_label("社会保障卡卡号（9 位）").input_value() == wrong  # kept to correct
    assert p.evaluate("document.activeElement.id") == "card_number"  # the focus is there
    p.screenshot(path=str(shots / "people-wrong-check-character.png"))
    assert _events(api_env, "person.searched") == []  # nothing was looked up for the typo
    field = p.get_by_label("社会保障卡卡号（9 位）")
    field.fill(number)
    field.press("Enter")
    p.wait_for_url(f"**/console/people/{card.person_id}")
    assert number in p.inner_text("table.cd-cards") and "正常" in p.inner_text("table.cd-cards")


def _fill_application(p: Page, cid: str, *, ethnicity: str | None, name: str = "欧阳娜娜") -> None:
    p.get_by_label("社会保障号码（18 位）").fill(cid)
    p.get_by_label("姓名").fill(name)
    p.get_by_label("性别").select_option("2" if int(cid[16]) % 2 == 0 else "1")
    if ethnicity:
        p.get_by_label("民族").select_option(ethnicity)
    p.get_by_label("地址").fill("浙江省杭州市西湖区文三路 90 号")
    p.get_by_label("手机号码").fill("13912345678")


def test_two_faces_and_no_ethnicity_refused_then_a_good_photo_accepted(
    api_env: ApiEnv,
    counter: tuple,
    shots: Path,  # noqa: F811
) -> None:
    p, _ = counter
    api_env.client.app.state.ctx.extra.pop("photo_processor", None)  # the real photo pipeline
    cid = make_cid()
    _sign_in(p, api_env.actors["clerk"].username)
    p.get_by_role("link", name="人员查询").click()
    p.get_by_role("link", name="新申请").click()
    # a name with a character outside GBK (𠮷: accepted, the chip gets the city's substitute),
    # no ethnicity chosen, a photo with two faces
    _fill_application(p, cid, ethnicity=None, name="欧阳𠮷娜")
    p.get_by_label("照片文件").set_input_files(str(TWO_FACES))
    p.get_by_role("button", name="受理申请").click()
    alert = p.get_by_role("alert").inner_text()
    # every reason at once, each in the services' own words under the page's sentence
    assert "photo: 2 faces were found: the photo must show the holder alone" in alert
    assert "照片不合格" in alert
    assert "ethnicity: required" in alert and "请选择身份证上的民族" in alert
    assert "name:" not in alert  # a rare character is a name like any other
    assert p.get_by_label("姓名").input_value() == "欧阳𠮷娜"  # nothing typed is lost
    assert p.get_by_label("地址").input_value() == "浙江省杭州市西湖区文三路 90 号"
    assert p.evaluate("document.activeElement.id") == "a-ethnicity"  # the first field refused
    p.screenshot(path=str(shots / "apply-two-faces-refused.png"), full_page=True)
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.scalars(sa.select(Person).where(Person.citizen_id == cid)).first() is None
    p.get_by_label("民族").select_option("01")
    p.get_by_label("照片文件").set_input_files(str(GOOD))
    with p.expect_navigation():
        p.get_by_role("button", name="受理申请").click()
    assert "申请已受理" in p.get_by_role("status").inner_text()
    img = p.get_by_role("img", name="制卡照片：欧阳𠮷娜", exact=True)
    img.wait_for()
    p.wait_for_function("() => document.querySelector('figure.photo img').naturalWidth > 0")
    assert img.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [358, 441]
    p.screenshot(path=str(shots / "apply-accepted.png"))
    with api_env.session() as s:  # type: ignore[attr-defined]
        app = s.scalars(sa.select(Application).join(Person).where(Person.citizen_id == cid)).one()
        assert app.status == "received" and app.person.ethnicity == "01"
        assert app.photo_jpeg is not None and app.photo_jpeg.startswith(b"\xff\xd8")


def test_a_photo_taken_with_the_counters_camera(
    api_env: ApiEnv,
    counter: tuple,
    shots: Path,  # noqa: F811
) -> None:
    p, _ = counter
    api_env.client.app.state.ctx.extra.pop("photo_processor", None)  # the real photo pipeline
    cid = make_cid()
    _sign_in(p, api_env.actors["clerk"].username)
    p.goto("/console/counter/apply")
    _fill_application(p, cid, ethnicity="03")
    p.get_by_role("button", name="开启摄像头").click()
    p.wait_for_function("() => document.getElementById('camera-video').videoWidth > 0")
    p.get_by_role("button", name="拍照").click()
    p.wait_for_function("() => document.getElementById('photo').files.length === 1")
    assert "已拍照" in p.locator("#camera-state").inner_text()
    sent = p.evaluate("() => [document.getElementById('photo').files[0].type, "
                      "document.getElementById('photo').files[0].size]")  # fmt: skip
    assert sent[0] == "image/jpeg" and sent[1] > 10_000
    p.screenshot(path=str(shots / "apply-camera.png"), full_page=True)
    with p.expect_navigation():
        p.get_by_role("button", name="受理申请").click()
    assert "申请已受理" in p.get_by_role("status").inner_text()
    p.wait_for_function("() => document.querySelector('figure.photo img').naturalWidth > 0")
    with api_env.session() as s:  # type: ignore[attr-defined]
        app = s.scalars(sa.select(Application).join(Person).where(Person.citizen_id == cid)).one()
        assert app.photo_sha256 is not None and app.person.ethnicity == "03"
    # the clerk processes it: on to review
    p.get_by_role("button", name="初审完成，提交复核").click()
    assert p.get_by_role("status").inner_text() == "已初审，等待复核。"


def test_found_by_id_then_loss_temporary_card_and_hand_back_with_the_refund(
    api_env: ApiEnv,
    card_and_chip: tuple,
    counter: tuple,
    shots: Path,  # noqa: F811
) -> None:
    """The counter task of the issue's before/after, from the person's page: the clerk finds
    the holder by ID number, reports the card lost, issues a temporary card (its deposit
    receipt); later the holder brings the temporary card back: the refund receipt."""
    p, _ = counter
    card, _ = card_and_chip
    with api_env.session() as s:  # type: ignore[attr-defined]
        cid = s.get(Person, card.person_id).citizen_id
        # the fixture's application has a stand-in photo: give it the card photo the real
        # pipeline makes of a resident's picture, as at the counter
        app = s.get(Application, s.get(Card, card.id).application_id)
        processed = process_photo(GOOD.read_bytes(), api_env.settings.photos)
        app.photo_jpeg, app.photo_sha256 = processed.jpeg, processed.sha256
    _sign_in(p, api_env.actors["clerk"].username)
    started = time.monotonic()
    clicks = 0
    p.get_by_role("link", name="人员查询").click()
    clicks += 1
    p.get_by_label("社会保障号码（18 位）").fill(cid)
    p.keyboard.press("Enter")
    p.wait_for_url(f"**/console/people/{card.person_id}")
    assert "正常" in p.inner_text("table.cd-cards")
    p.wait_for_function("() => document.querySelector('figure.photo img').naturalWidth > 0")
    assert "01 汉族" in p.inner_text("dl.data")
    paused = time.monotonic()
    p.screenshot(path=str(shots / "person.png"), full_page=True)
    started += time.monotonic() - paused  # the screenshot is not the clerk's time
    p.get_by_role("link", name="挂失 / 解挂 / 临时卡").click()
    p.get_by_label("已核验持卡人身份").first.check()
    p.get_by_role("button", name="挂失", exact=True).click()
    p.get_by_role("button", name="发放临时卡").click()
    clicks += 4
    p.wait_for_url("**/receipt")
    seconds = time.monotonic() - started
    assert p.get_by_role("status").inner_text() == "临时卡已发放。请连同本收据交给持卡人。"
    print(f"console from the person search: loss report + temporary card in {clicks} clicks "
          f"(and the ID number typed), {seconds:.2f} s of server and browser")  # fmt: skip
    # later: the holder brings the temporary card back
    p.get_by_role("link", name="人员查询").click()
    p.get_by_label("社会保障号码（18 位）").fill(cid)
    p.keyboard.press("Enter")
    p.wait_for_url(f"**/console/people/{card.person_id}")
    cards = p.inner_text("table.cd-cards")
    assert "正式挂失" in cards and "临时卡" in cards
    assert "¥5.00" in p.inner_text("dl.data")  # the deposit held
    with api_env.session() as s:  # type: ignore[attr-defined]
        temp = s.scalars(sa.select(Card).where(Card.person_id == card.person_id,
                                               Card.kind == "temporary")).one()  # fmt: skip
    p.screenshot(path=str(shots / "person-lost-with-temporary-card.png"), full_page=True)
    p.get_by_role("button", name=f"交回临时卡 {temp.card_number}").click()
    assert p.get_by_role("status").inner_text() == "临时卡已交回，押金已退还。请持卡人签字。"
    assert "退款凭证" in p.inner_text("h1") and "¥5.00" in p.inner_text("dl.data")
    assert temp.card_number in p.inner_text("dl.data")
    p.screenshot(path=str(shots / "refund-receipt.png"))
    # printed: no header, no buttons, the amount and the signature line
    p.emulate_media(media="print")
    assert not p.locator("header.top").is_visible()
    assert not p.get_by_role("button", name="打印").is_visible()
    assert p.get_by_text("领款/交款人签字").is_visible()
    p.emulate_media(media="screen")
    # the same receipt as the PDF ``ykt cash receipt`` writes
    pdf = p.request.get(p.get_by_role("link", name="PDF（与 ykt cash receipt 相同）")
                        .get_attribute("href") or "")  # fmt: skip
    assert pdf.headers["content-type"] == "application/pdf" and pdf.body().startswith(b"%PDF")
    with api_env.session() as s:  # type: ignore[attr-defined]
        refund = s.scalars(sa.select(Receipt).where(Receipt.kind == "refund")).one()
        assert refund.card_id == temp.id and refund.staff_name == api_env.actors["clerk"].username
        assert s.get(Card, temp.id).status == "cancelled"
    (ev,) = _events(api_env, "deposit.refunded")
    assert ev.channel == "console"
    # back on the person's page: the deposit refunded, three receipts, the timeline
    p.get_by_role("link", name="返回人员页面").click()
    assert "¥0.00" in p.inner_text("dl.data")
    assert p.locator("table.cd-receipts tbody tr").count() == 2  # deposit and refund
    timeline = p.inner_text("table.cd-timeline")
    assert "deposit.refunded" in timeline and "card.report_loss_formal" in timeline
    assert "console.card_read" not in timeline  # lookups are in the audit log, not here
