"""The periodic jobs (``ykt worker``): one round every ``[worker] interval_seconds``.

Design notes: ``docs/design/issuance.md`` (section ``issuance.worker``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from issuance import audit, services
from issuance.audit import Signer, scrub
from issuance.db import transaction
from issuance.errors import ConflictError
from issuance.models import utcnow
from issuance.services.ecard import prune_used_nonces
from issuance.services.resident import prune as prune_resident
from issuance.services.verification import prune_used_challenges
from issuance.settings import IssuanceConfig

log = logging.getLogger("issuance.worker")

JOBS = (
    "lapse_losses", "cancel_formal_losses", "expire_cards", "outbox", "audit_seal",
    "prune_challenges", "prune_resident",
)  # fmt: skip
#: ``prune_challenges`` and ``prune_resident`` run at most this often (seconds): rows are kept
#: for minutes (hours) anyway.
PRUNE_EVERY_S = 60.0


def job_lock_key(job: str) -> int:
    """The advisory-lock key of ``job``: a stable signed 64-bit number."""
    digest = hashlib.sha256(f"yikatong-job:{job}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def try_job_lock(session: Session, job: str) -> bool:
    """Take the job's lock for the current transaction; False if another worker holds it."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    got = session.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(job_lock_key(job))))
    return bool(got)


@dataclass
class RoundReport:
    """What one round did: a count per job that ran; the jobs skipped (another worker had
    them) and the ones that failed (with a message free of personal data)."""

    done: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{job} {n}" for job, n in self.done.items()]
        parts += [f"{job} skipped" for job in self.skipped]
        parts += [f"{job} FAILED" for job in self.failed]
        return ", ".join(parts) or "nothing to do"


class Worker:
    """Runs rounds of the periodic jobs on one database."""

    def __init__(
        self,
        settings: IssuanceConfig,
        factory: sessionmaker[Session],
        *,
        sink: Any | None = None,
        signer: Signer | None = None,
        seal: bool | None = None,
        jobs: tuple[str, ...] = JOBS,
    ) -> None:
        unknown = set(jobs) - set(JOBS)
        if unknown:
            raise ValueError(f"unknown jobs {sorted(unknown)}")
        self.settings = settings
        self.factory = factory
        self.sink = sink
        self.signer = signer
        self.seal = settings.worker.seal_audit if seal is None else seal
        self.jobs = jobs
        self._pruned_at: dict[str, float] = {}

    def _job(self, name: str, now: datetime, today: date) -> Callable[[Session], int]:
        cfg = self.settings
        if name == "lapse_losses":
            return lambda s: services.expire_provisional_losses(s, now)
        if name == "cancel_formal_losses":
            return lambda s: services.cancel_overdue_formal_losses(s, cfg, now)
        if name == "expire_cards":
            return lambda s: services.expire_cards(s, today)
        if name == "outbox":
            sink = self.sink or services.LogSink()
            return lambda s: services.drain_outbox(s, sink, limit=cfg.worker.outbox_batch)
        if name == "audit_seal":
            return lambda s: audit.seal(s, self.signer, now=now).sealed
        if name == "prune_challenges":
            return lambda s: prune_used_challenges(s, now) + prune_used_nonces(s, now)
        if name == "prune_resident":
            return lambda s: prune_resident(s, now)
        raise ValueError(name)

    def run_round(self, now: datetime | None = None, today: date | None = None) -> RoundReport:
        now = now or utcnow()
        today = today or date.today()
        report = RoundReport()
        for name in self.jobs:
            if name == "audit_seal" and not self.seal:
                continue
            if (
                name == "cancel_formal_losses"
                and self.settings.lifecycle.formal_loss_cancel_days < 1
            ):
                continue  # the city never turns a formal loss into a cancellation
            if name in ("prune_challenges", "prune_resident"):
                clock = time.monotonic()
                last = self._pruned_at.get(name)
                if last is not None and clock - last < PRUNE_EVERY_S:
                    continue
                self._pruned_at[name] = clock
            job = self._job(name, now, today)
            try:
                with transaction(self.factory) as s:
                    if not try_job_lock(s, name):
                        report.skipped.append(name)
                        continue
                    report.done[name] = job(s)
            except ConflictError:
                report.skipped.append(name)  # a counter changed a row meanwhile: next round
            except Exception as exc:  # one job failing must not stop the others
                text = str(scrub(f"{type(exc).__name__}: {getattr(exc, 'message', '')}"))
                report.failed[name] = text[:300]
                log.error("job %s failed: %s", name, report.failed[name])
        return report

    def run(
        self,
        *,
        interval: float | None = None,
        rounds: int | None = None,
        stop: threading.Event | None = None,
        on_round: Callable[[RoundReport], None] | None = None,
    ) -> int:
        """Run rounds every ``interval`` seconds until ``stop`` is set (or ``rounds`` ran).
        Returns the number of rounds run."""
        interval = self.settings.worker.interval_seconds if interval is None else interval
        stop = stop or threading.Event()
        done = 0
        while not stop.is_set():
            started = time.monotonic()
            report = self.run_round()
            done += 1
            log.info("round %d: %s", done, report.summary())
            if on_round is not None:
                on_round(report)
            if rounds is not None and done >= rounds:
                break
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
        return done
