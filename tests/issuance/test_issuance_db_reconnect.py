"""issuance.db.with_reconnect on PostgreSQL: a transaction whose connection is cut (the
server ends the session, as at a failover or when a proxy drops it) runs again on a new
connection; a database out of reach longer than the patience gives the error; errors that are
not a lost connection are never retried."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance.db import (
    is_disconnect,
    make_engine,
    make_sessionmaker,
    transaction_once,
    with_reconnect,
)

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="session")
def db_backend() -> str:
    return "postgres"


def test_a_transaction_cut_off_by_the_server_runs_again_on_a_new_connection(
    fresh_db_url: str,
) -> None:
    engine = make_engine(url=fresh_db_url)
    factory = make_sessionmaker(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE reconnect_t (n integer)"))
    pids: list[int] = []

    def work(s: Session) -> int:
        pid = int(s.scalar(sa.text("SELECT pg_backend_pid()")) or 0)
        pids.append(pid)
        s.execute(sa.text("INSERT INTO reconnect_t VALUES (:n)"), {"n": len(pids)})
        if len(pids) == 1:  # the first attempt: the server ends this session mid-transaction
            with engine.connect() as other:
                other.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        return int(s.scalar(sa.text("SELECT count(*) FROM reconnect_t")) or 0)

    assert with_reconnect(lambda: transaction_once(factory, work), 10, pause=0.1) == 1
    assert len(pids) == 2 and pids[0] != pids[1]
    with engine.connect() as conn:  # only the second attempt committed
        assert conn.execute(sa.text("SELECT n FROM reconnect_t")).scalars().all() == [2]
    # a mistake in the SQL is no lost connection: raised at once, never run again
    calls: list[int] = []

    def wrong(s: Session) -> None:
        calls.append(1)
        s.execute(sa.text("SELECT * FROM no_such_table"))

    with pytest.raises(sa.exc.ProgrammingError) as err:
        with_reconnect(lambda: transaction_once(factory, wrong), 10, pause=0.1)
    assert calls == [1] and not is_disconnect(err.value)
    engine.dispose()


def test_a_database_out_of_reach_longer_than_the_patience_gives_the_error() -> None:
    engine = make_engine(url="postgresql+psycopg://app@127.0.0.1:9/nothing")  # nothing listens
    factory = make_sessionmaker(engine)
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError) as err:
        with_reconnect(lambda: transaction_once(factory, lambda s: s.scalar(sa.text("SELECT 1"))),
                       1.5, pause=0.2)  # fmt: skip
    took = time.monotonic() - started
    assert is_disconnect(err.value) and 0.5 < took < 5.0, took
    engine.dispose()
