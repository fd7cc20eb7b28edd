"""A small asyncio connection pool of psycopg 3 connections for the API's hot paths.

The verification endpoints run on the event loop with no thread hop and no ORM: a handful of
core-SQL statements through :class:`AsyncPgPool` (PostgreSQL only; SQLite keeps the synchronous
SQLAlchemy path). Connections are in autocommit mode: each statement is its own transaction, so
the statements are written to be atomic on their own (a data-modifying CTE where several rows
must change together). psycopg prepares a statement server-side after a few executions.

A connection that raised an :class:`psycopg.OperationalError` (server gone, network) is
discarded; the next caller opens a new one. Waiting for a free connection is bounded by
``acquire_timeout`` (the caller gets :class:`PoolTimeout`, answered 503 by the API).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import pq

log = logging.getLogger(__name__)


class PoolTimeout(psycopg.OperationalError):
    """No connection became free in time."""


def conninfo_from_url(url: str | sa.URL) -> str:
    """A libpq connection URI from a SQLAlchemy URL (``postgresql+psycopg://...``)."""
    sa_url = sa.make_url(url) if isinstance(url, str) else url
    if sa_url.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {sa_url.get_backend_name()}")
    return sa_url.set(drivername="postgresql").render_as_string(hide_password=False)


class AsyncPgPool:
    """At most ``size`` autocommit connections, opened on demand, reused LIFO."""

    def __init__(self, conninfo: str, size: int = 16, *, acquire_timeout: float = 10.0) -> None:
        if size < 1:
            raise ValueError("pool size must be at least 1")
        self.conninfo = conninfo
        self.size = size
        self.acquire_timeout = acquire_timeout
        self._idle: deque[psycopg.AsyncConnection[Any]] = deque()
        #: futures of callers waiting for a connection; result None = "open one yourself"
        self._waiters: deque[asyncio.Future[psycopg.AsyncConnection[Any] | None]] = deque()
        self._count = 0  # connections open or being opened
        self._closed = False

    async def _open(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        except BaseException:
            self._count -= 1
            self._wake_one(None)
            raise

    async def _acquire(self) -> psycopg.AsyncConnection[Any]:
        if self._closed:
            raise PoolTimeout("the connection pool is closed")
        if self._idle:
            return self._idle.pop()
        if self._count < self.size:
            self._count += 1
            return await self._open()
        fut: asyncio.Future[psycopg.AsyncConnection[Any] | None]
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            conn = await asyncio.wait_for(fut, self.acquire_timeout)
        except TimeoutError as exc:
            raise PoolTimeout("no database connection became free in time") from exc
        except asyncio.CancelledError:
            handed = fut.result() if fut.done() and not fut.cancelled() else None
            if handed is not None:
                self._release(handed, broken=False)  # handed over while being cancelled
            raise
        if conn is None:  # a slot was freed: open a new connection
            self._count += 1
            return await self._open()
        return conn

    def _wake_one(self, conn: psycopg.AsyncConnection[Any] | None) -> bool:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return True
        return False

    def _release(self, conn: psycopg.AsyncConnection[Any], *, broken: bool) -> None:
        healthy = (
            not broken
            and not self._closed
            and not conn.closed
            and conn.info.transaction_status == pq.TransactionStatus.IDLE
        )
        if healthy:
            if not self._wake_one(conn):
                self._idle.append(conn)
            return
        self._count -= 1
        asyncio.get_running_loop().create_task(_close_quietly(conn))
        if not self._closed:
            self._wake_one(None)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for a few statements (autocommit)."""
        conn = await self._acquire()
        broken = False
        try:
            yield conn
        except psycopg.OperationalError:
            broken = True
            raise
        except BaseException:
            broken = conn.info.transaction_status != pq.TransactionStatus.IDLE
            raise
        finally:
            self._release(conn, broken=broken)

    async def close(self) -> None:
        self._closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(PoolTimeout("the connection pool is closed"))
        idle, self._idle = list(self._idle), deque()
        self._count -= len(idle)
        for conn in idle:
            await _close_quietly(conn)


async def _close_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    try:
        await conn.close()
    except Exception:  # closing a broken connection
        log.debug("closing a database connection failed", exc_info=True)
