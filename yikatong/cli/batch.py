"""``ykt batch``: production batches — create, prepare, run, resume, status, report, ship.

    ykt batch create NAME [--region 3301] [--collective NAME] [--from D] [--to D] --as USER
    ykt batch prepare BATCH [--workers N]    data preparation only (the batch's perso file)
    ykt batch run BATCH [--readers N]        data preparation + stations (progress bars)
    ykt batch resume BATCH                   after a crash or Ctrl-C: finishes the batch
    ykt batch status [BATCH]                 counts by stage (all batches without BATCH)
    ykt batch report BATCH                   text report + PNG chart under <data_dir>/reports
    ykt batch retry BATCH [--card N] --as SUPERVISOR     failed cards back to production
    ykt batch withdraw BATCH --card N --reason TEXT --as SUPERVISOR   a failed card cancelled
    ykt batch ship BATCH --to BRANCH --as USER
    ykt batch collect CARD_NUMBER --as TELLER  the holder collects the card (issued)

Exit codes of run/resume: 0 finished, 1 not finished (failed cards, cards at the bureau),
3 a station stopped on an error (printed before the resume command), 130 interrupted (Ctrl-C,
SIGTERM). The bureau commands are also here (``bureau-export`` ...: :mod:`yikatong.cli.bureau`).

Also the root command ``ykt demo`` (:mod:`yikatong.demo`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from datetime import date
from types import FrameType
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.models import CardAlgorithm, Channel
from yikatong.cli.db import AS_HELP, acting, session_scope, settings

app = typer.Typer(no_args_is_help=True)
out = Console()
err = Console(stderr=True)


def _txn(fn: Callable[[Session], Any]) -> Any:
    with session_scope() as s:
        return fn(s)


def _actor(as_: str | None, channel: str = "counter") -> Actor:
    import os

    if not as_ and not os.environ.get("YKT_STAFF"):
        return SYSTEM_ACTOR
    return _txn(lambda s: acting(s, as_, channel))


@app.command("create")
def create(
    name: str = typer.Argument(..., help="Batch name (unique)."),
    region: str | None = typer.Option(None, "--region", help="Region code or prefix (3301)."),
    collective: str | None = typer.Option(None, "--collective", help="Collective applicant."),
    approved_from: str | None = typer.Option(None, "--from", help="Approved on/after YYYY-MM-DD."),
    approved_to: str | None = typer.Option(None, "--to", help="Approved on/before YYYY-MM-DD."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most N cards."),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Create a batch from approved applications (audited)."""
    from issuance.batches.selection import BatchFilter, create_batch

    flt = BatchFilter(
        region, collective, date.fromisoformat(approved_from) if approved_from else None,
        date.fromisoformat(approved_to) if approved_to else None, limit,
    )  # fmt: skip
    with session_scope() as s:
        batch = create_batch(s, acting(s, as_), name, flt)
        out.print(f"batch {batch.name} (id {batch.id}): {batch.card_count} card(s) selected")
    out.print(f"next: ykt batch run {name}")


EXIT_NOT_FINISHED = 1
EXIT_STATION_ERROR = 3
EXIT_INTERRUPTED = 130


def print_failed(summary: Any, batch: str) -> None:
    """The failed cards of a run summary, with what the operator can do about them."""
    if not summary.failed_cards:
        return
    table = Table("card", "attempts", "last error", title="failed cards (spoiled too often)")
    for f in summary.failed_cards:
        table.add_row(f.card_number, str(f.attempts), (f.last_error or "")[:90])
    err.print(table)
    err.print(f"a supervisor decides: ykt batch retry {batch} [--card N] --as USER, or "
              f"ykt batch withdraw {batch} --card N --reason TEXT --as USER")  # fmt: skip


