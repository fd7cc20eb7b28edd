"""Resident self-service (public, no staff sign-in): under ``/console/self``.

A resident reports their card lost provisionally, withdraws that report, or sees where their
new card is. Each in three steps, each its own page:

1. ID number and name (``/console/self/<purpose>``): a one-time code is asked for
   (:func:`issuance.services.otp.start_challenge`); the answer is the same whether the details
   matched or not, and the browser is sent on to the code page either way (the challenge's
   handle in an HttpOnly cookie);
2. the code from the SMS (``.../code``): :func:`issuance.services.otp.confirm`; right, and a
   resident session of that purpose starts (:mod:`issuance.services.resident`: its own cookie,
   short, not a staff session);
3. the purpose itself (``.../go``): the card and its action, or the new card's progress.

Every form carries a CSRF token: before the code, a double-submit token (a cookie of its own
and the form's field, as the staff sign-in does); after it, the resident session's. Nothing
here decides who may do what: the services and the transition tables do.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from console.common import (
    PREFIX,
    Problem,
    ctx_of,
    field,
    is_secure,
    problems_of,
    render,
    source_of,
    tx,
)
from console.sessions import csrf_ok
from issuance.errors import IssuanceError
from issuance.services import otp
from issuance.services import resident as rsv
from issuance.services.otp import Purpose

SELF = f"{PREFIX}/self"
router = APIRouter(prefix=SELF, include_in_schema=False)

#: The purposes these pages serve (the e-card's third step is its own page:
#: :mod:`console.pages.ecardres`).
PURPOSES = (Purpose.REPORT_LOSS, Purpose.WITHDRAW_LOSS, Purpose.CARD_PROGRESS, Purpose.ECARD)
FORM_COOKIE = "ykt_resident_form"
CHALLENGE_COOKIE = "ykt_resident_challenge"
SESSION_COOKIE = "ykt_resident"
#: The e-card session has a cookie of its own: a loss reported from the same phone (which
#: ends the loss session and its cookie) leaves the e-card page open.
ECARD_SESSION_COOKIE = "ykt_resident_ecard"


def session_cookie(purpose: Purpose) -> str:
    return ECARD_SESSION_COOKIE if purpose == Purpose.ECARD else SESSION_COOKIE


def _purpose(request: Request) -> Purpose | None:
    value = request.path_params.get("purpose")
    return Purpose(value) if value in PURPOSES else None


def _cookie(resp: Response, request: Request, name: str, value: str, max_age: int) -> None:
    resp.set_cookie(name, value, path=SELF, httponly=True, samesite="strict",
                    secure=is_secure(request), max_age=max_age)  # fmt: skip


def _form_token(request: Request) -> str:
    return request.cookies.get(FORM_COOKIE) or secrets.token_urlsafe(32)


def _show(request: Request, template: str, status: int = 200, **values: Any) -> Response:
    token = _form_token(request)
    resp = render(request, f"resident/{template}", None, status, csrf=token, **values)
    _cookie(resp, request, FORM_COOKIE, token, 3600)
    return resp


def _not_found(request: Request) -> Response:
    return render(request, "resident/index.html", None, 404, purposes=PURPOSES, here=SELF)


async def _form_ok(request: Request) -> Any:
    """The posted form when its CSRF token is this browser's (before any code), else None."""
    cookie = request.cookies.get(FORM_COOKIE)
    if not cookie:
        return None
    data = await request.form()
    return data if csrf_ok(cookie, field(data, "csrf")) else None


def _refused(request: Request) -> Response:
    return render(request, "resident/refused.html", None, 403, here=SELF)


@router.get("")
@router.get("/")
async def index(request: Request) -> Response:
    return render(request, "resident/index.html", None, purposes=PURPOSES, here=SELF)


@router.get("/{purpose}")
async def details_form(request: Request) -> Response:
    purpose = _purpose(request)
    if purpose is None:
        return _not_found(request)
    return _show(request, "details.html", purpose=purpose, problems=[], citizen_id="", name="")


@router.post("/{purpose}")
async def ask_for_code(request: Request) -> Response:
    purpose = _purpose(request)
    if purpose is None:
        return _not_found(request)
    data = await _form_ok(request)
    if data is None:
        return _refused(request)
    citizen_id = field(data, "citizen_id", 40) or ""
    name = field(data, "name", 60) or ""
    settings = ctx_of(request).settings
    source = source_of(request)
    here = f"{SELF}/{purpose}"
    try:
        started = await tx(request, lambda s: otp.start_challenge(
            s, settings, citizen_id, name, purpose, source))  # fmt: skip
    except otp.RateLimited as exc:
        return _show(request, "details.html", 429, purpose=purpose, citizen_id=citizen_id,
                     name=name, problems=[], retry_at=exc.retry_at, here=here)  # fmt: skip
    except IssuanceError as exc:
        return _show(request, "details.html", 422, purpose=purpose, citizen_id=citizen_id,
                     name=name, problems=problems_of(exc), here=here)  # fmt: skip
    resp = RedirectResponse(f"{SELF}/{purpose}/code", status_code=303)
    _cookie(resp, request, CHALLENGE_COOKIE, started.challenge_id,
            settings.resident.code_ttl_seconds)  # fmt: skip
    return resp


