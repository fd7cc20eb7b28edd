"""The console's routes under ``/console`` (:func:`install` adds them to the API's FastAPI
application, so ``ykt serve`` serves both).

Each page authenticates first (the session cookie, before any body is read), checks the
role's scope in :data:`issuance.services.credentials.STAFF_SCOPES` (what the same role may do
through the API), then calls the same services as the CLI and the API with the signed-in
user's actor on channel ``console``. Every POST carries the session's CSRF token. Nothing here
decides a lifecycle question: offered buttons come from the transition tables
(:func:`issuance.lifecycle.events_for`) and the services decide.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from cardspec.errors import InvalidIdentifier
from cardspec.ids import mask_citizen_id, validate_card_number
from console import i18n
from console.common import (
    CSP,
    FIELD_KEYS,
    HERE,
    LANG_COOKIE,
    LOGIN_CSRF_COOKIE,
    PREFIX,
    REFUSAL_KEYS,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    HostContext,
    Problem,
    T,
    ctx_of,
    field,
    is_secure,
    locale_of,
    page,
    problems_of,
    queue_states,
    render,
    source_of,
    tx,
)
from console.config import ConsoleConfig
from console.pages import PAGE_ROUTERS
from console.sessions import SignedIn, SignInRefused, csrf_ok, sign_in, sign_out
from issuance import audit, lifecycle, services
from issuance.batches.report import BatchReport
from issuance.errors import FieldProblem, IssuanceError, ValidationError
from issuance.lifecycle import APPLICATION_TRANSITIONS, CARD_TRANSITIONS, ApplicationEvent
from issuance.lifecycle import CardEvent as CE
from issuance.models import (
    Application,
    ApplicationStatus,
    AuditEvent,
    Batch,
    BatchItem,
    LossReport,
    StaffRole,
)
from issuance.services import pins
from issuance.services.applications import get_application

router = APIRouter(prefix=PREFIX, include_in_schema=False)


# --- sign-in, sign-out, language ------------------------------------------------------------


#: Where a sign-in or a language switch may send the browser back to: a console path.
_LOCAL = re.compile(r"/console/[A-Za-z0-9_\-/]*(\?[A-Za-z0-9_\-=&%.]*)?")


def _next(value: str | None) -> str:
    """Only a console path (never another site, never out of the console)."""
    if value and _LOCAL.fullmatch(value) and "//" not in value:
        return value
    return f"{PREFIX}/home"


@router.get("")
@router.get("/")
async def root(request: Request) -> Response:
    return RedirectResponse(f"{PREFIX}/home", status_code=303)


@router.get("/login")
async def login_form(request: Request) -> Response:
    import secrets

    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    resp = render(request, "login.html", None, next=_next(request.query_params.get("next")),
                  csrf=token, error=None, username="")  # fmt: skip
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, path=PREFIX, httponly=True, samesite="strict",
                    secure=is_secure(request))  # fmt: skip
    return resp


async def _signing_in(request: Request, fn: Callable[[Session], T]) -> T:
    """A sign-in's transaction, run again when another one wrote the same rows at the same
    time (SQLite refuses the second writer at once: two failures from one place together)."""
    import asyncio
    import random

    from issuance.errors import ConflictError

    for attempt in range(SIGN_IN_ATTEMPTS):
        try:
            return await tx(request, fn)
        except ConflictError:
            if attempt == SIGN_IN_ATTEMPTS - 1:
                raise
            await asyncio.sleep(random.uniform(0.02, 0.1) * (attempt + 1))
    raise AssertionError("unreachable")


#: Tries of a sign-in's transaction when it collides with another one (see _signing_in).
SIGN_IN_ATTEMPTS = 6


@router.post("/login")
async def login(request: Request) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not cookie:  # no form of ours was shown to this browser: nothing else is read
        return render(request, "refused.html", None, 403, scope=None, csrf=True)
    data = await request.form()
    username = field(data, "username", 64) or ""
    next_ = _next(field(data, "next"))
    if not csrf_ok(cookie, field(data, "csrf")):
        return render(request, "refused.html", None, 403, scope=None, csrf=True)
    password = data.get("password")
    if not isinstance(password, str) or not username or not password:
        return render(request, "login.html", None, 400, next=next_, csrf=cookie,
                      error="missing", username=username)  # fmt: skip
    conf = ctx_of(request).settings.console
    source = source_of(request)
    result = await _signing_in(request, lambda s: sign_in(s, conf, username, password, source))
    if isinstance(result, SignInRefused):
        return render(request, "login.html", None, 401, next=next_, csrf=cookie,
                      error=result.reason, wait_until=result.wait_until,
                      username=username)  # fmt: skip
    token, _ = result
    resp = RedirectResponse(next_, status_code=303)
    resp.set_cookie(SESSION_COOKIE, token, path=PREFIX, httponly=True, samesite="strict",
                    secure=is_secure(request))  # fmt: skip
    resp.delete_cookie(LOGIN_CSRF_COOKIE, path=PREFIX)
    return resp


@router.post("/logout")
@page(form=True)
async def logout(request: Request, user: SignedIn) -> Response:
    await tx(request, lambda s: sign_out(s, user))
    resp = RedirectResponse(f"{PREFIX}/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return resp


@router.get("/lang/{locale}")
async def language(request: Request, locale: str) -> Response:
    resp = RedirectResponse(_next(request.query_params.get("next")), status_code=303)
    if locale in i18n.LOCALES:
        resp.set_cookie(LANG_COOKIE, locale, path=PREFIX, samesite="strict",
                        secure=is_secure(request), max_age=365 * 86400)  # fmt: skip
    return resp


# --- home -----------------------------------------------------------------------------------


@router.get("/home")
@page()
async def home(request: Request, user: SignedIn) -> Response:
    return render(request, "home.html", user)


# --- the reviewer's and approver's queue ----------------------------------------------------


@router.get("/queue")
@page("applications:read")
async def queue(request: Request, user: SignedIn) -> Response:
    states = queue_states(user)

    def fn(s: Session) -> list[dict[str, Any]]:
        rows = []
        for state in states:
            for a in services.list_applications(s, ApplicationStatus(state), 200):
                rows.append(_app_row(a))
        return rows

    rows = await tx(request, fn)
    return render(request, "queue.html", user, rows=rows, states=states)


def _app_row(a: Application) -> dict[str, Any]:
    p = a.person
    return {
        "id": a.id, "status": str(a.status), "name": p.name,
        "citizen_id": mask_citizen_id(p.citizen_id), "received_at": a.received_at,
        "channel": str(a.channel),
    }  # fmt: skip


def _application_view(s: Session, app_id: int, user: SignedIn) -> dict[str, Any]:
    a = get_application(s, app_id)
    p = a.person
    offered = lifecycle.events_for(APPLICATION_TRANSITIONS, a.status, user.actor)
    audit.record(s, user.actor, "console.application_read", "application", a.id)
    return {
        "app": _app_row(a) | {
            "reject_reason": a.reject_reason, "photo": a.photo_sha256 is not None,
            "photo_exempt": a.photo_exempt, "decided_at": a.decided_at,
            "card_number": services.find_card(s, card_id=a.card_id).card_number
            if a.card_id else None,
        },
        "person": {
            "name": p.name, "sex": p.sex, "birth_date": p.birth_date,
            "citizen_id": mask_citizen_id(p.citizen_id), "region_code": p.region_code,
            "ethnicity": p.ethnicity, "address": p.address, "phone": p.phone,
        },
        "offered": sorted(offered & {ApplicationEvent.REVIEW, ApplicationEvent.APPROVE,
                                     ApplicationEvent.REJECT}),
    }  # fmt: skip


@router.get("/applications/{app_id:int}")
@page("applications:read")
async def application(request: Request, user: SignedIn) -> Response:
    app_id = int(request.path_params["app_id"])
    try:
        view = await tx(request, lambda s: _application_view(s, app_id, user))
    except IssuanceError as exc:
        return render(request, "message.html", user, 404, problems=problems_of(exc))
    return render(request, "application.html", user, **view, done=None, problems=[])


@router.get("/applications/{app_id:int}/photo")
@page("applications:read")
async def application_photo(request: Request, user: SignedIn) -> Response:
    app_id = int(request.path_params["app_id"])

    def fn(s: Session) -> bytes | None:
        return s.scalar(sa.select(Application.photo_jpeg).where(Application.id == app_id))

    jpeg = await tx(request, fn)
    if not jpeg:
        return Response(status_code=404)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.post("/applications/{app_id:int}/decide")
@page("applications:write", form=True)
async def decide(request: Request, user: SignedIn) -> Response:
    app_id = int(request.path_params["app_id"])
    data: FormData = request.state.form
    action = field(data, "action")
    reason = field(data, "reason") or ""
    settings = ctx_of(request).settings
    actor = user.actor

    def fn(s: Session) -> str:
        if action == ApplicationEvent.REVIEW:
            services.review_application(s, app_id, actor, settings=settings)
        elif action == ApplicationEvent.APPROVE:
            card = services.approve_application(s, settings, app_id, actor)
            return card.card_number
        elif action == ApplicationEvent.REJECT:
            if not reason:
                raise ValidationError("cannot reject", [FieldProblem(
                    "reason", "say why the application is rejected")])  # fmt: skip
            services.reject_application(s, app_id, actor, reason)
        else:
            raise ValidationError("unknown action", [FieldProblem("action", "unknown")])
        return ""

    problems: list[Problem] = []
    done: str | None = None
    try:
        card_number = await tx(request, fn)
        done = str(action)
    except IssuanceError as exc:
        problems = problems_of(exc)
        card_number = ""
    try:
        view = await tx(request, lambda s: _application_view(s, app_id, user))
    except IssuanceError as exc:
        return render(request, "message.html", user, 404, problems=problems_of(exc))
    return render(request, "application.html", user, 200 if done else 409, **view, done=done,
                  card_number=card_number, problems=problems,
                  here=f"{PREFIX}/applications/{app_id}")  # fmt: skip


# --- a card at the counter ------------------------------------------------------------------

LOSS_EVENTS = {CE.REPORT_LOSS_PROVISIONAL, CE.REPORT_LOSS_FORMAL, CE.FORMALISE_LOSS}
UNREPORT_EVENTS = {CE.UNREPORT, CE.UNREPORT_TO_ISSUED}


def _card_view(s: Session, number: str, user: SignedIn) -> dict[str, Any]:
    card = services.find_card(s, card_number=number)
    v = services.card_status(s, card_id=card.id)
    reports = s.scalars(
        sa.select(LossReport).where(LossReport.card_id == card.id).order_by(LossReport.id.desc())
    ).all()
    offered = lifecycle.events_for(CARD_TRANSITIONS, v.status, user.actor)
    audit.record(s, user.actor, "console.card_read", "card", card.id)
    states = pins.pin_states(s, card.id)  # what the card's readers last reported of its PINs
    return {
        "card": v,
        "pin_of": {
            kind: states.get(pins.APP_PIN.get(kind, pins.SS_PIN)) for kind in v.chip_apps
        },
        "reports": [
            {"kind": str(r.kind), "status": str(r.status), "channel": str(r.channel),
             "reported_at": r.reported_at, "lapses_at": r.lapses_at, "closed_at": r.closed_at,
             "note": r.note}
            for r in reports
        ],
        "can_report": bool(offered & LOSS_EVENTS),
        "can_unreport": bool(offered & UNREPORT_EVENTS),
    }  # fmt: skip


@router.get("/cards")
@page("cards:read")
async def cards(request: Request, user: SignedIn) -> Response:
    number = (request.query_params.get("number") or "").strip().upper()[:20]
    if not number:
        return render(request, "card.html", user, number="", view=None, problems=[], done=None)
    try:
        validate_card_number(number)  # the check character first: no lookup of a typo
    except InvalidIdentifier as exc:
        return render(request, "card.html", user, 422, number=number, view=None,
                      problems=problems_of(exc), done=None)  # fmt: skip
    try:
        view = await tx(request, lambda s: _card_view(s, number, user))
    except IssuanceError as exc:
        return render(request, "card.html", user, 404, number=number, view=None,
                      problems=problems_of(exc), done=None)  # fmt: skip
    return render(request, "card.html", user, number=number, view=view, problems=[], done=None)


async def _card_action(
    request: Request, user: SignedIn, action: str, fn: Callable[[Session, int], object]
) -> Response:
    number = str(request.path_params["number"]).upper()
    try:
        validate_card_number(number)
    except InvalidIdentifier as exc:
        return render(request, "card.html", user, 422, number=number, view=None,
                      problems=problems_of(exc), done=None)  # fmt: skip

    def work(s: Session) -> None:
        fn(s, services.find_card(s, card_number=number).id)

    problems: list[Problem] = []
    done: str | None = None
    try:
        await tx(request, work)
        done = action
    except IssuanceError as exc:
        problems = problems_of(exc)
    try:
        view = await tx(request, lambda s: _card_view(s, number, user))
    except IssuanceError as exc:
        return render(request, "card.html", user, 404, number=number, view=None,
                      problems=problems_of(exc), done=None)  # fmt: skip
    return render(request, "card.html", user, 200 if done else 409, number=number, view=view,
                  problems=problems, done=done, here=f"{PREFIX}/cards?number={number}")  # fmt: skip


@router.post("/cards/{number}/loss")
@page("cards:loss", form=True)
async def report_loss(request: Request, user: SignedIn) -> Response:
    data: FormData = request.state.form
    kind = field(data, "kind") or None
    checked = field(data, "identity_checked") == "yes"
    note = field(data, "note") or None
    settings = ctx_of(request).settings

    def fn(s: Session, card_id: int) -> object:
        if kind not in (None, "provisional", "formal"):
            raise ValidationError("cannot report the loss",
                                  [FieldProblem("kind", "provisional or formal")])  # fmt: skip
        return services.report_loss(s, settings, card_id, user.actor, identity_checked=checked,
                                    note=note, kind=kind)  # fmt: skip

    return await _card_action(request, user, "reported", fn)


@router.post("/cards/{number}/unreport")
@page("cards:loss", form=True)
async def unreport(request: Request, user: SignedIn) -> Response:
    data: FormData = request.state.form
    checked = field(data, "identity_checked") == "yes"
    note = field(data, "note") or None

    def fn(s: Session, card_id: int) -> object:
        return services.unreport_loss(s, card_id, user.actor, identity_checked=checked, note=note)

    return await _card_action(request, user, "unreported", fn)


@router.post("/cards/{number}/temporary")
@page("cards:lifecycle", form=True)
async def temporary_card(request: Request, user: SignedIn) -> Response:
    """A temporary card for the holder of this card (the service decides whether they may have
    one and takes the deposit); then its deposit receipt."""
    settings = ctx_of(request).settings

    def fn(s: Session, card_id: int) -> object:
        card = services.find_card(s, card_id=card_id)
        temp = services.issue_temporary_card(s, settings, card.person_id, user.actor)
        request.state.temporary = temp.card_number
        return temp

    resp = await _card_action(request, user, "temporary", fn)
    temp = getattr(request.state, "temporary", None)
    if resp.status_code == 200 and temp:
        return RedirectResponse(f"{PREFIX}/cards/{temp}/receipt", status_code=303)
    return resp


def _receipt(s: Session, number: str, user: SignedIn) -> dict[str, Any]:
    from issuance.models import Deposit, Staff

    card = services.find_card(s, card_number=number)
    deposit = s.scalars(sa.select(Deposit).where(Deposit.card_id == card.id)).one_or_none()
    if deposit is None:
        raise ValidationError("no receipt", [FieldProblem("card", f"{number}: no deposit taken")])
    clerk = s.get(Staff, deposit.taken_by_id) if deposit.taken_by_id else None
    audit.record(s, user.actor, "console.receipt_shown", "card", card.id)
    return {
        "card_number": card.card_number, "holder": card.person.name,
        "citizen_id": mask_citizen_id(card.person.citizen_id), "issue_date": card.issue_date,
        "expiry_date": card.expiry_date, "amount_fen": deposit.amount_fen,
        "taken_at": deposit.taken_at, "clerk": clerk.display_name if clerk else "",
        "refunded_at": deposit.refunded_at, "deposit_id": deposit.id,
    }  # fmt: skip


@router.get("/cards/{number}/receipt")
@page("cards:read")
async def receipt(request: Request, user: SignedIn) -> Response:
    number = str(request.path_params["number"]).upper()
    try:
        validate_card_number(number)
        r = await tx(request, lambda s: _receipt(s, number, user))
    except InvalidIdentifier as exc:
        return render(request, "message.html", user, 422, problems=problems_of(exc))
    except IssuanceError as exc:
        return render(request, "message.html", user, 404, problems=problems_of(exc))
    from babel.numbers import format_currency

    amount = format_currency(r["amount_fen"] / 100, "CNY", locale=locale_of(request))
    return render(request, "receipt.html", user, r=r, amount=amount)


# --- the auditor ----------------------------------------------------------------------------

AUDIT_FILTERS = ("entity_type", "entity_id", "action", "actor", "channel")


@router.get("/audit")
@page("audit:read")
async def audit_search(request: Request, user: SignedIn) -> Response:
    q = {k: (request.query_params.get(k) or "").strip()[:64] for k in AUDIT_FILTERS}
    searched = any(q.values()) or request.query_params.get("all") == "1"

    def fn(s: Session) -> list[AuditEvent]:
        if not searched:
            return []
        filters = {k: v for k, v in q.items() if v}
        events = audit.search(s, {audit.SEARCH_KEYS.get(k, k): v for k, v in filters.items()},
                              limit=200)  # fmt: skip
        audit.record(s, user.actor, "console.audit_query", "audit", "events",
                     details={"filters": filters, "count": len(events)})  # fmt: skip
        return events

    events = await tx(request, fn)
    return render(request, "audit.html", user, q=q, events=events, searched=searched)


@router.post("/audit/verify")
@page("audit:read", form=True)
async def audit_verify(request: Request, user: SignedIn) -> Response:
    def fn(s: Session) -> audit.VerifyReport:
        report = audit.verify_chain(s)
        audit.record(s, user.actor, "console.audit_verified", "audit", "chain",
                     details={"events": report.events, "last_seq": report.last_seq})  # fmt: skip
        return report

    try:
        report = await tx(request, fn)
        problems: list[Problem] = []
    except IssuanceError as exc:
        report, problems = None, problems_of(exc)
    return render(request, "audit_verify.html", user, report=report, problems=problems)


# --- the system: settings in force, HSM keys, staff (read only) -----------------------------


def _settings_rows(settings: ConsoleConfig) -> list[tuple[str, str]]:
    """Every setting in force as ``section.key``, value; secrets shown as ``**********`` and a
    database URL without its password."""
    from sqlalchemy.engine import make_url

    rows: list[tuple[str, str]] = []
    for section, values in settings.model_dump(mode="json").items():
        if not isinstance(values, dict):
            rows.append((section, str(values)))
            continue
        for key, value in values.items():
            if section == "database" and key == "url" and value:
                value = make_url(value).render_as_string(hide_password=True)
            rows.append((f"{section}.{key}", "" if value is None else str(value)))
    return rows


def _key_rows(service: Any) -> list[dict[str, Any]]:
    """The HSM's keys (labels, KCVs, versions; never a secret), on the HSM thread."""
    from hsm import ceremony

    return [
        {"label": k.label, "kind": k.kind, "slot": k.slot.value if k.slot else "",
         "algorithm": k.algorithm, "version": k.version, "kcv": k.kcv.hex().upper(),
         "kcv_source": k.kcv_source, "sensitive": k.sensitive, "extractable": k.extractable}
        for k in ceremony.list_keys(service.token)
    ]  # fmt: skip


