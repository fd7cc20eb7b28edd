"""Authentication, scopes and the failure rate limit.

Design notes: ``docs/design/api.md`` (section ``api.auth``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NoReturn

import sqlalchemy as sa
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from api.calllog import PRINCIPAL, state_of
from api.context import ApiContext
from api.errors import ApiError
from api.tls import subject_matches
from issuance import audit
from issuance.errors import PermissionDenied
from issuance.models import ApiRateCounter
from issuance.services.credentials import (
    AUTH_EPOCH_SQL,
    Principal,
    auth_epoch,
    authenticate,
    bump_auth_epoch,
)

log = logging.getLogger("api.auth")

CACHE_SECONDS = 10.0
#: A cached token used in its last seconds is resolved again in the background (the entry
#: stays in use meanwhile): a busy caller's requests never all wait for the lookup at expiry.
REFRESH_SECONDS = 2.0
_CACHE_MAX = 50_000


def ctx_of(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


class FailureLimiter:
    """Failures per caller key and minute, counted in the database (``api_rate_counters``,
    migration 0011): every worker and node shares them. A key is refused once its failures in
    the last minute (this minute's count plus the previous minute's, weighted by how much of
    it is still inside the window) reach ``per_minute``.

    Keys never name a client alone (an attacker could lock a client out by failing in its
    name): the token endpoint counts a wrong secret against the pair (client, source address)
    and against the source; a bad bearer token against the source; a refused call of a known
    caller against that caller (it holds a valid token: only it can fail in its name). The
    source is the connection's address, or X-Forwarded-For from the proxies ``ykt serve
    --forwarded-allow-ips`` trusts (uvicorn applies it).
    """

    def __init__(self, ctx: ApiContext, per_minute: int) -> None:
        self.ctx = ctx
        self.per_minute = per_minute

    def _counts_sync(self, keys: tuple[str, ...], minute: int) -> dict[str, list[int]]:
        with self.ctx.tx() as session:
            rows = session.execute(
                sa.select(ApiRateCounter.key, ApiRateCounter.minute, ApiRateCounter.count).where(
                    ApiRateCounter.key.in_(keys), ApiRateCounter.minute >= minute - 1
                )
            ).all()
        out: dict[str, list[int]] = {k: [0, 0] for k in keys}
        for key, m, n in rows:
            out[key][0 if m == minute - 1 else 1] += n
        return out

    async def _counts(self, keys: tuple[str, ...], minute: int) -> dict[str, list[int]]:
        if self.ctx.pg is not None:

            async def fetch(conn: Any) -> list[Any]:
                return list(await conn.fetch(_COUNTS_SQL, list(keys), minute - 1))

            out: dict[str, list[int]] = {k: [0, 0] for k in keys}
            for key, m, n in await self.ctx.pg.run(fetch):
                out[key][0 if m == minute - 1 else 1] += n
            return out
        return await run_in_threadpool(self._counts_sync, keys, minute)

    async def check(self, *keys: str, limit: int | None = None) -> None:
        """Raise 429 ``rate_limited`` if any of ``keys`` is over the limit."""
        if await self.blocked(*keys, limit=limit):
            now = time.time()
            raise ApiError(
                429, "rate_limited", "too many failed attempts; try again later",
                headers={"Retry-After": str(max(1, 60 - int(now % 60)))},
            )  # fmt: skip

    async def blocked(self, *keys: str, limit: int | None = None) -> bool:
        """Would :meth:`check` refuse one of ``keys`` now?"""
        now = time.time()
        counts = await self._counts(tuple(k[:200] for k in keys), int(now // 60))
        return any(self._over(c, now, limit) for c in counts.values())

    def _over(self, counts: list[int], now: float, limit: int | None = None) -> bool:
        prev, cur = counts
        return prev * (1.0 - (now % 60) / 60.0) + cur >= (limit or self.per_minute)

    def blocked_in(self, session: Any, key: str) -> bool:
        """:meth:`blocked` for one key, in the caller's transaction (token resolution)."""
        now = time.time()
        minute = int(now // 60)
        counts = [0, 0]
        for m, n in session.execute(
            sa.select(ApiRateCounter.minute, ApiRateCounter.count).where(
                ApiRateCounter.key == key[:200], ApiRateCounter.minute >= minute - 1
            )
        ):
            counts[0 if m == minute - 1 else 1] += n
        return self._over(counts, now)

    def _fail_sync(self, keys: tuple[str, ...]) -> None:
        now = time.time()
        minute = int(now // 60)
        with self.ctx.tx() as session:
            for key in keys:
                _upsert_count(session, key, minute)
            session.execute(sa.delete(ApiRateCounter).where(ApiRateCounter.minute < minute - 1))
            for key in keys:
                if key.startswith("client:") and self.blocked_in(session, key):
                    # a known caller is held now: every worker and node must see it at its
                    # next request (their cached tokens are resolved again, block included)
                    bump_auth_epoch(session)
                    break

    async def fail(self, *keys: str) -> None:
        """Count one failure against each of ``keys``."""
        await run_in_threadpool(self._fail_sync, tuple(k[:200] for k in keys))


_COUNTS_SQL = (
    "SELECT key, minute, count FROM api_rate_counters WHERE key = ANY($1::text[]) AND minute >= $2"
)


def _upsert_count(session: Any, key: str, minute: int) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    stmt = insert(ApiRateCounter).values(key=key, minute=minute, count=1)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["key", "minute"], set_={"count": ApiRateCounter.count + 1}
        )
    )


