"""The counter clerk's further actions in a real browser (Debian's Chromium driven by Playwright,
one browser per journey; SQLite and PostgreSQL): a damaged card recorded then replaced with its
fee receipt, a card cancelled (no reason given first; the same card cancelled again from a
page left open), a renewal refused before its window then done inside it, an application's
photo replaced (a photo with two faces first; refused once the application is reviewed), and
the day's cash (a date that is not one; a role that may not see it). Each asserts what the
page shows and the audit rows (channel ``console``, the signed-in clerk). Screenshots go to
``$YKT_CONSOLE_SCREENSHOTS`` (default: the test's tmp dir), 1366×768.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv, make_cid
from playwright.sync_api import Page
from test_console_browser import console, shots  # noqa: F401  (fixtures)
from test_console_cdesk_browser import GOOD, TWO_FACES, _events, _sign_in, counter  # noqa: F401

from issuance import services
from issuance.models import Application, Card, ChipApplication, Receipt
from issuance.photos import process_photo

ROOT = Path(__file__).resolve().parents[2]
OTHER = ROOT / "issuance/sample_data/photos/resident-01.jpg"  # GOOD is its mirror image
pytestmark = pytest.mark.slow


def _person(p: Page, person_id: int) -> None:
    p.goto(f"/console/people/{person_id}")
    p.wait_for_url(f"**/console/people/{person_id}")


def _row(p: Page, number: str) -> str:
    return p.locator("table.cd-cards tr", has_text=number).first.inner_text()


def _open(p: Page, summary: str) -> None:
    """Open a folded action by keyboard (its summary focused, Enter)."""
    p.locator("summary", has_text=summary).first.focus()
    p.keyboard.press("Enter")


def test_a_damaged_card_then_its_replacement_with_the_fee_receipt(
    api_env: ApiEnv,
    counter: tuple,  # noqa: F811
    shots: Path,  # noqa: F811
) -> None:
    p, _ = counter
    card = api_env.new_card()
    with api_env.session() as s:  # type: ignore[attr-defined]
        # the card photo the real pipeline makes of a resident's picture (the fixture's
        # application has a stand-in), as at the counter
        app = s.get(Application, s.get(Card, card.id).application_id)
        processed = process_photo(GOOD.read_bytes(), api_env.settings.photos)
        app.photo_jpeg, app.photo_sha256 = processed.jpeg, processed.sha256
    clerk = api_env.actors["clerk"].username
    _sign_in(p, clerk)
    with p.expect_response(lambda r: r.url.endswith("/photo")) as photo:
        _person(p, card.person_id)
    assert photo.value.status == 200, photo.value.status
    p.wait_for_function("() => document.querySelector('figure.photo img').naturalWidth > 0")
    # a working card: renewal, damage and cancellation offered, not the replacement
    assert p.get_by_role("button", name="补换卡（收费）").count() == 0
    _open(p, "卡片损坏")
    field = p.get_by_label("损坏情况（选填）")
    field.fill("芯片断裂，无法读卡")
    field.press("Enter")
    p.wait_for_url(f"**/console/counter/cards/{card.card_number}/damaged")
    assert p.get_by_role("status").inner_text() == "已登记卡片损坏。请在下方办理补换卡（收费）。"
    assert "已损坏" in _row(p, card.card_number)
    p.screenshot(path=str(shots / "counter-damaged.png"), full_page=True)
    (ev,) = _events(api_env, "card.report_damaged")
    assert ev.channel == "console" and ev.actor_name == clerk
    assert ev.reason == "芯片断裂，无法读卡" and (ev.before, ev.after) == ("active", "damaged")
    # the damaged card now offers its replacement (a new number, the fee)
    assert p.get_by_role("button", name="到期换卡（收费）").count() == 0
    p.get_by_role("button", name="补换卡（收费）").click()
    p.wait_for_url("**/console/counter/receipts/*")
    assert "收费收据" in p.inner_text("h1") and "¥20.00" in p.inner_text("dl.data")
    assert f"replacement of card {card.card_number}" in p.inner_text("dl.data")
    with api_env.session() as s:  # type: ignore[attr-defined]
        old = s.get(Card, card.id)
        assert old.status == "replaced" and old.replaced_by_id is not None
        fee = s.scalars(sa.select(Receipt).where(Receipt.kind == "fee")).one()
        assert fee.card_id == old.replaced_by_id and fee.amount_fen == 2000
        assert fee.staff_name == clerk
    for action in ("card.replace", "receipt.issued"):
        evs = _events(api_env, action)
        assert evs and all(e.channel == "console" and e.actor_name == clerk for e in evs), action


def test_cancel_without_a_reason_then_for_good_then_again_from_a_page_left_open(
    api_env: ApiEnv,
    counter: tuple,  # noqa: F811
    shots: Path,  # noqa: F811
) -> None:
    p, _ = counter
    card = api_env.new_card()
    clerk = api_env.actors["clerk"].username
    _sign_in(p, clerk)
    _person(p, card.person_id)
    # a second tab on the same person, left open (a colleague's screen, the back button)
    stale = p.context.new_page()
    stale.goto(f"/console/people/{card.person_id}")
    # no reason given: refused, nothing done
    _open(p, "注销此卡")
    p.get_by_role("button", name=f"永久注销 {card.card_number}").click()
    alert = p.get_by_role("alert").inner_text()
    assert "reason: required" in alert and "请填写原因。" in alert
    assert "正常" in _row(p, card.card_number)
    assert _events(api_env, "card.cancel") == []
    # with the reason
    _open(p, "注销此卡")
    field = p.get_by_label("注销原因")
    field.fill("迁出本省")
    field.press("Enter")
    assert p.get_by_role("status").inner_text() == "此卡已永久注销，全部功能已停止。"
    assert "已注销" in _row(p, card.card_number)
    assert p.get_by_role("button", name=f"永久注销 {card.card_number}").count() == 0
    p.screenshot(path=str(shots / "counter-cancelled.png"), full_page=True)
    (ev,) = _events(api_env, "card.cancel")
    assert ev.channel == "console" and ev.actor_name == clerk and ev.reason == "迁出本省"
    with api_env.session() as s:  # type: ignore[attr-defined]
        apps = s.scalars(sa.select(ChipApplication).where(ChipApplication.card_id == card.id))
        assert {a.status for a in apps} == {"cancelled"}  # every function stopped
    # the same card cancelled again from the page left open: the service's refusal
    _open(stale, "注销此卡")
    stale.get_by_label("注销原因").fill("迁出本省")
    stale.get_by_role("button", name=f"永久注销 {card.card_number}").click()
    alert = stale.get_by_role("alert").inner_text()
    assert "a card in state cancelled cannot cancel" in alert
    assert "当前状态下不能执行此操作。" in alert
    assert "已注销" in _row(stale, card.card_number)  # the page now shows where it stands
    stale.set_viewport_size({"width": 1366, "height": 768})
    stale.screenshot(path=str(shots / "counter-cancel-again-refused.png"))
    assert len(_events(api_env, "card.cancel")) == 1
    stale.close()


def test_renewal_refused_before_its_window_then_done_inside_it(
    api_env: ApiEnv,
    counter: tuple,  # noqa: F811
    shots: Path,  # noqa: F811
) -> None:
    p, _ = counter
    card = api_env.new_card()
    clerk = api_env.actors["clerk"].username
    _sign_in(p, clerk)
    _person(p, card.person_id)
    renew = p.get_by_role("button", name=f"到期换卡（收费） {card.card_number}")
    renew.focus()
    p.keyboard.press("Enter")
    alert = p.get_by_role("alert").inner_text()
    with api_env.session() as s:  # type: ignore[attr-defined]
        expiry = s.get(Card, card.id).expiry_date
    opens = expiry - timedelta(days=api_env.settings.lifecycle.renewal_window_days)
    assert f"is valid until {expiry}: renewal is possible from {opens}" in alert
    assert "尚未到换卡期" in alert
    assert "正常" in _row(p, card.card_number)
    p.screenshot(path=str(shots / "counter-renewal-too-early.png"))
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.scalars(sa.select(Receipt)).all() == []
        assert s.get(Card, card.id).status == "active"
        # the card now expires in 30 days: inside the window
        s.get(Card, card.id).expiry_date = date.today() + timedelta(days=30)
    assert _events(api_env, "card.replace") == []
    _person(p, card.person_id)
    p.get_by_role("button", name=f"到期换卡（收费） {card.card_number}").click()
    p.wait_for_url("**/console/counter/receipts/*")
    assert "收费收据" in p.inner_text("h1") and "¥20.00" in p.inner_text("dl.data")
    (ev,) = _events(api_env, "card.replace")
    assert ev.channel == "console" and ev.actor_name == clerk and ev.reason == "renewal"
    with api_env.session() as s:  # type: ignore[attr-defined]
        old = s.get(Card, card.id)
        new = s.get(Card, old.replaced_by_id)
        assert old.status == "replaced" and new.status == "number_allocated"
    p.get_by_role("link", name="返回人员页面").click()
    assert new.card_number in p.inner_text("table.cd-cards")


def test_photo_with_two_faces_refused_then_replaced_then_refused_after_review(
    api_env: ApiEnv,
    counter: tuple,  # noqa: F811
    shots: Path,  # noqa: F811
) -> None:
    p, _ = counter
    api_env.client.app.state.ctx.extra.pop("photo_processor", None)  # the real photo pipeline
    clerk = api_env.actors["clerk"]
    with api_env.session() as s:  # type: ignore[attr-defined]
        app = services.submit_application(
            s, api_env.settings,
            services.ApplicationInput(citizen_id=make_cid(), name="欧阳娜娜", phone="13912345678",
                                      photo=GOOD.read_bytes(), ethnicity="01", sex=None,
                                      address="浙江省杭州市西湖区文三路 90 号"),
            clerk,
        )  # fmt: skip
        app_id, person_id, before = app.id, app.person_id, app.photo_sha256
    _sign_in(p, clerk.username)
    _person(p, person_id)
    p.get_by_role("link", name="更换照片").click()
    p.wait_for_url(f"**/console/counter/applications/{app_id}")
    # a photo with two faces: refused with its reason, the card photo kept
    p.get_by_label("照片文件").set_input_files(str(TWO_FACES))
    p.get_by_role("button", name="更换照片").click()
    alert = p.get_by_role("alert").inner_text()
    assert "photo: 2 faces were found: the photo must show the holder alone" in alert
    assert "照片不合格：检测到多张人脸，照片上只能有持卡人本人。" in alert  # its reason code's
    assert p.evaluate("document.activeElement.id") == "photo"  # ready for another
    p.screenshot(path=str(shots / "counter-photo-two-faces.png"))
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.get(Application, app_id).photo_sha256 == before
    assert _events(api_env, "application.photo_replaced") == []
    # another picture: processed into the new card photo, shown at once
    p.get_by_label("照片文件").set_input_files(str(OTHER))
    p.get_by_role("button", name="更换照片").click()
    assert p.get_by_role("status").inner_text() == "照片已更换。新的制卡照片如下："
    p.wait_for_function("() => document.querySelector('figure.photo img').naturalWidth > 0")
    img = p.locator("figure.photo img")
    assert img.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [358, 441]
    p.screenshot(path=str(shots / "counter-photo-replaced.png"))
    with api_env.session() as s:  # type: ignore[attr-defined]
        after = s.get(Application, app_id).photo_sha256
    assert after not in (None, before)
    (ev,) = _events(api_env, "application.photo_replaced")
    assert ev.channel == "console" and ev.actor_name == clerk.username
    details = json.loads(ev.details)
    assert (details["before_sha256"], details["after_sha256"]) == (before, after)
    # the reviewer sees it meanwhile: the page left open is refused, the photo stays reviewed
    with api_env.session() as s:  # type: ignore[attr-defined]
        services.process_application(s, app_id, clerk)
        services.review_application(s, app_id, api_env.actors["reviewer"])
    p.get_by_label("照片文件").set_input_files(str(GOOD))
    p.get_by_role("button", name="更换照片").click()
    alert = p.get_by_role("alert").inner_text()
    assert "its photo can only be replaced before review" in alert
    assert "当前状态下不能执行此操作。" in alert
    assert p.get_by_role("button", name="更换照片").count() == 0  # no longer offered
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.get(Application, app_id).photo_sha256 == after
    _person(p, person_id)
    assert p.get_by_role("link", name="更换照片").count() == 0


def test_the_days_cash_with_a_wrong_date_and_a_role_that_may_not_see_it(
    api_env: ApiEnv,
    counter: tuple,  # noqa: F811
    shots: Path,  # noqa: F811
) -> None:
    p, _ = counter
    card = api_env.new_card()
    clerk = api_env.actors["clerk"]
    with api_env.session() as s:  # type: ignore[attr-defined]
        services.report_loss(s, api_env.settings, card.id, clerk, identity_checked=True,
                             kind="formal")  # fmt: skip
        services.issue_temporary_card(s, api_env.settings, card.person_id, clerk)
        services.replace_card(s, api_env.settings, card.id, clerk, reason="丢失补卡")
        numbers = s.scalars(sa.select(Receipt.number).order_by(Receipt.seq)).all()
    assert len(numbers) == 2
    _sign_in(p, clerk.username)
    p.get_by_role("link", name="当日收付款").click()
    p.wait_for_url("**/console/counter/cash")
    assert "已平账" in p.get_by_role("status").inner_text()
    assert "¥25.00" in p.get_by_role("status").inner_text()  # fee 20 + deposit 5
    mine = p.locator("table.cd-cash tbody tr", has_text="本人").inner_text()
    assert clerk.username in mine and "¥20.00" in mine and "¥5.00" in mine and "¥25.00" in mine
    foot = p.inner_text("table.cd-cash tfoot")
    assert "全部窗口" in foot and "¥25.00" in foot
    listed = p.inner_text("table.cd-receipts")
    assert all(n in listed for n in numbers) and "押金收据" in listed and "收费收据" in listed
    assert api_env.settings.issuer.time_zone in p.inner_text("main")
    p.screenshot(path=str(shots / "counter-cash-day.png"), full_page=True)
    pdf = p.request.get(p.get_by_role("link", name=f"收据 PDF {numbers[1]}")
                        .get_attribute("href") or "")  # fmt: skip
    assert pdf.headers["content-type"] == "application/pdf" and pdf.body().startswith(b"%PDF")
    (ev,) = _events(api_env, "console.cash_day_shown")
    assert ev.channel == "console" and ev.actor_name == clerk.username
    assert json.loads(ev.details) == {"receipts": 2, "balanced": True}
    # the day before: nothing; a date that is not one: refused with its reason
    p.get_by_role("link", name="前一天").click()
    assert "当日没有收付款。" in p.inner_text("main")
    for wrong in ("2026-02-30", "9999-12-31"):  # no such day; a day to come
        p.goto(f"/console/counter/cash?day={wrong}")
        alert = p.get_by_role("alert").inner_text()
        assert "day: is not a date from 1900-01-01 to today (YYYY-MM-DD)" in alert
        assert "请检查日期" in alert
    # a reviewer does not see the cash: no link, and the page refused
    p.context.clear_cookies()
    _sign_in(p, api_env.actors["reviewer"].username)
    assert p.get_by_role("link", name="当日收付款").count() == 0
    r = p.goto("/console/counter/cash")
    assert r is not None and r.status == 403
    assert len(_events(api_env, "console.cash_day_shown")) == 2  # the clerk's two days
