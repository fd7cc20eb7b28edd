"""The e-card page (issue 21): the resident's refreshing, signed QR code.

The resident opens it themselves with a one-time code (:mod:`console.pages.ecardres`, which
reuses :func:`ecard_view`, :func:`code_png` and the template ``ecard/_code.html``); a counter
can also hand out a **signed link** (``ykt ecard link`` / ``POST
/v1/ecards/{ecard_id}/links``): ``/console/ecard/r/<token>``, the token a COSE_Sign1 by the
issuer's key naming the e-card and an expiry (``[ecard] link_minutes``;
:func:`issuance.services.ecard_token.encode_link`). Whoever holds the link sees the codes until
it expires: it is handed to the resident only. Signed-in counter staff (scope
``ecard:manage``) see the same page at ``/console/ecard/s/<ecard_id>``.

The page loads ``ecard.js`` (no inline script: CSP), which fetches a fresh PNG every
``[ecard] code_seconds``; each PNG is a new code made and signed in the HSM
(:func:`issuance.services.ecard.make_code`, audited ``ecard.code``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from console.common import PREFIX, ctx_of, page, render, tx
from console.sessions import SignedIn
from issuance.audit import Actor
from issuance.errors import IssuanceError, NotFound, TransitionError
from issuance.models import Card, Channel, StaffRole
from issuance.services import ecard, ecard_token

router = APIRouter(prefix=PREFIX, include_in_schema=False)
#: Who makes the codes the resident's link opens (audited as such)
LINK_ACTOR = Actor("ecard-link", StaffRole.SYSTEM, Channel.WEB)


def _public_key(service: Any) -> bytes:
    return bytes(service.public_key_pem())


def _sign(service: Any, message: bytes) -> bytes:
    return bytes(service.sign(message))


def _link_ecard(request: Request, token: str) -> str | None:
    """The e-card id the signed link opens, None when it is not genuine or has expired."""
    pem = ctx_of(request).hsm.call(_public_key)
    now = int(datetime.now(UTC).timestamp())
    opened = ecard_token.open_link(token, pem, now)
    return None if opened is None else opened.hex()


def ecard_view(s: Session, public_id: str) -> dict[str, Any]:
    """What the e-card page shows of the e-card (``ecard/_code.html``); raise NotFound."""
    e = ecard.find_ecard(s, public_id)
    card = s.get(Card, e.card_id)
    assert card is not None
    return {
        "holder": card.person.name,
        "card_tail": card.card_number[-4:],
        "ended": e.ended_at is not None,
        "refused": ecard.code_refusal(s, e),
        "card_status": str(card.status),
    }


async def _page(request: Request, user: SignedIn | None, public_id: str, code_url: str) -> Response:
    try:
        view = await tx(request, lambda s: ecard_view(s, public_id))
    except NotFound:
        return render(request, "ecard/gone.html", user, 404)
    period = ctx_of(request).settings.ecard.code_seconds
    return render(request, "ecard/code.html", user, code_url=code_url, period=period, **view)


async def code_png(request: Request, public_id: str, actor: Actor) -> Response:
    """A fresh code of the e-card as PNG, made by ``actor``; 409 with the reason when its
    codes are refused now."""
    ctx = ctx_of(request)

    def work() -> bytes:
        pem = ctx.hsm.call(_public_key)
        with ctx.tx() as s:
            issued = ecard.make_code(
                s, ctx.settings, public_id, pem, lambda m: ctx.hsm.call(_sign, m), actor
            )
        return ecard.render_png(issued.text)

    headers = {"Cache-Control": "no-store"}
    try:
        png = await run_in_threadpool(work)
    except (TransitionError, NotFound) as exc:
        return Response(str(exc.details.get("reason", "refused")), 409, headers=headers,
                        media_type="text/plain")  # fmt: skip
    except IssuanceError:
        return Response("refused", 409, headers=headers, media_type="text/plain")
    return Response(png, media_type="image/png", headers=headers)


@router.get("/ecard/r/{token}")
async def resident_page(request: Request, token: str) -> Response:
    """The resident's e-card page, opened by the signed link."""
    public_id = await run_in_threadpool(_link_ecard, request, token)
    if public_id is None:
        return render(request, "ecard/gone.html", None, 404)
    return await _page(request, None, public_id, f"{PREFIX}/ecard/r/{token}/code.png")


@router.get("/ecard/r/{token}/code.png")
async def resident_code(request: Request, token: str) -> Response:
    """A fresh code as PNG (the page fetches one every period)."""
    public_id = await run_in_threadpool(_link_ecard, request, token)
    if public_id is None:
        return Response("link expired", 404, media_type="text/plain")
    return await code_png(request, public_id, LINK_ACTOR)


@router.get("/ecard/s/{public_id}")
@page("ecard:manage")
async def staff_page(request: Request, user: SignedIn) -> Response:
    """The same page for signed-in counter staff."""
    public_id = str(request.path_params["public_id"])[:32]
    return await _page(request, user, public_id, f"{PREFIX}/ecard/s/{public_id}/code.png")


@router.get("/ecard/s/{public_id}/code.png")
@page("ecard:manage")
async def staff_code(request: Request, user: SignedIn) -> Response:
    public_id = str(request.path_params["public_id"])[:32]
    return await code_png(request, public_id, user.actor)
