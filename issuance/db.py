"""Database access: engine and session factories built from :class:`IssuanceConfig`.

SQLite is the embedded default (one file under the data directory, WAL journal, foreign keys on,
a busy timeout); PostgreSQL through psycopg 3 is the production backend. Both run the same
Alembic migrations (:mod:`issuance.migrations`).

Services never commit: they take a :class:`Session` and flush. The caller owns the transaction,
usually through :func:`transaction`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from issuance.errors import ConflictError
from issuance.settings import IssuanceConfig

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_BUSY_TIMEOUT_MS = 10_000


T = TypeVar("T")


class Base(DeclarativeBase):
    """Declarative base of every issuance table (constraint names follow NAMING_CONVENTION)."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def _sqlite_on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    # Let SQLAlchemy control transactions (pysqlite's own BEGIN handling breaks SAVEPOINT).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN")


WITHHELD = "(details withheld: they may contain personal data)"


def _withhold_details(ctx: sa.engine.ExceptionContext) -> BaseException | None:
    """Keep personal data out of database error texts (and so out of logs and tracebacks).

    ``hide_parameters`` drops the bound values from SQLAlchemy's text, but PostgreSQL's own
    message carries a DETAIL line with the offending values (``Key (citizen_id)=(...)``,
    ``Failing row contains (...)``). Only the first line of the driver's message is kept (it
    names the constraint); the structured ``orig.diag`` fields stay for code that needs them.
    """
    orig = ctx.original_exception
    if not isinstance(orig, Exception) or not orig.args:
        return None
    text = str(orig.args[0])
    first = text.split("\n", 1)[0]
    if first == text:
        return None
    orig.args = (f"{first}\n{WITHHELD}", *orig.args[1:])
    dbapi = ctx.dialect.loaded_dbapi
    return sa.exc.DBAPIError.instance(
        ctx.statement, None, orig, dbapi.Error, hide_parameters=True,
        connection_invalidated=ctx.is_disconnect, dialect=ctx.dialect,
    )  # fmt: skip


#: libpq's TCP keepalive parameters for PostgreSQL connections (see :func:`make_engine`).
KEEPALIVES: dict[str, int] = {
    "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
}  # fmt: skip


def make_engine(settings: IssuanceConfig | None = None, *, url: str | None = None) -> Engine:
    """An engine for ``url`` or the settings' database (SQLite file created on demand).

    Bound parameters never appear in error texts or in the ``[database] echo`` log
    (``hide_parameters=True``: they are citizen ID numbers, names, photos ...), and
    PostgreSQL's DETAIL lines are withheld from error texts (:func:`_withhold_details`).
    """
    if url is None:
        if settings is None:
            raise ValueError("make_engine needs settings or url")
        url = settings.database_url
    echo = bool(settings.database.echo) if settings is not None else False
    sa_url = sa.make_url(url)
    engine: Engine
    if sa_url.get_backend_name() == "sqlite":
        if sa_url.database and sa_url.database != ":memory:":
            from pathlib import Path

            Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            sa_url, echo=echo, hide_parameters=True,
            connect_args={"check_same_thread": False, "timeout": 10},
        )  # fmt: skip
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    else:
        if sa_url.get_backend_name() == "postgresql" and sa_url.drivername == "postgresql":
            sa_url = sa_url.set(drivername="postgresql+psycopg")
        # TCP keepalives (libpq's): a connection whose peer vanished without a word (the
        # balancer host it went through died, a network cut) fails within about 11 s instead
        # of waiting for an answer for the system's two hours. The URL may set its own.
        keepalives = {k: v for k, v in KEEPALIVES.items() if k not in sa_url.query}
        engine = sa.create_engine(
            sa_url, echo=echo, hide_parameters=True, pool_pre_ping=True,
            connect_args=keepalives,
        )  # fmt: skip
    event.listen(engine, "handle_error", _withhold_details)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def is_conflict(exc: BaseException) -> bool:
    """True when ``exc`` means another transaction changed the same rows first."""
    if isinstance(exc, StaleDataError):
        return True
    if isinstance(exc, sa.exc.StatementError) and isinstance(exc.orig, StaleDataError):
        return True
    if isinstance(exc, sa.exc.OperationalError):
        text = str(exc.orig).lower()
        return (
            "database is locked" in text  # SQLite: stale WAL snapshot / writer busy
            or "could not serialize" in text
            or "deadlock detected" in text
            or "lock not available" in text
        )
    return False


