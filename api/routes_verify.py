"""Routes: token, hello/health, card verification, the signed status feed."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.concurrency import run_in_threadpool

from api.auth import SOURCE_FACTOR, auth_of, ctx_of, need, require_extra, source_key
from api.calllog import CLIENT_ID, mark_recorded, state_of
from api.context import ApiContext
from api.errors import ApiError, responses
from api.schemas import (
    ChallengeOut,
    Hello,
    PublicKeyOut,
    TokenOut,
    VerificationIn,
    VerificationOut,
)
from hsm.internal_auth import check_chip_sm2, check_internal_auth
from hsm.ports import public_key_sha256
from hsm.service import CardKeyRef, KeyService
from issuance import audit
from issuance.errors import PermissionDenied, ValidationError
from issuance.services import credentials, status_feed, verification
from issuance.services.credentials import Principal

router = APIRouter()
_basic = HTTPBasic(auto_error=False)


@router.get("/healthz", response_model=Hello, tags=["service"])
async def healthz() -> Hello:
    """Liveness (no authentication)."""
    return Hello(hello="ok")


@router.get("/v1/hello", response_model=Hello, tags=["service"])
async def hello() -> Hello:
    """Hello world: the baseline the benchmark compares verification throughput with."""
    return Hello(hello="world")


@router.post(
    "/v1/oauth/token",
    response_model=TokenOut,
    tags=["auth"],
    responses=responses(400, 401, 422, 429),
)
async def token(
    request: Request,
    grant_type: Annotated[str, Form(max_length=40)],
    client_id: Annotated[str | None, Form(max_length=64)] = None,
    client_secret: Annotated[str | None, Form(max_length=200)] = None,
    scope: Annotated[str | None, Form(max_length=500)] = None,
    basic: Annotated[HTTPBasicCredentials | None, Depends(_basic)] = None,
) -> TokenOut:
    """OAuth 2.0 client-credentials grant (RFC 6749 §4.4); client authentication by form
    fields or HTTP Basic. Secrets are checked against their scrypt hash."""
    if grant_type != "client_credentials":
        raise ApiError(  # RFC 6749 5.2
            400, "unsupported_grant_type", "only client_credentials", field="grant_type"
        )
    cid = basic.username if basic is not None else client_id
    secret = basic.password if basic is not None else client_secret
    if cid:
        state_of(request.scope)[CLIENT_ID] = cid[:64]  # the call log's caller
    if not cid or not secret:
        raise ApiError(401, "invalid_client", "client_id and client_secret are required")
    ctx = ctx_of(request)
    limiter = auth_of(request).limiter
    ip = source_key(request)
    pair = f"client:{cid}@{ip}"  # never the client alone: see api.auth.FailureLimiter
    await limiter.check(pair)
    await limiter.check(ip, limit=limiter.per_minute * SOURCE_FACTOR)
    wanted = scope.split() if scope else None

    def work() -> credentials.IssuedToken:
        with ctx.tx() as session:
            return credentials.issue_token(session, cid, secret, wanted)

    try:
        issued = await run_in_threadpool(work)
    except PermissionDenied as exc:
        code = str(exc.details.get("reason", "invalid_client"))
        if code == "invalid_client":
            await limiter.fail(ip, pair)
            raise ApiError(401, code, exc.message) from exc
        raise ApiError(400, code, exc.message, field="scope") from exc  # RFC 6749 5.2
    return TokenOut(
        access_token=issued.access_token,
        expires_in=issued.expires_in,
        scope=" ".join(issued.scopes),
    )


@router.post(
    "/v1/verifications/challenge",
    response_model=ChallengeOut,
    tags=["verification"],
    responses=responses(400, 401, 403, 429),
)
async def challenge(
    request: Request, principal: Annotated[Principal, Depends(need("verify"))]
) -> Response:
    """A fresh single-use challenge for the card's INTERNAL AUTHENTICATE (short expiry)."""
    return json_bytes_response(await issue_challenge(ctx_of(request), principal))


async def issue_challenge(ctx: ApiContext, principal: Principal) -> bytes:
    """The challenge call's answer (JSON): shared by the route above and the hot path
    (:mod:`api.hotpath`)."""
    ttl = ctx.settings.api.challenge_ttl_seconds
    codec = await ctx.challenge_codec()
    ch = codec.issue(principal.credential_id, ttl)  # stateless: nothing is written
    return challenge_json(ch)


