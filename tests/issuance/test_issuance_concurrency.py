"""Real concurrent connections: one card, two counters; card-number allocators."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from conftest import JPEG_FIXTURE, fake_process_photo, make_cid

from cardspec.ids import validate_card_number
from issuance import migrations, services
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.errors import ConflictError
from issuance.models import Card, CardStatus, Channel, StaffRole


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
            services.ApplicationInput(make_cid(), "李四", "13900000000", photo=JPEG_FIXTURE),
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
