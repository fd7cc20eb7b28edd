"""``ykt app``: applications — counter intake, file import, listing, review and approval."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cardspec.ids import mask_citizen_id
from issuance.models import ApplicationStatus, CollectiveKind
from yikatong.cli.db import (
    AS_HELP,
    ID_FILE_HELP,
    ID_HELP,
    acting,
    read_citizen_id,
    session_scope,
    settings,
)

app = typer.Typer(no_args_is_help=True)
out = Console()


@app.command("submit")
def submit(
    citizen_id: str | None = typer.Option(None, "--id", help=ID_HELP),
    id_file: Path | None = typer.Option(None, "--id-file", help=ID_FILE_HELP),
    name: str = typer.Option(..., "--name"),
    phone: str = typer.Option(..., "--phone"),
    photo: Path | None = typer.Option(None, "--photo", exists=True, dir_okay=False),
    region_code: str | None = typer.Option(None, "--region"),
    ethnicity: str | None = typer.Option(
        None, "--ethnicity", help="GB 3304 code on the ID card (01 Han, 02 Mongol ...); required"
    ),
    sex: str | None = typer.Option(
        None, "--sex", help="1/男 or 2/女 (checked against the ID number)"
    ),
    address: str | None = typer.Option(None, "--address", help="residence address"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Receive one application at the counter (the citizen ID is asked for unless --id or
    --id-file is given). The ethnicity is required (never defaulted); a missing one is
    refused with every other problem of the record."""
    from issuance import services

    citizen_id = read_citizen_id(citizen_id, id_file)
    with session_scope() as s:
        actor = acting(s, as_)
        data = services.ApplicationInput(
            citizen_id=citizen_id, name=name, phone=phone, region_code=region_code,
            photo=photo.read_bytes() if photo else None, ethnicity=ethnicity, sex=sex,
            address=address,
        )  # fmt: skip
        a = services.submit_application(s, settings(), data, actor)
        out.print(f"application {a.id} received for {mask_citizen_id(a.person.citizen_id)}")


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
        getattr(services, f"{fn_name}_application")(s, app_id, actor, settings=settings())
        out.print(f"application {app_id}: {fn_name} done")


@app.command("process")
def process(app_id: int, as_: str | None = typer.Option(None, "--as", help=AS_HELP)) -> None:
    """Clerk: check the documents (received → processed)."""
    _step("process", app_id, as_)


@app.command("review")
def review(app_id: int, as_: str | None = typer.Option(None, "--as", help=AS_HELP)) -> None:
    """Reviewer: processed → reviewed (not by the receiving clerk; with
    applications.separate_every_step, not by the processing clerk either)."""
    _step("review", app_id, as_)


@app.command("approve")
def approve(app_id: int, as_: str | None = typer.Option(None, "--as", help=AS_HELP)) -> None:
    """Approver: reviewed → approved; allocates the card number. Maker–checker: the approver
    is not the receiver, the processor or the reviewer."""
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


@app.command("show")
def show(
    app_id: int,
    photo_out: Path | None = typer.Option(
        None, "--photo-out", dir_okay=False, help="write the processed photo (JPEG) to this file"
    ),
    full_id: bool = typer.Option(
        False, "--full-id", help="show the full citizen ID number (to check it against the ID card)"
    ),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Every field of an application and its processed photo, before review and approval: the
    photo is drawn inline where the terminal can (iTerm2, WezTerm, kitty) and written to a file
    with --photo-out. Audited."""
    import sys

    from issuance import display, termimage
    from issuance.services.application_view import view_application

    cfg = settings()
    with session_scope() as s:
        v = view_application(s, app_id, acting(s, as_), with_photo=True)
    sex = {"1": "male", "2": "female", "9": "unstated"}.get(v.sex, v.sex)
    rows = [
        ("application", f"{v.application_id} {v.status} (via {v.channel})"),
        ("collective", display.text(v.collective)),
        ("citizen id", v.citizen_id if full_id else mask_citizen_id(v.citizen_id)),
        ("name", v.name),
        ("sex", sex),
        ("birth date", display.day(v.birth_date)),
        ("ethnicity", display.text(v.ethnicity)),
        ("region", v.region_code),
        ("phone", display.text(v.phone)),
        ("address", display.text(v.address)),
        ("received", f"{display.local_time(v.received_at, cfg)} by {display.text(v.received_by)}"),
        ("processed by", display.text(v.processed_by)),
        ("reviewed by", display.text(v.reviewed_by)),
        ("approved by", display.text(v.approved_by)),
        ("decided", display.local_time(v.decided_at, cfg)),
        ("reject reason", display.text(v.reject_reason)),
        ("fee", display.yuan(v.fee_fen)),
        ("card", display.text(v.card_number)),
        ("file line", display.text(v.import_ref)),
    ]
    if v.photo_jpeg is not None:
        rows.append(("photo", f"{len(v.photo_jpeg)} bytes, sha256 {v.photo_sha256}"))
    else:
        rows.append(("photo", "exempt (child)" if v.photo_exempt else "none"))
    for label, value in rows:
        out.print(f"{label:>13}: {value}", highlight=False, markup=False)
    if v.photo_jpeg is None:
        return
    if photo_out is not None:
        photo_out.write_bytes(v.photo_jpeg)
        out.print(f"photo written to {photo_out}")
    elif not termimage.show_inline(v.photo_jpeg, sys.stdout):
        out.print("to see the photo: --photo-out FILE (this terminal cannot draw images)")
