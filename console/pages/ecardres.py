"""The resident's own e-card (issue 21), the third step of ``/console/self/ecard``.

The first two steps are the resident pages' (:mod:`console.pages.resident`: ID number and name,
then the one-time code of purpose ``ecard``); the confirmed code opens an e-card session
(``[ecard] session_minutes``, its own cookie) and issues the holder an e-card bound to their
active card if they have none (:func:`issuance.services.resident.open_ecard`, proof
``resident_otp``, the resident ``resident:<person id>`` on channel ``web`` as the actor).

* ``GET /console/self/ecard/go``: the e-card page: the refreshing code of the e-card page
  (``ecard/_code.html`` and ``ecard.js``; the page reloads when the session ends and then asks
  for a new code), and during a provisional loss the holder's authorisation of the e-card
  (without it the codes are refused: the national rule) or its withdrawal;
* ``GET .../go/code.png``: a fresh code (:func:`console.pages.ecard.code_png`, audited
  ``ecard.code`` with the resident as the actor);
* ``POST .../go/authorise``: :func:`issuance.services.resident.authorise_ecard` (audited
  ``ecard.loss_authorised`` / ``ecard.loss_authorisation_withdrawn``), CSRF token of the
  session; the session goes on.

Without a live e-card session every one of these answers as the resident pages do for a
stranger: back to the first step (or 404 for the image); nothing about the person is shown.
Listed before :mod:`console.pages.resident` in :data:`console.pages.PAGE_ROUTERS` (its
``/{purpose}/go`` would otherwise take these paths).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from console.common import Problem, ctx_of, field, problems_of, render, tx
from console.pages.ecard import code_png, ecard_view
from console.pages.resident import SELF, resident_of
from issuance.errors import IssuanceError
from issuance.models import Card, CardStatus, utcnow
from issuance.services import ecard
from issuance.services import resident as rsv
from issuance.services.otp import Purpose

HERE = f"{SELF}/{Purpose.ECARD}"
router = APIRouter(prefix=HERE, include_in_schema=False)


def _view(s: Session, rs: rsv.ResidentSignedIn) -> dict[str, Any]:
    live = rsv.own_ecard(s, rs)
    if live is None:
        return {"holder": None}
    card = s.get(Card, live.card_id)
    assert card is not None
    return {
        **ecard_view(s, live.public_id),
        "lost_provisional": card.status == CardStatus.LOST_PROVISIONAL,
        "authorised": ecard.loss_authorised(s, live, card),
    }


def _seconds_left(expires_at: datetime) -> int:
    return max(1, int((expires_at - utcnow()).total_seconds()) + 1)


async def _page(
    request: Request, rs: rsv.ResidentSignedIn, status: int = 200, **values: Any
) -> Response:
    view = await tx(request, lambda s: _view(s, rs))
    return render(
        request, "resident/ecard.html", None, status, rs=rs, here=f"{HERE}/go",
        code_url=f"{HERE}/go/code.png", period=ctx_of(request).settings.ecard.code_seconds,
        reload_after=_seconds_left(rs.expires_at), **view, **values,
    )  # fmt: skip


@router.get("/go")
async def ecard_page(request: Request) -> Response:
    rs = await resident_of(request, Purpose.ECARD)
    if rs is None:
        return RedirectResponse(HERE, status_code=303)
    return await _page(request, rs, problems=[], done=None)


@router.get("/go/code.png")
async def ecard_code(request: Request) -> Response:
    rs = await resident_of(request, Purpose.ECARD)
    live = None if rs is None else await tx(request, lambda s: rsv.own_ecard(s, rs))
    if rs is None or live is None:
        return Response("no e-card session", 404, media_type="text/plain",
                        headers={"Cache-Control": "no-store"})  # fmt: skip
    return await code_png(request, live.public_id, rs.actor)


@router.post("/go/authorise")
async def authorise(request: Request) -> Response:
    rs = await resident_of(request, Purpose.ECARD)
    if rs is None:
        return RedirectResponse(HERE, status_code=303)
    data = await request.form()
    if not rsv.csrf_ok(rs, field(data, "csrf")):
        return render(request, "resident/refused.html", None, 403, here=SELF)
    withdraw = field(data, "withdraw", 5) == "1"
    problems: list[Problem] = []
    try:
        await tx(request, lambda s: rsv.authorise_ecard(s, rs, withdraw=withdraw))
    except IssuanceError as exc:
        problems = problems_of(exc)
        return await _page(request, rs, 409, problems=problems, done=None)
    return await _page(request, rs, problems=[], done="withdrawn" if withdraw else "authorised")
