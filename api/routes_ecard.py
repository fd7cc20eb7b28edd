"""Routes: the electronic card (issue 21; :mod:`issuance.services.ecard`).

* ``POST /v1/ecard/verifications`` (scope ``ecard:verify``): an agency's online check of a
  scanned code; holder data with ``holder:read`` / ``holder:photo`` / ``holder:full_id``, as
  for the chip verification. Audited ``ecard.verified`` (the call's record).
* Staff at a counter (scope ``ecard:manage``): issue an e-card (``POST /v1/ecards``), make a
  code (``POST /v1/ecards/{ecard_id}/codes``, JSON, PNG or SVG), record the holder's
  authorisation during a provisional loss, hand out the signed link to the e-card page.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import ctx_of, need, require_extra
from api.calllog import mark_recorded
from api.calls import actor_for, domain
from api.errors import responses
from api.routes_verify import public_key_pem
from api.schemas import CardNumber, UtcDatetime
from hsm.service import KeyService
from issuance import services
from issuance.models import Channel
from issuance.services import ecard
from issuance.services.credentials import Principal

router = APIRouter(prefix="/v1", tags=["e-card"])
_ERR = responses(400, 401, 403, 404, 409, 422, 429)
EcardId = Annotated[str, Path(pattern=r"^[0-9a-fA-F]{32}$", description="the e-card's id")]
Proof = Literal["counter_identity_check", "resident_otp"]


class _In(BaseModel):
    """A request body: unknown fields refused (as :mod:`api.schemas`' bodies)."""

    model_config = ConfigDict(extra="forbid")


class EcardVerificationIn(_In):
    code: str = Field(min_length=1, max_length=1024, description="the scanned QR code's text")
    include_holder: StrictBool = Field(False, description="needs scope holder:read")
    include_photo: StrictBool = Field(False, description="needs scope holder:photo")


class EcardHolderOut(BaseModel):
    name: str
    citizen_id: str = Field(description="masked unless the caller holds holder:full_id")
    sex: str
    birth_date: str


class EcardVerificationOut(BaseModel):
    valid: bool
    reason: str | None = Field(
        None, description="code_malformed, unknown_key, not_genuine, code_expired, "
        "code_not_yet_valid, code_reused, unknown_ecard, or the card's: lost, suspended, "
        "cancelled, replaced, expired, damaged, not_activated, not_issued",
    )  # fmt: skip
    ecard_id: str | None = None
    card_number: str | None = None
    card_status: str | None = None
    loss_authorised: bool = Field(
        False, description="valid while the card is provisionally lost: the holder authorised it"
    )
    code_expires_at: UtcDatetime | None = None
    holder: EcardHolderOut | None = None
    photo_jpeg_base64: str | None = None


class EcardIssueIn(_In):
    card_number: CardNumber
    proof: Proof = Field("counter_identity_check", description="how the person was identified")


class EcardOut(BaseModel):
    ecard_id: str
    card_number: str
    card_status: str
    issued_at: UtcDatetime
    proof: str
    loss_authorised: bool
    ended_at: UtcDatetime | None = None
    end_reason: str | None = None


class CodeOut(BaseModel):
    code: str = Field(description="the QR code's text (YKTEC1: + base45 COSE_Sign1)")
    issued_at: UtcDatetime
    expires_at: UtcDatetime
    period_seconds: int


class LossAuthorisationIn(_In):
    proof: Proof = "counter_identity_check"
    withdraw: StrictBool = Field(False, description="take the authorisation back")


class LinkOut(BaseModel):
    path: str = Field(description="the e-card page, opened by this signed link until expires_at")
    expires_at: UtcDatetime


def _sign(service: KeyService, message: bytes) -> bytes:
    return service.sign(message)


def _out(s: Session, e: ecard.Ecard) -> EcardOut:
    card = services.find_card(s, card_id=e.card_id)
    return EcardOut(
        ecard_id=e.public_id, card_number=card.card_number, card_status=str(card.status),
        issued_at=e.issued_at, proof=e.proof,
        loss_authorised=e.ended_at is None and ecard.loss_authorised(s, e, card),
        ended_at=e.ended_at, end_reason=e.end_reason,
    )  # fmt: skip


@router.post(
    "/ecard/verifications",
    response_model=EcardVerificationOut,
    response_model_exclude_none=True,
    responses=responses(400, 401, 403, 422, 429, 503),
)
async def verify_code(
    body: EcardVerificationIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("ecard:verify"))],
) -> EcardVerificationOut:
    """Verify a scanned e-card code: the issuer's signature, its expiry, its nonce used once
    (a replayed code is refused), the card's status now (a provisionally lost card's codes
    only with the holder's authorisation). Holder identity and photo for callers with
    ``holder:read`` / ``holder:photo`` who ask for them."""
    if body.include_holder:
        await require_extra(request, principal, "holder:read")
    if body.include_photo:
        await require_extra(request, principal, "holder:photo")
    ctx = ctx_of(request)
    pem = await public_key_pem(ctx)

    def work() -> ecard.EcardVerdict:
        with ctx.tx() as s:
            return ecard.verify_code(
                s, text=body.code, public_pem=pem, actor=principal.actor,
                with_holder=body.include_holder,
                full_citizen_id="holder:full_id" in principal.scopes,
                with_photo=body.include_photo,
            )  # fmt: skip

    v = await run_in_threadpool(work)
    mark_recorded(request.scope)  # the ecard.verified audit event is this call's record
    holder = None
    if v.holder is not None:
        h = v.holder
        holder = EcardHolderOut(name=h.name, citizen_id=h.citizen_id, sex=h.sex,
                                birth_date=h.birth_date.isoformat())  # fmt: skip
    return EcardVerificationOut(
        valid=v.valid, reason=v.reason, ecard_id=v.ecard_id, card_number=v.card_number,
        card_status=v.card_status, loss_authorised=v.loss_authorised,
        code_expires_at=v.code_expires_at, holder=holder,
        photo_jpeg_base64=None if v.photo_jpeg is None
        else base64.b64encode(v.photo_jpeg).decode("ascii"),
    )  # fmt: skip


