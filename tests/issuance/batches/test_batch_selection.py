"""Batch selection (filters, audit, no card taken twice) and item leases (claims shared by
concurrent workers, expiry, dead owners), on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from batch_helpers import audit_details

from issuance.audit import Actor
from issuance.batches import items as bi
from issuance.batches.selection import BatchFilter, create_batch
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.errors import ConflictError, PermissionDenied, TransitionError, ValidationError
from issuance.models import BatchItem, BatchStage, Card, CardStatus, Person, utcnow
from yikatong.demo import COMMUNITY, create_residents, ensure_staff
from yikatong.settings import Settings, load_settings


@pytest.fixture
def db(tmp_path: Path, fresh_db_url: str) -> tuple[Settings, sa.Engine, dict[str, Actor]]:
    settings = load_settings(environ={"YKT_DATA_DIR": str(tmp_path),
                                      "YKT_DATABASE__URL": fresh_db_url})  # fmt: skip
    engine = make_engine(settings)
    with transaction(make_sessionmaker(engine)) as s:
        actors = ensure_staff(s)
        create_residents(s, settings, actors, 6)
    return settings, engine, actors


def test_selection_filters_audit_and_no_card_twice(
    db: tuple[Settings, sa.Engine, dict[str, Actor]],
) -> None:
    _settings, engine, actors = db
    factory = make_sessionmaker(engine)
    op = actors["demo-operator"]
    with transaction(factory) as s:
        with pytest.raises(PermissionDenied):
            create_batch(s, actors["demo-reviewer"], "nope")
        with pytest.raises(ValidationError):
            create_batch(s, op, "future", BatchFilter(approved_from=date.today() + timedelta(1)))
        district = s.scalars(sa.select(Person.region_code).order_by(Person.id)).first()
        assert district is not None
        in_district = int(s.scalar(sa.select(sa.func.count()).where(
            Person.region_code == district)) or 0)  # fmt: skip
        b1 = create_batch(s, op, "district", BatchFilter(region_code=district))
        assert b1.card_count == in_district
        b2 = create_batch(s, op, "community", BatchFilter(collective=COMMUNITY))
        assert b2.card_count >= 1
        with pytest.raises(ConflictError):
            create_batch(s, op, "district")
        today = date.today()
        rest = create_batch(s, op, "rest", BatchFilter(approved_from=today, approved_to=today))
        assert b1.card_count + b2.card_count + rest.card_count == 6
        with pytest.raises(ValidationError):  # nothing left to produce
            create_batch(s, op, "again")
        cards = s.scalars(sa.select(Card)).all()
        assert {c.status for c in cards} == {CardStatus.IN_PRODUCTION}
        assert len({c.batch_id for c in cards}) == 3
        created = audit_details(s, "batch.created")
        assert [d["cards"] for d in created] == [b1.card_count, b2.card_count, rest.card_count]
        assert created[0]["region_code"] == district
        assert len(audit_details(s, "card.start_production")) == 6


def test_concurrent_claims_are_disjoint_and_leases_expire(
    db: tuple[Settings, sa.Engine, dict[str, Actor]],
) -> None:
    _settings, engine, actors = db
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        batch_id = create_batch(s, actors["demo-operator"], "claims").id
    got: dict[str, list[int]] = {}

    def worker(name: str) -> None:
        mine: list[int] = []
        while True:
            try:
                with transaction(factory) as s:
                    ids = [i.id for i in bi.claim(s, batch_id, name, lease_seconds=60)]
            except ConflictError:
                continue
            if not ids:
                break
            mine.extend(ids)
        got[name] = mine

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [i for ids in got.values() for i in ids]
    assert len(claimed) == 6 and len(set(claimed)) == 6
    with transaction(factory) as s:
        assert bi.claim(s, batch_id, "late") == []  # every item leased
        later = bi.claim(s, batch_id, "late", limit=10, now=utcnow() + timedelta(seconds=61))
        assert len(later) == 6  # leases expired: claimable again
        item = later[0]
        with pytest.raises(TransitionError):
            bi.advance(s, item, "check", actors["demo-operator"])


def test_dead_local_worker_lease_is_void_at_once(
    db: tuple[Settings, sa.Engine, dict[str, Actor]],
) -> None:
    _settings, engine, actors = db
    factory = make_sessionmaker(engine)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    gone = bi.worker_id().split(":")
    gone[1], gone[2] = proc.stdout.strip(), "1"  # a process of this machine that has exited
    dead_owner = ":".join(gone)
    assert not bi.owner_alive(dead_owner) and bi.owner_alive(bi.worker_id())
    with transaction(factory) as s:
        batch_id = create_batch(s, actors["demo-operator"], "dead").id
        items = bi.claim(s, batch_id, dead_owner, limit=2, lease_seconds=3600)
        items[0].stage = BatchStage.ENCODING
        items[0].chip_serial = "00112233445566FF"
    with transaction(factory) as s:
        spoiled = bi.recover_interrupted(s, batch_id, actors["demo-operator"])
        assert spoiled == [(items[0].id, "00112233445566FF")]
        rows = s.scalars(sa.select(BatchItem).where(BatchItem.batch_id == batch_id)).all()
        assert all(r.lease_owner is None for r in rows)
        first = s.get(BatchItem, items[0].id)
        # requeued; an interruption does not count against the card
        assert first is not None and first.stage == BatchStage.SELECTED and first.attempts == 0
        assert first.last_error and first.last_error.startswith("interrupted in stage encoding")
