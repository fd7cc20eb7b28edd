"""``ykt db``: migrations, drift check, staff bootstrap. Also the helpers the other issuance
CLIs share (settings, sessions, acting staff)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from issuance.audit import Actor
from issuance.models import Channel, StaffRole
from issuance.settings import Settings

app = typer.Typer(no_args_is_help=True)
out = Console()

AS_HELP = "Staff user acting (default: $YKT_STAFF)."


def settings() -> Settings:
    from issuance.settings import get_settings

    return get_settings()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A committed unit of work on the configured database."""
    from issuance.db import make_engine, make_sessionmaker, transaction

    engine = make_engine(settings())
    try:
        with transaction(make_sessionmaker(engine)) as session:
            yield session
    finally:
        engine.dispose()


def acting(session: Session, username: str | None, channel: str = "counter") -> Actor:
    from issuance.services import actor_for

    name = username or os.environ.get("YKT_STAFF")
    if not name:
        raise typer.BadParameter("say who acts: --as USER or YKT_STAFF=USER")
    return actor_for(session, name, Channel(channel))


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("head")) -> None:
    """Run the migrations (creates the SQLite file if needed)."""
    from issuance import migrations
    from issuance.db import make_engine

    engine = make_engine(settings())
    migrations.upgrade(engine, revision)
    out.print(f"database at revision {migrations.current_revision(engine)}")
    engine.dispose()


@app.command("current")
def current() -> None:
    """Show the database's revision and the code's head revision."""
    from issuance import migrations
    from issuance.db import make_engine

    engine = make_engine(settings())
    out.print(f"current: {migrations.current_revision(engine)}  head: {migrations.head_revision()}")
    engine.dispose()


@app.command("check")
def check() -> None:
    """Fail (exit 1) if the database is behind or the models drift from the migrations."""
    from issuance import migrations
    from issuance.db import make_engine

    engine = make_engine(settings())
    try:
        cur, head = migrations.current_revision(engine), migrations.head_revision()
        if cur != head:
            out.print(f"[red]database at {cur}, migrations head is {head}[/red]")
            raise typer.Exit(1)
        diffs = migrations.drift(engine)
        if diffs:
            for d in diffs:
                out.print(f"[red]drift:[/red] {d}")
            raise typer.Exit(1)
        out.print("models and migrations agree")
    finally:
        engine.dispose()


@app.command("create-staff")
def create_staff(
    username: str,
    role: StaffRole = typer.Option(..., "--role"),
    display_name: str | None = typer.Option(None, "--name"),
) -> None:
    """Create a staff user (bootstrap: recorded as done by the system)."""
    from issuance import services

    with session_scope() as s:
        staff = services.create_staff(s, username, role, display_name=display_name)
        out.print(f"staff {staff.username} ({staff.role}) id {staff.id}")