@router.post("/ecards", response_model=EcardOut, status_code=201, responses=_ERR)
async def issue(
    body: EcardIssueIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("ecard:manage"))],
) -> EcardOut:
    """Issue an e-card bound to an active card and its holder, the holder identified at the
    counter (``proof``)."""
    actor = await actor_for(request, principal, Channel.COUNTER)
    settings = ctx_of(request).settings

    def fn(s: Session) -> EcardOut:
        card = services.find_card(s, card_number=body.card_number)
        return _out(s, ecard.issue_ecard(s, settings, card.id, actor, body.proof))

    return await domain(request, principal, fn)


@router.get("/ecards/{ecard_id}", response_model=EcardOut, responses=_ERR)
async def show(
    ecard_id: EcardId,
    request: Request,
    principal: Annotated[Principal, Depends(need("ecard:manage"))],
) -> EcardOut:
    """An e-card: its card, whether it is live, the holder's authorisation during a loss."""
    return await domain(request, principal, lambda s: _out(s, ecard.find_ecard(s, ecard_id)))


@router.post(
    "/ecards/{ecard_id}/codes",
    response_model=CodeOut,
    responses={**_ERR, 200: {"content": {"image/png": {}, "image/svg+xml": {}}}},
)
async def code(
    ecard_id: EcardId,
    request: Request,
    principal: Annotated[Principal, Depends(need("ecard:manage"))],
    format: Annotated[Literal["json", "png", "svg"], Query()] = "json",
) -> Response:
    """A fresh signed code of the e-card (refused while its codes would be refused): as
    JSON, or the QR code as PNG or SVG."""
    ctx = ctx_of(request)
    pem = await public_key_pem(ctx)
    actor = principal.actor

    def fn(s: Session) -> ecard.IssuedCode:
        sign = lambda m: ctx.hsm.call(_sign, m)  # noqa: E731
        return ecard.make_code(s, ctx.settings, ecard_id, pem, sign, actor)

    c = await domain(request, principal, fn)
    headers = {"Cache-Control": "no-store"}
    if format == "png":
        return Response(ecard.render_png(c.text), media_type="image/png", headers=headers)
    if format == "svg":
        return Response(ecard.render_svg(c.text), media_type="image/svg+xml", headers=headers)
    body = CodeOut(code=c.text, issued_at=c.issued_at, expires_at=c.expires_at,
                   period_seconds=c.period_seconds)  # fmt: skip
    return Response(body.model_dump_json(), media_type="application/json", headers=headers)


@router.post("/ecards/{ecard_id}/loss-authorisation", response_model=EcardOut, responses=_ERR)
async def loss_authorisation(
    ecard_id: EcardId,
    body: LossAuthorisationIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("ecard:manage"))],
) -> EcardOut:
    """Record the holder's authorisation of the e-card during the card's provisional loss
    (or take it back): without it the codes of a provisionally lost card are refused."""
    actor = await actor_for(request, principal, Channel.COUNTER)

    def fn(s: Session) -> EcardOut:
        e = ecard.authorise_during_loss(s, ecard_id, actor, body.proof, withdraw=body.withdraw)
        return _out(s, e)

    return await domain(request, principal, fn)


@router.post("/ecards/{ecard_id}/links", response_model=LinkOut, responses=_ERR)
async def link(
    ecard_id: EcardId,
    request: Request,
    principal: Annotated[Principal, Depends(need("ecard:manage"))],
) -> LinkOut:
    """A signed link to the e-card's page (the refreshing code), valid ``[ecard]
    link_minutes``: what a counter clerk hands the resident."""
    ctx = ctx_of(request)
    pem = await public_key_pem(ctx)
    actor = principal.actor

    def fn(s: Session) -> LinkOut:
        sign = lambda m: ctx.hsm.call(_sign, m)  # noqa: E731
        token, expires = ecard.hand_out_link(s, ctx.settings, ecard_id, actor, pem, sign)
        return LinkOut(path=f"/console/ecard/r/{token}", expires_at=expires)

    return await domain(request, principal, fn)
