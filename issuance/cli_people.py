"""``ykt app``: applications — counter intake, file import, listing, review and approval."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cardspec.ids import mask_citizen_id
from issuance.cli_db import AS_HELP, acting, session_scope, settings
from issuance.models import ApplicationStatus, CollectiveKind

app = typer.Typer(no_args_is_help=True)
out = Console()


@app.command("submit")
def submit(
    citizen_id: str = typer.Option(..., "--id", help="18-character citizen ID number"),
    name: str = typer.Option(..., "--name"),
    phone: str = typer.Option(..., "--phone"),
    photo: Path | None = typer.Option(None, "--photo", exists=True, dir_okay=False),
    region_code: str | None = typer.Option(None, "--region"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Receive one application at the counter."""
    from issuance import services

    with session_scope() as s:
        actor = acting(s, as_)
        data = services.ApplicationInput(
            citizen_id=citizen_id, name=name, phone=phone, region_code=region_code,
            photo=photo.read_bytes() if photo else None,
        )  # fmt: skip
        a = services.submit_application(s, settings(), data, actor)
        out.print(f"application {a.id} received for {mask_citizen_id(citizen_id.upper())}")


@app.command("import")
def import_(
    file: Path = typer.Argument(..., exists=True, dir_okay=False),
    collective: str = typer.Option(..., "--collective", help="employer/school/community name"),
    kind: CollectiveKind = typer.Option(CollectiveKind.EMPLOYER, "--kind"),
    photos: Path | None = typer.Option(
        None,
        "--photos",
        exists=True,
        help="directory or .zip with the photo files",
    ),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Import a CSV/XLSX file of applications (see issuance.intake for the columns)."""
    from issuance import intake, services

    with session_scope() as s:
        actor = acting(s, as_)
        coll = services.get_or_create_collective(
            s, collective, kind=kind, region_code=settings().issuer.region_code, actor=actor
        )
        report = intake.import_file(s, settings(), file, coll, actor, photos=photos)
    for r in report.rejected:
        reasons = "; ".join(f"{p.field}: {p.reason}" for p in r.problems)
        out.print(f"line {r.line} ({r.citizen_id_masked}) rejected: {reasons}")
    out.print(report.summary())


@app.command("list")
def list_(
    status: ApplicationStatus | None = typer.Option(None, "--status"),
    limit: int = typer.Option(50, "--limit"),
) -> None:
    """List recent applications (ID numbers masked)."""
    from issuance import services

    table = Table("id", "status", "channel", "citizen id", "name", "card")
    with session_scope() as s:
        for a in services.list_applications(s, status, limit):
            table.add_row(
                str(a.id),
                str(a.status),
                str(a.channel),
                mask_citizen_id(a.person.citizen_id),
                a.person.name,
                str(a.card_id or ""),
            )
    out.print(table)


def _step(fn_name: str, app_id: int, as_: str | None) -> None:
    from issuance import services

    with session_scope() as s:
        actor = acting(s, as_)
        if fn_name == "approve":
            card = services.approve_application(s, settings(), app_id, actor)
            out.print(f"application {app_id} approved: card {card.card_number}")
            return
        getattr(services, f"{fn_name}_application")(s, app_id, actor)
        out.print(f"application {app_id}: {fn_name} done")


@app.command("process")
def process(app_id: int, as_: str | None = typer.Option(None, "--as", help=AS_HELP)) -> None:
    """Clerk: check the documents (received → processed)."""
    _step("process", app_id, as_)


@app.command("review")
def review(app_id: int, as_: str | None = typer.Option(None, "--as", help=AS_HELP)) -> None:
    """Reviewer: processed → reviewed (not by the receiving clerk)."""
    _step("review", app_id, as_)


@app.command("approve")
def approve(app_id: int, as_: str | None = typer.Option(None, "--as", help=AS_HELP)) -> None:
    """Approver: reviewed → approved; allocates the card number (maker–checker enforced)."""
    _step("approve", app_id, as_)


@app.command("reject")
def reject(
    app_id: int,
    reason: str = typer.Option(..., "--reason"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    from issuance import services

    with session_scope() as s:
        services.reject_application(s, app_id, acting(s, as_), reason)
        out.print(f"application {app_id} rejected")
