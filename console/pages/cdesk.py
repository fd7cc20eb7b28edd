"""The counter clerk's pages: find a person, the person's page, a new application with the photo
uploaded or taken from the counter's camera (and its photo replaced before review), a
replacement or a renewal with its fee receipt, a damaged card recorded, a card cancelled, a
temporary card handed back with its refund receipt, the numbered receipts (printable; the PDF
that ``ykt cash receipt`` writes) and the day's cash (``ykt cash day`` and ``receipts``).

Every page calls the services the CLI and the API call, with the signed-in user's actor on
channel ``console``: the search and the person view are :mod:`issuance.services.people` (``ykt
people find|show``, ``POST /v1/people/search``), the intake is
:func:`issuance.services.submit_application` with the photo pipeline (``ykt app submit``,
``POST /v1/applications``), the photo replaced :func:`issuance.uploads.replace_application_photo`
(``PUT /v1/applications/{id}/photo``), a replacement or a renewal
:func:`issuance.services.replace_card` (``ykt cards replace``), a damaged card
:func:`issuance.services.report_damaged` (``ykt cards report-damaged``), a cancellation
:func:`issuance.services.cancel_card` (``ykt cards cancel``), a hand-back
:func:`issuance.services.hand_back_temporary_card`, a receipt and the day's cash
:mod:`issuance.services.cash`. Nothing here decides a rule: the buttons offered come from the
transition tables, and the services refuse what is not allowed, with their own words.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile

from cardspec.errors import InvalidIdentifier
from cardspec.ids import mask_citizen_id, validate_card_number
from console.common import (
    PREFIX,
    Problem,
    ctx_of,
    field,
    locale_of,
    page,
    problems_of,
    render,
    scopes_of,
    tx,
)
from console.sessions import SignedIn
from issuance import audit, lifecycle, services
from issuance.errors import FieldProblem, IssuanceError, ValidationError
from issuance.lifecycle import CARD_TRANSITIONS
from issuance.lifecycle import CardEvent as CE
from issuance.models import TERMINAL_CARD_STATUSES, Application, CardKind, CardStatus, Receipt
from issuance.services import cash
from issuance.services.people import PersonQuery, PersonRecord, find_people, person_record
from issuance.uploads import PHOTO_REPLACEABLE, replace_application_photo

router = APIRouter(prefix=PREFIX, include_in_schema=False)

#: The largest photo file the new-application form takes (as ``POST /v1/applications``); the
#: body cap of the form's route is ``[api] body_limits`` "/console/counter/apply".
MAX_PHOTO_BYTES = 20 * 1024 * 1024
#: The fields of the search form, as the people service names them.
SEARCH_FIELDS = ("citizen_id", "card_number", "phone", "name", "birth_date", "region_code")
#: The fields of the new-application form (kept when the form comes back refused).
APPLY_FIELDS = ("citizen_id", "name", "sex", "ethnicity", "phone", "address", "region_code")

#: GB 3304 (names of the ethnic groups of China, in romanisation, with codes): what the clerk
#: reads on the ID card ("民族 汉") is a name, the record keeps the code. Reference data only:
#: the services check the code (two digits, required at the counter, never defaulted).
ETHNICITIES = (
    ("01", "汉族"), ("02", "蒙古族"), ("03", "回族"), ("04", "藏族"), ("05", "维吾尔族"),
    ("06", "苗族"), ("07", "彝族"), ("08", "壮族"), ("09", "布依族"), ("10", "朝鲜族"),
    ("11", "满族"), ("12", "侗族"), ("13", "瑶族"), ("14", "白族"), ("15", "土家族"),
    ("16", "哈尼族"), ("17", "哈萨克族"), ("18", "傣族"), ("19", "黎族"), ("20", "傈僳族"),
    ("21", "佤族"), ("22", "畲族"), ("23", "高山族"), ("24", "拉祜族"), ("25", "水族"),
    ("26", "东乡族"), ("27", "纳西族"), ("28", "景颇族"), ("29", "柯尔克孜族"), ("30", "土族"),
    ("31", "达斡尔族"), ("32", "仫佬族"), ("33", "羌族"), ("34", "布朗族"), ("35", "撒拉族"),
    ("36", "毛南族"), ("37", "仡佬族"), ("38", "锡伯族"), ("39", "阿昌族"), ("40", "普米族"),
    ("41", "塔吉克族"), ("42", "怒族"), ("43", "乌孜别克族"), ("44", "俄罗斯族"),
    ("45", "鄂温克族"), ("46", "德昂族"), ("47", "保安族"), ("48", "裕固族"), ("49", "京族"),
    ("50", "塔塔尔族"), ("51", "独龙族"), ("52", "鄂伦春族"), ("53", "赫哲族"), ("54", "门巴族"),
    ("55", "珞巴族"), ("56", "基诺族"), ("97", "其他"), ("98", "外国血统中国籍人士"),
)  # fmt: skip

#: Catalog sentences over the services' refusals of these fields (their words stay beneath).
CDESK_FIELD_KEYS = {
    "citizen_id": "The ID number is wrong or cannot be used here: check it against the ID card.",
    "card_number": "The card number is wrong (length or check character): check it character "
    "by character.",
    "phone": "Check the phone number.",
    "name": "Check the name.",
    "query": "Fill in one way to find the person.",
    "birth_date": "Check the birth date.",
    "region_code": "Check the region code (6 digits).",
    "photo": "The photo was refused: take or choose another.",
    "ethnicity": "Choose the ethnicity shown on the ID card.",
    "sex": "Check the sex against the ID card.",
    "address": "Check the address.",
    "card": "Not possible for this card.",
    "person": "Not possible for this person.",
    "day": "Check the date (YYYY-MM-DD).",
}
#: The catalog sentence over the replacement service's refusal to renew a working card before
#: its renewal window opens (the service's words, with the dates, stay beneath).
RENEWAL_TOO_EARLY = (
    "Too early to renew: a working card is renewed only in the last days "
    "before it expires (the date it becomes possible is below)."
)


def _photo_codes() -> frozenset[str]:
    """The photo pipeline's reason codes, each with its own catalog sentence ``photo:<code>``
    (imported when a photo is refused: the pipeline's module brings numpy)."""
    from issuance.photo_files import PhotoProblem

    return frozenset(str(c) for c in PhotoProblem)


def _problems(exc: IssuanceError | InvalidIdentifier) -> list[Problem]:
    """:func:`console.common.problems_of`, with this module's sentences for the fields it
    shows (the services' own words kept beneath, word for word); a photo refused with its
    stable reason code (:class:`issuance.photo_files.PhotoProblem`) gets that reason's own
    sentence (``photo:<code>`` in the catalogs)."""
    codes = [f.code for f in exc.problems] if isinstance(exc, ValidationError) else []
    out = []
    for i, p in enumerate(problems_of(exc)):
        name = p.text.split(":", 1)[0]
        key = p.key or (CDESK_FIELD_KEYS.get(name) if ":" in p.text else None)
        code = codes[i] if i < len(codes) else None
        if name == "photo" and code is not None and code in _photo_codes():
            key = f"photo:{code}"
        out.append(Problem(p.text, key))
    return out


def _money(request: Request, fen: int) -> str:
    from babel.numbers import format_currency

    return format_currency(fen / 100, "CNY", locale=locale_of(request))


# --- find a person --------------------------------------------------------------------------


def _query(values: dict[str, str]) -> PersonQuery:
    """The search form as the people service's query (a birth date that is not a date is
    refused here, before the service sees it: the form's own parsing)."""
    birth: date | None = None
    if values["birth_date"]:
        try:
            birth = date.fromisoformat(values["birth_date"])
        except ValueError as exc:
            raise ValidationError(
                "cannot search", [FieldProblem("birth_date", "is not a date (YYYY-MM-DD)")]
            ) from exc
    return PersonQuery(
        citizen_id=values["citizen_id"] or None, card_number=values["card_number"] or None,
        phone=values["phone"] or None, name=values["name"] or None, birth_date=birth,
        region_code=values["region_code"] or None,
    )  # fmt: skip


@router.get("/people")
@page("people:read")
async def people(request: Request, user: SignedIn) -> Response:
    q = {k: (request.query_params.get(k) or "").strip()[:40] for k in SEARCH_FIELDS}
    if not any(q.values()):
        return render(request, "cdesk/people.html", user, q=q, matches=None, problems=[],
                      focus="citizen_id")  # fmt: skip
    try:
        query = _query(q)
        matches = await tx(request, lambda s: find_people(s, query, user.actor))
    except IssuanceError as exc:
        problems = _problems(exc)
        # the keyboard's focus on the first field refused, ready to be corrected
        named = [p.text.split(":", 1)[0] for p in problems]
        focus = next((f for f in named if f in SEARCH_FIELDS), "citizen_id")
        return render(request, "cdesk/people.html", user, 422, q=q, matches=None,
                      problems=problems, focus=focus)  # fmt: skip
    if len(matches) == 1:  # the one person: straight to their page
        return RedirectResponse(f"{PREFIX}/people/{matches[0].person_id}", status_code=303)
    return render(request, "cdesk/people.html", user, q=q, matches=matches, problems=[],
                  focus="citizen_id")  # fmt: skip


# --- the person's page ----------------------------------------------------------------------


def _person_view(s: Session, person_id: int, user: SignedIn) -> dict[str, Any]:
    rec: PersonRecord = person_record(s, person_id, user.actor)
    card_ids = [c.card_id for c in rec.cards]
    receipts = (
        s.scalars(
            sa.select(Receipt).where(Receipt.card_id.in_(card_ids)).order_by(Receipt.id)
        ).all()
        if card_ids
        else []
    )
    numbers = {c.card_id: c.card_number for c in rec.cards}
    photo_app = s.scalar(
        sa.select(Application.id)
        .where(Application.person_id == person_id, Application.photo_sha256.is_not(None))
        .order_by(Application.id.desc())
        .limit(1)
    )
    returned = {d.card_number for d in rec.deposits if d.returned_at is not None}
    actions: dict[str, list[str]] = {}
    for c in rec.cards:
        offered = lifecycle.events_for(CARD_TRANSITIONS, c.status, user.actor)
        acts = [] if c.status in TERMINAL_CARD_STATUSES else ["card_page"]
        if c.kind == CardKind.FORMAL and CE.REPLACE in offered:
            # a working card is renewed (the service says whether its window is open)
            acts.append("renew" if c.status == CardStatus.ACTIVE else "replace")
        if CE.REPORT_DAMAGED in offered:
            acts.append("damaged")
        if CE.CANCEL in offered:
            acts.append("cancel")
        deposit = any(d.card_number == c.card_number for d in rec.deposits)
        if (
            c.kind == CardKind.TEMPORARY
            and c.card_number not in returned
            and (CE.HAND_BACK in offered or deposit)
        ):
            acts.append("hand_back")
        actions[c.card_number] = acts
    return {
        "rec": rec,
        "receipts": [
            {"number": r.number, "kind": r.kind, "amount_fen": r.amount_fen, "what": r.what,
             "card_number": numbers.get(r.card_id, ""), "issued_at": r.issued_at,
             "staff": r.staff_name}
            for r in receipts
        ],
        "photo_app": photo_app,
        "actions": actions,
    }  # fmt: skip


async def _person_page(
    request: Request,
    user: SignedIn,
    person_id: int,
    *,
    status: int = 200,
    problems: list[Problem] | None = None,
    done: str | None = None,
) -> Response:
    try:
        view = await tx(request, lambda s: _person_view(s, person_id, user))
    except IssuanceError as exc:
        return render(request, "message.html", user, 404, problems=_problems(exc))
    rec: PersonRecord = view["rec"]
    full = "holder:full_id" in scopes_of(user)
    return render(
        request, "cdesk/person.html", user, status, **view,
        citizen_id=rec.citizen_id if full else rec.citizen_id_masked,
        money=lambda fen: _money(request, fen), problems=problems or [], done=done,
        ethnicity_names=dict(ETHNICITIES),
        photo_replaceable=[str(st) for st in PHOTO_REPLACEABLE],
        here=f"{PREFIX}/people/{person_id}",
    )  # fmt: skip


@router.get("/people/{person_id:int}")
@page("people:read")
async def person(request: Request, user: SignedIn) -> Response:
    return await _person_page(request, user, int(request.path_params["person_id"]))


# --- replacement, renewal, damaged, cancellation, hand-back (from the person's page) ----------


async def _card_action(
    request: Request,
    user: SignedIn,
    fn: Any,
    done: str,
    kind: str | None = None,
    refusal: Any = None,
) -> Response:
    """Run ``fn(session, card) -> card whose receipt to show (or None)``; then that receipt
    (the numbered one of ``kind``), or the person's page saying ``done``, or the person's page
    with the service's refusal (``refusal(exc)``: the problems shown, else :func:`_problems`)."""
    number = str(request.path_params["number"]).upper()
    try:
        validate_card_number(number)  # the check character first: no lookup of a typo
    except InvalidIdentifier as exc:
        return render(request, "message.html", user, 422, problems=_problems(exc))

    def work(s: Session) -> tuple[int, str | None]:
        card = services.find_card(s, card_number=number)
        shown = fn(s, card)
        if shown is None or kind is None:
            return card.person_id, None
        r = cash.latest_receipt(s, shown.id)
        return card.person_id, (r.number if r is not None and r.kind == kind else None)

    try:
        person_id, receipt_no = await tx(request, work)
    except IssuanceError as exc:

        def owner(s: Session) -> int:
            return services.find_card(s, card_number=number).person_id

        try:
            pid = await tx(request, owner)
        except IssuanceError as missing:
            return render(request, "message.html", user, 404, problems=_problems(missing))
        problems = (refusal or _problems)(exc)
        return await _person_page(request, user, pid, status=409, problems=problems)
    if receipt_no:
        return RedirectResponse(f"{PREFIX}/counter/receipts/{receipt_no}", status_code=303)
    return await _person_page(request, user, person_id, done=done)


@router.post("/counter/cards/{number}/replace")
@page("cards:lifecycle", form=True)
async def replace(request: Request, user: SignedIn) -> Response:
    data: FormData = request.state.form
    reason = field(data, "reason", 200) or "replacement"
    settings = ctx_of(request).settings

    def fn(s: Session, card: Any) -> Any:
        return services.replace_card(s, settings, card.id, user.actor, reason=reason)

    return await _card_action(request, user, fn, "replaced", cash.ReceiptKind.FEE)


def _renewal_problems(exc: IssuanceError | InvalidIdentifier) -> list[Problem]:
    """The replacement service's refusal to renew (before the window) under its own sentence."""
    problems = _problems(exc)
    if isinstance(exc, ValidationError) and exc.message == "cannot renew":
        return [Problem(p.text, RENEWAL_TOO_EARLY) for p in problems]
    return problems


@router.post("/counter/cards/{number}/renew")
@page("cards:lifecycle", form=True)
async def renew(request: Request, user: SignedIn) -> Response:
    """Renew a working card (what ``ykt cards replace`` does for an active card): the service
    refuses it before the renewal window opens, with the date it opens."""
    settings = ctx_of(request).settings

    def fn(s: Session, card: Any) -> Any:
        return services.replace_card(s, settings, card.id, user.actor, reason="renewal")

    return await _card_action(request, user, fn, "renewed", cash.ReceiptKind.FEE,
                              _renewal_problems)  # fmt: skip


@router.post("/counter/cards/{number}/damaged")
@page("cards:lifecycle", form=True)
async def damaged(request: Request, user: SignedIn) -> Response:
    """Record a damaged card (``ykt cards report-damaged``); it then offers its replacement."""
    reason = field(request.state.form, "reason", 200) or None

    def fn(s: Session, card: Any) -> None:
        services.report_damaged(s, card.id, user.actor, reason)

    return await _card_action(request, user, fn, "damaged")


@router.post("/counter/cards/{number}/cancel")
@page("cards:lifecycle", form=True)
async def cancel(request: Request, user: SignedIn) -> Response:
    """Cancel a card for good (``ykt cards cancel``, whose ``--reason`` is required)."""
    reason = field(request.state.form, "reason", 200) or ""

    def fn(s: Session, card: Any) -> None:
        if not reason:  # the form's own required field (as the command's --reason)
            raise ValidationError("cannot cancel", [FieldProblem("reason", "required")])
        services.cancel_card(s, card.id, user.actor, reason)

    return await _card_action(request, user, fn, "cancelled")


@router.post("/counter/cards/{number}/hand-back")
@page("cards:lifecycle", form=True)
async def hand_back(request: Request, user: SignedIn) -> Response:
    def fn(s: Session, card: Any) -> Any:
        services.hand_back_temporary_card(s, card, user.actor)
        return card

    return await _card_action(request, user, fn, "handed_back", cash.ReceiptKind.REFUND)


# --- receipts ---------------------------------------------------------------------------------


def _receipt(s: Session, number: str, user: SignedIn) -> dict[str, Any]:
    cash.check_may_reconcile(user.actor)
    r = cash.get_receipt(s, number)
    card = services.find_card(s, card_id=r.card_id)
    audit.record(s, user.actor, "console.receipt_shown", "card", card.id,
                 details={"receipt": r.number})  # fmt: skip
    return {
        "number": r.number, "kind": r.kind, "counter": r.counter, "what": r.what,
        "amount_fen": r.amount_fen, "issued_at": r.issued_at, "staff": r.staff_name,
        "card_number": card.card_number, "card_kind": str(card.kind),
        "holder": card.person.name, "citizen_id": mask_citizen_id(card.person.citizen_id),
        "person_id": card.person_id,
    }  # fmt: skip


@router.get("/counter/receipts/{number}")
@page("cash:read")
async def receipt(request: Request, user: SignedIn) -> Response:
    number = str(request.path_params["number"])[:48]
    try:
        r = await tx(request, lambda s: _receipt(s, number, user))
    except IssuanceError as exc:
        return render(request, "message.html", user, 404, problems=_problems(exc))
    return render(request, "cdesk/receipt.html", user, r=r, amount=_money(request, r["amount_fen"]))


@router.get("/counter/receipts/{number}/pdf")
@page("cash:read")
async def receipt_pdf(request: Request, user: SignedIn) -> Response:
    """The receipt as the one-page PDF ``ykt cash receipt`` writes (printed again)."""
    number = str(request.path_params["number"])[:48]
    settings = ctx_of(request).settings

    def fn(s: Session) -> tuple[str, bytes]:
        cash.check_may_reconcile(user.actor)
        r = cash.get_receipt(s, number)
        audit.record(s, user.actor, "console.receipt_shown", "card", r.card_id,
                     details={"receipt": r.number, "pdf": True})  # fmt: skip
        return r.number, cash.receipt_pdf(s, r, settings)

    try:
        name, pdf = await tx(request, fn)
    except IssuanceError as exc:
        return render(request, "message.html", user, 404, problems=_problems(exc))
    return Response(pdf, media_type="application/pdf", headers={
        "Cache-Control": "no-store", "Content-Disposition": f'inline; filename="{name}.pdf"',
    })  # fmt: skip


# --- the day's cash ---------------------------------------------------------------------------


def _totals(t: cash.Totals) -> dict[str, int]:
    return {"receipts": t.receipts, "fees": t.fees_fen, "deposits": t.deposits_fen,
            "refunds": t.refunds_fen, "net": t.net_fen}  # fmt: skip


def _cash_day(s: Session, day: date, user: SignedIn, settings: Any) -> dict[str, Any]:
    """``ykt cash day`` and ``ykt cash receipts`` of ``day`` (the issuer's time zone), for a
    role that may see the cash; audited (a read of every counter's money)."""
    cash.check_may_reconcile(user.actor)
    rec = cash.reconcile_day(s, settings, day)
    rows = cash.receipts_of_day(s, settings, day)
    mine = cash.counter_of(s, user.actor)
    audit.record(s, user.actor, "console.cash_day_shown", "day", day.isoformat(),
                 details={"receipts": len(rows), "balanced": rec.balanced})  # fmt: skip
    counters = []
    for counter, totals in sorted(rec.by_counter.items()):
        staff = [{"name": name, **_totals(st)}
                 for (c2, name), st in sorted(rec.by_staff.items()) if c2 == counter]  # fmt: skip
        counters.append({"counter": counter, "staff": staff, **_totals(totals)})
    return {
        "counters": counters, "total": _totals(rec.total), "balanced": rec.balanced,
        "problems": list(rec.problems), "my_counter": mine,
        "receipts": [
            {"number": r.number, "kind": r.kind, "amount_fen": r.amount_fen, "what": r.what,
             "issued_at": r.issued_at, "staff": r.staff_name, "counter": r.counter}
            for r in rows
        ],
    }  # fmt: skip


@router.get("/counter/cash")
@page("cash:read")
async def cash_day(request: Request, user: SignedIn) -> Response:
    """The day's cash: totals by counter and staff member and by kind, balanced to the fen
    against the money rows, and the day's receipts (each printable, each its PDF)."""
    settings = ctx_of(request).settings
    zone = ZoneInfo(settings.issuer.time_zone)
    today = datetime.now(zone).date()
    asked = (request.query_params.get("day") or "").strip()[:20]
    try:
        day = date.fromisoformat(asked) if asked else today
        if not date(1900, 1, 1) <= day <= today:  # the form's own range (no day to come)
            raise ValueError(asked)
    except ValueError:
        problems = _problems(ValidationError("cannot show the day", [FieldProblem(
            "day", "is not a date from 1900-01-01 to today (YYYY-MM-DD)")]))  # fmt: skip
        return render(request, "cdesk/cash.html", user, 422, day=asked, today=today, v=None,
                      problems=problems, money=lambda fen: _money(request, fen), prev=None,
                      next=None)  # fmt: skip
    try:
        v = await tx(request, lambda s: _cash_day(s, day, user, settings))
    except IssuanceError as exc:
        return render(request, "message.html", user, 403, problems=_problems(exc))
    return render(request, "cdesk/cash.html", user, day=day.isoformat(), today=today, v=v,
                  problems=[], money=lambda fen: _money(request, fen),
                  prev=date.fromordinal(day.toordinal() - 1).isoformat(),
                  next=date.fromordinal(day.toordinal() + 1).isoformat())  # fmt: skip


# --- a new application ------------------------------------------------------------------------


def _apply_form(
    request: Request,
    user: SignedIn,
    status: int = 200,
    values: dict[str, str] | None = None,
    problems: list[Problem] | None = None,
) -> Response:
    named = [p.text.split(":", 1)[0] for p in problems or []]
    focus = next((f for f in named if f in (*APPLY_FIELDS, "photo")), "citizen_id")
    return render(request, "cdesk/apply.html", user, status, focus=focus,
                  v=values or dict.fromkeys(APPLY_FIELDS, ""), problems=problems or [],
                  ethnicities=ETHNICITIES, max_mb=MAX_PHOTO_BYTES // (1024 * 1024),
                  here=f"{PREFIX}/counter/apply")  # fmt: skip


@router.get("/counter/apply")
@page("applications:write")
async def apply_form(request: Request, user: SignedIn) -> Response:
    return _apply_form(request, user)


async def _photo_of(data: FormData) -> bytes | None:
    upload = data.get("photo")
    if not isinstance(upload, UploadFile):
        return None
    raw = await upload.read(MAX_PHOTO_BYTES + 1)
    if len(raw) > MAX_PHOTO_BYTES:
        raise ValidationError("photo too large", [FieldProblem(
            "photo", f"larger than {MAX_PHOTO_BYTES // (1024 * 1024)} MB")])  # fmt: skip
    return raw or None


def _app_summary(a: Application) -> dict[str, Any]:
    return {"id": a.id, "person_id": a.person_id, "name": a.person.name,
            "photo": a.photo_sha256 is not None, "photo_exempt": a.photo_exempt,
            "status": str(a.status),
            "photo_replaceable": a.status in PHOTO_REPLACEABLE}  # fmt: skip


@router.post("/counter/apply")
@page("applications:write", form=True)
async def apply(request: Request, user: SignedIn) -> Response:
    """Receive one application (what ``ykt app submit`` does): the record is checked as a
    whole and the photo turned into the card photo at once; the clerk sees that photo or
    every reason the record was refused."""
    data: FormData = request.state.form
    values = {k: field(data, k, 200) or "" for k in APPLY_FIELDS}
    settings = ctx_of(request).settings
    # a host may put its own photo processor in (as for the API), else the product's pipeline
    processor = getattr(ctx_of(request), "extra", {}).get("photo_processor")
    try:
        photo = await _photo_of(data)
    except IssuanceError as exc:
        return _apply_form(request, user, 422, values, _problems(exc))
    record = services.ApplicationInput(
        citizen_id=values["citizen_id"], name=values["name"], phone=values["phone"] or None,
        sex=values["sex"] or None, ethnicity=values["ethnicity"] or None,
        address=values["address"] or None, region_code=values["region_code"] or None,
        photo=photo,
    )  # fmt: skip

    def fn(s: Session) -> dict[str, Any]:
        a = services.submit_application(s, settings, record, user.actor,
                                        photo_processor=processor)  # fmt: skip
        return _app_summary(a)

    try:
        app = await tx(request, fn)
    except IssuanceError as exc:
        return _apply_form(request, user, 422, values, _problems(exc))
    return _applied(request, user, app, done="received")


@router.post("/counter/applications/{app_id:int}/process")
@page("applications:write", form=True)
async def process(request: Request, user: SignedIn) -> Response:
    """The clerk's processing step (``ykt app process``): the application goes to review."""
    app_id = int(request.path_params["app_id"])
    settings = ctx_of(request).settings

    def fn(s: Session) -> dict[str, Any]:
        return _app_summary(services.process_application(s, app_id, user.actor,
                                                         settings=settings))  # fmt: skip

    def again(s: Session) -> dict[str, Any]:
        from issuance.services.applications import get_application

        return _app_summary(get_application(s, app_id))

    try:
        app = await tx(request, fn)
        done, problems, status = "processed", [], 200
    except IssuanceError as exc:
        try:
            app = await tx(request, again)
        except IssuanceError as missing:
            return render(request, "message.html", user, 404, problems=_problems(missing))
        done, problems, status = None, _problems(exc), 409
    return _applied(request, user, app, status, done=done, problems=problems)


# --- the photo of an application not yet reviewed ---------------------------------------------


def _applied(
    request: Request,
    user: SignedIn,
    app: dict[str, Any],
    status: int = 200,
    done: str | None = None,
    problems: list[Problem] | None = None,
) -> Response:
    return render(request, "cdesk/applied.html", user, status, app=app, done=done,
                  problems=problems or [], max_mb=MAX_PHOTO_BYTES // (1024 * 1024),
                  here=f"{PREFIX}/counter/applications/{app['id']}")  # fmt: skip


@router.get("/counter/applications/{app_id:int}")
@page("applications:write")
async def application(request: Request, user: SignedIn) -> Response:
    """An application at the counter: its card photo, the processing step and, before review,
    the photo replaced."""
    from issuance.services.applications import get_application

    app_id = int(request.path_params["app_id"])

    def fn(s: Session) -> dict[str, Any]:
        a = get_application(s, app_id)
        audit.record(s, user.actor, "console.application_read", "application", a.id)
        return _app_summary(a)

    try:
        app = await tx(request, fn)
    except IssuanceError as exc:
        return render(request, "message.html", user, 404, problems=_problems(exc))
    return _applied(request, user, app)


@router.post("/counter/applications/{app_id:int}/photo")
@page("applications:write", form=True)
async def replace_photo(request: Request, user: SignedIn) -> Response:
    """Replace the photo of an application not yet reviewed (what ``PUT
    /v1/applications/{id}/photo`` does): processed at once into the card photo (face check
    included); the clerk sees the new card photo or the exact reason it was refused."""
    from issuance.services.applications import get_application

    app_id = int(request.path_params["app_id"])
    data: FormData = request.state.form
    settings = ctx_of(request).settings
    processor = getattr(ctx_of(request), "extra", {}).get("photo_processor")

    def again(s: Session) -> dict[str, Any]:
        return _app_summary(get_application(s, app_id))

    try:
        photo = await _photo_of(data)

        def fn(s: Session) -> dict[str, Any]:
            a = replace_application_photo(s, settings, app_id, photo or b"", user.actor,
                                          photo_processor=processor)  # fmt: skip
            return _app_summary(a)

        app = await tx(request, fn)
    except IssuanceError as exc:
        try:
            app = await tx(request, again)
        except IssuanceError as missing:
            return render(request, "message.html", user, 404, problems=_problems(missing))
        status = 422 if isinstance(exc, ValidationError) else 409
        return _applied(request, user, app, status, problems=_problems(exc))
    return _applied(request, user, app, done="photo_replaced")
