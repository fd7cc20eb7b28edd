"""``ykt db``: migrations, drift check, staff accounts. Also the helpers the other issuance
CLIs share (settings, sessions, acting staff, reading citizen ID numbers).

Who acts (every command with ``--as``): the staff user named by ``--as USER`` (or
``$YKT_STAFF``) *proves it with their password*: ``$YKT_STAFF_PASSWORD``, else the file named by
``$YKT_STAFF_PASSWORD_FILE``, else a hidden prompt. Only the scrypt hash is stored. The first
staff user is created without one (bootstrap); after that only an admin or supervisor, acting
with their own password, creates users and sets passwords (``ykt db create-staff``,
``ykt db set-password``).
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.models import Channel, StaffRole
from yikatong.settings import Settings

app = typer.Typer(no_args_is_help=True)
out = Console()

AS_HELP = (
    "Staff user acting (default: $YKT_STAFF); the password comes from $YKT_STAFF_PASSWORD, "
    "$YKT_STAFF_PASSWORD_FILE or a prompt."
)
ID_HELP = (
    "Citizen ID number. Better left out: it is then read from --id-file or asked for (typed "
    "IDs stay out of the shell history)."
)
ID_FILE_HELP = "File whose first line is the citizen ID number ('-' = standard input)."

#: Passwords typed at the prompt and checked, in this process (one prompt per command, not per
#: transaction).
_prompted: dict[str, str] = {}


def settings() -> Settings:
    from yikatong.settings import get_settings

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


def staff_password(username: str) -> str:
    """The acting user's password: $YKT_STAFF_PASSWORD, $YKT_STAFF_PASSWORD_FILE, or a prompt."""
    if os.environ.get("YKT_STAFF_PASSWORD"):
        return os.environ["YKT_STAFF_PASSWORD"]
    path = os.environ.get("YKT_STAFF_PASSWORD_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as exc:
            raise typer.BadParameter(f"cannot read YKT_STAFF_PASSWORD_FILE {path}") from exc
    if username in _prompted:
        return _prompted[username]
    return str(typer.prompt(f"password of {username}", hide_input=True, err=True))


def acting(session: Session, username: str | None, channel: str = "counter") -> Actor:
    """The authenticated staff user acting through ``channel`` (see the module docstring)."""
    from issuance.services import authenticate_staff

    name = username or os.environ.get("YKT_STAFF")
    if not name:
        raise typer.BadParameter("say who acts: --as USER or YKT_STAFF=USER")
    password = staff_password(name)
    actor = authenticate_staff(session, name, password, Channel(channel))
    if not os.environ.get("YKT_STAFF_PASSWORD") and not os.environ.get("YKT_STAFF_PASSWORD_FILE"):
        _prompted[name] = password
    return actor


def read_citizen_id(value: str | None, id_file: Path | None, prompt: str = "citizen ID") -> str:
    """A citizen ID number from ``--id``, ``--id-file`` (``-`` = stdin) or a prompt."""
    if value and id_file:
        raise typer.BadParameter("give --id or --id-file, not both")
    if value:
        return value.strip().upper()
    if id_file is not None:
        try:
            text = sys.stdin.readline() if str(id_file) == "-" else id_file.read_text("utf-8")
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {id_file}: {exc.strerror}") from exc
        first = text.strip().splitlines()[0] if text.strip() else ""
        if not first:
            raise typer.BadParameter(f"{id_file}: no citizen ID number in it")
        return first.strip().upper()
    return str(typer.prompt(prompt, err=True)).strip().upper()


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


def admin_or_bootstrap(session: Session, as_: str | None, what: str) -> Actor:
    """The acting admin/supervisor, or the system while no user has a password yet."""
    from issuance.errors import PermissionDenied
    from issuance.services.staff import STAFF_ADMINS, can_bootstrap

    if can_bootstrap(session) and not as_ and not os.environ.get("YKT_STAFF"):
        return SYSTEM_ACTOR
    actor = acting(session, as_)
    if actor.role not in STAFF_ADMINS:
        raise PermissionDenied(f"role {actor.role} may not {what}")
    return actor


def _new_password(from_stdin: bool) -> tuple[str, bool]:
    """(password, generated): one line of stdin, or a fresh random one."""
    from issuance.services.staff import generate_password

    if from_stdin:
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            raise typer.BadParameter("--password-stdin: no password on standard input")
        return line, False
    return generate_password(), True


#: The roles ``create-staff`` offers: every role but ``system`` (the service itself, no person).
PersonRole = enum.Enum(  # type: ignore[misc]
    "PersonRole", {r.name: r.value for r in StaffRole if r != StaffRole.SYSTEM}, type=str
)


@app.command("create-staff")
def create_staff(
    username: str,
    role: PersonRole = typer.Option(..., "--role"),
    display_name: str | None = typer.Option(None, "--name"),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="read the new user's password from standard input"
    ),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP + " Needed once a user exists."),
) -> None:
    """Create a staff user with a CLI password (printed once when generated).

    The first user with a password (the bootstrap administrator) is created by the system;
    every later one by an admin or supervisor acting with their own password."""
    from issuance import services

    password, generated = _new_password(password_stdin)
    with session_scope() as s:
        actor = admin_or_bootstrap(s, as_, "create staff users")
        staff = services.create_staff(
            s, username, StaffRole(role.value), display_name=display_name, actor=actor
        )
        services.set_password(s, username, password, actor)
        out.print(f"staff {staff.username} ({staff.role}) id {staff.id}")
    if generated:
        out.print(f"password of {username} (shown once, give it to them): {password}")


@app.command("set-password")
def set_password(
    username: str,
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="read the new password from standard input"
    ),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Set a staff user's CLI password (an admin or supervisor, or the user themself; while
    no user has a password yet, e.g. after an upgrade, without --as)."""
    from issuance import services
    from issuance.services.staff import can_bootstrap

    password, generated = _new_password(password_stdin)
    with session_scope() as s:
        actor = SYSTEM_ACTOR if can_bootstrap(s) and not as_ else acting(s, as_)
        services.set_password(s, username, password, actor)
    out.print(f"password of {username} set")
    if generated:
        out.print(f"new password (shown once): {password}")


@app.command("list-staff")
def list_staff(
    role: StaffRole | None = typer.Option(None, "--role"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Staff users: role, collection point, active, whether they have a password (admin,
    supervisor or auditor). Reset a password with ykt db set-password USER --as ADMIN."""
    from rich.table import Table

    from issuance import display
    from issuance.services.staff_list import list_staff as list_

    with session_scope() as s:
        rows = list_(s, acting(s, as_), role=role)
    table = Table("user", "role", "place", "active", "password", "since", "name", box=None)
    for r in rows:
        table.add_row(
            r.username, r.role, display.text(r.agency), "yes" if r.active else "DISABLED",
            "set" if r.has_password else "none",
            display.local_time(r.created_at, settings())[:10], r.display_name,
        )  # fmt: skip
    out.print(table)