@router.get("/system")
@page("audit:read")
async def system(request: Request, user: SignedIn) -> Response:
    from issuance.models import Staff

    ctx = ctx_of(request)

    def staff_rows(s: Session) -> list[dict[str, Any]]:
        audit.record(s, user.actor, "console.system_read", "system", "settings")
        return [
            {"username": st.username, "display_name": st.display_name, "role": str(st.role),
             "active": st.active, "password": st.password_hash is not None,
             "created_at": st.created_at}
            for st in s.scalars(sa.select(Staff).order_by(Staff.username))
        ]  # fmt: skip

    staff = await tx(request, staff_rows)
    keys: list[dict[str, Any]] = []
    problems: list[Problem] = []
    try:
        keys = await run_in_threadpool(ctx.hsm.call, _key_rows)
    except Exception as exc:  # the HSM down must not hide the rest of the page
        problems = [Problem(f"HSM: {type(exc).__name__}: {exc}")]
    return render(request, "system.html", user, settings_rows=_settings_rows(ctx.settings),
                  keys=keys, staff=staff, problems=problems)  # fmt: skip


# --- the card centre's batches --------------------------------------------------------------


def _batches(s: Session) -> list[dict[str, Any]]:
    batches = s.scalars(sa.select(Batch).order_by(Batch.id.desc()).limit(50)).all()
    ids = [b.id for b in batches]
    stages: dict[int, dict[str, int]] = {i: {} for i in ids}
    if ids:
        rows = s.execute(
            sa.select(BatchItem.batch_id, BatchItem.stage, sa.func.count())
            .where(BatchItem.batch_id.in_(ids))
            .group_by(BatchItem.batch_id, BatchItem.stage)
        ).all()
        for batch_id, stage, n in rows:
            stages[batch_id][str(stage)] = int(n)
    return [
        {"id": b.id, "name": b.name, "status": str(b.status), "created_at": b.created_at,
         "started_at": b.started_at, "completed_at": b.completed_at, "cards": b.card_count,
         "stages": stages[b.id]}
        for b in batches
    ]  # fmt: skip


