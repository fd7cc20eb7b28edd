"""Migration 0023: ``batch_items`` keeps room on its pages (PostgreSQL ``fillfactor``) so that a
claim's lease write is a HOT update (no index touched), and the index nobody reads is gone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from batch_helpers import HsmRoot, batch_settings, hsm_root, populate

from issuance import migrations
from issuance.batches import items as bi
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import BatchStage

INDEX = "ix_batch_items_bureau_file_id"


def _indexes(engine: sa.Engine) -> set[str]:
    return {ix["name"] for ix in sa.inspect(engine).get_indexes("batch_items")}


def _fillfactor(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        opts = conn.exec_driver_sql(
            "SELECT reloptions FROM pg_class WHERE relname = 'batch_items'"
        ).scalar_one()
    return next((o.split("=", 1)[1] for o in opts or () if o.startswith("fillfactor=")), None)


def test_migration_0023_goes_down_and_up(fresh_db_url: str, db_backend: str) -> None:
    engine = make_engine(url=fresh_db_url)
    try:
        assert migrations.current_revision(engine) >= "0023"
        assert INDEX not in _indexes(engine)
        if db_backend == "postgres":
            assert _fillfactor(engine) == "40"
        migrations.downgrade(engine, "0021")
        assert INDEX in _indexes(engine)
        if db_backend == "postgres":
            assert _fillfactor(engine) is None
        migrations.upgrade(engine)
        assert INDEX not in _indexes(engine)
        if db_backend == "postgres":
            assert _fillfactor(engine) == "40"
        assert migrations.drift(engine) == []
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def hot_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("hot-hsm"))


@pytest.mark.postgres
@pytest.mark.softhsm
@pytest.mark.parametrize("db_backend", ["postgres"])  # PostgreSQL's alone: never a skip
def test_a_claims_lease_write_is_a_hot_update(
    tmp_path: Path, fresh_db_url: str, db_backend: str, hot_hsm: HsmRoot
) -> None:
    """Enough items to fill pages at PostgreSQL's default fillfactor (about 90 per page): every
    lease write of a claim of all of them stays on its page (``n_tup_hot_upd``)."""
    assert db_backend == "postgres"  # HOT updates and fillfactor are PostgreSQL's
    settings = batch_settings(tmp_path / "data", fresh_db_url, hot_hsm)
    engine = make_engine(settings)
    try:
        pop = populate(engine, settings, 200, name="hot")
        factory = make_sessionmaker(engine)

        def counts() -> tuple[int, int]:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
                row = conn.exec_driver_sql(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                    "WHERE relname = 'batch_items'"
                ).one()
            return int(row[0]), int(row[1])

        def flushed(before: tuple[int, int], n: int) -> tuple[int, int]:
            deadline = time.monotonic() + 10  # the statistics reach shared memory lazily
            while True:
                now = counts()
                if now[0] - before[0] >= n or time.monotonic() > deadline:
                    return now
                time.sleep(0.1)

        time.sleep(1.1)  # the population's own statistics flushed first
        before = flushed(counts(), 0)
        with transaction(factory) as s:
            claimed = bi.claim_ids(s, pop.batch_id, "hot-host:1:1:prep", stages=(
                BatchStage.SELECTED,), limit=1000)  # fmt: skip
            s.execute(sa.text("SELECT pg_stat_force_next_flush()"))
        assert len(claimed) == 200
        after = flushed(before, len(claimed))
        updated, hot = after[0] - before[0], after[1] - before[1]
        assert updated == len(claimed)
        assert hot == updated, f"{updated - hot} of {updated} lease writes were not HOT"
    finally:
        engine.dispose()
