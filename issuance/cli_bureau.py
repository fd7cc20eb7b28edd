"""``ykt bureau ...``: the card-bureau path (:mod:`issuance.batches.bureau`).

    ykt batch prepare BATCH                            data preparation only (chips assigned)
    ykt hsm transport generate NAME                    the bureau's transport key (custodians)
    ykt hsm export-public-key -o issuer.pem            hand it to the bureau (out of band)
    ykt bureau export BATCH --transport NAME -o FILE   signed bureau file of the batch's
                                                       prepared cards; they go ``at_bureau``
                                                       (no station takes them any more)
    ykt bureau verify FILE --public-key PEM            what the bureau runs first
    ykt bureau check-result RESULT --bureau-file FILE  every line of the bureau's result file
                                                       checked, nothing applied; exit 1 if any
                                                       line is refused
    ykt bureau import RESULT --bureau-file FILE        check, then apply: made cards good
                                                       (checked), spoiled ones requeued;
                                                       idempotent (run it again after a crash)

:func:`register` adds the same commands to ``ykt batch`` as ``bureau-export``,
``bureau-verify``, ``bureau-check`` and ``bureau-import``.
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
from issuance.batches.bureau_result import (
    BureauResult,
    BureauResultInvalid,
    ProblemKind,
    import_bureau_result,
)
from issuance.batches.prepared import PreparedCard
from issuance.cli_db import AS_HELP

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from hsm.service import KeyService
    from issuance.audit import Actor
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
    """The bureau file of a batch's prepared cards (chip assigned, in no station), in item
    order; streamed (each card rebuilt, written, then dropped). The file is complete (renamed
    into place) before :func:`mark_exported` moves the cards ``at_bureau``: a crash in between
    leaves the cards prepared and the file unanswerable (export again)."""
    import sqlalchemy as sa

    from issuance.batches import dataprep
    from issuance.batches.selection import get_batch
    from issuance.errors import ValidationError
    from issuance.models import BatchItem, BatchStage

    found = get_batch(session, batch)
    where = (
        BatchItem.batch_id == found.id,
        BatchItem.stage == BatchStage.PREPARED,
        BatchItem.chip_serial.is_not(None),
        BatchItem.lease_owner.is_(None),
    )
    item_ids = list(session.scalars(sa.select(BatchItem.id).where(*where).order_by(BatchItem.id)))
    if not item_ids:
        raise ValidationError(
            f"batch {found.name} has no prepared card to export (run ykt batch prepare "
            f"{found.name} first)"
        )

    def cards() -> Iterator[PreparedCard]:
        for item_id in item_ids:
            item = session.get(BatchItem, item_id)
            assert item is not None
            yield dataprep.prepared_for_item(session, settings, keys, item)
            session.expunge_all()  # bounded memory over a large batch

    return write_bureau_file(output, cards(), keys, transport, batch=found.name, progress=progress)


def mark_exported(session: Session, info: BureauFileInfo, actor: Actor) -> int:
    """Move the cards of a written bureau file ``prepared → at_bureau`` (stations skip them),
    recording the file on each (audited); returns how many."""
    import sqlalchemy as sa

    from issuance import audit
    from issuance.batches import items as bi
    from issuance.errors import ConflictError
    from issuance.models import BatchItem, BatchStage

    expected = expected_cards(info.path)
    items = session.scalars(
        sa.select(BatchItem).where(BatchItem.card_id.in_(list(expected))).with_for_update()
    ).all()
    moved = 0
    for item in items:
        if item.stage != BatchStage.PREPARED or item.chip_serial != expected[item.card_id]:
            raise ConflictError(
                f"card {item.card_id} changed while the bureau file was written (now "
                f"{item.stage}): export again"
            )
        item.bureau_file_id = info.file_id
        details = {"bureau_file": info.file_id, "transport_key": info.transport_key}
        bi.advance(session, item, "export", actor, details=details)
        moved += 1
    audit.record(session, actor, "batch.bureau_exported", "bureau_file", info.file_id,
                 details={"batch": info.batch, "cards": moved, "sha256": info.sha256,
                          "path": str(info.path)})  # fmt: skip
    return moved


@app.command("export")
def export(
    batch: Annotated[str, typer.Argument(help="Batch id or name.")],
    transport: Annotated[str, typer.Option("--transport", help="Bureau transport key name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bureau file to write.")],
    as_: Annotated[str | None, typer.Option("--as", help=AS_HELP)] = None,
) -> None:
    """Write the signed bureau file of a batch's prepared cards (streamed, any size); the
    cards go ``at_bureau``."""
    from hsm.service import key_service_from_settings
    from issuance.cli_db import acting, session_scope, settings

    cfg = settings()
    keys = key_service_from_settings(cfg)
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())  # fmt: skip
    with session_scope() as session:
        actor = acting(session, as_)
    with session_scope() as session, Progress(*columns, console=err) as bar:
        task = bar.add_task("bureau file", total=None)
        info = export_batch(session, cfg, keys, batch, output, transport,
                            progress=lambda n: bar.update(task, completed=n))  # fmt: skip
    with session_scope() as session:
        moved = mark_exported(session, info, actor)
    out.print(f"{info.path}: {info.count} cards, sha256 {info.sha256}, file id {info.file_id}")
    out.print(f"{moved} card(s) now at the bureau (stations skip them). When the bureau's "
              "result file comes back:")  # fmt: skip
    out.print(f"  ykt bureau import RESULT --bureau-file {info.path}")


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
    _show(checked)
    if checked.problems:
        lines = BureauResultInvalid(checked).lines(ProblemKind.MALFORMED)
        if lines:
            err.print(f"malformed lines: {', '.join(map(str, lines[:20]))}")
        raise typer.Exit(1)


@app.command("import")
def import_result(
    result: _File,
    bureau_file: Annotated[
        Path, typer.Option("--bureau-file", help="The bureau file it answers.", exists=True)
    ],
    partial: Annotated[
        bool, typer.Option("--partial", help="Apply the good lines even if some are refused.")
    ] = False,
    as_: Annotated[str | None, typer.Option("--as", help=AS_HELP)] = None,
) -> None:
    """Check the bureau's result file, then apply it: made cards good, spoiled ones requeued
    (idempotent). Refused lines: nothing is applied unless ``--partial``; exit code 1."""
    from issuance.batches.bureau_result import apply_bureau_result
    from issuance.cli_db import acting, session_scope, settings

    try:
        checked = import_bureau_result(
            result, expected_cards(bureau_file), bureau_file_id(bureau_file)
        )
    except BureauFileInvalid as exc:
        err.print(f"[red]refused[/red]: {exc}")
        raise typer.Exit(1) from None
    _show(checked)
    if checked.problems and not partial:
        err.print("nothing applied: correct the refused lines (or --partial to apply the rest)")
        raise typer.Exit(1)
    from issuance.batches.pipeline import with_retry
    from issuance.db import make_engine, make_sessionmaker, transaction

    with session_scope() as session:
        actor = acting(session, as_)
    engine = make_engine(settings())
    factory = make_sessionmaker(engine)

    def run_txn(fn: Callable[[Session], object]) -> object:
        def once() -> object:
            with transaction(factory) as session:
                return fn(session)

        return with_retry(once)

    try:
        applied = apply_bureau_result(run_txn, settings(), checked, actor)
    finally:
        engine.dispose()
    out.print(
        f"applied: {applied.made} card(s) made (checked), {applied.spoiled} spoiled at the "
        f"bureau and requeued ({applied.failed} of them failed), {applied.already_applied} "
        f"already applied before"
    )
    for card_id, why in applied.refused:
        err.print(f"[red]not applied[/red]: card {card_id}: {why}")
    if checked.missing:
        out.print(f"{len(checked.missing)} card(s) not reported yet: still at the bureau")
    if applied.refused or checked.problems:
        raise typer.Exit(1)


def _show(checked: BureauResult) -> None:
    table = Table("made", "spoiled", "refused lines", "not reported")
    table.add_row(str(len(checked.made)), str(len(checked.spoiled)),
                  str(len(checked.problems)), str(len(checked.missing)))  # fmt: skip
    out.print(table)
    if checked.problems:
        problems = Table("line", "problem", "card", "reason")
        for p in checked.problems[:50]:
            problems.add_row(str(p.line), p.kind.value, str(p.card_id or ""), p.reason)
        out.print(problems)


def register(batch_app: typer.Typer) -> None:
    """Add the commands to ``ykt batch`` (``bureau-export``, ``bureau-verify``,
    ``bureau-check``, ``bureau-import``)."""
    batch_app.command("bureau-export")(export)
    batch_app.command("bureau-verify")(verify)
    batch_app.command("bureau-check")(check_result)
    batch_app.command("bureau-import")(import_result)
