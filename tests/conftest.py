"""Shared fixtures for every package's tests (keep small and generic).

* ``settings``: settings rooted in the test's tmp dir (never the project's var/).
* ``pg_server``: a private PostgreSQL cluster for this test session (one per xdist worker).
* ``pg_url``: URL of an empty database on it.
* ``db_backend``: "sqlite" or "postgres" (tests using ``engine``/``session`` run on both;
  the postgres ones carry the ``postgres`` marker).
* ``engine``: an engine on a database migrated once per session (Alembic upgrade head).
* ``session``: a Session isolated in a transaction rolled back after the test (services'
  own SAVEPOINTs nest inside it).
* ``fresh_db_url``: URL of a private, freshly migrated database (for tests that commit, e.g.
  real concurrent connections).
"""

from __future__ import annotations

import itertools
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from yikatong.settings import Settings, load_settings

# A shell starts its background jobs with SIGINT ignored, and every child inherits that: the
# tests that press Ctrl-C on a child (ykt batch run, ykt readers start, the demo) need it
# delivered, whoever started the suite.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_counter = itertools.count(1)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(environ={"YKT_DATA_DIR": str(tmp_path)})


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from devstack.dbserver import TemporaryPostgres

    with TemporaryPostgres(tmp_path_factory.mktemp("pg")) as pg:
        yield pg


@pytest.fixture(scope="session")
def pg_url(pg_server: object) -> str:
    return pg_server.create_database("ykt_empty")  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def _pg_template(pg_server: object) -> str:
    from issuance import migrations
    from issuance.db import make_engine

    url = pg_server.create_database("ykt_template")  # type: ignore[attr-defined]
    engine = make_engine(url=url)
    migrations.upgrade(engine)
    engine.dispose()
    return "ykt_template"


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from issuance import migrations
    from issuance.db import make_engine

    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    engine = make_engine(url=f"sqlite:///{path}")
    migrations.upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _new_db(request: pytest.FixtureRequest, backend: str, dest_dir: Path) -> str:
    name = f"ykt_{next(_counter)}"
    if backend == "postgres":
        template = request.getfixturevalue("_pg_template")
        pg = request.getfixturevalue("pg_server")
        return str(pg.create_database(name, template=template))
    template_path: Path = request.getfixturevalue("_sqlite_template")
    path = dest_dir / f"{name}.db"
    shutil.copyfile(template_path, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def engine(
    db_backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    from issuance.db import make_engine

    url = _new_db(request, db_backend, tmp_path_factory.mktemp("db"))
    eng = make_engine(url=url)
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    conn = engine.connect()
    outer = conn.begin()
    sess = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield sess
    finally:
        sess.close()
        outer.rollback()
        conn.close()


@pytest.fixture
def fresh_db_url(db_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _new_db(request, db_backend, tmp_path)
