"""The asyncio PostgreSQL access of the API's hot paths (asyncpg).

Design notes: ``docs/design/issuance.md`` (section ``issuance.db_async``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg
import sqlalchemy as sa

from issuance.errors import IssuanceError

log = logging.getLogger(__name__)
T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - an item of a Coalescer
R = TypeVar("R")

#: What asyncpg raises when the server cannot be reached or the connection broke.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
)

_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*_CONNECTION_ERRORS, TimeoutError)

#: Session settings of the pool's connections. ``plan_cache_mode``: the hot paths send a few
#: fixed statements, each prepared once per connection (asyncpg's statement cache); a generic
#: plan makes PostgreSQL plan each of them once, not at every call. Left to itself it re-plans
#: a statement whose custom plans look cheaper than the generic one (arrays through ``unnest``:
#: a custom plan knows their length), and planning the grouped card read cost more than running
#: it. The statements are written so that their generic plan is their best plan (index probes:
#: see :data:`issuance.services.verification.SQL_LOOKUP_MANY`).
SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}

#: Seconds one call of the hot paths may wait for the database (a few statements of a few
#: milliseconds each). A connection whose peer vanished without a word (the balancer host it
#: went through died, a network cut) answers nothing and asyncpg has no TCP keepalive: without
#: this bound the request would wait until the client gives up.
CALL_TIMEOUT = 10.0


class DatabaseUnavailable(IssuanceError):
    """The database cannot be reached (or no connection became free in time)."""

    code = "service_unavailable"


def dsn_from_url(url: str | sa.URL) -> str:
    """A libpq connection URI from a SQLAlchemy URL (``postgresql+psycopg://...``)."""
    sa_url = sa.make_url(url) if isinstance(url, str) else url
    if sa_url.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {sa_url.get_backend_name()}")
    return sa_url.set(drivername="postgresql").render_as_string(hide_password=False)


class AsyncPgPool:
    """Up to ``size`` connections of the server's event loop (see the module docstring).

    Deliberately small: idle connections in a LIFO list, waiters in a FIFO queue. (asyncpg's
    own pool spends ~50 us of CPU per acquire/release - timeouts, a task per release and a
    reset round trip - about as much as the statement itself.) A connection that broke is
    dropped and the next caller opens a new one.
    """

    def __init__(
        self,
        dsn: str,
        size: int = 16,
        *,
        acquire_timeout: float = 10.0,
        call_timeout: float = CALL_TIMEOUT,
    ) -> None:
        if size < 1:
            raise ValueError("pool size must be at least 1")
        self.dsn = dsn
        self.size = size
        self.acquire_timeout = acquire_timeout
        self.call_timeout = call_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[asyncpg.Connection] = []
        #: callers waiting for a connection; result None = "a slot is free: open one"
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._count = 0  # connections open or being opened

    async def open(self) -> None:
        """Adopt the running loop (the server's, at startup): work given to :meth:`run` from
        this loop shares the pool's connections, opened on demand. A pool already owned by
        another running loop stays with it (the app started a second time in the same process,
        as tests do: that loop's calls are handed over to the owner)."""
        loop = asyncio.get_running_loop()
        owner = self._loop
        if owner is loop or (owner is not None and owner.is_running()):
            return
        # no owner, or its loop has stopped: its connections died with it
        self._idle, self._waiters, self._count = [], deque(), 0
        self._loop = loop

    async def run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``await fn(connection)`` with a connection of the pool (autocommit).

        From the server's loop: a pooled connection. From another loop while the server's is
        running (tests: a TestClient request outside the ``with`` client), the call runs on the
        server's loop and this loop awaits it. Otherwise: a connection of its own."""
        loop = asyncio.get_running_loop()
        owner = self._loop
        if owner is loop:
            return await self._pooled(fn)
        if owner is not None and owner.is_running():
            done = asyncio.run_coroutine_threadsafe(self._pooled(fn), owner)
            return await asyncio.wrap_future(done)
        return await self._own(fn)

    async def _connect(self) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(
                self.dsn, timeout=self.acquire_timeout, server_settings=SERVER_SETTINGS
            )
        except _CONNECT_ERRORS as exc:
            raise DatabaseUnavailable(f"cannot reach the database: {exc}") from exc

    async def _acquire(self) -> asyncpg.Connection:
        if self._idle:
            return self._idle.pop()
        if self._count >= self.size:
            fut: asyncio.Future[asyncpg.Connection | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._waiters.append(fut)
            try:
                conn = await asyncio.wait_for(fut, self.acquire_timeout)
            except TimeoutError as exc:
                raise DatabaseUnavailable("no database connection became free in time") from exc
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and fut.result() is not None:
                    self._release(fut.result(), broken=False)  # handed over meanwhile
                raise
            if conn is not None:
                return conn
        self._count += 1
        try:
            return await self._connect()
        except BaseException:
            self._count -= 1
            self._hand_over(None)
            raise

    def _hand_over(self, conn: asyncpg.Connection | None) -> bool:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return True
        return False

    def _release(self, conn: asyncpg.Connection, *, broken: bool) -> None:
        if broken or conn.is_closed() or conn.is_in_transaction():
            self._count -= 1
            conn.terminate()
            self._hand_over(None)
        elif not self._hand_over(conn):
            self._idle.append(conn)

    async def _pooled(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        conn = await self._acquire()
        broken = False
        try:
            async with asyncio.timeout(self.call_timeout):
                return await fn(conn)
        except TimeoutError as exc:  # (an OSError: before the connection errors)
            broken = True  # its answer may still come: the connection is not reused
            raise DatabaseUnavailable(
                f"the database did not answer within {self.call_timeout:g} s"
            ) from exc
        except _CONNECTION_ERRORS as exc:
            broken = True
            raise DatabaseUnavailable(f"the database connection broke: {exc}") from exc
        except BaseException:
            broken = conn.is_in_transaction()
            raise
        finally:
            self._release(conn, broken=broken)

    async def _own(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        conn = await self._connect()
        try:
            async with asyncio.timeout(self.call_timeout):
                return await fn(conn)
        except TimeoutError as exc:  # (an OSError: before the connection errors)
            raise DatabaseUnavailable(
                f"the database did not answer within {self.call_timeout:g} s"
            ) from exc
        except _CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(f"the database connection broke: {exc}") from exc
        finally:
            await _close_quietly(conn)

    async def close(self) -> None:
        """Close the idle connections (from the server's loop, at shutdown; a no-op from
        another loop)."""
        if self._loop is not asyncio.get_running_loop():
            return
        idle, self._idle = self._idle, []
        self._count -= len(idle)
        self._loop = None
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(DatabaseUnavailable("the server is shutting down"))
        for conn in idle:
            await _close_quietly(conn)


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await conn.close(timeout=5)
    except Exception:  # closing a broken connection
        log.debug("closing a database connection failed", exc_info=True)
        conn.terminate()


@dataclass(frozen=True)
class RowsInsert:
    """Rows of ``table`` inserted by one statement: one array per column (``types``: their
    PostgreSQL types), ``INSERT INTO table (columns) SELECT * FROM unnest($n::type[], ...)``."""

    table: str
    columns: tuple[str, ...]
    types: tuple[str, ...]

    def unnest(self, first: int = 1, *extra: str) -> str:
        """``unnest(...)`` of the statement's arrays numbered from ``$first``, and after them
        arrays of the PostgreSQL types ``extra`` (other values of each row)."""
        types = (*self.types, *extra)
        return f"unnest({', '.join(f'${i}::{t}[]' for i, t in enumerate(types, start=first))})"

    def arrays(self, rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """The statement's arguments: ``rows`` (``columns`` order) as one list per column."""
        if not rows:
            return [[] for _ in self.columns]
        return [list(c) for c in zip(*rows, strict=True)]


@dataclass
class _Gathering(Generic[I, R]):
    pending: list[tuple[I, asyncio.Future[R]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class Coalescer(Generic[I, R]):
    """Group execution: ``await coalescer(item)`` returns ``item``'s result of one call of
    ``write(items)``, which handles every item submitted meanwhile in one statement (one round
    trip, one commit for all of them).

    The items given during one iteration of the event loop, or while the previous batch was
    being written, make the next batch (at most ``max_batch`` items). A batch starts as soon as
    the previous one is done, so nobody waits for a timer - unless ``linger`` (seconds) is set
    and the previous batch had company (two items or more: calls are arriving together): then
    the next batch waits ``linger`` for more items before it starts, as PostgreSQL's own
    ``commit_delay`` does when other transactions are active (fewer statements and commits
    under load for at most ``linger`` more latency; a lone call after a lone call never
    waits). ``write`` returns one result per
    item, in order; if it raises, every caller of that batch gets the exception. An item whose
    ``key`` is already in the batch being made waits for the next one (so a statement never
    sees two items with the same key, e.g. the same primary key twice). A caller that is
    cancelled meanwhile leaves its item in the batch: written, its result dropped. Per event
    loop (the futures belong to it)."""

    def __init__(
        self,
        write: Callable[[list[I]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 256,
        key: Callable[[I], Hashable] | None = None,
        linger: float = 0.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if linger < 0:
            raise ValueError("linger must not be negative")
        self._write = write
        self.max_batch = max_batch
        self._key = key
        self.linger = linger
        self._loops: dict[asyncio.AbstractEventLoop, _Gathering[I, R]] = {}
        #: batches written, items in them, and batches that lingered first (figures for tests
        #: and benchmarks)
        self.batches = 0
        self.items = 0
        self.lingered = 0
        #: the size of the last batch taken (any loop): did it have company?
        self._last = 0

    async def __call__(self, item: I) -> R:
        loop = asyncio.get_running_loop()
        g = self._loops.get(loop)
        if g is None:
            g = self._loops[loop] = _Gathering()
        fut: asyncio.Future[R] = loop.create_future()
        g.pending.append((item, fut))
        if g.task is None:
            g.task = loop.create_task(self._drain(loop, g))
        return await fut

    def _take(self, g: _Gathering[I, R]) -> list[tuple[I, asyncio.Future[R]]]:
        if self._key is None and len(g.pending) <= self.max_batch:
            batch, g.pending = g.pending, []
            return batch
        batch, rest, seen = [], [], set()
        for entry in g.pending:
            k = None if self._key is None else self._key(entry[0])
            if len(batch) >= self.max_batch or (k is not None and k in seen):
                rest.append(entry)
            else:
                seen.add(k)
                batch.append(entry)
        g.pending = rest
        return batch

    async def _drain(self, loop: asyncio.AbstractEventLoop, g: _Gathering[I, R]) -> None:
        try:
            while g.pending:
                if self.linger and self._last > 1 and len(g.pending) < self.max_batch:
                    self.lingered += 1
                    await asyncio.sleep(self.linger)
                batch = self._take(g)
                self._last = len(batch)
                self.batches += 1
                self.items += len(batch)
                try:
                    results = await self._write([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(
                            f"a batch of {len(batch)} items gave {len(results)} results"
                        )
                except BaseException as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for (_, fut), result in zip(batch, results, strict=True):
                        if not fut.done():
                            fut.set_result(result)
        finally:  # normally nothing is left; after a cancellation nobody may wait forever
            g.task = None
            left, g.pending = g.pending, []
            for _, fut in left:
                if not fut.done():
                    fut.set_exception(DatabaseUnavailable("the batch writer stopped"))
            self._loops.pop(loop, None)
