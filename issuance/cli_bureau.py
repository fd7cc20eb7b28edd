"""``ykt bureau ...``: the card-bureau path (:mod:`issuance.batches.bureau`).

    ykt bureau export BATCH --transport NAME -o FILE   signed bureau file of the batch's
                                                       prepared cards (chip assigned)
    ykt bureau verify FILE --public-key PEM            what the bureau runs first
    ykt bureau check-result RESULT --bureau-file FILE  every line of the bureau's result file
                                                       checked; exit code 1 if any is refused

:func:`register` adds the same commands to ``ykt batch`` as ``bureau-export``,
``bureau-verify`` and ``bureau-import``. Applying a checked result to the batch (made cards
forward, spoiled cards requeued) is the batch pipeline's job: ``check-result`` only reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from issuance.batches.bureau import (
    BureauFileInfo,
    BureauFileInvalid,
    bureau_file_id,
    expected_cards,
    verify_bureau_file,
    write_bureau_file,
)
from issuance.batches.bureau_result import BureauResultInvalid, ProblemKind, import_bureau_result
from issuance.batches.prepared import PreparedCard

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from hsm.service import KeyService
    from issuance.settings import Settings

app = typer.Typer(no_args_is_help=True, help="The card-bureau path: bureau files and results.")
out = Console()
err = Console(stderr=True)

_File = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]


def export_batch(
    session: Session,
    settings: Settings,
    keys: KeyService,
    batch: str | int,
    output: Path,
    transport: str,
    progress: Callable[[int], None] | None = None,
) -> BureauFileInfo:
    """The bureau file of a batch's cards that have their chip assigned (data preparation
    done), in item order; streamed (each card rebuilt, written, then dropped)."""
    import sqlalchemy as sa

    from issuance.batches import dataprep
    from issuance.batches.selection import get_batch
    from issuance.models import BatchItem

    found = get_batch(session, batch)
    where = (BatchItem.batch_id == found.id, BatchItem.chip_serial.is_not(None))
    item_ids = list(session.scalars(sa.select(BatchItem.id).where(*where).order_by(BatchItem.id)))

    def cards() -> Iterator[PreparedCard]:
        for item_id in item_ids:
            item = session.get(BatchItem, item_id)
            assert item is not None
            yield dataprep.prepared_for_item(session, settings, keys, item)
            session.expunge_all()  # bounded memory over a large batch

    return write_bureau_file(output, cards(), keys, transport, batch=found.name, progress=progress)


@app.command("export")
def export(
    batch: Annotated[str, typer.Argument(help="Batch id or name.")],
    transport: Annotated[str, typer.Option("--transport", help="Bureau transport key name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bureau file to write.")],
) -> None:
    """Write the signed bureau file of a batch's prepared cards (streamed, any size)."""
    from hsm.service import key_service_from_settings
    from issuance.cli_db import session_scope, settings

    cfg = settings()
    keys = key_service_from_settings(cfg)
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())  # fmt: skip
    with session_scope() as session, Progress(*columns, console=err) as bar:
        task = bar.add_task("bureau file", total=None)
        info = export_batch(session, cfg, keys, batch, output, transport,
                            progress=lambda n: bar.update(task, completed=n))  # fmt: skip
    out.print(f"{info.path}: {info.count} cards, sha256 {info.sha256}, file id {info.file_id}")


@app.command("verify")
def verify(
    path: _File,
    public_key: Annotated[
        Path, typer.Option("--public-key", help="The issuer's public key (PEM).", exists=True)
    ],
) -> None:
    """Check a bureau file's format, sequence, count, digest and signature."""
    try:
        info = verify_bureau_file(path, public_key.read_bytes())
    except BureauFileInvalid as exc:
        err.print(f"[red]refused[/red]: {exc}")
        raise typer.Exit(1) from None
    out.print(f"{path}: valid, {info.count} cards, batch {info.batch!r}, file id {info.file_id}")


@app.command("check-result")
def check_result(
    result: _File,
    bureau_file: Annotated[
        Path, typer.Option("--bureau-file", help="The bureau file it answers.", exists=True)
    ],
) -> None:
    """Check every line of a bureau result file against the bureau file."""
    try:
        checked = import_bureau_result(
            result, expected_cards(bureau_file), bureau_file_id(bureau_file)
        )
    except BureauFileInvalid as exc:
        err.print(f"[red]refused[/red]: {exc}")
        raise typer.Exit(1) from None
    table = Table("made", "spoiled", "refused lines", "not reported")
    table.add_row(
        str(len(checked.made)),
        str(len(checked.spoiled)),
        str(len(checked.problems)),
        str(len(checked.missing)),
    )
    out.print(table)
    if checked.problems:
        problems = Table("line", "problem", "card", "reason")
        for p in checked.problems[:50]:
            problems.add_row(str(p.line), p.kind.value, str(p.card_id or ""), p.reason)
        out.print(problems)
        lines = BureauResultInvalid(checked).lines(ProblemKind.MALFORMED)
        if lines:
            err.print(f"malformed lines: {', '.join(map(str, lines[:20]))}")
        raise typer.Exit(1)


def register(batch_app: typer.Typer) -> None:
    """Add the commands to ``ykt batch`` (``bureau-export``, ``bureau-verify``,
    ``bureau-import``)."""
    batch_app.command("bureau-export")(export)
    batch_app.command("bureau-verify")(verify)
    batch_app.command("bureau-import")(check_result)
