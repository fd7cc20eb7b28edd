"""The two verification calls as plain ASGI handlers in front of FastAPI (the hot path).

Design notes: ``docs/design/api.md`` (section ``api.hotpath``).
"""

from __future__ import annotations

import time

from pydantic import ValidationError as PydanticValidationError
from starlette.requests import Request

from api.auth import Authenticator
from api.calllog import (
    ERROR_CODE,
    PRINCIPAL,
    CallRecorder,
    Message,
    Receive,
    Scope,
    Send,
    log_call,
    mark_recorded,
    state_of,
)
from api.context import ApiContext
from api.errors import map_exception
from api.routes_verify import issue_challenge, run_verification
from api.schemas import VerificationIn
from api.tls import subject_matches
from issuance.services.credentials import Principal
from issuance.services.verification import StaleEpoch

CHALLENGE_PATH = "/v1/verifications/challenge"
VERIFY_PATH = "/v1/verifications"
#: Larger verification bodies go to FastAPI (a valid one is about 200 bytes).
MAX_BODY = 4096
_JSON_HEADERS = [(b"content-type", b"application/json")]


class HotPath:
    """``await hot(scope, receive, send)``: None if the call was answered here, else the
    ``receive`` FastAPI must be called with (see the module docstring)."""

    def __init__(self, ctx: ApiContext, auth: Authenticator, recorder: CallRecorder) -> None:
        self.ctx = ctx
        self.auth = auth
        self.recorder = recorder
        #: False: every call goes to FastAPI (tests compare both paths)
        self.enabled = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        path = scope["path"]
        if (
            not self.enabled
            or scope["method"] != "POST"
            or path not in (CHALLENGE_PATH, VERIFY_PATH)
            or scope.get("root_path")
        ):
            return receive
        started = time.perf_counter()
        route = CHALLENGE_PATH if path == CHALLENGE_PATH else VERIFY_PATH
        if self.recorder.checks_epoch:
            # a token resolved before: its epoch is checked by the call's first statement -
            # the challenge call's record, the verification's card read - instead of a read
            # of its own; if it moved on, nothing was written or answered
            held = await self._principal(scope, read_epoch=False)
            if held is not None:
                if path == CHALLENGE_PATH:
                    if await self._challenge(scope, send, *held, started):
                        return None
                else:
                    rest = await self._verify(scope, receive, send, *held, started)
                    if rest is None:
                        return None
                    # stale, or not the common case: FastAPI checks the token again (the
                    # gate, as no caller is known) and reads the body from ``rest``
                    state_of(scope).pop(PRINCIPAL, None)
                    return rest
            state_of(scope).pop(PRINCIPAL, None)  # then checked the ordinary way
        try:
            got = await self._principal(scope)
        except Exception as exc:  # no or a bad token, or no database: what FastAPI would say
            await self._error(scope, send, exc, started, route)
            return None
        if got is None:
            return receive
        if path == CHALLENGE_PATH:
            await self._challenge(scope, send, got[0], None, started)
            return None
        return await self._verify(scope, receive, send, got[0], None, started)

    async def _principal(
        self, scope: Scope, read_epoch: bool = True
    ) -> tuple[Principal, int | None] | None:
        """The caller if the common case holds, None if FastAPI must decide; raises the
        authentication's :class:`ApiError` (401, 429) like the routes' dependency.

        ``read_epoch`` False: only a token this process resolved before
        (:meth:`Authenticator.resolved`), with the epoch it was resolved at, which the caller
        must check before it writes or answers anything, and must forget
        (``state[PRINCIPAL]``) if it hands the call on; None if there is none (nothing is
        read)."""
        header = content = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
            elif name == b"content-type":
                content = value
        if content not in (None, b"application/json"):
            return None
        principal = epoch = None
        if header is not None:
            scheme, _, token = header.partition(b" ")
            if scheme.lower() == b"bearer":
                key = token.strip().decode("latin-1")
                if read_epoch:
                    principal = await self.auth.cached(key)
                elif (hit := self.auth.resolved(key)) is not None:
                    principal, epoch = hit
        if principal is None:  # resolved (or refused) as the routes do; cached from now on
            if not read_epoch:
                return None
            principal = await self.auth.principal(Request(scope))
        elif principal.cert_subject is not None and not subject_matches(
            scope, principal.cert_subject
        ):
            return None
        if "verify" not in principal.scopes or self.auth.held(principal):
            return None  # the route refuses it (403 audited, 429)
        state_of(scope)[PRINCIPAL] = principal  # the call log's caller
        return principal, epoch

    async def _challenge(
        self, scope: Scope, send: Send, principal: Principal, epoch: int | None, started: float
    ) -> bool:
        """Answer the challenge call; with ``epoch`` (the cached token's, not checked yet)
        only if the call's record was written at that epoch: False if nothing was answered
        (the token is then checked the ordinary way)."""
        try:
            body = await issue_challenge(self.ctx, principal)
        except Exception as exc:
            if epoch is not None:
                return False  # the ordinary way says it once the token is checked
            await self._error(scope, send, exc, started, CHALLENGE_PATH)
            return True
        if not await log_call(self.recorder, scope, 200, started, CHALLENGE_PATH, epoch):
            return False
        await _answer(send, 200, body)
        return True

    async def _verify(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        principal: Principal,
        epoch: int | None,
        started: float,
    ) -> Receive | None:
        """Answer the verification call (None), or hand it on: the ``receive`` FastAPI must
        read the body from. With ``epoch`` (the cached token's, not checked yet) the card read
        checks it: if it moved on, nothing was written or answered and the call is handed on
        (the caller then checks the token the ordinary way)."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = bool(message.get("more_body", False))
            if size > MAX_BODY:
                break
        raw = b"".join(chunks)
        replay = _Replay(raw, more, receive)
        if more:
            return replay
        try:
            body = VerificationIn.model_validate_json(raw)
        except PydanticValidationError:
            return replay
        if (body.include_holder and "holder:read" not in principal.scopes) or (
            body.include_photo and "holder:photo" not in principal.scopes
        ):
            return replay
        try:
            answer = await run_verification(self.ctx, principal, body, epoch)
        except StaleEpoch:
            return replay
        except Exception as exc:
            await self._error(scope, send, exc, started, VERIFY_PATH)
            return None
        mark_recorded(scope)  # the card.verified audit event is this call's record
        await _answer(send, 200, answer)
        return None

    async def _error(
        self, scope: Scope, send: Send, exc: Exception, started: float, route: str
    ) -> None:
        response = map_exception(exc)
        state_of(scope)[ERROR_CODE] = response.code
        await log_call(self.recorder, scope, response.status_code, started, route)
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": headers})  # fmt: skip
        await send({"type": "http.response.body", "body": response.body})


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Replay:
    """A ``receive`` that first gives back the body already read, then the client's."""

    def __init__(self, body: bytes, more: bool, receive: Receive) -> None:
        self._first: Message | None = {"type": "http.request", "body": body, "more_body": more}
        self._receive = receive

    async def __call__(self) -> Message:
        first, self._first = self._first, None
        if first is not None:
            return first
        return await self._receive()
