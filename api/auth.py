"""Authentication, scopes and the failure rate limit.

* Bearer tokens (RFC 6750) from the client-credentials grant or ``ykt api staff-token``;
  resolved by :func:`issuance.services.credentials.authenticate` and cached in the process for
  a few seconds (a revoked token stops working within ``CACHE_SECONDS``).
* Mutual TLS (by configuration, see :mod:`api.tls`): a credential bound to a certificate
  subject is only accepted on a connection whose client certificate has that subject.
* Each route declares its scope with ``Depends(need("scope"))`` (``route_scopes`` lists them
  from the app). A call outside the caller's scopes is refused with 403 and audited
  (``api.denied``); so is every other refusal of a known caller (a channel it may not act
  through, a role or maker-checker refusal by the domain): all go through
  :meth:`Authenticator.refuse`.
* Failed authentications and refusals count against the caller (client IP, and client id when
  known); past ``settings.api.auth_failures_per_minute`` in a minute the caller gets 429 until
  the window clears. The window is per process (each worker keeps its own counts).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from threading import Lock
from typing import Any, NoReturn

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from api.context import ApiContext
from api.errors import ApiError
from api.tls import subject_matches
from issuance import audit
from issuance.errors import PermissionDenied
from issuance.services.credentials import Principal, authenticate

CACHE_SECONDS = 10.0
_CACHE_MAX = 50_000


def ctx_of(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


class FailureLimiter:
    """Sliding one-minute window of failures per caller key."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._events: dict[str, deque[float]] = {}
        self._lock = Lock()

    def _window(self, key: str, now: float) -> deque[float]:
        q = self._events.setdefault(key, deque())
        while q and q[0] <= now - 60.0:
            q.popleft()
        return q

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                q = self._window(key, now)
                if len(q) >= self.per_minute:
                    retry = max(1, int(60.0 - (now - q[0])) + 1)
                    raise ApiError(
                        429, "rate_limited", "too many failed attempts; try again later",
                        headers={"Retry-After": str(retry)},
                    )  # fmt: skip

    def blocked(self, key: str) -> bool:
        """Would :meth:`check` refuse ``key`` now?"""
        q = self._events.get(key)
        if q is None or len(q) < self.per_minute:
            return False
        with self._lock:  # the per_minute-th newest failure is inside the window
            return len(q) >= self.per_minute and q[-self.per_minute] > time.monotonic() - 60.0

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._events) > _CACHE_MAX:
                self._events.clear()
            for key in keys:
                self._window(key, now).append(now)


class Authenticator:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.limiter = FailureLimiter(ctx.settings.api.auth_failures_per_minute)
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._pending: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[Principal]] = {}

    def cached(self, token: str) -> Principal | None:
        """The principal of ``token`` if this process resolved it less than
        ``CACHE_SECONDS`` ago (and it has not expired since), else None: the hot path's
        (:mod:`api.hotpath`) shortcut before :meth:`principal`."""
        hit = self._cache.get(token)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return None

    def _lookup(self, token: str) -> Principal:
        with self.ctx.tx() as session:
            return authenticate(session, token)

    async def _resolve(self, token: str) -> Principal:
        """The database lookup of ``token``, one at a time per token and event loop: callers
        that arrive while it runs (every connection of a busy client when its cache entry
        expires) share it instead of each running its own."""
        key = (asyncio.get_running_loop(), token)
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(run_in_threadpool(self._lookup, token))
            self._pending[key] = pending

            def done(fut: asyncio.Future[Principal]) -> None:
                self._pending.pop(key, None)
                if not fut.cancelled():
                    fut.exception()  # retrieved here too: every waiter may have gone

            pending.add_done_callback(done)
        return await asyncio.shield(pending)

    async def principal(self, request: Request) -> Principal:
        ip = f"ip:{request.client.host if request.client else '-'}"
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        now = time.monotonic()
        cached = self._cache.get(token) if token else None
        if cached is not None and cached[1] > now:
            principal = cached[0]
        else:
            self.limiter.check(ip)
            if scheme.lower() != "bearer" or not token or len(token) > 200:
                self.limiter.fail(ip)
                raise ApiError(
                    401, "unauthorized", "a bearer token is required",
                    headers={"WWW-Authenticate": "Bearer"},
                )  # fmt: skip
            try:
                principal = await self._resolve(token)
            except PermissionDenied as exc:
                self.limiter.fail(ip)
                raise ApiError(
                    401, "unauthorized", exc.message,
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                ) from exc  # fmt: skip
            if len(self._cache) > _CACHE_MAX:
                self._cache.clear()
            ttl = min(CACHE_SECONDS, principal.expires_at.timestamp() - time.time())
            self._cache[token] = (principal, now + max(ttl, 0.0))
        if principal.cert_subject is not None and not subject_matches(
            request.scope, principal.cert_subject
        ):
            self.limiter.fail(ip, f"client:{principal.client_id}")
            raise ApiError(
                401, "unauthorized", "this client must present its TLS client certificate"
            )
        return principal

    def forget(self) -> None:
        self._cache.clear()

    async def refuse(
        self, request: Request, principal: Principal, why: str, **details: Any
    ) -> None:
        """Record a refused call: one ``api.denied`` audit event with the caller's identity,
        and one failure against the caller's rate limit. Every refusal of a known caller goes
        through here (missing scope, channel not allowed, role or maker-checker refusal by the
        domain); the caller raises its own error afterwards."""
        self.limiter.fail(f"client:{principal.client_id}")
        info = {"client_id": principal.client_id, "method": request.method,
                "path": request.url.path, **details}  # fmt: skip

        def write() -> None:
            with self.ctx.tx() as session:
                audit.record(
                    session, principal.actor, "api.denied", "api_credential",
                    principal.credential_id, reason=why[:500], details=info,
                )  # fmt: skip

        await run_in_threadpool(write)

    async def deny(
        self, request: Request, principal: Principal, scope: str | None, why: str, **details: Any
    ) -> NoReturn:
        """Audit a refused call, count it, and raise 403 ``forbidden``."""
        if scope is not None:
            details["scope"] = scope
        await self.refuse(request, principal, why, **details)
        raise ApiError(403, "forbidden", why)


def auth_of(request: Request) -> Authenticator:
    authn: Authenticator = request.app.state.auth
    return authn


class need:  # lower case: reads as ``Depends(need("scope"))``
    """Dependency: the caller, who must hold every one of ``scopes`` (kept on the instance, so
    tests and documentation can list each route's scopes from the app itself)."""

    def __init__(self, *scopes: str) -> None:
        self.scopes = scopes

    async def __call__(self, request: Request) -> Principal:
        authn = auth_of(request)
        principal = await authn.principal(request)
        authn.limiter.check(f"client:{principal.client_id}")
        missing = [s for s in self.scopes if s not in principal.scopes]
        if missing:
            wanted = " ".join(missing)
            await authn.deny(request, principal, wanted, f"scope {wanted} required")
        return principal

    def __repr__(self) -> str:
        return f"need({', '.join(map(repr, self.scopes))})"


def route_scopes(dependant: Any) -> tuple[str, ...]:
    """Every scope a route's dependencies (FastAPI ``Dependant`` tree) require."""
    found: list[str] = []
    stack = [dependant]
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, need):
            found.extend(dep.call.scopes)
        stack.extend(dep.dependencies)
    return tuple(dict.fromkeys(found))


async def require_extra(request: Request, principal: Principal, scope: str) -> None:
    """Inside a handler: the caller asked for something that needs ``scope`` too."""
    if scope not in principal.scopes:
        await auth_of(request).deny(request, principal, scope, f"scope {scope} required")