def _run(batch: str, readers: int | None, lease: int, as_: str | None, resume: bool) -> None:
    from issuance.batches.pipeline import BatchInterrupted, RunOptions
    from yikatong.progress import RichProgress
    from yikatong.wiring import runner_for

    actor = _actor(as_).via(Channel.SYSTEM)
    cfg = settings()

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    resume_cmd = f"ykt batch resume {batch}"
    try:
        with RichProgress(err) as progress, runner_for(
            cfg, batch, actor=actor, progress=progress,
            options=RunOptions(readers=readers, lease_seconds=lease),
        ) as runner:  # fmt: skip
            if resume:
                recovered = runner.recover()
                for item_id, chip in recovered:
                    progress.note(f"item {item_id}: chip {chip} was in a station when the run "
                                  "stopped: spoiled, card requeued")  # fmt: skip
            try:
                summary = runner.run()
            except KeyboardInterrupt:
                runner.stop.set()
                raise
    except (KeyboardInterrupt, BatchInterrupted):
        err.print(f"[yellow]interrupted.[/yellow] Resume with:\n  {resume_cmd}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    out.print(
        f"batch {summary.batch_name}: {summary.checked} good card(s) this run, "
        f"{summary.spoiled} chip(s) spoiled, {summary.failed} failed, "
        f"{summary.remaining} still to make; {summary.apdus} APDUs in {summary.seconds:.1f} s "
        f"on {summary.stations} station(s)"
    )
    if summary.leases_lost:
        err.print(f"{summary.leases_lost} card(s) left to another worker that took their lease")
    print_failed(summary, batch)
    if summary.at_bureau:
        out.print(f"{summary.at_bureau} card(s) at the bureau: ykt bureau import RESULT "
                  "--bureau-file FILE when its result file comes back")  # fmt: skip
    if summary.errors:
        for e in summary.errors:
            err.print(f"[red]station error:[/red] {e}")
        err.print(f"[red]stopped on a station error.[/red] Fix it. Resume with:\n"
                  f"  {resume_cmd}")  # fmt: skip
        raise typer.Exit(EXIT_STATION_ERROR)
    if summary.remaining:
        err.print(f"not finished. Resume with:\n  {resume_cmd}")
        raise typer.Exit(EXIT_NOT_FINISHED)
    if summary.failed_cards or summary.at_bureau:
        raise typer.Exit(EXIT_NOT_FINISHED)
    _next_step(batch)


def _next_step(batch: str) -> None:
    """Print the next step the batch's stages call for (``issuance.batches.hints``)."""
    from issuance.batches import items as bi
    from issuance.batches.hints import next_step
    from issuance.batches.selection import get_batch

    hint = _txn(lambda s: next_step(get_batch(s, batch).name,
                                    bi.stage_counts(s, get_batch(s, batch).id)))  # fmt: skip
    if hint:
        out.print(f"next: {hint}")


_READERS = typer.Option(None, "--readers", "-n", min=1, max=16, help="Stations (readers).")
_LEASE = typer.Option(120, "--lease", min=5, help="Lease seconds of a card at a station.")


