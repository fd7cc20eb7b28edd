"""The counter clerk's console pages through HTTP (console/pages/cdesk.py; the browser journeys
are in test_console_cdesk_browser.py): person search with the check characters checked before
any lookup, the person's page, a new application (every refusal listed, ethnicity never
defaulted), a replacement with its fee receipt and a hand-back with its refund receipt, the
receipts as pages and as the PDF of ``ykt cash receipt``; every action audited on channel
``console`` by the signed-in user."""

from __future__ import annotations

import json
import re

import sqlalchemy as sa
from api_helpers import ApiEnv, make_cid
from console_helpers import give_passwords, sign_in

from cardspec.ids import card_number_check_char, mask_citizen_id
from console import i18n
from console.pages.cdesk import CDESK_FIELD_KEYS, ETHNICITIES
from issuance import services
from issuance.models import Application, AuditEvent, Card, Person, Receipt
from issuance.services.cash import ReceiptKind


def _events(env: ApiEnv, action: str) -> list[AuditEvent]:
    with env.session() as s:  # type: ignore[attr-defined]
        return list(s.scalars(sa.select(AuditEvent).where(AuditEvent.action == action)))


def _wrong(number: str) -> str:
    wrong = number[:-1] + ("1" if number[-1] != "1" else "2")
    assert card_number_check_char(number[:8]) != wrong[-1]
    return wrong


