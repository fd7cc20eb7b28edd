"""Lease recovery against a worker that renews at the same moment (PostgreSQL, where workers
on several hosts share a batch): recovery never voids a lease from a stale read, and a row
held by another transaction (a worker renewing, or one cut off from the database whose
transaction is still open) does not hold recovery up."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from batch_helpers import HsmRoot, batch_settings, hsm_root, populate
from sqlalchemy.engine import Engine

from issuance.audit import SYSTEM_ACTOR
from issuance.batches import items as bi
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import BatchItem, utcnow
from yikatong.settings import Settings

pytestmark = [pytest.mark.postgres, pytest.mark.softhsm]

GHOST = "ghost-host:1:1:station-1"


@pytest.fixture(scope="session")
def db_backend() -> str:
    return "postgres"


@pytest.fixture(scope="session")
def lock_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("lock-hsm"))


@pytest.fixture
def env(tmp_path: Path, fresh_db_url: str, lock_hsm: HsmRoot) -> Iterator[tuple[Settings, Engine]]:
    settings = batch_settings(tmp_path / "data", fresh_db_url, lock_hsm)
    engine = make_engine(settings)
    yield settings, engine
    engine.dispose()


def test_recovery_skips_a_lease_being_renewed_and_never_voids_it(
    env: tuple[Settings, Engine],
) -> None:
    settings, engine = env
    pop = populate(engine, settings, 1, name="locks")
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:  # a worker elsewhere claimed the card; its lease ran out
        (item_id,) = bi.claim_ids(s, pop.batch_id, GHOST, lease_seconds=-5)
    renewing = factory()  # that worker renews now, its transaction still open
    assert bi.renew_lease(renewing, item_id, GHOST, 60)
    took: list[float] = []

    def recover() -> None:
        started = time.monotonic()
        with transaction(factory) as s:
            s.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
            assert bi.recover_interrupted(s, pop.batch_id, SYSTEM_ACTOR) == []
        took.append(time.monotonic() - started)

    other = threading.Thread(target=recover)
    other.start()
    time.sleep(1.0)
    renewing.commit()
    renewing.close()
    other.join(30)
    assert took and took[0] < 1.0, took  # skipped the locked row, did not wait for it
    with transaction(factory) as s:
        item = s.get(BatchItem, item_id)
        assert item is not None and item.lease_owner == GHOST  # the renewal stands
        assert bi.recover_interrupted(s, pop.batch_id, SYSTEM_ACTOR) == []
        assert item.lease_owner == GHOST  # renewed: not expired, not voided
    with transaction(factory) as s:  # once it runs out again, recovery frees it
        past = utcnow() - timedelta(hours=1)
        s.execute(sa.update(BatchItem).where(BatchItem.id == item_id).values(lease_expires_at=past))
    with transaction(factory) as s:
        bi.recover_interrupted(s, pop.batch_id, SYSTEM_ACTOR)
    with transaction(factory) as s:
        item = s.get(BatchItem, item_id)
        assert item is not None and item.lease_owner is None