@router.get("/batches")
@page("batches:read")
async def batches(request: Request, user: SignedIn) -> Response:
    rows = await tx(request, _batches)
    return render(request, "batches.html", user, rows=rows)


@router.get("/batches/rows")
@page("batches:read")
async def batch_rows(request: Request, user: SignedIn) -> Response:
    rows = await tx(request, _batches)
    return render(request, "batch_rows.html", user, rows=rows)


def _report(s: Session, batch_id: int) -> BatchReport:
    from issuance.batches.report import build_report
    from issuance.batches.selection import get_batch

    return build_report(s, get_batch(s, batch_id).id)  # NotFound first


@router.get("/batches/{batch_id:int}")
@page("batches:read")
async def batch(request: Request, user: SignedIn) -> Response:
    batch_id = int(request.path_params["batch_id"])
    try:
        report = await tx(request, lambda s: _report(s, batch_id))
    except IssuanceError as exc:
        return render(request, "message.html", user, 404, problems=problems_of(exc))
    return render(request, "batch.html", user, r=report)


@router.get("/batches/{batch_id:int}/report")
@page("batches:read")
async def batch_report(request: Request, user: SignedIn) -> Response:
    batch_id = int(request.path_params["batch_id"])
    try:
        report = await tx(request, lambda s: _report(s, batch_id))
    except IssuanceError as exc:
        return render(request, "_problems.html", user, 404, problems=problems_of(exc))
    return render(request, "batch_report.html", user, r=report)