@router.get("/{purpose}/code")
async def code_form(request: Request) -> Response:
    purpose = _purpose(request)
    if purpose is None:
        return _not_found(request)
    if not request.cookies.get(CHALLENGE_COOKIE):
        return RedirectResponse(f"{SELF}/{purpose}", status_code=303)
    minutes = max(1, ctx_of(request).settings.resident.code_ttl_seconds // 60)
    return _show(request, "code.html", purpose=purpose, refused=None, minutes=minutes)


@router.post("/{purpose}/code")
async def check_code(request: Request) -> Response:
    purpose = _purpose(request)
    if purpose is None:
        return _not_found(request)
    data = await _form_ok(request)
    if data is None:
        return _refused(request)
    settings = ctx_of(request).settings
    handle = request.cookies.get(CHALLENGE_COOKIE) or ""
    code = field(data, "code", 20) or ""
    source = source_of(request)

    def fn(s: Any) -> otp.CodeRefused | str:
        proven = otp.confirm(s, settings, handle, code, purpose)
        if isinstance(proven, otp.CodeRefused):
            return proven
        token, rs = rsv.open_session(s, settings, proven, source)
        if purpose == Purpose.ECARD:
            rsv.open_ecard(s, settings, rs)  # issued now if the holder has none
        return token

    result = await tx(request, fn)
    if isinstance(result, otp.CodeRefused):
        minutes = max(1, settings.resident.code_ttl_seconds // 60)
        status = 401 if result.reason == "wrong" else 410
        resp = _show(request, "code.html", status, purpose=purpose, refused=result,
                     minutes=minutes, here=f"{SELF}/{purpose}/code")  # fmt: skip
        if result.reason != "wrong":
            resp.delete_cookie(CHALLENGE_COOKIE, path=SELF)
        return resp
    resp = RedirectResponse(f"{SELF}/{purpose}/go", status_code=303)
    _cookie(resp, request, session_cookie(purpose), result,
            rsv.session_minutes(settings, purpose) * 60)  # fmt: skip
    resp.delete_cookie(CHALLENGE_COOKIE, path=SELF)
    return resp


async def resident_of(request: Request, purpose: Purpose) -> rsv.ResidentSignedIn | None:
    """The resident of this browser's live session of ``purpose``, if any."""
    token = request.cookies.get(session_cookie(purpose))
    return await tx(request, lambda s: rsv.resume_session(s, token, purpose))


def _view(s: Any, rs: rsv.ResidentSignedIn) -> dict[str, Any]:
    if rs.purpose == Purpose.CARD_PROGRESS:
        return {"progress": rsv.progress(s, rs), "card": None}
    return {"progress": None, "card": rsv.holder_card(s, rs)}


@router.get("/{purpose}/go")
async def act_form(request: Request) -> Response:
    purpose = _purpose(request)
    if purpose is None:
        return _not_found(request)
    rs = await resident_of(request, purpose)
    if rs is None:
        return RedirectResponse(f"{SELF}/{purpose}", status_code=303)
    view = await tx(request, lambda s: _view(s, rs))
    return render(request, "resident/go.html", None, purpose=purpose, rs=rs, steps=rsv.STEPS,
                  problems=[], done=False, **view)  # fmt: skip


@router.post("/{purpose}/go")
async def act(request: Request) -> Response:
    purpose = _purpose(request)
    if purpose is None or purpose in (Purpose.CARD_PROGRESS, Purpose.ECARD):
        return _not_found(request)
    rs = await resident_of(request, purpose)
    if rs is None:
        return RedirectResponse(f"{SELF}/{purpose}", status_code=303)
    data = await request.form()
    if not rsv.csrf_ok(rs, field(data, "csrf")):
        return _refused(request)
    settings = ctx_of(request).settings
    here = f"{SELF}/{purpose}/go"
    action = rsv.report_loss if purpose == Purpose.REPORT_LOSS else rsv.withdraw_loss
    problems: list[Problem] = []
    try:
        card = await tx(request, lambda s: action(s, settings, rs))
    except IssuanceError as exc:
        problems = problems_of(exc)
        view = await tx(request, lambda s: _view(s, rs))
        return render(request, "resident/go.html", None, 409, purpose=purpose, rs=rs,
                      steps=rsv.STEPS, problems=problems, done=False, here=here,
                      **view)  # fmt: skip
    resp = render(request, "resident/go.html", None, purpose=purpose, rs=rs, steps=rsv.STEPS,
                  problems=[], done=True, card=card, progress=None, here=SELF)  # fmt: skip
    resp.delete_cookie(SESSION_COOKIE, path=SELF)
    return resp
