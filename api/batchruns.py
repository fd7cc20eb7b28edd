"""Batch runs started from the web console (``/console/centre``), each in a background thread
of the service process, so that a page request never waits for a batch.

CHOICE: the run is the same :class:`issuance.batches.pipeline.BatchRunner` as ``ykt batch run``
and ``ykt batch resume`` (the adapters the composition root gives :func:`api.app.create_app`:
the HSM, the blank stock, the printer, the encoding stations of ``[readers]``). Its cards are
leased (:mod:`issuance.batches.items`): a ``ykt batch run`` of the same batch on the
production PC, or a run started by another service process, works beside it without making a
card twice; if this process dies, the leases lapse and the next run or resume spoils and
requeues the cards that were in a station. One run per batch per process: a second start of
a batch running here is refused. The stages move in the database and the batch pages poll
them; what the run says at its end (good cards, spoiled chips, failed cards, a station error)
is kept here for the page (:meth:`BatchRuns.state`) until the next run of that batch.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Engine

from issuance.audit import Actor, scrub
from issuance.batches.adapters import BatchAdapters
from issuance.batches.pipeline import BatchInterrupted, BatchRunner, RunOptions
from issuance.errors import ConfigError, ConflictError
from issuance.models import Channel, utcnow
from issuance.settings import IssuanceConfig

log = logging.getLogger("api.batchruns")

#: Notes of a run kept for the page (a chip spoiled at recovery, a perso file not retired).
NOTES_KEPT = 50


class _Notes:
    """The run's :class:`issuance.batches.pipeline.Progress`: the stages' counts are in the
    database (the page polls them); the notes are kept for the page."""

    def __init__(self, into: deque[str]) -> None:
        self.into = into

    def start(self, stage: str, total: int, done: int = 0) -> None:
        return None

    def advance(self, stage: str, n: int = 1) -> None:
        return None

    def note(self, message: str) -> None:
        self.into.append(str(scrub(message))[:300])


@dataclass
class RunState:
    """One run of a batch started from this process."""

    batch_id: int
    started_by: str
    started_at: datetime
    resume: bool
    finished_at: datetime | None = None
    #: ``finished``, ``not_finished`` (failed cards, cards at the bureau or left to make),
    #: ``station_error``, ``interrupted`` or ``error``; None while it runs
    outcome: str | None = None
    checked: int = 0
    spoiled: int = 0
    failed: int = 0
    remaining: int = 0
    at_bureau: int = 0
    stations: int = 0
    recovered: int = 0
    errors: list[str] = field(default_factory=list)
    notes: deque[str] = field(default_factory=lambda: deque(maxlen=NOTES_KEPT))

    @property
    def running(self) -> bool:
        return self.finished_at is None


class BatchRuns:
    """The batch runs of this service process (see the module docstring)."""

    def __init__(
        self, settings: IssuanceConfig, engine: Engine, adapters: BatchAdapters | None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.adapters = adapters
        self._runs: dict[int, RunState] = {}
        self._stops: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        """False when the service was started without production adapters."""
        return self.adapters is not None

    def state(self, batch_id: int) -> RunState | None:
        return self._runs.get(batch_id)

    def start(self, batch_id: int, actor: Actor, *, resume: bool) -> RunState:
        """Start a run (``resume``: after a crash, said so in the notes) in a thread; return at
        once. ConflictError if a run of this batch goes on in this process."""
        if self.adapters is None:
            raise ConfigError("this service has no production line: run ykt batch run")
        with self._lock:
            current = self._runs.get(batch_id)
            if current is not None and current.running:
                raise ConflictError(f"batch {batch_id} is running in this service already")
            state = RunState(batch_id, actor.username, utcnow(), resume)
            stop = threading.Event()
            self._runs[batch_id] = state
            self._stops[batch_id] = stop
        thread = threading.Thread(
            target=self._run, args=(state, actor.via(Channel.SYSTEM), stop),
            name=f"batch-run-{batch_id}", daemon=True,
        )  # fmt: skip
        thread.start()
        return state

    def _run(self, state: RunState, actor: Actor, stop: threading.Event) -> None:
        assert self.adapters is not None
        runner: BatchRunner | None = None
        try:
            runner = BatchRunner(
                self.settings, state.batch_id, adapters=self.adapters, engine=self.engine,
                actor=actor, progress=_Notes(state.notes), options=RunOptions(),
            )  # fmt: skip
            runner.stop = stop
            recovered = runner.recover()
            for item_id, chip in recovered:
                state.notes.append(f"item {item_id}: chip {chip} was in a station when the run "
                                   "stopped: spoiled, card requeued")  # fmt: skip
            try:
                summary = runner.run()
            except BatchInterrupted:
                summary = runner.summary
                state.outcome = "interrupted"
            state.checked, state.spoiled, state.failed = (
                summary.checked, summary.spoiled, summary.failed)  # fmt: skip
            state.remaining, state.at_bureau = summary.remaining, summary.at_bureau
            state.stations, state.recovered = summary.stations, len(summary.recovered)
            state.errors = [str(scrub(e))[:300] for e in summary.errors]
            if state.outcome is None:
                if summary.errors:
                    state.outcome = "station_error"
                elif summary.remaining or summary.failed_cards or summary.at_bureau:
                    state.outcome = "not_finished"
                else:
                    state.outcome = "finished"
        except Exception as exc:  # the page says what stopped it; nothing personal in the log
            text = str(scrub(f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"))
            state.errors = [text[:300]]
            state.outcome = "error"
            log.error("batch run of batch %s stopped: %s", state.batch_id, text[:300])
        finally:
            if runner is not None:
                runner.close()
            state.finished_at = utcnow()

    def stop_all(self) -> None:
        """Ask every run to stop after the card in hand (the service is shutting down)."""
        for stop in self._stops.values():
            stop.set()