def test_search_checks_the_check_character_before_any_lookup(
    api_env: ApiEnv, card_and_chip: tuple
) -> None:
    give_passwords(api_env)
    card, _ = card_and_chip
    c = api_env.client
    sign_in(c, api_env.actors["clerk"].username)
    r = c.get("/console/people", params={"card_number": _wrong(card.card_number)})
    assert r.status_code == 422
    assert "check character" in r.text and "卡号有误" in r.text
    with api_env.session() as s:  # type: ignore[attr-defined]
        cid = s.get(Person, card.person_id).citizen_id
    bad_cid = cid[:-1] + ("0" if cid[-1] != "0" else "1")
    r = c.get("/console/people", params={"citizen_id": bad_cid})
    assert r.status_code == 422 and "citizen_id:" in r.text and "请对照身份证核对" in r.text
    r = c.get("/console/people", params={"name": "张三"})  # a name alone: too broad
    assert r.status_code == 422 and "a name alone is too broad" in r.text
    assert _events(api_env, "person.searched") == []  # nothing was looked up for the mistakes
    # the right number: straight to the one person's page
    r = c.get("/console/people", params={"card_number": card.card_number.lower()},
              follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == f"/console/people/{card.person_id}"
    (ev,) = _events(api_env, "person.searched")
    assert ev.channel == "console" and json.loads(ev.details)["by"] == "card_number"


def test_person_page_shows_the_person_view(api_env: ApiEnv, card_and_chip: tuple) -> None:
    give_passwords(api_env)
    card, _ = card_and_chip
    c = api_env.client
    sign_in(c, api_env.actors["clerk"].username)
    with api_env.session() as s:  # type: ignore[attr-defined]
        person = s.get(Person, card.person_id)
        cid, name, birth = person.citizen_id, person.name, person.birth_date
    r = c.get("/console/people", params={"name": name, "birth_date": birth.isoformat()})
    # by name and birth date: one person (the register of this test) or a list with them
    page = c.get(f"/console/people/{card.person_id}") if r.status_code == 200 else r
    assert page.status_code == 200
    text = page.text
    assert card.card_number in text and "正常" in text  # the card and its status
    assert "社会保障: 正常" in text and "金融: 未启用 · 未设密码" in text  # chip apps, PIN state
    assert cid not in text and mask_citizen_id(cid) in text  # masked for a clerk
    assert "card.activate" in text and "application.received" in text  # the timeline
    viewed = _events(api_env, "person.viewed")
    assert viewed and viewed[-1].channel == "console"
    # the same page in English: every label from the catalogs
    en = c.get(f"/console/lang/en?next=/console/people/{card.person_id}").text
    assert "Cards held" in en and "Timeline" in en and "social security: active" in en
    assert "Ethnicity" in en and "01 汉族" in en
    c.get(f"/console/lang/zh_CN?next=/console/people/{card.person_id}")
    # a supervisor may see the full number
    c2 = type(c)(c.app)
    sign_in(c2, api_env.actors["supervisor"].username)
    assert cid in c2.get(f"/console/people/{card.person_id}").text
    # a reviewer does not search people
    c3 = type(c)(c.app)
    sign_in(c3, api_env.actors["reviewer"].username)
    assert c3.get("/console/people").status_code == 403


def _apply(c: object, csrf: str, photo: bytes | None = None, **values: str) -> object:
    form = {"csrf": csrf, "citizen_id": make_cid(), "name": "欧阳娜娜", "sex": "",
            "phone": "13912345678", "address": "浙江省杭州市西湖区文三路 90 号",
            "ethnicity": "01"}  # fmt: skip
    form.update(values)
    files = {"photo": ("photo.jpg", photo, "image/jpeg")} if photo is not None else None
    return c.post("/console/counter/apply", data=form, files=files)  # type: ignore[attr-defined]


def test_new_application_lists_every_refusal_and_never_defaults_the_ethnicity(
    api_env: ApiEnv,
) -> None:
    from api_helpers import PHOTO

    give_passwords(api_env)
    c = api_env.client
    csrf = sign_in(c, api_env.actors["clerk"].username)
    with api_env.session() as s:  # type: ignore[attr-defined]
        before = s.scalar(sa.select(sa.func.count()).select_from(Application))
    r = _apply(c, csrf, None, ethnicity="", phone="12")
    assert r.status_code == 422
    text = r.text
    assert "ethnicity: required" in text and "请选择身份证上的民族" in text
    assert "phone: is not a mobile" in text and "photo: required" in text
    assert "欧阳娜娜" in text and "浙江省杭州市西湖区文三路 90 号" in text  # nothing typed is lost
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.scalar(sa.select(sa.func.count()).select_from(Application)) == before
    # the form without its CSRF token: refused before anything is read
    r = _apply(c, "forged", PHOTO)
    assert r.status_code == 403
    # a good record: received, the card photo shown
    cid = make_cid()
    r = _apply(c, csrf, PHOTO, citizen_id=cid, sex="女" if int(cid[16]) % 2 == 0 else "男")
    assert r.status_code == 200, r.text
    m = re.search(r"/console/applications/(\d+)/photo", r.text)
    assert m, "no card photo on the page"
    app_id = int(m.group(1))
    img = c.get(f"/console/applications/{app_id}/photo")
    assert img.status_code == 200 and img.content.startswith(b"\xff\xd8")
    with api_env.session() as s:  # type: ignore[attr-defined]
        app = s.get(Application, app_id)
        assert app.status == "received" and app.person.ethnicity == "01"
        assert app.person.address == "浙江省杭州市西湖区文三路 90 号"
    (ev,) = [e for e in _events(api_env, "application.received") if e.entity_id == str(app_id)]
    assert ev.channel == "console" and ev.actor_name == api_env.actors["clerk"].username
    # the clerk processes it: it goes to review
    r = c.post(f"/console/counter/applications/{app_id}/process", data={"csrf": csrf})
    assert r.status_code == 200 and "已初审" in r.text
    r = c.post(f"/console/counter/applications/{app_id}/process", data={"csrf": csrf})
    assert r.status_code == 409  # not twice: the lifecycle says so


def test_replacement_and_hand_back_with_their_receipts(
    api_env: ApiEnv, card_and_chip: tuple
) -> None:
    give_passwords(api_env)
    card, _ = card_and_chip
    c = api_env.client
    clerk = api_env.actors["clerk"]
    csrf = sign_in(c, clerk.username)
    # an active card is not replaced here (renewal has its window): the service says so
    r = c.post(f"/console/counter/cards/{card.card_number}/replace", data={"csrf": csrf})
    assert r.status_code == 409 and "renewal is possible from" in r.text
    with api_env.session() as s:  # type: ignore[attr-defined]
        services.report_loss(s, api_env.settings, card.id, clerk, identity_checked=True,
                             kind="formal")  # fmt: skip
        temp = services.issue_temporary_card(s, api_env.settings, card.person_id, clerk)
        temp_number = temp.card_number
    page = c.get(f"/console/people/{card.person_id}").text
    assert f"/counter/cards/{card.card_number}/replace" in page
    assert f"/counter/cards/{temp_number}/hand-back" in page
    # a wrong check character: refused before any lookup
    r = c.post(f"/console/counter/cards/{_wrong(temp_number)}/hand-back", data={"csrf": csrf})
    assert r.status_code == 422 and "check character" in r.text
    # the hand-back: the refund receipt, printable and as the CLI's PDF
    r = c.post(f"/console/counter/cards/{temp_number}/hand-back", data={"csrf": csrf},
               follow_redirects=False)  # fmt: skip
    assert r.status_code == 303
    number = r.headers["location"].rsplit("/", 1)[1]
    with api_env.session() as s:  # type: ignore[attr-defined]
        receipt = s.scalars(sa.select(Receipt).where(Receipt.number == number)).one()
        assert receipt.kind == ReceiptKind.REFUND
        assert receipt.amount_fen == api_env.settings.lifecycle.temporary_card_deposit_fen
        assert s.scalars(sa.select(Card).where(Card.card_number == temp_number)).one().status \
            == "cancelled"  # fmt: skip
    page = c.get(r.headers["location"])
    assert page.status_code == 200 and "退款凭证" in page.text and number in page.text
    assert "¥5.00" in page.text and "data-print" in page.text
    pdf = c.get(f"/console/counter/receipts/{number}/pdf")
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    # handed back twice: refused, the deposit refunded once
    r = c.post(f"/console/counter/cards/{temp_number}/hand-back", data={"csrf": csrf})
    assert r.status_code == 409 and "already handed back" in r.text
    # the replacement: the fee receipt
    r = c.post(f"/console/counter/cards/{card.card_number}/replace",
               data={"csrf": csrf, "reason": "丢失补卡"}, follow_redirects=False)  # fmt: skip
    assert r.status_code == 303
    page = c.get(r.headers["location"])
    assert "收费收据" in page.text and f"replacement of card {card.card_number}" in page.text
    with api_env.session() as s:  # type: ignore[attr-defined]
        old = s.get(Card, card.id)
        assert old.status == "replaced" and old.replaced_by_id is not None
        refunds = s.scalars(sa.select(Receipt).where(Receipt.kind == "refund")).all()
        assert len(refunds) == 1
    for action in ("card.replace", "deposit.refunded", "console.receipt_shown"):
        evs = _events(api_env, action)
        assert evs and all(e.channel == "console" for e in evs), action
        assert all(e.actor_name == clerk.username for e in evs), action
    # the person's page lists both receipts
    page = c.get(f"/console/people/{card.person_id}").text
    assert page.count("/console/counter/receipts/") >= 3  # deposit, refund, fee


def test_receipts_are_for_roles_that_see_the_cash(api_env: ApiEnv, card_and_chip: tuple) -> None:
    give_passwords(api_env)
    card, _ = card_and_chip
    with api_env.session() as s:  # type: ignore[attr-defined]
        services.report_loss(s, api_env.settings, card.id, api_env.actors["clerk"],
                             identity_checked=True, kind="formal")  # fmt: skip
        temp = services.issue_temporary_card(
            s, api_env.settings, card.person_id, api_env.actors["clerk"]
        )
        number = s.scalars(sa.select(Receipt.number).where(Receipt.card_id == temp.id)).one()
    c = api_env.client
    sign_in(c, api_env.actors["reviewer"].username)
    assert c.get(f"/console/counter/receipts/{number}").status_code == 403
    c2 = type(c)(c.app)
    sign_in(c2, api_env.actors["clerk"].username)
    assert c2.get("/console/counter/receipts/NOPE-00000001").status_code == 404
    assert "押金收据" in c2.get(f"/console/counter/receipts/{number}").text


def test_the_pages_messages_are_translated() -> None:
    zh, en = i18n.translations("zh_CN"), i18n.translations("en")
    dynamic = [f"{p}:{k}" for p in ("receipt", "done") for k in ReceiptKind]
    for m in [*dynamic, *CDESK_FIELD_KEYS.values(), "People"]:
        assert zh.gettext(m) != m, m
    for m in dynamic:
        assert ":" not in en.gettext(m), m
    assert len({code for code, _ in ETHNICITIES}) == len(ETHNICITIES) == 58


def test_the_upload_route_has_its_own_body_cap() -> None:
    from api.gate import body_cap
    from yikatong.settings import Settings

    limits = Settings().api.body_limits
    assert body_cap(limits, "/console/counter/apply") > 20 * 1024 * 1024
    assert body_cap(limits, "/console/people") == limits["default"]


def test_a_photo_larger_than_the_default_body_cap_reaches_the_form(api_env: ApiEnv) -> None:
    """The gate's cap of the form's route is its own (a counter camera's JPEG is well over the
    64 KiB of other forms); a body over it is refused before it is read."""
    give_passwords(api_env)
    c = api_env.client
    csrf = sign_in(c, api_env.actors["clerk"].username)
    big = b"\xff\xd8\xff\xe0" + bytes(2 * 1024 * 1024) + b"\xff\xd9"  # 2 MB (the stand-in)
    r = _apply(c, csrf, big, ethnicity="")
    assert r.status_code == 422 and "ethnicity: required" in r.text  # read, then refused
    huge = bytes(22 * 1024 * 1024)
    r = _apply(c, csrf, huge)
    assert r.status_code == 413


def test_every_message_of_the_counter_pages_is_in_the_chinese_catalog() -> None:
    """Each ``_("...")`` of the counter's templates (apostrophes included: "The day's cash")
    and each sentence this module puts over a refusal (one per photo reason code) has its
    Chinese translation."""
    import re
    from pathlib import Path

    from console.pages.cdesk import RENEWAL_TOO_EARLY
    from issuance.photo_files import PhotoProblem

    zh = i18n.translations("zh_CN")
    used = {RENEWAL_TOO_EARLY} | {f"photo:{code}" for code in PhotoProblem}
    for page in (Path(i18n.__file__).parent / "templates/cdesk").glob("*.html"):
        text = page.read_text()
        used |= set(
            re.findall(r"""_\("([^"]+)"\)""", text) + re.findall(r"""_\('([^']+)'\)""", text)
        )
    assert "The day's cash" in used
    assert sorted(m for m in used if zh.gettext(m) == m) == []


def test_the_counters_card_actions_keep_the_roles_and_the_csrf_token(
    api_env: ApiEnv, card_and_chip: tuple
) -> None:
    """A role without the card lifecycle is refused before anything (audited); a form without
    the session's token is refused; the day's cash is for the roles that see the cash."""
    give_passwords(api_env)
    card, _ = card_and_chip
    c = api_env.client
    csrf = sign_in(c, api_env.actors["reviewer"].username)
    for action in ("damaged", "cancel", "renew"):
        r = c.post(f"/console/counter/cards/{card.card_number}/{action}",
                   data={"csrf": csrf, "reason": "x"})  # fmt: skip
        assert r.status_code == 403, action
    assert c.get("/console/counter/cash").status_code == 403
    refused = _events(api_env, "console.refused")
    assert len(refused) == 4 and all(e.channel == "console" for e in refused)
    c2 = type(c)(c.app)
    sign_in(c2, api_env.actors["clerk"].username)
    r = c2.post(f"/console/counter/cards/{card.card_number}/cancel", data={"reason": "x"})
    assert r.status_code == 403
    r = c2.post(f"/console/counter/cards/{card.card_number}/cancel",
                data={"csrf": "not-the-token", "reason": "x"})  # fmt: skip
    assert r.status_code == 403
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.get(Card, card.id).status == "active"
    assert _events(api_env, "card.cancel") == []
    # a card number with a wrong check character: refused before any lookup
    csrf2 = sign_in(c2, api_env.actors["clerk"].username)
    r = c2.post(f"/console/counter/cards/{_wrong(card.card_number)}/damaged",
                data={"csrf": csrf2})  # fmt: skip
    assert r.status_code == 422 and "check character" in r.text


def test_the_new_counter_actions_and_the_days_cash_in_english(
    api_env: ApiEnv, card_and_chip: tuple
) -> None:
    give_passwords(api_env)
    card, _ = card_and_chip
    c = api_env.client
    sign_in(c, api_env.actors["clerk"].username)
    page = c.get(f"/console/lang/en?next=/console/people/{card.person_id}").text
    assert f"Renew (fee) {card.card_number}" in page
    assert "Damaged card" in page and "Cancel the card" in page
    cash = c.get("/console/counter/cash")
    assert cash.status_code == 200 and "The day&#39;s cash" in cash.text
    assert "No money changed hands on this day." in cash.text
    assert "Balanced: counters, staff, receipts and money rows agree to the fen." in cash.text
    for wrong in ("yesterday", "0001-01-01", "9999-12-31"):
        bad = c.get("/console/counter/cash", params={"day": wrong})
        assert bad.status_code == 422 and "Check the date (YYYY-MM-DD)." in bad.text, wrong
    c.get("/console/lang/zh_CN?next=/console/home")
