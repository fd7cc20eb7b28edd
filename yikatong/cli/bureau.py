"""``ykt bureau ...``: the card-bureau path (:mod:`issuance.batches.bureau`).

    ykt batch prepare BATCH                            data preparation only (chips assigned)
    ykt hsm transport-key generate NAME                the bureau's transport key (custodians)
    ykt hsm export-public-key -o issuer.pem            hand it to the bureau (out of band)
    ykt bureau export BATCH --transport NAME -o FILE [--workers N]
                                                       data preparation for the bureau: every
                                                       card not yet made (selected: chips
                                                       assigned now, or prepared) into a
                                                       signed bureau file; they go
                                                       ``at_bureau`` (no station takes them)
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

from collections.abc import Callable
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
)
from issuance.batches.bureau_result import (
    BureauResult,
    BureauResultInvalid,
    ProblemKind,
    import_bureau_result,
)
from issuance.db import with_retry
from issuance.errors import ValidationError
from yikatong.cli.db import AS_HELP

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from hsm.service import KeyService
    from issuance.audit import Actor
    from yikatong.settings import Settings

app = typer.Typer(no_args_is_help=True, help="The card-bureau path: bureau files and results.")
out = Console()
err = Console(stderr=True)

_File = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]


def export_batch(
    settings: Settings,
    keys: KeyService,
    batch: str | int,
    output: Path,
    transport: str,
    actor: Actor,
    *,
    factory: sessionmaker[Session] | None = None,
    workers: int = 1,
    chunk: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[BureauFileInfo, int, list[str]]:
    """Data preparation of a batch for the bureau (:func:`issuance.batches.bulkprep.
    export_to_bureau`): its selected cards prepared (chips assigned) and, with its cards
    prepared before, streamed into a signed bureau file; the file is complete (renamed into
    place) before its cards move ``at_bureau`` (:func:`mark_exported`): a crash in between
    leaves them prepared and the file unanswerable (export again). Returns the file's info,
    the number of cards now at the bureau and the cards refused (their data cannot go on a
    chip: left out, still selected)."""
    from issuance.batches.pipeline import export_batch_to_bureau
    from issuance.db import make_engine, make_sessionmaker
    from yikatong.wiring import batch_adapters

    engine = make_engine(settings) if factory is None else None
    fac = factory or make_sessionmaker(engine)  # type: ignore[arg-type]
    try:
        return export_batch_to_bureau(
            settings, fac, keys, batch, output, transport, actor,
            adapters=batch_adapters(settings), workers=workers, chunk=chunk, on_progress=progress,
        )  # fmt: skip
    finally:
        if engine is not None:
            engine.dispose()


def mark_exported(session: Session, info: BureauFileInfo, actor: Actor) -> int:
    """Move the cards of a written bureau file ``prepared → at_bureau`` (see
    :func:`issuance.batches.bureau.mark_exported`)."""
    from issuance.batches.bureau import mark_exported as mark

    return mark(session, info, actor)


@app.command("export")
def export(
    batch: Annotated[str, typer.Argument(help="Batch id or name.")],
    transport: Annotated[str, typer.Option("--transport", help="Bureau transport key name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bureau file to write.")],
    as_: Annotated[str | None, typer.Option("--as", help=AS_HELP)] = None,
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, max=16, help="Worker processes.")
    ] = 1,
    chunk: Annotated[
        int | None, typer.Option("--chunk", min=1, help="Cards per chunk (default: 500).")
    ] = None,
) -> None:
    """Data preparation for the bureau: every card of the batch not yet made (selected or
    prepared) into a signed bureau file (streamed, any size); the cards go ``at_bureau``."""
    from issuance.batches import items as bi
    from issuance.batches.selection import get_batch
    from issuance.models import BatchStage
    from yikatong.cli.db import acting, session_scope, settings
    from yikatong.wiring import key_service_from_settings

    cfg = settings()
    keys = key_service_from_settings(cfg)
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())  # fmt: skip
    with session_scope() as session:
        actor = acting(session, as_)
        found = get_batch(session, batch)
        bi.recover_interrupted(session, found.id, actor)
        counts = bi.stage_counts(session, found.id)
    total = counts[BatchStage.SELECTED] + counts[BatchStage.PREPARED]
    try:
        with Progress(*columns, console=err) as bar:
            task = bar.add_task("bureau file", total=total)
            info, moved, refused = export_batch(
                cfg, keys, batch, output, transport, actor, workers=workers, chunk=chunk,
                progress=lambda n: bar.advance(task, n),
            )  # fmt: skip
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted.[/yellow] No bureau file written. Export again:\n"
                  f"  ykt bureau export {batch} --transport {transport} -o {output}")  # fmt: skip
        raise typer.Exit(130) from None
    except ValidationError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    out.print(f"{info.path}: {info.count} cards, sha256 {info.sha256}, file id {info.file_id}")
    out.print(f"{moved} card(s) now at the bureau (stations skip them). When the bureau's "
              "result file comes back:")  # fmt: skip
    out.print(f"  ykt bureau import RESULT --bureau-file {info.path}")
    for e in refused:
        err.print(f"[red]refused[/red]: {e}")
    if refused:
        err.print(f"{len(refused)} card(s) refused (not in the file, left selected): correct "
                  "their data, then export them in a new file")  # fmt: skip
        raise typer.Exit(1)


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
    from yikatong.cli.db import acting, session_scope, settings

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
