"""The call log: one ``api_calls`` row per HTTP call, with the caller's identity.

Design notes: ``docs/design/api.md`` (section ``api.calllog``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool

from api.context import ApiContext
from issuance.db_async import Coalescer, RowsInsert
from issuance.models import ApiCall, utcnow

log = logging.getLogger("api.calls")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths never logged (liveness, the benchmark's hello-world).
UNLOGGED = frozenset({"/healthz", "/v1/hello"})
#: request.state keys the routes and error handlers set for the log
PRINCIPAL, CLIENT_ID, ERROR_CODE, RECORDED = (
    "ykt_principal", "ykt_client_id", "ykt_error_code", "ykt_recorded",
)  # fmt: skip


def state_of(scope: Scope) -> dict[str, Any]:
    """The request's state dict (what ``request.state`` reads and writes)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


def mark_recorded(scope: Scope) -> None:
    """This call is already recorded (by an audit event in its own transaction)."""
    state_of(scope)[RECORDED] = True


@dataclass(slots=True)
class CallRecord:
    at: datetime
    credential_id: int | None
    caller: str
    client_id: str | None
    client_ip: str | None
    method: str
    route: str
    status: int
    error_code: str | None
    duration_us: int

    def values(self) -> tuple[Any, ...]:
        """The record's values in :data:`_COLUMNS` order (a test holds them so)."""
        return (
            self.at, self.credential_id, self.caller, self.client_id, self.client_ip,
            self.method, self.route, self.status, self.error_code, self.duration_us,
        )  # fmt: skip


_COLUMNS = ("at", "credential_id", "caller", "client_id", "client_ip", "method", "route",
            "status", "error_code", "duration_us")  # fmt: skip
_TYPES = ("timestamp", "integer", "text", "text", "text", "text", "text", "smallint", "text",
          "integer")  # fmt: skip
#: the call log's rows on PostgreSQL (arrays through ``unnest``)
CALLS = RowsInsert("api_calls", _COLUMNS, _TYPES)


class CallRecorder:
    """Group commit of call records: :meth:`record` returns once its record is committed.
    On PostgreSQL the records ride the hot path's grouped write
    (:meth:`issuance.services.verification.VerificationStore.carry`): the call-log rows and
    the verifications in flight together share one statement and one commit (a durable
    commit is most of PostgreSQL's work per statement: ``docs/design/capacity.md``). On
    SQLite the records of the calls in flight together share one INSERT
    (:class:`issuance.db_async.Coalescer`). A record that holds for an authentication epoch
    (the hot path's challenge call with a cached token, :mod:`api.hotpath`) rides the same
    grouped write on PostgreSQL, which reads the epoch and writes it only if its epoch is
    still current (:meth:`~issuance.services.verification.VerificationStore.carry`)."""

    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx
        self._group: Coalescer[tuple[CallRecord, int | None], bool] = Coalescer(
            self._write_all, max_batch=512
        )

    @property
    def checks_epoch(self) -> bool:
        """Can :meth:`record` check the authentication epoch (PostgreSQL)?"""
        return self._ctx.verifications is not None

    async def record(self, rec: CallRecord, epoch: int | None = None) -> bool:
        """Write ``rec``; with ``epoch`` (:attr:`checks_epoch` only) only if that is still
        the authentication epoch when the statement runs: False if it was not (nothing was
        written). The caller's token check and its record then share one statement."""
        store = self._ctx.verifications
        if store is not None:  # rides the verifications' grouped write (PostgreSQL)
            return await store.carry(CALLS, rec.values(), epoch)
        return await self._group((rec, epoch))

    async def _write_all(self, items: list[tuple[CallRecord, int | None]]) -> list[bool]:
        # SQLite: no epoch check here (see checks_epoch): a record with one is not written
        await self._write([rec for rec, epoch in items if epoch is None])
        return [epoch is None for _, epoch in items]

    async def _write(self, records: list[CallRecord]) -> None:
        if not records:
            return
        rows = [{c: getattr(r, c) for c in _COLUMNS} for r in records]

        def insert() -> None:
            with self._ctx.engine.begin() as conn:
                conn.execute(sa.insert(ApiCall), rows)

        await run_in_threadpool(insert)


class CallLog:
    """ASGI middleware: record every HTTP call (see the module docstring)."""

    def __init__(self, app: ASGIApp, recorder: CallRecorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLOGGED:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        responded = False

        async def send_logged(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.start" and not responded:
                responded = True
                await self._log(scope, int(message["status"]), started)
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        except BaseException:
            if not responded:  # no answer went out (the server answers 500 or drops it)
                responded = True
                state_of(scope).setdefault(ERROR_CODE, "internal_error")
                await self._log(scope, 500, started)
            raise

    async def _log(self, scope: Scope, status: int, started: float) -> None:
        await log_call(self.recorder, scope, status, started)


async def log_call(
    recorder: CallRecorder,
    scope: Scope,
    status: int,
    started: float,
    route: str | None = None,
    epoch: int | None = None,
) -> bool:
    """Record the call of ``scope`` (answered ``status``; ``started``: its
    ``time.perf_counter()`` on arrival; ``route``: the route template, else the matched
    route's) unless it is already recorded; returns once the record is committed. Used by
    :class:`CallLog` and by the hot path (:mod:`api.hotpath`), which runs outside it.

    ``epoch`` (:attr:`CallRecorder.checks_epoch` only): the authentication epoch the caller's
    cached token was resolved at; the record is written only if that is still the epoch, and
    the answer is whether it was (False also if the record could not be written: the caller
    checks the token again the ordinary way)."""
    state = state_of(scope)
    if state.get(RECORDED):
        return epoch is None
    principal = state.get(PRINCIPAL)
    if route is None:
        route = str(getattr(scope.get("route"), "path", "(no route)"))
    client = scope.get("client")
    rec = CallRecord(
        at=utcnow(),
        credential_id=None if principal is None else principal.credential_id,
        caller="anonymous" if principal is None else principal.actor.username[:64],
        client_id=(principal.client_id if principal is not None else state.get(CLIENT_ID)),
        client_ip=None if not client else str(client[0])[:45],
        method=str(scope.get("method", ""))[:8],
        route=route[:200],
        status=status,
        error_code=None if status < 400 else state.get(ERROR_CODE),
        duration_us=int((time.perf_counter() - started) * 1e6),
    )
    try:
        return await recorder.record(rec, epoch)
    except Exception:
        log.exception("the call log could not be written (%s %s %d)",
                      rec.method, rec.route, status)  # fmt: skip
        return epoch is None
