"""``ykt worker``'s rounds on real databases: every periodic job does its work once, two workers
at the same time share it without doing anything twice, a failing job stops no other."""

from __future__ import annotations

import threading
from datetime import date, timedelta

import pytest
import sqlalchemy as sa
from issuance_helpers import JPEG_FIXTURE, fake_process_photo, make_cid

from issuance import audit, services
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import (
    AuditEvent,
    Card,
    CardStatus,
    Channel,
    LossReport,
    LossStatus,
    OutboxMessage,
    StaffRole,
    utcnow,
)
from issuance.worker import JOBS, Worker, job_lock_key, try_job_lock
from yikatong.settings import load_settings


@pytest.fixture
def db(fresh_db_url, tmp_path):
    cfg = load_settings(
        environ={"YKT_DATA_DIR": str(tmp_path), "YKT_DATABASE__URL": fresh_db_url,
                 "YKT_LIFECYCLE__FORMAL_LOSS_CANCEL_DAYS": "30"}
    )  # fmt: skip
    engine = make_engine(cfg)
    yield cfg, make_sessionmaker(engine)
    engine.dispose()


def _active_cards(cfg, factory, n: int) -> list[int]:
    ids = []
    with transaction(factory) as s:
        if not s.scalar(sa.select(sa.func.count()).select_from(sa.table("staff"))):
            for role in ("clerk", "reviewer", "approver"):
                services.create_staff(s, f"w-{role}", StaffRole(role))
        a = {r: services.actor_for(s, f"w-{r}") for r in ("clerk", "reviewer", "approver")}
        for _ in range(n):
            app = services.submit_application(
                s, cfg, services.ApplicationInput(make_cid(), "孙九", "13900000002",
                                                  photo=JPEG_FIXTURE, ethnicity="01"),
                a["clerk"], photo_processor=fake_process_photo,
            )  # fmt: skip
            services.process_application(s, app.id, a["clerk"])
            services.review_application(s, app.id, a["reviewer"])
            card = services.approve_application(s, cfg, app.id, a["approver"])
            for step in ("start_production", "personalise", "ship"):
                services.advance_production(
                    s, cfg, card.id, step, a["clerk"], chip_serial=__import__("os").urandom(8)
                )
            services.collect_card(s, card.id, a["clerk"])
            services.activate_card(s, card.id, a["clerk"])
            ids.append(card.id)
    return ids


def test_one_round_runs_every_job(db):
    cfg, factory = db
    lost, old, formal, fine = _active_cards(cfg, factory, 4)
    clerk = None
    with transaction(factory) as s:
        clerk = services.actor_for(s, "w-clerk")
        services.report_loss(s, cfg, lost, clerk.via(Channel.PHONE))
        services.report_loss(s, cfg, formal, clerk, identity_checked=True)
        s.get(Card, old).expiry_date = date.today() - timedelta(days=1)
    later = utcnow() + timedelta(days=31)
    worker = Worker(cfg, factory, signer=audit.SoftwareSigner())
    report = worker.run_round(now=later)
    assert report.failed == {} and report.skipped == []
    assert report.done["lapse_losses"] == 1 and report.done["cancel_formal_losses"] == 1
    assert report.done["expire_cards"] == 1
    assert report.done["outbox"] == 4  # four "ready for collection" notifications
    assert report.done["audit_seal"] > 20
    with transaction(factory) as s:
        status = {cid: s.get(Card, cid).status for cid in (lost, old, formal, fine)}
        assert status == {lost: CardStatus.ACTIVE, old: CardStatus.EXPIRED,
                          formal: CardStatus.CANCELLED, fine: CardStatus.ACTIVE}  # fmt: skip
        pending = s.scalar(sa.select(sa.func.count()).where(OutboxMessage.sent_at.is_(None)))
        assert pending == 0
        unsealed = s.scalar(
            sa.select(sa.func.count()).where(
                AuditEvent.chain_seq.is_(None), AuditEvent.occurred_at <= later
            )
        )
        assert unsealed == 0
        audit.verify_chain(s, worker.signer.public_key_pem())  # signed checkpoints check out
    again = worker.run_round(now=later)  # nothing left but the events of the first round
    assert {k: v for k, v in again.done.items() if k != "audit_seal"} == {
        "lapse_losses": 0, "cancel_formal_losses": 0, "expire_cards": 0, "outbox": 0,
    }  # fmt: skip