@router.get("/batches/{batch_id:int}/chart.png")
@page("batches:read")
async def batch_chart(request: Request, user: SignedIn) -> Response:
    """The batch report's chart (what ``ykt batch report`` writes), drawn for this request."""
    import tempfile

    from issuance.batches.report import write_chart

    batch_id = int(request.path_params["batch_id"])
    try:
        report = await tx(request, lambda s: _report(s, batch_id))
    except IssuanceError:
        return Response(status_code=404)

    def draw() -> bytes:
        with tempfile.TemporaryDirectory(prefix="ykt-chart-") as tmp:
            return write_chart(report, Path(tmp) / "chart.png").read_bytes()

    png = await run_in_threadpool(draw)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


# --- installation ---------------------------------------------------------------------------


class _Headers:
    """Pure ASGI middleware: the security headers on every ``/console`` response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(PREFIX):
            await self.app(scope, receive, send)
            return

        async def send_with(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with)


def install(app: FastAPI) -> None:
    """Serve the console beside the API: its pages, its static files (from the package) and
    the security headers of its responses."""
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)
    for pages in PAGE_ROUTERS:
        app.include_router(pages)
    app.add_middleware(_Headers)


__all__ = [
    "CSP",
    "FIELD_KEYS",
    "REFUSAL_KEYS",
    "SESSION_COOKIE",
    "HostContext",
    "StaffRole",
    "install",
]
