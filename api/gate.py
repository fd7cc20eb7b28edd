"""The gate in front of FastAPI: authenticate before any body is read, cap bodies per route,
bound the nesting of JSON bodies.

FastAPI reads and parses a route's body before it solves the route's dependencies (where
:class:`api.auth.need` authenticates), so an anonymous caller could make every worker read
and parse megabytes of JSON before its 401. :class:`Gate` runs first, as plain ASGI:

* a request that carries a body (a ``Content-Length`` above zero, or chunked) to any route
  but the open ones (:data:`OPEN_PATHS`: the token endpoint authenticates by its own form)
  is authenticated first (:meth:`api.auth.Authenticator.principal`, the routes' own check,
  with the same answers); the caller is kept in the call log's state, where :class:`need`
  takes it from instead of resolving it twice;
* a body larger than its route's cap (``[api] body_limits``; :func:`body_cap`) is answered
  413 ``payload_too_large`` in the project's error shape: at once when ``Content-Length``
  says so, otherwise as soon as the bytes read pass the cap (nothing more is read);
* a JSON body nested deeper than ``[api] max_json_depth`` is answered 400 ``bad_request``
  before any parser sees it;
* a request target (path and query) longer than :data:`MAX_TARGET` is answered 414
  ``uri_too_long``. What the HTTP parser itself cannot read (a malformed request line or
  header) never reaches the app: ``ykt serve``'s protocol answers it in the same error shape
  (:class:`api.tls.ShapedHttpToolsProtocol`).

The verification hot path (:mod:`api.hotpath`) applies the same rules to its two calls: it
authenticates before reading, reads at most :data:`api.hotpath.MAX_BODY` bytes itself, and
hands anything else over to this gate with the body replayed.
"""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.exceptions import HTTPException
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
    state_of,
)
from api.errors import map_exception, route_of

#: Longest request target (path and query) answered (414 beyond; no route needs more).
MAX_TARGET = 8192
#: Routes that take a body without a bearer token.
OPEN_PATHS = frozenset({"/v1/oauth/token"})
#: Paths under this prefix are the API (bearer tokens); others (the console) are not.
API_PREFIX = "/v1/"
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def body_cap(limits: dict[str, int], path: str) -> int:
    """The body cap of ``path``: the first pattern of ``limits`` (other than ``default``) that
    matches it segment by segment ("*" matches any one segment), else ``default``."""
    parts = path.rstrip("/").split("/")
    for pattern, cap in limits.items():
        if pattern == "default":
            continue
        want = pattern.rstrip("/").split("/")
        if len(want) == len(parts) and all(w in ("*", p) for w, p in zip(want, parts, strict=True)):
            return cap
    return limits.get("default", 64 * 1024)


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (strings skipped; a malformed text
    gets some number, the parser refuses it afterwards)."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRING.sub(b"", body)):
        if m.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _too_large(cap: int) -> HTTPException:
    return HTTPException(413, f"the request body is larger than this route's {cap} bytes")


class Gate:
    """``await gate(scope, receive, send)``: None if the request was answered here, else the
    ``receive`` FastAPI must be called with (the cap applied while it reads)."""

    def __init__(self, auth: Authenticator, recorder: CallRecorder, app: Any) -> None:
        self.auth = auth
        self.recorder = recorder
        self.app = app  # its routes name the call log's route template
        self.limits = auth.ctx.settings.api.body_limits
        self.max_depth = auth.ctx.settings.api.max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        target = len(scope.get("raw_path") or scope["path"]) + len(scope.get("query_string", b""))
        if target > MAX_TARGET:
            exc = HTTPException(414, f"the request target is longer than {MAX_TARGET} bytes")
            status = await _answer_error(scope, send, exc)
            await log_call(self.recorder, scope, status, time.perf_counter(), "(no route)")
            return None
        length: int | None = None
        chunked = is_json = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-type":
                is_json = b"json" in value.lower()
        if not chunked and not length:
            return receive  # no body: the routes authenticate as usual
        started = time.perf_counter()
        path = scope["path"]
        state = state_of(scope)
        try:
            # the API's routes: a bearer token before the body; the console's own pages
            # (/console) check their session cookie and CSRF token, within the same cap
            if (
                path.startswith(API_PREFIX)
                and path not in OPEN_PATHS
                and state.get(PRINCIPAL) is None
            ):
                state[PRINCIPAL] = await self.auth.principal(Request(scope))
            cap = body_cap(self.limits, path)
            if length is not None and (length < 0 or length > cap):
                if length < 0:
                    raise HTTPException(400, "Content-Length is not a number")
                raise _too_large(cap)
        except Exception as exc:  # refused, too large, or no database to authenticate with
            status = await _answer_error(scope, send, exc)
            route = route_of(self.app, path, scope["method"])
            await log_call(self.recorder, scope, status, started, route)
            return None
        return _Capped(receive, cap, self.max_depth if is_json else None)


class _Capped:
    """A ``receive`` that refuses (413) once more than ``cap`` bytes came, and checks a JSON
    body's depth when its last chunk is in (400)."""

    def __init__(self, receive: Receive, cap: int, max_depth: int | None) -> None:
        self._receive = receive
        self._cap = cap
        self._size = 0
        self._max_depth = max_depth
        self._chunks: list[bytes] = []

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request":
            return message
        chunk = message.get("body", b"")
        self._size += len(chunk)
        if self._size > self._cap:
            raise _too_large(self._cap)
        if self._max_depth is not None:
            self._chunks.append(chunk)
            if not message.get("more_body", False):
                body, self._chunks = b"".join(self._chunks), []
                if json_depth(body) > self._max_depth:
                    raise HTTPException(
                        400, f"the JSON body nests deeper than {self._max_depth} levels"
                    )
        return message


async def _answer_error(scope: Scope, send: Send, exc: Exception) -> int:
    from api.errors import HTTP_CODES, error_response

    if isinstance(exc, HTTPException):
        code = HTTP_CODES.get(exc.status_code, "http_error")
        response = error_response(exc.status_code, code, str(exc.detail))
    else:
        response = map_exception(exc)
    state_of(scope)[ERROR_CODE] = response.code
    headers: list[Any] = [
        (k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
    ]
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": headers})  # fmt: skip
    await send({"type": "http.response.body", "body": response.body})
    return response.status_code