def test_two_workers_at_once_do_the_work_once(db):
    cfg, factory = db
    ids = _active_cards(cfg, factory, 6)
    with transaction(factory) as s:
        for cid in ids:
            s.get(Card, cid).expiry_date = date.today() - timedelta(days=1)
    barrier = threading.Barrier(2)
    reports = []

    def run() -> None:
        w = Worker(cfg, factory, seal=False)
        barrier.wait(timeout=10)
        reports.append(w.run_round())

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(reports) == 2 and all(r.failed == {} for r in reports)
    # A job that meets the other worker's write is skipped and left to the next round (SQLite:
    # one writer, a stale snapshot is a conflict; PostgreSQL: the job's advisory lock). What
    # the two rounds left, one more round finishes; nothing may be done twice.
    first = list(reports)
    if any(sum(r.done.get(job, 0) for r in first) < 6 for job in ("expire_cards", "outbox")):
        for job in ("expire_cards", "outbox"):
            if sum(r.done.get(job, 0) for r in first) < 6:
                assert any(job in r.skipped for r in first), (job, first)  # left, not lost
        reports.append(Worker(cfg, factory, seal=False).run_round())
    assert sum(r.done.get("expire_cards", 0) for r in reports) == 6
    assert sum(r.done.get("outbox", 0) for r in reports) == 6
    with transaction(factory) as s:
        events = s.scalars(sa.select(AuditEvent.entity_id).where(
            AuditEvent.action == "card.expire")).all()  # fmt: skip
        assert sorted(events) == sorted(str(i) for i in ids)  # each card expired exactly once
        sent = s.scalars(sa.select(OutboxMessage.attempts)).all()
        assert sent == [1] * 6  # each message sent exactly once


def test_a_job_held_by_another_worker_is_skipped(db, db_backend):
    cfg, factory = db
    if db_backend == "sqlite":  # one writer at a time: the lock is the database's own
        with transaction(factory) as s:
            assert try_job_lock(s, "expire_cards")
        return
    assert job_lock_key("expire_cards") != job_lock_key("outbox")
    holder = factory()
    try:
        holder.execute(sa.select(sa.func.pg_advisory_xact_lock(job_lock_key("expire_cards"))))
        report = Worker(cfg, factory, seal=False).run_round()
        assert "expire_cards" in report.skipped and "outbox" in report.done
    finally:
        holder.rollback()  # the lock goes with the transaction
        holder.close()
    report = Worker(cfg, factory, seal=False).run_round()
    assert "expire_cards" in report.done


class BrokenSigner(audit.SoftwareSigner):
    def sign(self, data: bytes) -> bytes:
        raise RuntimeError("HSM unreachable")


def test_failing_job_stops_no_other_and_is_retried(db):
    cfg, factory = db
    (card,) = _active_cards(cfg, factory, 1)
    with transaction(factory) as s:
        services.report_loss(s, cfg, card, services.actor_for(s, "w-clerk").via(Channel.PHONE))
    later = utcnow() + timedelta(days=8)
    w = Worker(cfg, factory, signer=BrokenSigner())
    report = w.run_round(now=later)
    assert set(report.failed) == {"audit_seal"} and "RuntimeError" in report.failed["audit_seal"]
    assert report.done["lapse_losses"] == 1 and report.done["outbox"] == 1
    with transaction(factory) as s:
        assert s.scalars(sa.select(LossReport.status)).all() == [LossStatus.LAPSED]
        assert s.scalar(sa.select(sa.func.count()).where(AuditEvent.chain_seq.is_not(None))) == 0
    w.signer = audit.SoftwareSigner()  # the HSM is back: the next round seals everything
    assert w.run_round(now=later).done["audit_seal"] > 0


def test_run_loops_until_stopped(db):
    cfg, factory = db
    stop = threading.Event()
    seen = []

    def on_round(report) -> None:
        seen.append(report)
        if len(seen) == 3:
            stop.set()

    rounds = Worker(cfg, factory, seal=False).run(interval=0.05, stop=stop, on_round=on_round)
    assert rounds == 3 and all(set(r.done) <= set(JOBS) for r in seen)
