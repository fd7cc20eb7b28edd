"""Alembic environment: uses a connection handed over by issuance.migrations.upgrade, else
the URL from the ini file, else the project settings."""

from __future__ import annotations

from alembic import context

from issuance import models  # noqa: F401  (register every table)
from issuance.db import Base, make_engine

config = context.config
target_metadata = Base.metadata


def _configure(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if url:
        engine = make_engine(url=url)
    else:
        from yikatong.settings import get_settings  # alembic runs this file as a script: a root

        engine = make_engine(get_settings())
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) mode is not supported; run against a database")
run_migrations_online()