def challenge_json(ch: verification.Challenge) -> bytes:
    """:class:`ChallengeOut` as JSON, as pydantic serialises it (a Hypothesis test holds them
    equal): every field is hex or a timestamp, nothing to escape, so the bytes are formatted
    directly (one ``%`` instead of a dict through ``json.dumps``)."""
    hexed = ch.challenge.hex().encode()
    d = ch.expires_at
    return _CHALLENGE_JSON % (
        ch.id.encode(), hexed, hexed.upper(), d.year, d.month, d.day, d.hour, d.minute, d.second,
    )  # fmt: skip


_CHALLENGE_JSON = (
    b'{"challenge_id":"%s","challenge":"%s","apdu":"0088000010%s00",'
    b'"expires_at":"%04d-%02d-%02dT%02d:%02d:%02dZ"}'
)


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def json_bytes_response(body: bytes) -> Response:
    """A JSON answer built by the handler, without FastAPI validating it a second time
    against the route's ``response_model`` (which stays the documented schema: the handler
    builds that model)."""
    return Response(body, media_type="application/json")


@router.post(
    "/v1/verifications",
    response_model=VerificationOut,
    response_model_exclude_none=True,
    tags=["verification"],
    responses=responses(400, 401, 403, 422, 429, 503),
)
async def verify(
    body: VerificationIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("verify"))],
) -> Response:
    """Verify a card: consume the challenge (a replay is refused), check the cryptogram in the
    HSM, the card's and the application's status. Holder identity and photo are included for
    callers with ``holder:read`` / ``holder:photo`` who ask for them."""
    if body.include_holder:
        await require_extra(request, principal, "holder:read")
    if body.include_photo:
        await require_extra(request, principal, "holder:photo")
    answer = await run_verification(ctx_of(request), principal, body)
    mark_recorded(request.scope)  # the card.verified audit event is this call's record
    return json_bytes_response(answer)


async def run_verification(
    ctx: ApiContext, principal: Principal, body: VerificationIn, epoch: int | None = None
) -> bytes:
    """The verification's answer (JSON), its audit event committed with the challenge's
    consumption: shared by the route above and the hot path (:mod:`api.hotpath`). The caller
    has checked the scopes ``include_holder`` / ``include_photo`` need.

    ``epoch`` (PostgreSQL only): the authentication epoch ``principal``'s cached token was
    resolved at, not checked yet: the verification's first statement checks it
    (:class:`issuance.services.verification.StaleEpoch` if it moved on: nothing written)."""
    response = bytes.fromhex(body.response)
    full_id = "holder:full_id" in principal.scopes
    hsm = ctx.hsm
    codec = await ctx.challenge_codec()

    second = (
        (bytes.fromhex(body.sm2_card_certificate), bytes.fromhex(body.sm2_signature))
        if body.sm2_card_certificate is not None and body.sm2_signature is not None
        else None
    )

    def check(ref: CardKeyRef, factor: bytes, rnd: bytes, resp: bytes) -> None:
        hsm.call(check_internal_auth, ref, factor, rnd, resp)
        if second is not None:
            hsm.call(check_chip_sm2, ref, factor + rnd, *second)

    def work() -> verification.Verdict:
        with ctx.tx() as session:
            return verification.verify_card(
                session, challenge_id=body.challenge_id.lower(),
                credential_id=principal.credential_id,
                card_identification_code=body.card_identification_code,
                card_number=body.card_number, response=response, application=body.application,
                check=check, actor=principal.actor, codec=codec,
                with_holder=body.include_holder, full_citizen_id=full_id,
                with_photo=body.include_photo,
            )  # fmt: skip

    if ctx.verifications is None:
        if epoch is not None:  # only the asyncio store checks an epoch
            raise RuntimeError("an epoch to check needs the PostgreSQL store")
        v = await run_in_threadpool(work)
    else:

        async def check_async(ref: CardKeyRef, factor: bytes, rnd: bytes, resp: bytes) -> None:
            await hsm.run_short(check_internal_auth, ref, factor, rnd, resp)
            if second is not None:
                await hsm.run(check_chip_sm2, ref, factor + rnd, *second)

        async def slow_path() -> verification.Verdict:
            return await run_in_threadpool(work)

        v = await verification.verify_card_async(
            ctx.verifications, challenge_id=body.challenge_id.lower(),
            credential_id=principal.credential_id,
            card_identification_code=body.card_identification_code,
            card_number=body.card_number, response=response, application=body.application,
            check=check_async, actor=principal.actor, codec=codec, slow_path=slow_path,
            with_holder=body.include_holder, full_citizen_id=full_id,
            with_photo=body.include_photo, epoch=epoch,
        )  # fmt: skip
    return verification_json(v)