def source_key(request: Request) -> str:
    """The caller's source address (as uvicorn resolved it from the trusted proxies)."""
    return f"ip:{request.client.host if request.client else '-'}"


#: A source address may fail this many times the per-caller limit (several clients can sit
#: behind one address; one of them failing must not lock the others out at once).
SOURCE_FACTOR = 5


class Authenticator:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.limiter = FailureLimiter(ctx, ctx.settings.api.auth_failures_per_minute)
        #: token -> (principal, cache expiry, epoch it was resolved at)
        self._cache: dict[str, tuple[Principal, float, int]] = {}
        #: client id -> (epoch, held by the failure limit until): read with its token
        self._held: dict[str, tuple[int, float]] = {}
        self._pending: dict[
            tuple[asyncio.AbstractEventLoop, str], asyncio.Future[tuple[Principal, int, bool]]
        ] = {}
        self._epoch_reads: dict[asyncio.AbstractEventLoop, asyncio.Future[int]] = {}
        #: tokens being resolved again ahead of their expiry (:meth:`_refresh`)
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    async def epoch(self) -> int:
        """The authentication epoch now (see
        :func:`issuance.services.credentials.auth_epoch`): one primary-key read, shared by
        the requests that arrived before it is sent - those of the same event-loop iteration,
        and on PostgreSQL also those that came while the read waited for a pooled connection
        (it is sent after all of them arrived, so each sees every change committed before it
        came)."""
        loop = asyncio.get_running_loop()
        waiting = self._epoch_reads.get(loop)
        if waiting is None:
            waiting = self._epoch_reads[loop] = loop.create_future()
            loop.call_soon(self._read_epoch, loop, waiting)
        return await asyncio.shield(waiting)

    def _read_epoch(self, loop: asyncio.AbstractEventLoop, waiting: asyncio.Future[int]) -> None:
        if self.ctx.pg is None:
            self._close_epoch_read(loop, waiting)

        def done(task: asyncio.Future[int]) -> None:
            if task.cancelled():
                waiting.cancel()
            elif task.exception() is not None:
                waiting.set_exception(task.exception())  # type: ignore[arg-type]
            else:
                waiting.set_result(task.result())

        def fetched(task: asyncio.Future[int]) -> None:
            self._close_epoch_read(loop, waiting)  # it failed before it was sent
            done(task)

        asyncio.ensure_future(self._fetch_epoch(loop, waiting)).add_done_callback(fetched)

    def _close_epoch_read(
        self, loop: asyncio.AbstractEventLoop, waiting: asyncio.Future[int]
    ) -> None:
        """Whoever comes from now on waits for a new read."""
        if self._epoch_reads.get(loop) is waiting:
            del self._epoch_reads[loop]

    async def _fetch_epoch(
        self, loop: asyncio.AbstractEventLoop, waiting: asyncio.Future[int]
    ) -> int:
        if self.ctx.pg is not None:

            async def fetch(conn: Any) -> int:
                # the read is sent now, on the loop (the pool is the loop's): the requests
                # that joined it so far all arrived before it, the next ones need a new one
                self._close_epoch_read(loop, waiting)
                return int(await conn.fetchval(AUTH_EPOCH_SQL) or 0)

            return await self.ctx.pg.run(fetch)
        return await run_in_threadpool(self._epoch_sync)

    def _epoch_sync(self) -> int:
        with self.ctx.tx() as session:
            return auth_epoch(session)

    async def cached(self, token: str) -> Principal | None:
        """The principal of ``token`` if this process resolved it less than
        ``CACHE_SECONDS`` ago, it has not expired since and no principal was disabled,
        enabled, revoked or held by the failure limit since (the epoch, read now): the hot
        path's (:mod:`api.hotpath`) shortcut before :meth:`principal`."""
        hit = self.resolved(token)
        if hit is None:
            return None
        return hit[0] if hit[1] == await self.epoch() else None

    def resolved(self, token: str) -> tuple[Principal, int] | None:
        """The principal of ``token`` if this process resolved it less than
        ``CACHE_SECONDS`` ago and it has not expired since, with the epoch it was resolved
        at: valid only while that is still the epoch (:meth:`cached` reads it; the hot path's
        challenge call has its call-log record check it, :func:`api.calllog.log_call`)."""
        hit = self._cache.get(token)
        if hit is None:
            return None
        left = hit[1] - time.monotonic()
        if left <= 0:
            return None
        if (
            left < REFRESH_SECONDS
            and token not in self._refreshing
            # (not in the token's own last seconds: it ends then, nothing to renew)
            and hit[0].expires_at.timestamp() - time.time() > REFRESH_SECONDS
        ):
            self._refresh(token)
        return hit[0], hit[2]

    def _refresh(self, token: str) -> None:
        """Resolve ``token`` again in the background (its entry is in its last
        :data:`REFRESH_SECONDS`): the new entry replaces it, with the epoch read by that
        lookup; a token no longer valid is forgotten (its next request is refused and counted
        the ordinary way); if the database cannot say, the entry runs out as it would have."""

        async def again() -> None:
            try:
                principal, epoch, held = await self._resolve(token)
            except PermissionDenied:
                self._cache.pop(token, None)
            except Exception as exc:  # the database: the entry expires, the next request
                # says it (the error's class only: a driver's message may quote parameters)
                log.warning("resolving a cached token again failed: %s", type(exc).__name__)
            else:
                self._remember(token, principal, epoch, held)
            finally:
                self._refreshing.pop(token, None)

        self._refreshing[token] = asyncio.get_running_loop().create_task(again())

    def held(self, principal: Principal) -> bool:
        """Is this (authenticated) caller held by the failure limit? Read with its token (any
        new hold changes the epoch, so a cached token is resolved again first)."""
        entry = self._held.get(principal.client_id)
        return entry is not None and entry[1] > time.monotonic()

    def _lookup(self, token: str) -> tuple[Principal, int, bool]:
        with self.ctx.tx() as session:
            epoch = auth_epoch(session)  # read first: a change after it makes the entry stale
            principal = authenticate(session, token)
            held = self.limiter.blocked_in(session, f"client:{principal.client_id}")
            return principal, epoch, held

    async def _resolve(self, token: str) -> tuple[Principal, int, bool]:
        """The database lookup of ``token``, one at a time per token and event loop: callers
        that arrive while it runs (every connection of a busy client when its cache entry
        expires) share it instead of each running its own."""
        key = (asyncio.get_running_loop(), token)
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(run_in_threadpool(self._lookup, token))
            self._pending[key] = pending

            def done(fut: asyncio.Future[tuple[Principal, int, bool]]) -> None:
                self._pending.pop(key, None)
                if not fut.cancelled():
                    fut.exception()  # retrieved here too: every waiter may have gone

            pending.add_done_callback(done)
        return await asyncio.shield(pending)

    async def principal(self, request: Request) -> Principal:
        ip = "bearer:" + source_key(request)  # apart from the token endpoint's counts
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        principal = await self.cached(token) if token else None
        if principal is None:
            await self.limiter.check(ip, limit=self.limiter.per_minute * SOURCE_FACTOR)
            if scheme.lower() != "bearer" or not token or len(token) > 200:
                await self.limiter.fail(ip)
                raise ApiError(
                    401, "unauthorized", "a bearer token is required",
                    headers={"WWW-Authenticate": "Bearer"},
                )  # fmt: skip
            # resolved meanwhile by a request that missed the cache together with this one
            # (the epoch is read again, after this request arrived): else resolved now
            principal = await self.cached(token) or await self._resolve_new(token, ip)
        if principal.cert_subject is not None and not subject_matches(
            request.scope, principal.cert_subject
        ):
            await self.limiter.fail(ip)
            raise ApiError(
                401, "unauthorized", "this client must present its TLS client certificate"
            )
        return principal

    async def _resolve_new(self, token: str, ip: str) -> Principal:
        """Resolve ``token`` in the database and cache it (401 if it is not valid)."""
        try:
            principal, epoch, held = await self._resolve(token)
        except PermissionDenied as exc:
            await self.limiter.fail(ip)
            raise ApiError(
                401, "unauthorized", exc.message,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            ) from exc  # fmt: skip
        self._remember(token, principal, epoch, held)
        return principal

    def _remember(self, token: str, principal: Principal, epoch: int, held: bool) -> None:
        """Cache ``token``'s lookup (resolved at ``epoch``) for :data:`CACHE_SECONDS`, never
        beyond the token's expiry."""
        if len(self._cache) > _CACHE_MAX:
            self._cache.clear()
        ttl = min(CACHE_SECONDS, principal.expires_at.timestamp() - time.time())
        until = time.monotonic() + max(ttl, 0.0)
        self._cache[token] = (principal, until, epoch)
        if len(self._held) > _CACHE_MAX:
            self._held.clear()
        self._held[principal.client_id] = (epoch, until if held else 0.0)

    def forget(self) -> None:
        self._cache.clear()

    async def refuse(
        self, request: Request, principal: Principal, why: str, **details: Any
    ) -> None:
        """Record a refused call: one ``api.denied`` audit event with the caller's identity,
        and one failure against the caller's rate limit. Every refusal of a known caller goes
        through here (missing scope, channel not allowed, role or maker-checker refusal by the
        domain); the caller raises its own error afterwards."""
        await self.limiter.fail(f"client:{principal.client_id}")
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
        # the gate (api.gate) may have authenticated the caller already, before the body
        principal = state_of(request.scope).get(PRINCIPAL) or await authn.principal(request)
        if authn.held(principal):  # refused and missed too often: 429 until it clears
            raise ApiError(
                429, "rate_limited", "too many failed attempts; try again later",
                headers={"Retry-After": str(int(CACHE_SECONDS))},
            )  # fmt: skip
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
