"""Real concurrent connections: one card, two counters; card-number allocators."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
from issuance_helpers import JPEG_FIXTURE, fake_process_photo, make_cid

from cardspec.ids import validate_card_number
from issuance import migrations, services
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.errors import ConflictError
from issuance.models import Card, CardKind, CardStatus, Channel, Deposit, StaffRole


def _setup_active_card(factory, settings) -> tuple[int, dict]:
    with transaction(factory) as s:
        names = {}
        for role in ("clerk", "reviewer", "approver", "fund_supervisor"):
            services.create_staff(s, f"{role}-x", StaffRole(role))
            names[role] = f"{role}-x"
        a = {r: services.actor_for(s, n) for r, n in names.items()}
        app = services.submit_application(
            s,
            settings,
            services.ApplicationInput(
                make_cid(), "李四", "13900000000", photo=JPEG_FIXTURE, ethnicity="01"
            ),
            a["clerk"],
            photo_processor=fake_process_photo,
        )
        services.process_application(s, app.id, a["clerk"])
        services.review_application(s, app.id, a["reviewer"])
        card = services.approve_application(s, settings, app.id, a["approver"])
        for step in ("start_production", "personalise", "ship"):
            services.advance_production(
                s, settings, card.id, step, a["clerk"], chip_serial=b"\x00" * 7 + b"\x01"
            )
        services.collect_card(s, card.id, a["clerk"])
        services.activate_card(s, card.id, a["clerk"])
        return card.id, names


def test_two_counters_one_card_exactly_one_wins(fresh_db_url, settings):
    engine = make_engine(url=fresh_db_url)
    factory = make_sessionmaker(engine)
    card_id, names = _setup_active_card(factory, settings)
    barrier = threading.Barrier(2)
    with transaction(factory) as s:
        version_before = s.get(Card, card_id).version

    def suspend() -> str:
        with transaction(factory) as s:
            actor = services.actor_for(s, names["fund_supervisor"])
            services.find_card(s, card_id=card_id)  # both read version N
            barrier.wait(timeout=10)
            services.suspend_card(s, card_id, actor, "fraud")
        return "ok"

    def report_loss() -> str:
        with transaction(factory) as s:
            actor = services.actor_for(s, names["clerk"], Channel.COUNTER)
            services.find_card(s, card_id=card_id)
            barrier.wait(timeout=10)
            services.report_loss(s, settings, card_id, actor, identity_checked=True)
        return "ok"

    outcomes = []
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(suspend), pool.submit(report_loss)]
        for f in futures:
            try:
                outcomes.append(f.result(timeout=30))
            except ConflictError:
                outcomes.append("conflict")
    assert sorted(outcomes) == ["conflict", "ok"]
    with transaction(factory) as s:
        card = s.get(Card, card_id)
        assert card.status in (CardStatus.SUSPENDED, CardStatus.LOST_FORMAL)
        assert card.version == version_before + 1
    engine.dispose()


def test_two_counters_one_person_one_temporary_card(fresh_db_url, settings):
    """Counter B checks while counter A's temporary card is not yet committed (so B's check
    passes: it is only a read); the partial unique index makes B's insert lose."""
    engine = make_engine(url=fresh_db_url)
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        for name in ("clerk-a", "clerk-b"):
            services.create_staff(s, name, StaffRole.CLERK)
        app = services.submit_application(
            s, settings,
            services.ApplicationInput(make_cid(), "周八", "13900000001", photo=JPEG_FIXTURE,
                                      ethnicity="01"),
            services.actor_for(s, "clerk-a"), photo_processor=fake_process_photo,
        )  # fmt: skip
        person_id = app.person_id
    a_flushed, b_checking = threading.Event(), threading.Event()

    def counter_a() -> str:
        with transaction(factory) as s:
            services.issue_temporary_card(s, settings, person_id, services.actor_for(s, "clerk-a"))
            a_flushed.set()
            assert b_checking.wait(timeout=10)
            time.sleep(0.5)  # B has done its check by now and waits on A's locks
        return "ok"

    def counter_b() -> str:
        assert a_flushed.wait(timeout=10)
        with transaction(factory) as s:
            actor = services.actor_for(s, "clerk-b")
            b_checking.set()
            services.issue_temporary_card(s, settings, person_id, actor)
        return "ok"

    outcomes = []
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(counter_a), pool.submit(counter_b)]
        for f in futures:
            try:
                outcomes.append(f.result(timeout=60))
            except ConflictError as exc:
                outcomes.append("conflict")
                assert "at the same time" in exc.message
    assert outcomes == ["ok", "conflict"]
    with transaction(factory) as s:
        temps = s.scalars(
            sa.select(Card).where(Card.person_id == person_id, Card.kind == CardKind.TEMPORARY)
        ).all()
        assert len(temps) == 1 and temps[0].status == CardStatus.ACTIVE
        deposits = s.scalar(sa.select(sa.func.count()).select_from(Deposit))
        assert deposits == 1
    engine.dispose()


def test_concurrent_allocators_no_gap_no_reuse(fresh_db_url):
    engine = make_engine(url=fresh_db_url)
    factory = make_sessionmaker(engine)
    committed: list[str] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(15):
            s = factory()
            try:
                numbers = services.allocate_card_numbers(s, 3, prefix="T")
                if (k + i) % 4 == 0:
                    s.rollback()  # an aborted batch gives its numbers back
                    continue
                s.commit()
                with lock:
                    committed.extend(numbers)
            finally:
                s.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(worker, range(4)))
    assert len(committed) == len(set(committed))  # never reused
    values = sorted(int(n[1:8]) for n in committed)
    assert values == list(range(1, len(values) + 1))  # gapless
    for n in committed:
        validate_card_number(n)
    engine.dispose()


def test_migrations_drift_free(engine):
    assert migrations.drift(engine) == []
    assert migrations.current_revision(engine) == migrations.head_revision()


def test_status_lookups_use_indexes(engine, db_backend):
    """Lookups by card number / identification code must be index scans (10M-card scale)."""
    with engine.connect() as conn:
        for col in ("card_number", "card_identification_code"):
            if db_backend == "sqlite":
                plan = " ".join(
                    str(r[-1])
                    for r in conn.exec_driver_sql(
                        f"EXPLAIN QUERY PLAN SELECT status FROM cards WHERE {col} = 'A'"
                    )
                )
                assert "USING INDEX" in plan, plan
            else:
                conn.exec_driver_sql("SET enable_seqscan = off")
                plan = " ".join(
                    str(r[0])
                    for r in conn.exec_driver_sql(
                        f"EXPLAIN SELECT status FROM cards WHERE {col} = 'A'"
                    )
                )
                assert "Index" in plan and "Seq Scan" not in plan, plan