def flush(session: Session) -> None:
    """Flush, turning a lost optimistic-lock race into :class:`ConflictError`."""
    try:
        session.flush()
    except (StaleDataError, sa.exc.OperationalError) as exc:
        if is_conflict(exc):
            raise ConflictError(
                "another user changed this record at the same time; reload and retry"
            ) from exc
        raise


def bind_value(conn: sa.Connection, type_: Any, value: Any) -> Any:
    """``value`` as the driver takes it for a column of ``type_`` (SQLite stores datetimes as
    text in SQLAlchemy's format): for :func:`insert_rows` and driver-level statements."""
    proc = type_.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return proc(value) if proc is not None else value


def one_of(conn: sa.Connection, column: sa.ColumnElement[int], ids: list[int]) -> Any:
    """``column IN ids``; on PostgreSQL one array parameter (``= ANY(...)``) instead of a
    parameter per id, which SQLAlchemy and the driver handle one by one (for long id lists:
    :func:`issuance.batches.bureau.mark_exported`)."""
    if conn.dialect.name == "postgresql":
        # an anonymous parameter: two of these in one statement do not clash
        array = sa.bindparam(None, ids, type_=postgresql.ARRAY(sa.BigInteger()))
        return column == sa.any_(array)
    return column.in_(ids)


def copies(conn: sa.Connection) -> bool:
    """Whether :func:`insert_rows` can ``COPY`` on this connection (PostgreSQL with psycopg)."""
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"


def insert_rows(
    conn: sa.Connection, table: sa.Table, cols: Sequence[str], rows: list[tuple[Any, ...]],
    *, copy: bool = False,
) -> None:  # fmt: skip
    """Many rows in one driver-level ``executemany`` INSERT (no per-row work in SQLAlchemy: the
    values are already what the driver takes, :func:`bind_value`; the bulk paths of a
    million-card batch). ``copy`` (:func:`copies`): ``COPY ... FROM STDIN`` in the same
    transaction, a fraction of the server's work per row of an INSERT statement each."""
    if copy:
        raw: Any = conn.connection.driver_connection
        with (
            raw.cursor() as cur,
            cur.copy(f"COPY {table.name} ({', '.join(cols)}) FROM STDIN") as out,
        ):
            for row in rows:
                out.write_row(row)
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = (f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES "
           f"({', '.join(mark for _ in cols)})")  # fmt: skip
    conn.exec_driver_sql(sql, rows)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error.

    Races lost at commit time (stale version, SQLite busy snapshot, serialisation failure) are
    raised as :class:`ConflictError`.
    """
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException as exc:
        session.rollback()
        if is_conflict(exc):
            raise ConflictError(
                "another user changed this record at the same time; reload and retry"
            ) from exc
        raise
    finally:
        session.close()


def transaction_once(factory: sessionmaker[Session], fn: Callable[[Session], T]) -> T:
    """``fn(session)`` in one :func:`transaction`."""
    with transaction(factory) as session:
        return fn(session)


def is_disconnect(exc: BaseException) -> bool:
    """True when the database could not be reached or the connection broke (a failover, a
    proxy that cut it, the network): the transaction was rolled back, or - if the break came
    during its COMMIT - its outcome is unknown to the client."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    return isinstance(exc, sa.exc.OperationalError) and exc.statement is None  # connecting


def with_reconnect(fn: Callable[[], T], patience: float, *, pause: float = 0.5) -> T:
    """Run ``fn`` (one transaction), again while the database is unreachable
    (:func:`is_disconnect`), for at most ``patience`` seconds; then the last error is raised.
    Only for work whose every step is guarded so that running it twice changes nothing twice
    (the batch pipeline's steps: each first renews the worker's lease and moves the item from
    the stage it is in)."""
    deadline = time.monotonic() + patience
    wait = pause
    while True:
        try:
            return fn()
        except sa.exc.DBAPIError as exc:
            if not is_disconnect(exc) or time.monotonic() + wait > deadline:
                raise
        time.sleep(wait)
        wait = min(wait * 2, 4.0)


def with_retry(fn: Callable[[], T], attempts: int = 8) -> T:
    """Run one transaction, retrying when it lost a race (SQLite busy snapshot, PostgreSQL
    serialisation): each attempt re-reads its rows."""
    for n in range(attempts):
        try:
            return fn()
        except ConflictError:
            if n == attempts - 1:
                raise
            time.sleep(0.02 * (n + 1))
    raise AssertionError("unreachable")
