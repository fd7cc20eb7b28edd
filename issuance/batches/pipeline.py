"""The production line of a batch: data preparation, then encoding stations in parallel
(personalise → print → quality check), every step one committed transaction with its audit.

Design notes: ``docs/design/batches.md`` (section ``issuance.batches.pipeline``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from cardspec import regions
from cardspec.errors import CardSpecError
from cardspec.profile import get_profile
from hsm.errors import HsmError
from hsm.prep import RecordCrypto, destroy_perso_key, perso_key_label
from hsm.service import KeyService
from issuance import lifecycle
from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.batches import bulkprep, dataprep, persofile
from issuance.batches import items as bi
from issuance.batches.adapters import BatchAdapters
from issuance.batches.blanks import ChipRefused, binds_at_station
from issuance.batches.mailers import MAILER_TOPIC
from issuance.batches.selection import get_batch
from issuance.batches.stations import (
    EncodingStation,
    NoCardFed,
    PrintedFace,
    QualityCheckFailed,
)
from issuance.batches.stock import BlankStock
from issuance.db import (
    is_disconnect,
    make_engine,
    make_sessionmaker,
    transaction,
    transaction_once,
    with_reconnect,
    with_retry,
)
from issuance.errors import ConflictError, IssuanceError, ValidationError
from issuance.lifecycle import BatchEvent, CardEvent
from issuance.models import (
    Application,
    Batch,
    BatchItem,
    BatchStage,
    BlankChip,
    Card,
    CardAlgorithm,
    ChipStatus,
    Person,
    StockRefusal,
    utcnow,
)
from issuance.services.cards import advance_production
from issuance.services.outbox import enqueue
from issuance.settings import IssuanceConfig
from printers.errors import (
    FontMissing,
    JobRejected,
    PrinterError,
    PrinterNotFound,
    PrinterUnavailable,
    SpoolError,
)
from printers.faces import CardFace, render_back, render_front
from printers.layout import layout_for_profile
from printers.prepared import PreparedCard
from printers.spool import CardPrinter
from readers.pcsc import NoCardError, NoServiceError, ReaderUnavailableError

log = logging.getLogger("issuance.batches")
T = TypeVar("T")

#: The stages shown as progress bars, in order.
PROGRESS_STAGES = ("prepare", "personalise", "print", "check")


class Progress(Protocol):
    """Where the pipeline reports progress (the CLI draws Rich bars)."""

    def start(self, stage: str, total: int, done: int = 0) -> None: ...

    def advance(self, stage: str, n: int = 1) -> None: ...

    def note(self, message: str) -> None: ...


class NullProgress:
    def start(self, stage: str, total: int, done: int = 0) -> None:
        return None

    def advance(self, stage: str, n: int = 1) -> None:
        return None

    def note(self, message: str) -> None:
        log.info("%s", message)


class BatchInterrupted(IssuanceError):
    """The run was stopped (Ctrl-C / SIGTERM) before the batch was finished."""

    code = "batch_interrupted"


class StationFault(IssuanceError):
    """The station itself cannot work (reader or PC/SC service gone, printer or spool
    unavailable, no font): it stops instead of spoiling card after card. The card in hand is
    spoiled without counting against it; the error is shown to the operator."""

    code = "station_fault"


def _station_faults() -> tuple[type[BaseException], ...]:
    return (NoServiceError, ReaderUnavailableError, FontMissing, JobRejected, PrinterNotFound,
            PrinterUnavailable, SpoolError)  # fmt: skip


@dataclass
class RunOptions:
    readers: int | None = None
    lease_seconds: int = bi.DEFAULT_LEASE_SECONDS
    max_attempts: int = bi.DEFAULT_MAX_ATTEMPTS
    #: Directory for the virtual reader stack (default: under the settings' run dir).
    run_dir: Path | None = None
    #: Skip the separate preparation phase (stations prepare just in time).
    prepare_first: bool = True
    today: date | None = None
    #: Seconds a station waits for a card to be fed (real readers); default: the settings'
    #: ``[readers] feed_timeout_seconds``, at most a third of the lease.
    feed_timeout: float | None = None
    #: Cards per chunk in the preparation phase (None: ``bulkprep.chunk_size``).
    prepare_chunk: int | None = None
    #: Worker processes of the preparation phase (``ykt batch prepare --workers``).
    prepare_workers: int = 1


@dataclass(frozen=True)
class FailedCard:
    card_number: str
    attempts: int
    last_error: str | None


@dataclass
class RunSummary:
    batch_id: int
    batch_name: str
    recovered: list[tuple[int, str | None]] = field(default_factory=list)
    prepared: int = 0
    checked: int = 0
    spoiled: int = 0
    failed: int = 0
    apdus: int = 0
    seconds: float = 0.0
    #: Cards still to make in house (selected ... printed).
    remaining: int = 0
    #: Cards exported to a bureau, waiting for its result file.
    at_bureau: int = 0
    stations: int = 0
    #: Cards a station gave up because another worker took over their lease.
    leases_lost: int = 0
    errors: list[str] = field(default_factory=list)
    #: Every failed card of the batch (spoiled ``max_attempts`` times), after the run.
    failed_cards: list[FailedCard] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.remaining == 0


def safe_job_id(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)).strip("_.-")[:128] or "card"


class Heartbeat:
    """Renews one item's lease from a thread while a station works on the card (every
    quarter of the lease). :attr:`lost` is set when the lease was found taken over - or when
    the renewals failed for as long as the lease lasts (the database refuses or drops the
    connections: the lease may have expired and another worker may be making the card; this
    worker then stops working on it and writes nothing more for it). A renewal hanging on a
    silent network cut sets nothing: the next step's :func:`~issuance.batches.items.hold`
    finds the lease gone once the database answers again."""

    def __init__(self, runner: BatchRunner, item_id: int, owner: str) -> None:
        self.runner, self.item_id, self.owner = runner, item_id, owner
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{item_id}", daemon=True)

    def _beat(self) -> None:
        lease = self.runner.options.lease_seconds
        interval = max(0.5, lease / 4)
        renewed = time.monotonic()  # the claim that gave us the lease
        while not self._stop.wait(interval):
            try:
                held = with_retry(lambda: transaction_once(self.runner.factory, lambda s: (
                    bi.renew_lease(s, self.item_id, self.owner, lease))))  # fmt: skip
            except Exception:  # the database is away: the next beat tries again
                log.warning("lease heartbeat of item %s failed", self.item_id, exc_info=True)
                if time.monotonic() - renewed >= lease:
                    self.lost.set()  # not renewed for a whole lease: presume it lost
                    return
                continue
            if not held:
                self.lost.set()
                return
            renewed = time.monotonic()

    def check(self) -> None:
        """Raise :class:`~issuance.batches.items.LeaseLost` if the lease was taken over."""
        if self.lost.is_set():
            raise bi.LeaseLost(f"lease of batch item {self.item_id} was taken over")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class PrintOutcome:
    job: str
    reference: str
    state: str
    face_sha256: str
    printed: PrintedFace


def algorithms_bulk_cannot_prepare(
    factory: sessionmaker[Session], batch_id: int, stages: tuple[BatchStage, ...]
) -> list[str]:
    """The key algorithms (e.g. ``sm4``) of the batch's cards in ``stages`` that bulk data
    preparation and bureau files do not handle (:data:`hsm.prep.ALGORITHMS`)."""
    from hsm.prep import ALGORITHMS

    handled = [CardAlgorithm(a.value) for a in ALGORITHMS]
    with transaction(factory) as s:
        found = s.scalars(
            sa.select(Card.algorithm).distinct().join(BatchItem, BatchItem.card_id == Card.id)
            .where(BatchItem.batch_id == batch_id, BatchItem.stage.in_(stages),
                   Card.algorithm.not_in(handled))
        ).all()  # fmt: skip
    return sorted(str(a.value) for a in found)


#: Stages of the cards a bureau export takes (selected, and prepared not in a station).
BUREAU_STAGES = (BatchStage.SELECTED, BatchStage.PREPARED)


def export_batch_to_bureau(
    settings: IssuanceConfig,
    factory: sessionmaker[Session],
    key_service: KeyService,
    batch: str | int,
    output: Path,
    transport: str,
    actor: Actor,
    *,
    adapters: BatchAdapters,
    workers: int = 1,
    chunk: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[Any, int, list[str]]:
    """A batch's bureau file, as ``ykt bureau export`` and the console make it: the batch's
    cards refused at once if bulk preparation cannot carry their algorithm (nothing prepared
    or written), else :func:`issuance.batches.bulkprep.export_to_bureau`. Returns the file's
    :class:`~issuance.batches.bureau.BureauFileInfo`, the number of cards now at the bureau
    and the cards refused (their data cannot go on a chip: left out, still selected)."""
    with transaction(factory) as s:
        found = get_batch(s, batch)
        batch_id, name = found.id, found.name
    other = algorithms_bulk_cannot_prepare(factory, batch_id, BUREAU_STAGES)
    if other:  # refused before anything is prepared or written
        raise ValidationError(
            f"batch {name} has {', '.join(other)} cards: a bureau file carries card keys "
            "under AES file keys (hsm.prep.ALGORITHMS); personalise them in house "
            f"(ykt batch run {name})"
        )
    req = bulkprep.PrepRequest(batch_id, actor, bulkprep.BUREAU, workers=workers, chunk=chunk,
                               transport=transport)  # fmt: skip
    info, stats, moved = bulkprep.export_to_bureau(
        settings, factory, key_service, req, output, name, adapters=adapters,
        on_progress=on_progress,
    )  # fmt: skip
    return info, moved, stats.errors


class BatchRunner:
    """One run of the production line on one batch (see the module docstring)."""

    def __init__(
        self,
        settings: IssuanceConfig,
        batch_ref: str | int,
        *,
        adapters: BatchAdapters,
        engine: Engine | None = None,
        key_service: KeyService | None = None,
        stock: BlankStock | None = None,
        printer: CardPrinter | None = None,
        actor: Actor = SYSTEM_ACTOR,
        progress: Progress | None = None,
        options: RunOptions | None = None,
    ) -> None:
        self.settings = settings
        self.options = options or RunOptions()
        self._own_engine = engine is None
        self.engine = engine or make_engine(settings)
        self.factory: sessionmaker[Session] = make_sessionmaker(self.engine)
        self.adapters = adapters
        self.key_service = key_service or adapters.key_service()
        self.stock = stock or adapters.stock(self.key_service)
        self.printer = printer or adapters.printer()
        self.actor = actor
        self.progress = progress or NullProgress()
        self.stop = threading.Event()
        with transaction(self.factory) as s:
            batch = get_batch(s, batch_ref)
            self.batch_id, self.batch_name = batch.id, batch.name
        self.summary = RunSummary(self.batch_id, self.batch_name)
        self._lock = threading.Lock()
        #: What the last :meth:`prepare_all` did (bulk path), for reports and benchmarks.
        self.prep_stats: bulkprep.PrepStats | None = None
        self._public_pem: bytes | None = None

    # --- helpers ---------------------------------------------------------------------------
    def _txn(self, fn: Callable[[Session], T]) -> T:
        """``fn`` in one transaction, again after a lost race, and again while the database is
        out of reach (a failover, a network cut) for up to a lease: every step first renews
        this worker's lease (:meth:`_item`), so a step run twice changes nothing twice, and a
        worker cut off for longer than its lease gives up (its cards are another's by then)."""
        return with_reconnect(
            lambda: with_retry(lambda: transaction_once(self.factory, fn)),
            self.options.lease_seconds,
        )

    def _item(self, s: Session, item_id: int, owner: str) -> BatchItem:
        """The item, after renewing this worker's lease; :class:`LeaseLost` if not ours."""
        return bi.hold(s, item_id, owner, self.options.lease_seconds)

    def counts(self) -> dict[BatchStage, int]:
        with transaction(self.factory) as s:
            return bi.stage_counts(s, self.batch_id)

    # --- phases ----------------------------------------------------------------------------
    def recover(self) -> list[tuple[int, str | None]]:
        def go(s: Session) -> list[tuple[int, str | None]]:
            spoiled = bi.recover_interrupted(
                s, self.batch_id, self.actor, max_attempts=self.options.max_attempts
            )
            batch = s.get(Batch, self.batch_id)
            assert batch is not None
            if batch.started_at is None:
                batch.started_at = utcnow()
            if lifecycle.is_declared(lifecycle.BATCH_TRANSITIONS, batch.status, BatchEvent.START):
                lifecycle.apply_batch_event(s, batch, BatchEvent.START, self.actor)
            return spoiled

        out = self._txn(go)
        self.summary.recovered.extend(out)
        return out

    def prepare_all(self) -> int:
        """In-house data preparation of every card without a chip (:mod:`issuance.batches.
        bulkprep`: chunks of cards, every per-card key derived in the HSM into the batch's
        perso file, ``prepare_workers`` processes). With stock that binds at the station there
        is nothing to prepare ahead (the chip is not known yet); with a key service without
        the HSM's direct entry points, cards are prepared one by one (keys derived at the
        station)."""
        counts = self.counts()
        done_before = sum(n for st, n in counts.items()
                          if st not in (BatchStage.SELECTED, BatchStage.FAILED,
                                        BatchStage.WITHDRAWN))  # fmt: skip
        self.progress.start("prepare", done_before + counts[BatchStage.SELECTED], done_before)
        if binds_at_station(self.stock):
            self.progress.note("blank stock binds chips at the stations: data preparation "
                               "happens there, card by card")  # fmt: skip
            return 0
        if not counts[BatchStage.SELECTED]:
            return 0
        if self.options.prepare_workers <= 1 and getattr(self.key_service, "fast", None) is None:
            return self._prepare_card_by_card()
        other = algorithms_bulk_cannot_prepare(self.factory, self.batch_id, (BatchStage.SELECTED,))
        if other:
            self.progress.note(f"{', '.join(other)} cards: data prepared card by card, keys "
                               "derived at the stations (bulk preparation's file keys are "
                               "AES, hsm.prep.ALGORITHMS)")  # fmt: skip
            return self._prepare_card_by_card()
        req = bulkprep.PrepRequest(
            self.batch_id, self.actor, bulkprep.IN_HOUSE, workers=self.options.prepare_workers,
            chunk=self.options.prepare_chunk, lease_seconds=self.options.lease_seconds,
            today=self.options.today,
        )  # fmt: skip
        stats = bulkprep.prepare_in_house(
            self.settings, self.factory, self.key_service, req,
            on_progress=lambda n: self.progress.advance("prepare", n), stop=self.stop,
            new_serial=self.stock.new_serial, adapters=self.adapters,
        )  # fmt: skip
        self.prep_stats = stats
        self.summary.prepared += stats.prepared
        for e in stats.errors:
            self.progress.note(f"data preparation refused {e}")
        return stats.prepared

    def _prepare_card_by_card(self) -> int:
        owner = bi.worker_id("prepare")
        n = 0
        chunk = max(1, self.options.prepare_chunk or 20)
        while not self.stop.is_set():

            def one_chunk(s: Session) -> int:
                items = bi.claim(s, self.batch_id, owner, stages=(BatchStage.SELECTED,),
                                 limit=chunk, lease_seconds=self.options.lease_seconds)  # fmt: skip
                loaded = _preload(s, items)  # noqa: F841 - kept alive: identity map hits
                for item in items:
                    dataprep.assign_chip(
                        s, self.settings, self.key_service, self.stock, item, self.actor,
                        today=self.options.today,
                    )  # fmt: skip
                    bi.release(item)
                return len(items)

            done = self._txn(one_chunk)
            if not done:
                break
            n += done
            self.progress.advance("prepare", done)
        self.summary.prepared += n
        return n

    def _prepare(
        self, item_id: int, owner: str, station: str | None, chip_serial: bytes | None = None
    ) -> PreparedCard:
        def go(s: Session) -> PreparedCard:
            item = self._item(s, item_id, owner)
            prepared = dataprep.assign_chip(
                s, self.settings, self.key_service, self.stock, item, self.actor,
                station=station, today=self.options.today, chip_serial=chip_serial,
            )  # fmt: skip
            if chip_serial is not None:  # bound at the station: encoding starts at once
                item.station = station
                bi.advance(s, item, "encode", self.actor, details={"station": station})
            return prepared

        return self._txn(go)

    def run(self) -> RunSummary:
        start = time.perf_counter()
        self.stock.ready()  # the virtual stock: its transport key in the HSM
        self.recover()
        if self.options.prepare_first:
            self.prepare_all()
        counts = self.counts()
        good = sum(counts[s] for s in bi.GOOD)
        todo = sum(counts[s] for s in bi.IN_PRODUCTION)
        for stage in ("personalise", "print", "check"):
            self.progress.start(stage, good + todo, good)
        feed = self.options.feed_timeout or min(
            self.settings.readers.feed_timeout_seconds, self.options.lease_seconds / 3
        )
        if todo and not self.stop.is_set():
            with self.adapters.stations(
                self.options.readers, run_dir=self.options.run_dir, feed_timeout=feed
            ) as stations:
                self.summary.stations = len(stations)
                # Each station says it is done with an Event: the main thread waits on those,
                # never in Thread.join, because a KeyboardInterrupt (Ctrl-C, or SIGTERM from the
                # CLI) raised inside a timed join can mark a running thread as stopped (CPython
                # 3.11's _wait_for_tstate_lock, bpo-45274) and the stations would then be closed
                # under a card still being made.
                done = [threading.Event() for _ in stations]

                def loop(station: EncodingStation, finished: threading.Event) -> None:
                    try:
                        self._station_loop(station)
                    finally:
                        finished.set()

                threads = [
                    threading.Thread(target=loop, args=(st, ev), name=st.name, daemon=True)
                    for st, ev in zip(stations, done, strict=True)
                ]  # fmt: skip
                for t in threads:
                    t.start()
                try:
                    while not all(ev.is_set() for ev in done):
                        for ev in done:
                            ev.wait(0.2)
                except KeyboardInterrupt:
                    self.stop.set()
                    self.progress.note("stopping: the stations finish the card in hand")
                    for ev in done:
                        ev.wait()
        self.summary.seconds = time.perf_counter() - start
        self._finish()
        if self.stop.is_set() and self.summary.remaining and not self.summary.errors:
            raise BatchInterrupted(
                f"batch {self.batch_name} interrupted with {self.summary.remaining} card(s) "
                "to make", batch=self.batch_name,
            )  # fmt: skip
        return self.summary

    def _finish(self) -> None:
        produced: list[bool] = []

        def go(s: Session) -> tuple[int, int, list[FailedCard]]:
            produced.clear()
            counts = bi.stage_counts(s, self.batch_id)
            remaining = sum(counts[st] for st in bi.IN_PRODUCTION)
            unfinished = sum(counts[st] for st in bi.UNFINISHED)
            batch = s.get(Batch, self.batch_id)
            assert batch is not None
            if unfinished == 0 and lifecycle.is_declared(
                lifecycle.BATCH_TRANSITIONS, batch.status, BatchEvent.PRODUCE
            ):
                lifecycle.apply_batch_event(
                    s, batch, BatchEvent.PRODUCE, self.actor,
                    details={"good": sum(counts[st] for st in bi.GOOD),
                             "failed": counts[BatchStage.FAILED],
                             "withdrawn": counts[BatchStage.WITHDRAWN]},
                )  # fmt: skip
                produced.append(True)
            failed = [
                FailedCard(number, attempts, error)
                for number, attempts, error in s.execute(
                    sa.select(Card.card_number, BatchItem.attempts, BatchItem.last_error)
                    .join(Card, Card.id == BatchItem.card_id)
                    .where(BatchItem.batch_id == self.batch_id,
                           BatchItem.stage == BatchStage.FAILED)
                    .order_by(Card.card_number)
                )
            ]  # fmt: skip
            return remaining, counts[BatchStage.AT_BUREAU], failed

        self.summary.remaining, self.summary.at_bureau, self.summary.failed_cards = self._txn(go)
        if produced:
            self._retire_perso_file()

    def _retire_perso_file(self) -> None:
        """The batch is produced: its perso key is destroyed in the HSM and its perso file
        removed (nothing may personalise from it any more; a card sent back to production
        later is prepared again under a new key)."""
        try:
            hsm_keys = self.key_service.hsm_keys
            if hsm_keys is not None:
                destroy_perso_key(hsm_keys, perso_key_label(self.batch_id))
            persofile.remove_batch_files(self.settings.data_dir, self.batch_id)
        except (HsmError, OSError) as exc:  # the batch is done either way: say so, go on
            log.warning("batch %s: perso file not retired: %s", self.batch_name, exc)
            self.progress.note(f"perso file of batch {self.batch_name} not retired ({exc}): "
                               "remove <data_dir>/perso/<batch id> by hand")  # fmt: skip

    def _claim(self, s: Session, owner: str) -> list[int]:
        stages = (BatchStage.SELECTED,) if binds_at_station(self.stock) else bi.READY
        items = bi.claim(s, self.batch_id, owner, stages=stages,
                         lease_seconds=self.options.lease_seconds)  # fmt: skip
        return [i.id for i in items]

    # --- one station -----------------------------------------------------------------------
    def _station_loop(self, station: EncodingStation) -> None:
        owner = bi.worker_id(station.name)
        while not self.stop.is_set():
            try:
                if self._station_round(station, owner):
                    return
            except sa.exc.DBAPIError as exc:
                if not is_disconnect(exc):
                    raise
                # the database stayed out of reach for a whole lease: the card in hand (if
                # any) was left (see _make_card); wait for the database, then go on
                self.progress.note(f"{station.name}: database out of reach, waiting for it")
                self.stop.wait(1.0)

    def _station_round(self, station: EncodingStation, owner: str) -> bool:
        """One card, or one look for one; True when the station is done (nothing left)."""
        # chips fed into real readers: a card is taken from the queue only once a chip is
        # in the reader (an idle station holds no card other stations could make)
        if binds_at_station(self.stock) and not self._card_fed(station):
            return self._nothing_left()
        claimed = self._txn(lambda s: self._claim(s, owner))
        if claimed:
            try:
                self._make_card(station, claimed[0], owner)
            except Exception as exc:
                log.exception("station %s: item %s", station.name, claimed[0])
                with self._lock:
                    self.summary.errors.append(f"{station.name}: {exc}")
                self.stop.set()
            return False
        # nothing free: finished, or wait for cards others may still requeue
        counts = self.counts()
        if sum(counts[s] for s in bi.IN_PRODUCTION) == 0:
            return True
        self._txn(lambda s: bi.recover_interrupted(
            s, self.batch_id, self.actor, max_attempts=self.options.max_attempts))  # fmt: skip
        time.sleep(0.1)
        return False

    def _nothing_left(self) -> bool:
        return sum(self.counts()[s] for s in bi.IN_PRODUCTION) == 0

    def _card_fed(self, station: EncodingStation) -> bool:
        """Wait for a chip to be fed into ``station`` (stock that binds at the station);
        False after the feed timeout, or when there is nothing left to make or the run stops."""
        try:
            station.load(None, cancelled=lambda: self.stop.is_set() or self._nothing_left())
            return True
        except NoCardFed as exc:
            if not self.stop.is_set() and not self._nothing_left():
                self.progress.note(f"{station.name}: {exc}")
            return False

    def _spoil(
        self,
        item_id: int,
        owner: str,
        station: EncodingStation,
        reason: str,
        *,
        fault: bool = False,
    ) -> None:
        """Spoil the card's chip; ``fault``: the station's fault (see :class:`StationFault`),
        the chip is spoiled without counting against the card, then the station stops."""

        def go(s: Session) -> bi.SpoilResult:
            item = self._item(s, item_id, owner)
            return bi.spoil(s, item, self.actor, reason, max_attempts=self.options.max_attempts,
                            station=station.name, count_attempt=not fault)  # fmt: skip

        res = self._txn(go)
        with self._lock:
            self.summary.spoiled += 1
            if res.stage == BatchStage.FAILED:
                self.summary.failed += 1
        self.progress.note(f"{station.name}: spoiled chip {res.chip_serial}: {reason}")
        if fault:
            raise StationFault(reason)

    def _refuse(self, station: EncodingStation, item_id: int, owner: str, exc: ChipRefused) -> None:
        """A chip fed into ``station`` was refused (stock that binds at the station): record
        it, give the card back to the queue, wait until the chip is taken out (set aside)."""
        record = getattr(self.stock, "record_refusal", None)
        if record is not None:
            self._txn(lambda s: record(s, exc.serial, exc.reason, str(exc), self.actor,
                                       station=station.name, batch_id=self.batch_id))  # fmt: skip
        self.progress.note(f"{station.name}: chip {exc.serial or '?'} refused: {exc}; "
                           "take it out and set it aside")  # fmt: skip
        self._give_back(item_id, owner)
        station.wait_removed()

    def _give_back(self, item_id: int, owner: str) -> None:
        """Release an item nothing was done to (no card fed)."""

        def go(s: Session) -> None:
            bi.release(self._item(s, item_id, owner))

        with contextlib.suppress(bi.LeaseLost):
            self._txn(go)

    def _make_card(self, station: EncodingStation, item_id: int, owner: str) -> None:
        with Heartbeat(self, item_id, owner) as beat:
            try:
                self._make_card_leased(station, item_id, owner, beat)
            except bi.LeaseLost as exc:
                with self._lock:
                    self.summary.leases_lost += 1
                self.progress.note(f"{station.name}: {exc}: card left to the other worker")
            except sa.exc.DBAPIError as exc:
                if not is_disconnect(exc):
                    raise
                # out of reach for a whole lease (_txn): the lease is presumed lost, nothing
                # more is written for this card (another worker makes it once it expires)
                with self._lock:
                    self.summary.leases_lost += 1
                self.progress.note(f"{station.name}: database out of reach: batch item "
                                   f"{item_id} left to another worker")  # fmt: skip

    def _make_card_leased(
        self, station: EncodingStation, item_id: int, owner: str, beat: Heartbeat
    ) -> None:
        name = station.name
        with transaction(self.factory) as s:
            item = s.get(BatchItem, item_id)
            assert item is not None
            stage = item.stage
        bound = binds_at_station(self.stock)
        perso_ref: tuple[str, int] | None = None
        try:
            if bound:
                # the chip is the card fed into the reader: read its serial, bind, encode
                try:
                    station.load(None)
                    serial = station.fed_serial()
                except NoCardFed as exc:
                    self.progress.note(f"{name}: {exc}")
                    self._give_back(item_id, owner)
                    return
                except CardSpecError as exc:  # a card whose serial cannot be read
                    if isinstance(exc, _station_faults()):
                        raise
                    if isinstance(exc, NoCardError):  # taken out again before it was read
                        self._give_back(item_id, owner)
                        return
                    why = f"no chip serial could be read: {exc}"
                    unreadable = ChipRefused(why, StockRefusal.UNREADABLE, None)
                    self._refuse(station, item_id, owner, unreadable)
                    return
                beat.check()
                try:
                    prepared = self._prepare(item_id, owner, station=name,
                                             chip_serial=bytes.fromhex(serial))  # fmt: skip
                except (bi.LeaseLost, ConflictError):
                    raise
                except ChipRefused as exc:  # not a chip of the stock: nothing was sent to it
                    self._refuse(station, item_id, owner, exc)
                    return
                except IssuanceError as exc:  # not a blank of the stock: nothing was done
                    self.progress.note(f"{name}: card {serial} refused: {exc}; take it out")
                    self._give_back(item_id, owner)
                    station.wait_removed()
                    return
                self.progress.advance("prepare")
            else:
                if stage == BatchStage.SELECTED:
                    prepared = self._prepare(item_id, owner, station=name)
                    self.progress.advance("prepare")
                else:
                    prepared, perso_ref = self._txn(lambda s: self._rebuild(s, item_id, owner))

                def encode(s: Session) -> None:
                    item = self._item(s, item_id, owner)
                    item.station = name
                    bi.advance(s, item, "encode", self.actor, details={"station": name})

                self._txn(encode)
            try:
                if not bound:
                    station.load(self._blank_image(prepared))
                result, from_record = self._personalise(station, prepared, item_id, perso_ref)
            except (CardSpecError, HsmError, PrinterError, OSError, IssuanceError) as exc:
                if isinstance(exc, bi.LeaseLost):
                    raise
                beat.check()
                self._spoil(item_id, owner, station, f"personalisation failed: {exc}",
                            fault=isinstance(exc, _station_faults()))  # fmt: skip
                return
            beat.check()

            def personalised(s: Session) -> None:
                item = self._item(s, item_id, owner)
                item.apdu_count = result.apdu_count
                bi.advance(s, item, "personalised", self.actor,
                           details={"apdus": result.apdu_count, "station": name,
                                    "perso_record": from_record})  # fmt: skip

            self._txn(personalised)
            self.progress.advance("personalise")
            try:
                outcome = self._print(prepared, item_id, owner)
            except (PrinterError, OSError) as exc:
                beat.check()
                self._spoil(item_id, owner, station, f"printing failed: {exc}",
                            fault=isinstance(exc, _station_faults()))  # fmt: skip
                return
            beat.check()

            def printed(s: Session) -> None:
                item = self._item(s, item_id, owner)
                item.printed_card_number = prepared.perso.card_number
                item.print_ref = outcome.reference[:300]
                item.face_sha256 = outcome.face_sha256
                bi.advance(s, item, "print", self.actor,
                           details={"job": outcome.job, "state": outcome.state,
                                    "face_sha256": outcome.face_sha256})  # fmt: skip

            self._txn(printed)
            self.progress.advance("print")
            try:
                report = station.check(prepared, self.key_service, outcome.printed)
            except (QualityCheckFailed, CardSpecError, HsmError) as exc:
                beat.check()
                self._spoil(item_id, owner, station, f"quality check failed: {exc}")
                return
            beat.check()
            self._txn(lambda s: self._checked(s, item_id, owner, prepared, report.apdu_count))
            with self._lock:
                self.summary.checked += 1
                self.summary.apdus += result.apdu_count + report.apdu_count
            self.progress.advance("check")
        finally:
            with contextlib.suppress(Exception):
                station.eject()

    def _rebuild(
        self, s: Session, item_id: int, owner: str
    ) -> tuple[PreparedCard, tuple[str, int] | None]:
        """A prepared card rebuilt from the database (what is printed and checked), and where
        data preparation put its perso record (None: keys derived at the station)."""
        item = self._item(s, item_id, owner)
        prepared = dataprep.prepared_for_item(s, self.settings, self.key_service, item)
        row = s.execute(
            sa.select(BlankChip.perso_file, BlankChip.perso_offset)
            .where(BlankChip.chip_serial == prepared.chip_serial)
        ).one_or_none()  # fmt: skip
        if row is None or row[0] is None or row[1] is None:
            return prepared, None
        return prepared, (str(row[0]), int(row[1]))

    def _blank_image(self, prepared: PreparedCard) -> Path:
        """The blank chip's image for the station's feeder; the virtual stock makes it now if
        data preparation left it to the station (see :mod:`issuance.batches.bulkprep`)."""
        return self.stock.ensure_blank(prepared.chip_serial, prepared.key_ref,
                                       get_profile(prepared.profile_name))  # fmt: skip

    def _record_crypto(
        self, station: EncodingStation, prepared: PreparedCard, item_id: int, ref: tuple[str, int]
    ) -> tuple[persofile.PersoRecord, Any] | None:
        """The card's perso record and its :class:`hsm.prep.RecordCrypto`, or None (noted)
        when the record cannot be used: the station then derives the keys itself."""
        hsm_keys = self.key_service.hsm_keys
        if hsm_keys is None:
            return None
        try:
            if self._public_pem is None:
                self._public_pem = self.key_service.public_key_pem()
            record = persofile.load_record(
                self.settings.data_dir, ref[0], ref[1], self._public_pem, batch_id=self.batch_id,
                item_id=item_id, card_id=prepared.card_id, chip_serial=prepared.chip_serial,
            )  # fmt: skip
            expected = (prepared.key_ref.card_identification_code, prepared.perso.card_number,
                        prepared.profile_name, perso_key_label(self.batch_id))  # fmt: skip
            found = (record.card_identification_code, record.card_number, record.profile_name,
                     record.perso_key)  # fmt: skip
            if found != expected:
                raise persofile.PersoRecordInvalid(
                    f"{ref[0]}@{ref[1]} does not match the card in the database"
                )
        except persofile.PersoRecordInvalid as exc:
            self.progress.note(f"{station.name}: perso record of chip {prepared.chip_serial} "
                               f"refused ({exc}); the station derives the keys")  # fmt: skip
            return None
        crypto = RecordCrypto(hsm_keys, record.perso_key, record.kek, record.kmc_wrapped,
                              record.algorithm, record.write_keys())  # fmt: skip
        return record, crypto

    def _personalise(
        self,
        station: EncodingStation,
        prepared: PreparedCard,
        item_id: int,
        ref: tuple[str, int] | None,
    ) -> tuple[Any, bool]:
        """Personalise the card in ``station``: from its perso record (the HSM unwraps KMC, the
        record has the rest) when data preparation wrote one, else with every key derived in
        the HSM here. Returns (result, whether the perso record was used)."""
        crypto_for = getattr(self.stock, "card_crypto", None)
        if crypto_for is not None:  # stock whose chips carry the manufacturer's keys
            return station.personalise(prepared, self.key_service,
                                       crypto=crypto_for(prepared)), False  # fmt: skip
        found = self._record_crypto(station, prepared, item_id, ref) if ref is not None else None
        if found is not None and hasattr(station, "reader"):
            record, crypto = found
            return persofile.personalise(station.reader, record, crypto), True
        return station.personalise(prepared, self.key_service), False

    def face_for(self, s: Session, prepared: PreparedCard) -> CardFace:
        """The card face of ``prepared`` from the database (what is printed)."""
        card = s.get(Card, prepared.card_id)
        assert card is not None
        person = s.get(Person, card.person_id)
        assert person is not None
        app = s.get(Application, card.application_id) if card.application_id else None
        region = region_name(person.region_code)
        return CardFace(
            name=person.name, ssn=person.citizen_id, card_number=card.card_number,
            issue_date=prepared.perso.issue_date,
            photo_jpeg=app.photo_jpeg if app is not None else None,
            issuer_name=self.settings.issuer.name, bank_name=self.settings.issuer.bank_name,
            region=region, expiry_date=prepared.perso.expiry_date,
        )  # fmt: skip

    def _print(self, prepared: PreparedCard, item_id: int, owner: str) -> PrintOutcome:
        """Render and print the faces; wait until the printer has the card printed. Returns
        what was printed (the face data digest and where its back image is)."""
        with transaction(self.factory) as s:
            face = self.face_for(s, prepared)
            card = s.get(Card, prepared.card_id)
            assert card is not None
            app = s.get(Application, card.application_id) if card.application_id else None
            db_photo = app.photo_sha256 if app is not None and app.photo_jpeg else None
            holder = s.get(Person, card.person_id)
            chip_name = holder.card_name if holder is not None else None
        dpi = self.settings.printer.dpi
        layout = layout_for_profile(prepared.profile_name)
        front, back = render_front(face, dpi, layout), render_back(face, dpi, layout)
        job = safe_job_id(self.batch_name, face.card_number, prepared.chip_serial)
        result = self.printer.print_card(job, front, back)
        spooled = [f for f in result.files if str(f).endswith(".back.png")]
        if spooled:
            back_image = Path(spooled[0])
        else:  # a printer without a spool file: keep the image that was sent, for QC
            back_image = self.settings.data_dir / "proofs" / f"{job}.back.png"
            back_image.parent.mkdir(parents=True, exist_ok=True)
            back.save(back_image, "PNG")
        state = result.state
        if state not in ("spooled", "completed"):
            ref = str(result.reference)

            def queued(s: Session) -> None:  # the job id on the item while it prints
                item = self._item(s, item_id, owner)
                item.print_ref = ref[:300]

            self._txn(queued)
            wait_for = getattr(self.printer, "wait_for", None)
            if wait_for is None or not ref.isdigit():
                raise PrinterError(f"print job {job} is {state} and cannot be followed")
            state = wait_for(int(ref))
        box = layout.back.face_code.px(dpi) if layout.back.face_code is not None else None
        printed = PrintedFace(back_image, box, db_photo, chip_name)
        return PrintOutcome(job, str(result.reference), state, face.face_data().digest(),
                            printed)  # fmt: skip

    def _checked(
        self, s: Session, item_id: int, owner: str, prepared: PreparedCard, qc_apdus: int
    ) -> None:
        item = self._item(s, item_id, owner)
        mark_good(s, self.settings, item, prepared.chip_serial, self.actor,
                  details={"qc_apdus": qc_apdus})  # fmt: skip
        bi.advance(s, item, "check", self.actor, details={"qc_apdus": qc_apdus})
        bi.release(item)

    def close(self) -> None:
        if self._own_engine:
            self.engine.dispose()


def _preload(s: Session, items: list[BatchItem]) -> list[object]:
    """Load the cards, holders and applications of ``items`` in three queries (data
    preparation then finds them in the session's identity map instead of one query each)."""
    if not items:
        return []
    with s.no_autoflush:
        cards = list(s.scalars(sa.select(Card).where(Card.id.in_([i.card_id for i in items]))))
        people = list(s.scalars(sa.select(Person).where(
            Person.id.in_({c.person_id for c in cards}))))  # fmt: skip
        app_ids = {c.application_id for c in cards if c.application_id is not None}
        apps = list(s.scalars(sa.select(Application).where(Application.id.in_(app_ids))))
    return [*cards, *people, *apps]


def region_name(code: str) -> str:
    """City and district names of a GB/T 2260 code as printed on the face (杭州市西湖区)."""
    city = regions.lookup(code[:4] + "00")
    district = regions.lookup(code)
    parts = [city.name] if city is not None else []
    if district is not None and (city is None or district.code != city.code):
        parts.append(district.name)
    return "".join(parts)


def mark_good(
    s: Session,
    settings: IssuanceConfig,
    item: BatchItem,
    chip_serial: str,
    actor: Actor,
    *,
    details: dict[str, Any] | None = None,
) -> Card:
    """The card passed quality control (in house or at the bureau): chip good, the card's
    ``personalise`` transition, the PIN mailer queued (caller's transaction; the item's own
    transition is the caller's)."""
    chip = s.scalars(sa.select(BlankChip).where(BlankChip.chip_serial == chip_serial)).one()
    chip.status, chip.closed_at, chip.station = ChipStatus.GOOD, utcnow(), item.station
    card = advance_production(
        s, settings, item.card_id, CardEvent.PERSONALISE, actor, today=item.issue_date
    )
    person = s.get(Person, card.person_id)
    assert person is not None
    # The PIN mailer computes the initial PIN in the HSM when it prints the sealed letter:
    # the PIN itself is never stored (issuance.batches.dataprep.initial_pin).
    enqueue(
        s, MAILER_TOPIC, person_id=person.id, recipient=person.address,
        payload={"card_id": card.id, "card_number": card.card_number,
                 "card_identification_code": card.card_identification_code},
    )  # fmt: skip
    return card


def run_batch(settings: IssuanceConfig, batch_ref: str | int, **kwargs: Any) -> RunSummary:
    runner = BatchRunner(settings, batch_ref, **kwargs)
    try:
        return runner.run()
    finally:
        runner.close()


@contextlib.contextmanager
def runner_for(
    settings: IssuanceConfig, batch_ref: str | int, **kwargs: Any
) -> Iterator[BatchRunner]:
    runner = BatchRunner(settings, batch_ref, **kwargs)
    try:
        yield runner
    finally:
        runner.close()
