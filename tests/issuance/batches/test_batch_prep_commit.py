"""Data preparation's chunk commit (``bulkprep.Preparer._commit``): every item gets its own
chip serial whatever the order of the chunk's cards (on PostgreSQL each serial is found by a
binary search over the ids, sorted by the commit), and the chunk's rows read back are the same
on both databases' forms of the read (``read_rows``: an id array on PostgreSQL, a parameter
list on SQLite)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from batch_helpers import HsmRoot, batch_settings, hsm_root, populate
from sqlalchemy.engine import Engine

from hsm.prep import perso_key_label, prep_ops
from issuance import audit
from issuance.batches import bulkprep
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import BatchItem, BatchStage, BlankChip, Card
from yikatong.settings import Settings
from yikatong.wiring import key_service_from_settings

pytestmark = pytest.mark.softhsm


@pytest.fixture(scope="module")
def commit_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("commit-hsm"))


@pytest.fixture
def env(
    tmp_path: Path, fresh_db_url: str, commit_hsm: HsmRoot
) -> Iterator[tuple[Settings, Engine]]:
    settings = batch_settings(tmp_path / "data", fresh_db_url, commit_hsm)
    engine = make_engine(settings)
    yield settings, engine
    engine.dispose()


def test_each_item_gets_its_own_serial_whatever_the_order_of_the_chunk(
    env: tuple[Settings, Engine],
) -> None:
    settings, engine = env
    pop = populate(engine, settings, 9, name="order")
    factory = make_sessionmaker(engine)
    keys = key_service_from_settings(settings)
    bulkprep.ensure_batch_perso_key(factory, keys, pop.batch_id)
    preparer = bulkprep.Preparer(settings, factory, keys, pop.batch_id, audit.SYSTEM_ACTOR,
                                 chunk=9)  # fmt: skip
    with transaction(factory) as s:
        rows = preparer._claim(s, (BatchStage.SELECTED,))
        again = bulkprep.read_rows(s, [r.item_id for r in reversed(rows)])
    assert len(rows) == 9
    assert [r.item_id for r in rows] == sorted(r.item_id for r in rows)
    assert again == rows  # in id order whatever the order asked
    ops = prep_ops(keys, perso_key_label(pop.batch_id))
    assert ops is not None
    with ops:
        made = preparer._chunk(ops, rows)
    assert len(made) == 9
    want = {c.row.item_id: (c.chip_serial, c.cic) for c in made}
    assert len({serial for serial, _ in want.values()}) == 9
    shuffled = list(made)
    random.Random(20).shuffle(shuffled)
    assert [c.row.item_id for c in shuffled] != [c.row.item_id for c in made]
    preparer._commit_timed(shuffled)
    with transaction(factory) as s:
        items = s.execute(
            sa.select(BatchItem.id, BatchItem.stage, BatchItem.chip_serial, BatchItem.lease_owner,
                      BlankChip.chip_serial, Card.card_identification_code)
            .join(BlankChip, BlankChip.item_id == BatchItem.id)
            .join(Card, Card.id == BatchItem.card_id)
            .where(BatchItem.batch_id == pop.batch_id)
        ).all()  # fmt: skip
    assert len(items) == 9
    for item_id, stage, serial, owner, chip_serial, cic in items:
        assert stage == BatchStage.PREPARED and owner is None
        assert serial == chip_serial == want[item_id][0]
        assert cic == want[item_id][1]
