"""The production line of a batch: data preparation, then encoding stations in parallel
(personalise → print → quality check), every step one committed transaction with its audit.

``run_batch`` is what ``ykt batch run`` and ``ykt batch resume`` call; several of them (on one
machine or several, against PostgreSQL) can work on the same batch: items are leased
(:mod:`issuance.batches.items`). It starts by voiding dead workers' leases: a card that was in
a station when its worker died is spoiled (chip recorded with the reason) and requeued on a
fresh blank, so a kill -9 at any moment loses nothing and never counts a half-made card good.

Per card, at a station (each step commits before the next starts):

1. ``selected → prepared``: a blank chip is taken from stock, the data prepared (if not done
   by the preparation phase);
2. ``prepared → encoding``: committed *before* the first APDU, so an interruption is visible;
3. personalisation in the reader, then ``encoding → personalised``;
4. faces rendered and printed, then ``personalised → printed`` (the printed card number kept);
5. quality check, then ``printed → checked`` together with the card's own ``personalise``
   lifecycle transition, the chip marked good and the PIN mailer queued.

A failure at 3-5 spoils the chip and requeues the card (``failed`` after ``max_attempts``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from cardspec.errors import CardSpecError
from hsm.errors import HsmError
from hsm.service import KeyService
from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.batches import dataprep
from issuance.batches import items as bi
from issuance.batches.prepared import PreparedCard
from issuance.batches.selection import get_batch
from issuance.batches.stock import BlankStock, VirtualBlankStock, ensure_manufacturer_key
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.errors import ConflictError, IssuanceError
from issuance.lifecycle import CardEvent
from issuance.models import (
    Application,
    Batch,
    BatchItem,
    BatchStage,
    BlankChip,
    Card,
    ChipStatus,
    Person,
    utcnow,
)
from issuance.services.cards import advance_production
from issuance.services.outbox import enqueue
from issuance.settings import Settings
from printers.errors import PrinterError

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
    remaining: int = 0
    stations: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.remaining == 0


def with_retry(fn: Callable[[], T], attempts: int = 8) -> T:
    """Run one transaction, retrying when it lost a race (SQLite busy snapshot, PostgreSQL
    serialisation): each attempt re-reads its rows."""
    for n in range(attempts):
        try:
            return fn()
        except ConflictError:
            if n == attempts - 1:
                raise
            time.sleep(0.02 * (n + 1))
    raise AssertionError("unreachable")


def safe_job_id(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)).strip("_.-")[:128] or "card"


class BatchRunner:
    """One run of the production line on one batch (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        batch_ref: str | int,
        *,
        engine: Engine | None = None,
        key_service: KeyService | None = None,
        stock: BlankStock | None = None,
        printer: Any = None,
        actor: Actor = SYSTEM_ACTOR,
        progress: Progress | None = None,
        options: RunOptions | None = None,
    ) -> None:
        self.settings = settings
        self.options = options or RunOptions()
        self._own_engine = engine is None
        self.engine = engine or make_engine(settings)
        self.factory: sessionmaker[Session] = make_sessionmaker(self.engine)
        if key_service is None:
            from hsm.service import key_service_from_settings

            key_service = key_service_from_settings(settings)
        self.key_service = key_service
        self.stock = stock or VirtualBlankStock(settings, key_service)
        if printer is None:
            from printers.spool import make_printer

            printer = make_printer(settings)
        self.printer = printer
        self.actor = actor
        self.progress = progress or NullProgress()
        self.stop = threading.Event()
        with transaction(self.factory) as s:
            batch = get_batch(s, batch_ref)
            self.batch_id, self.batch_name = batch.id, batch.name
        self.summary = RunSummary(self.batch_id, self.batch_name)
        self._lock = threading.Lock()

    # --- helpers ---------------------------------------------------------------------------
    def _txn(self, fn: Callable[[Session], T]) -> T:
        def once() -> T:
            with transaction(self.factory) as s:
                return fn(s)

        return with_retry(once)

    def _item(self, s: Session, item_id: int, owner: str) -> BatchItem:
        """The item, after renewing its lease with a write (the transaction's first statement
        writes: on SQLite it takes the write lock before reading, no stale snapshot)."""
        s.execute(
            sa.update(BatchItem)
            .where(BatchItem.id == item_id)
            .values(lease_owner=owner,
                    lease_expires_at=utcnow() + timedelta(seconds=self.options.lease_seconds))
        )  # fmt: skip
        item = s.get(BatchItem, item_id, populate_existing=True)
        assert item is not None
        return item

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
            if batch.status == "open":
                batch.status = "in_production"
            return spoiled

        out = self._txn(go)
        self.summary.recovered.extend(out)
        return out

    def prepare_all(self) -> int:
        """Data preparation for every card without a chip (one transaction per card)."""
        owner = bi.worker_id("prepare")
        counts = self.counts()
        done_before = sum(n for st, n in counts.items()
                          if st not in (BatchStage.SELECTED, BatchStage.FAILED))  # fmt: skip
        self.progress.start("prepare", done_before + counts[BatchStage.SELECTED], done_before)
        n = 0
        while not self.stop.is_set():
            claimed = self._txn(lambda s: [i.id for i in bi.claim(
                s, self.batch_id, owner, stages=(BatchStage.SELECTED,), limit=1,
                lease_seconds=self.options.lease_seconds)])  # fmt: skip
            if not claimed:
                break
            self._prepare(claimed[0], owner, station=None)
            item_id = claimed[0]

            def release(s: Session, item_id: int = item_id) -> None:
                bi.release(self._item(s, item_id, owner))

            self._txn(release)
            n += 1
            self.progress.advance("prepare")
        self.summary.prepared += n
        return n

    def _prepare(self, item_id: int, owner: str, station: str | None) -> PreparedCard:
        def go(s: Session) -> PreparedCard:
            item = self._item(s, item_id, owner)
            return dataprep.assign_chip(
                s, self.settings, self.key_service, self.stock, item, self.actor,
                station=station, today=self.options.today,
            )  # fmt: skip

        return self._txn(go)

    def run(self) -> RunSummary:
        from printers.stations import open_stations

        start = time.perf_counter()
        ensure_manufacturer_key(self.settings)
        self.recover()
        if self.options.prepare_first:
            self.prepare_all()
        counts = self.counts()
        good = sum(counts[s] for s in (BatchStage.CHECKED, BatchStage.SHIPPED, BatchStage.ISSUED))
        todo = sum(counts[s] for s in bi.IN_PRODUCTION)
        for stage in ("personalise", "print", "check"):
            self.progress.start(stage, good + todo, good)
        if todo and not self.stop.is_set():
            with open_stations(
                self.settings, self.options.readers, run_dir=self.options.run_dir
            ) as stations:
                self.summary.stations = len(stations)
                threads = [
                    threading.Thread(target=self._station_loop, args=(st,), name=st.name,
                                     daemon=True)
                    for st in stations
                ]  # fmt: skip
                for t in threads:
                    t.start()
                try:
                    while any(t.is_alive() for t in threads):
                        for t in threads:
                            t.join(0.2)
                except KeyboardInterrupt:
                    self.stop.set()
                    self.progress.note("stopping: the stations finish the card in hand")
                    for t in threads:
                        t.join()
        self.summary.seconds = time.perf_counter() - start
        self._finish()
        if self.stop.is_set() and self.summary.remaining:
            raise BatchInterrupted(
                f"batch {self.batch_name} interrupted with {self.summary.remaining} card(s) "
                "to make", batch=self.batch_name,
            )  # fmt: skip
        return self.summary

    def _finish(self) -> None:
        def go(s: Session) -> int:
            counts = bi.stage_counts(s, self.batch_id)
            remaining = sum(counts[st] for st in bi.IN_PRODUCTION)
            batch = s.get(Batch, self.batch_id)
            assert batch is not None
            if remaining == 0 and batch.status in ("open", "in_production"):
                batch.status, batch.completed_at = "produced", utcnow()
            return remaining

        self.summary.remaining = self._txn(go)

    def _claim(self, s: Session, owner: str) -> list[int]:
        items = bi.claim(s, self.batch_id, owner, lease_seconds=self.options.lease_seconds)
        return [i.id for i in items]

    # --- one station -----------------------------------------------------------------------
    def _station_loop(self, station: Any) -> None:
        owner = bi.worker_id(station.name)
        idle_since: float | None = None
        while not self.stop.is_set():
            claimed = self._txn(lambda s: self._claim(s, owner))
            if claimed:
                idle_since = None
                try:
                    self._make_card(station, claimed[0], owner)
                except Exception as exc:
                    log.exception("station %s: item %s", station.name, claimed[0])
                    with self._lock:
                        self.summary.errors.append(f"{station.name}: {exc}")
                    self.stop.set()
                continue
            # nothing free: finished, or wait for cards others may still requeue
            counts = self.counts()
            if sum(counts[s] for s in bi.IN_PRODUCTION) == 0:
                return
            idle_since = idle_since or time.monotonic()
            self._txn(lambda s: bi.recover_interrupted(
                s, self.batch_id, self.actor, max_attempts=self.options.max_attempts))  # fmt: skip
            time.sleep(0.1)

    def _spoil(self, item_id: int, owner: str, station: Any, reason: str) -> None:
        def go(s: Session) -> bi.SpoilResult:
            item = self._item(s, item_id, owner)
            return bi.spoil(s, item, self.actor, reason, max_attempts=self.options.max_attempts,
                            station=station.name)  # fmt: skip

        res = self._txn(go)
        with self._lock:
            self.summary.spoiled += 1
            if res.stage == BatchStage.FAILED:
                self.summary.failed += 1
        self.progress.note(f"{station.name}: spoiled chip {res.chip_serial}: {reason}")

    def _make_card(self, station: Any, item_id: int, owner: str) -> None:
        name = station.name
        with transaction(self.factory) as s:
            item = s.get(BatchItem, item_id)
            assert item is not None
            stage = item.stage
        if stage == BatchStage.SELECTED:
            prepared = self._prepare(item_id, owner, station=name)
            self.progress.advance("prepare")
        else:
            prepared = self._txn(lambda s: dataprep.prepared_for_item(
                s, self.settings, self.key_service, self._item(s, item_id, owner)))  # fmt: skip

        def encode(s: Session) -> None:
            item = self._item(s, item_id, owner)
            item.station = name
            bi.advance(s, item, "encode", self.actor, details={"station": name})

        self._txn(encode)
        image = self.stock.image(prepared.chip_serial)
        try:
            try:
                station.load(image)
                result = station.personalise(prepared, self.key_service)
            except (CardSpecError, HsmError, PrinterError, OSError) as exc:
                self._spoil(item_id, owner, station, f"personalisation failed: {exc}")
                return

            def personalised(s: Session) -> None:
                item = self._item(s, item_id, owner)
                item.apdu_count = result.apdu_count
                bi.advance(s, item, "personalised", self.actor,
                           details={"apdus": result.apdu_count, "station": name})  # fmt: skip

            self._txn(personalised)
            self.progress.advance("personalise")
            try:
                job, ref = self._print(prepared)
            except (PrinterError, OSError) as exc:
                self._spoil(item_id, owner, station, f"printing failed: {exc}")
                return

            def printed(s: Session) -> None:
                item = self._item(s, item_id, owner)
                item.printed_card_number = prepared.perso.card_number
                item.print_ref = ref[:300]
                bi.advance(s, item, "print", self.actor, details={"job": job})

            self._txn(printed)
            self.progress.advance("print")
            from printers.stations import QualityCheckFailed

            try:
                report = station.check(prepared, self.key_service, prepared.perso.card_number)
            except (QualityCheckFailed, CardSpecError, HsmError) as exc:
                self._spoil(item_id, owner, station, f"quality check failed: {exc}")
                return
            self._txn(lambda s: self._checked(s, item_id, owner, prepared, report.apdu_count))
            with self._lock:
                self.summary.checked += 1
                self.summary.apdus += result.apdu_count + report.apdu_count
            self.progress.advance("check")
        finally:
            with contextlib.suppress(Exception):
                station.eject()

    def _print(self, prepared: PreparedCard) -> tuple[str, str]:
        from printers.faces import CardFace, render_back, render_front

        with transaction(self.factory) as s:
            card = s.get(Card, prepared.card_id)
            assert card is not None
            person = s.get(Person, card.person_id)
            assert person is not None
            app = s.get(Application, card.application_id) if card.application_id else None
            face = CardFace(
                name=person.name, ssn=person.citizen_id, card_number=card.card_number,
                issue_date=prepared.perso.issue_date,
                photo_jpeg=app.photo_jpeg if app is not None else None,
                issuer_name=self.settings.issuer.name, bank_name=self.settings.issuer.bank_name,
            )  # fmt: skip
        dpi = self.settings.printer.dpi
        front, back = render_front(face, dpi), render_back(face, dpi)
        job = safe_job_id(self.batch_name, face.card_number, prepared.chip_serial)
        result = self.printer.print_card(job, front, back)
        return job, str(result.reference)

    def _checked(
        self, s: Session, item_id: int, owner: str, prepared: PreparedCard, qc_apdus: int
    ) -> None:
        item = self._item(s, item_id, owner)
        chip = s.scalars(
            sa.select(BlankChip).where(BlankChip.chip_serial == prepared.chip_serial)
        ).one()
        chip.status, chip.closed_at, chip.station = ChipStatus.GOOD, utcnow(), item.station
        card = advance_production(
            s, self.settings, item.card_id, CardEvent.PERSONALISE, self.actor,
            today=item.issue_date,
        )  # fmt: skip
        person = s.get(Person, card.person_id)
        assert person is not None
        # The PIN mailer computes the initial PIN in the HSM when it prints the sealed letter:
        # the PIN itself is never stored (issuance.batches.dataprep.initial_pin).
        enqueue(
            s, "card.initial_pin_mailer", person_id=person.id, recipient=person.address,
            payload={"card_id": card.id, "card_number": card.card_number,
                     "card_identification_code": card.card_identification_code},
        )  # fmt: skip
        bi.advance(s, item, "check", self.actor, details={"qc_apdus": qc_apdus})
        bi.release(item)

    def close(self) -> None:
        if self._own_engine:
            self.engine.dispose()


def run_batch(settings: Settings, batch_ref: str | int, **kwargs: Any) -> RunSummary:
    runner = BatchRunner(settings, batch_ref, **kwargs)
    try:
        return runner.run()
    finally:
        runner.close()


@contextlib.contextmanager
def runner_for(settings: Settings, batch_ref: str | int, **kwargs: Any) -> Iterator[BatchRunner]:
    runner = BatchRunner(settings, batch_ref, **kwargs)
    try:
        yield runner
    finally:
        runner.close()