def verification_json(v: verification.Verdict) -> bytes:
    """:class:`VerificationOut` of the verdict without its None fields, as pydantic serialises
    it (a test holds them equal)."""
    out: dict[str, Any] = {"valid": v.valid}
    if v.reason is not None:
        out["reason"] = str(v.reason)
    out["application"] = str(v.application)
    for key, value in (
        ("card_number", v.card_number),
        ("card_identification_code", v.card_identification_code),
        ("card_kind", v.card_kind),
        ("card_status", v.card_status),
        ("application_status", v.application_status),
        ("expiry_date", None if v.expiry_date is None else v.expiry_date.isoformat()),
    ):
        if value is not None:
            out[key] = value
    if v.holder is not None:
        out["holder"] = {
            "name": v.holder.name,
            "citizen_id": v.holder.citizen_id,
            "sex": v.holder.sex,
            "birth_date": v.holder.birth_date.isoformat(),
        }
    if v.photo_jpeg is not None:
        out["photo_jpeg_base64"] = base64.b64encode(v.photo_jpeg).decode("ascii")
    return _json(out)


def _public_key(service: KeyService) -> bytes:
    return service.public_key_pem()


def _sign(service: KeyService, message: bytes) -> bytes:
    return service.sign(message)


async def public_key_pem(ctx: ApiContext) -> bytes:
    if ctx.public_key_pem is None:
        ctx.public_key_pem = await ctx.hsm.run(_public_key)
    return ctx.public_key_pem


@router.get(
    "/v1/status-feed/public-key",
    response_model=PublicKeyOut,
    tags=["status feed"],
    responses=responses(503),
)
async def feed_public_key(request: Request) -> PublicKeyOut:
    """The public key that verifies the status feed's signature (no authentication)."""
    pem = await public_key_pem(ctx_of(request))
    return PublicKeyOut(public_key_pem=pem.decode("ascii"), key_id=public_key_sha256(pem).hex())


_FEED_DOC = {
    200: {
        "description": "NDJSON: a header line, one line per card, a signed trailer line "
        "(format yikatong-status-feed/1)",
        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
    }
}


@router.get(
    "/v1/status-feed",
    tags=["status feed"],
    response_class=StreamingResponse,
    responses={**_FEED_DOC, **responses(400, 401, 403, 422, 429, 503)},  # type: ignore[dict-item]
)
async def feed(
    request: Request,
    principal: Annotated[Principal, Depends(need("feed:read"))],
    since: Annotated[
        int | None,
        Query(ge=0, le=2**62, description="give the previous trailer's sequence for a delta"),
    ] = None,
) -> StreamingResponse:
    """Cards terminals must refuse, signed with the HSM signing key: the full list, or the
    changes since a sequence number. Streamed: bounded memory for any number of cards."""
    ctx = ctx_of(request)
    await public_key_pem(ctx)  # fail early (503) if the HSM is not there
    session = ctx.sessions()

    def start() -> tuple[status_feed.FeedWriter, Iterator[list[dict[str, Any]]]]:
        top = status_feed.high_water(session)
        if since is not None and since > top:
            raise ValidationError(
                "since is ahead of the feed",
                [status_feed_problem(f"the feed's sequence is {top}")],
            )
        kind = "full" if since is None else "delta"
        writer = status_feed.FeedWriter(kind, since, top)
        rows = (
            status_feed.iter_full(session)
            if since is None
            else status_feed.iter_delta(session, since, top)
        )
        with ctx.tx() as s2:
            audit.record(
                s2, principal.actor, "api.status_feed", "status_feed", kind,
                details={"client_id": principal.client_id, "since": since, "sequence": top},
            )  # fmt: skip
        return writer, status_feed.chunks(rows)

    try:
        writer, pages = await run_in_threadpool(start)
    except BaseException:
        await run_in_threadpool(session.close)
        raise

    def next_page() -> bytes | None:
        page = next(pages, None)
        return None if page is None else writer.entries(page)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield writer.header()
            while (data := await run_in_threadpool(next_page)) is not None:
                yield data
            signature = await ctx.hsm.run(_sign, writer.message())
            yield writer.trailer(signature)
        finally:
            await run_in_threadpool(session.close)

    return StreamingResponse(body(), media_type="application/x-ndjson")


def status_feed_problem(reason: str) -> Any:
    from issuance.errors import FieldProblem

    return FieldProblem("since", reason)