@app.command("run")
def run(
    batch: str,
    readers: int | None = _READERS,
    lease: int = _LEASE,
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Data preparation, personalisation, printing and quality check of a batch."""
    _run(batch, readers, lease, as_, resume=False)


@app.command("resume")
def resume(
    batch: str,
    readers: int | None = _READERS,
    lease: int = _LEASE,
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Finish an interrupted batch: dead workers' cards are spoiled and requeued."""
    _run(batch, readers, lease, as_, resume=True)


@app.command("prepare")
def prepare(
    batch: str,
    workers: int = typer.Option(1, "--workers", "-w", min=1, max=16,
                                help="Worker processes (each its own HSM session)."),
    chunk: int | None = typer.Option(None, "--chunk", min=1,
                                     help="Cards per chunk (default: 500, less for small "
                                          "batches)."),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:  # fmt: skip
    """In-house data preparation: a chip and the complete personalisation data of every card,
    every per-card key derived in the HSM, into the batch's signed perso file (the stations
    run it); resumable. (For a bureau: ``ykt bureau export`` prepares and exports.)"""
    from issuance.batches.pipeline import RunOptions
    from yikatong.progress import RichProgress
    from yikatong.wiring import runner_for

    actor = _actor(as_).via(Channel.SYSTEM)
    cfg = settings()

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    options = RunOptions(prepare_workers=workers, prepare_chunk=chunk)
    try:
        with RichProgress(err) as progress, runner_for(
            cfg, batch, actor=actor, progress=progress, options=options
        ) as runner:  # fmt: skip
            runner.recover()
            try:
                n = runner.prepare_all()
            except KeyboardInterrupt:
                runner.stop.set()
                err.print(f"[yellow]interrupted.[/yellow] Resume with:\n"
                          f"  ykt batch prepare {batch}")  # fmt: skip
                raise typer.Exit(EXIT_INTERRUPTED) from None
            counts = runner.counts()
            stats = runner.prep_stats
    finally:
        signal.signal(signal.SIGTERM, previous)
    from issuance.models import BatchStage

    out.print(f"batch {batch}: {n} card(s) prepared now, {counts[BatchStage.PREPARED]} prepared "
              "in all")  # fmt: skip
    if stats is not None and stats.seconds:
        out.print(f"{stats.keys_derived} per-card keys derived in the HSM, {stats.chunks} "
                  f"chunk(s) in {stats.seconds:.1f} s on {workers} worker(s): "
                  f"{n / stats.seconds:.0f} cards/s")  # fmt: skip
    if stats is not None and stats.errors:
        for e in stats.errors:
            err.print(f"[red]refused[/red]: {e}")
        err.print(f"{len(stats.errors)} card(s) refused (left selected): correct their data, "
                  f"then: ykt batch prepare {batch}")  # fmt: skip
        raise typer.Exit(EXIT_NOT_FINISHED)
    out.print(f"next: ykt batch run {batch} (in house), or ykt bureau export {batch} "
              "--transport BUREAU -o FILE (bureau)")  # fmt: skip


def _failed_items(s: Session, batch: str, card: str | None) -> list[Any]:
    import sqlalchemy as sa

    from issuance.batches.selection import get_batch
    from issuance.errors import NotFound, ValidationError
    from issuance.models import BatchItem, BatchStage, Card

    found = get_batch(s, batch)
    stmt = (
        sa.select(BatchItem)
        .join(Card, Card.id == BatchItem.card_id)
        .where(BatchItem.batch_id == found.id)
        .order_by(BatchItem.id)
    )
    if card is not None:
        from cardspec.ids import parse_card_number

        number = parse_card_number(card)  # the check character before any lookup
        items = list(s.scalars(stmt.where(Card.card_number == number)))
        if not items:
            raise NotFound(f"card {card} is not in batch {found.name}")
        if items[0].stage != BatchStage.FAILED:
            raise ValidationError(f"card {card} is {items[0].stage}, not failed")
        return items
    return list(s.scalars(stmt.where(BatchItem.stage == BatchStage.FAILED)))


@app.command("retry")
def retry(
    batch: str,
    card: str | None = typer.Option(None, "--card", help="Only this card number."),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Send failed cards (spoiled too often) back to production, attempts reset (audited)."""
    from issuance.batches import items as bi
    from issuance.batches.selection import get_batch

    with session_scope() as s:
        actor = acting(s, as_)
        items = _failed_items(s, batch, card)
        for item in items:
            bi.retry(s, item, actor, reason="retried by a supervisor")
        name = get_batch(s, batch).name
    out.print(f"{len(items)} failed card(s) of batch {name} back in production")
    if items:
        out.print(f"next: ykt batch resume {name}")


@app.command("withdraw")
def withdraw(
    batch: str,
    card: str = typer.Option(..., "--card", help="Card number of the failed card."),
    reason: str = typer.Option(..., "--reason", help="Why (audited)."),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Take a failed card out of production for good: the card is cancelled (its number is
    never reused); the holder needs a new card."""
    from issuance.batches import items as bi

    with session_scope() as s:
        actor = acting(s, as_)
        (item,) = _failed_items(s, batch, card)
        withdrawn = bi.withdraw(s, item, actor, reason=reason)
        number = withdrawn.card_number
    out.print(f"card {number} withdrawn from batch {batch} and cancelled")


@app.command("status")
def status(batch: str | None = typer.Argument(None)) -> None:
    """Counts by stage of one batch, or of every batch."""
    import sqlalchemy as sa

    from issuance.batches import items as bi
    from issuance.batches.selection import get_batch
    from issuance.models import Batch, BatchStage

    with session_scope() as s:
        batches = [get_batch(s, batch)] if batch else list(s.scalars(sa.select(Batch).order_by(
            Batch.id)))  # fmt: skip
        # fits 80 columns: the stages that hold cards, not one column per stage
        table = Table("batch", "status", "cards", "cards by stage", box=None)
        for b in batches:
            counts = bi.stage_counts(s, b.id)
            stages = ", ".join(f"{st} {counts[st]}" for st in BatchStage if counts[st])
            table.add_row(b.name, b.status, str(b.card_count), stages or "-")
    out.print(table)


@app.command("report")
def report(
    batch: str,
    output: str | None = typer.Option(None, "--output", "-o", help="Directory for the files."),
) -> None:
    """The batch report (counts, spoil rate, time per stage) as text and a PNG chart."""
    from pathlib import Path

    from issuance.batches.report import build_report, write_report
    from issuance.batches.selection import get_batch

    with session_scope() as s:
        rep = build_report(s, get_batch(s, batch).id)
    directory = Path(output) if output else settings().data_dir / "reports"
    text, png = write_report(rep, directory, settings())
    out.print(rep.text(settings()), markup=False, highlight=False)
    out.print(f"report: {text}\nchart:  {png}")


@app.command("ship")
def ship(
    batch: str,
    to: str = typer.Option(..., "--to", help="Collection point (agency code)."),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Ship every checked card of the batch to a collection point."""
    from issuance.batches.selection import get_batch
    from issuance.batches.shipping import ship_batch
    from yikatong.progress import RichProgress

    actor = _txn(lambda s: acting(s, as_))
    batch_id = _txn(lambda s: get_batch(s, batch).id)
    with RichProgress(err) as progress:
        result = ship_batch(_txn, settings(), batch_id, to, actor,
                            on_card=lambda: progress.advance("ship"),
                            on_start=lambda n: progress.start("ship", n))  # fmt: skip
    out.print(f"{result.shipped} card(s) shipped to {to}")
    _next_step(batch)


@app.command("collect")
def collect(
    card_number: str,
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
    channel: str = typer.Option("bank", "--channel", help="counter or bank"),
) -> None:
    """The holder collects the card at the collection point (status issued)."""
    from issuance.batches.shipping import issue_card

    with session_scope() as s:
        issue_card(s, card_number, acting(s, as_, channel))
    out.print(f"card {card_number.upper()} issued to its holder")


def demo(
    residents: int = typer.Option(8, "--residents", min=1, max=500),
    readers: int = typer.Option(4, "--readers", min=1, max=16),
    algorithm: CardAlgorithm | None = typer.Option(
        None,
        "--algorithm",
        help="the cards' keys: 3des, sm4 (third generation, needs an HSM "
        "with SM4) or aes; default: the issuer card_algorithm setting",
    ),
) -> None:
    """End-to-end demo: residents → approval → batch → personalisation → print → QC → issue."""
    from yikatong.demo import run_demo

    run_demo(settings(), residents=residents, readers=readers,
             algorithm=algorithm.value if algorithm is not None else None)  # fmt: skip


#: Commands added to the root ``ykt`` (see yikatong.cli.main._register).
TOP_LEVEL_COMMANDS = {"demo": demo}


def _register_bureau() -> None:
    from yikatong.cli import bureau as cli_bureau

    cli_bureau.register(app)


_register_bureau()
