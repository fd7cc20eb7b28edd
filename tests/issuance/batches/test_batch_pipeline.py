"""The production line end to end through real parts: SoftHSM, isolated pcscd + vpcd with the
emulated chips, the file spool; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from batch_helpers import (
    HsmRoot,
    assert_batch_invariants,
    audit_details,
    batch_settings,
    hsm_root,
    populate,
)
from sqlalchemy.engine import Engine

from cardspec import cardops
from cardspec.emulator import Card as EmulatedCard
from cardspec.profile.social import get_profile
from cardspec.reader import InProcessReader
from hsm.service import CardKeyRef
from issuance.batches import dataprep
from issuance.batches.pipeline import RunOptions
from issuance.batches.report import build_report, write_report
from issuance.batches.shipping import issue_card, ship_batch
from issuance.batches.stock import VirtualBlankStock
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import (
    Batch,
    BatchItem,
    BatchStage,
    BatchStatus,
    BlankChip,
    Card,
    CardStatus,
    ChipStatus,
    OutboxMessage,
)
from yikatong.demo import BRANCH_CODE
from yikatong.settings import Settings
from yikatong.wiring import key_service_from_settings, runner_for

pytestmark = pytest.mark.pcsc


@pytest.fixture(scope="session")
def batch_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("batch-hsm"))


@pytest.fixture
def env(tmp_path: Path, fresh_db_url: str, batch_hsm: HsmRoot) -> Iterator[tuple[Settings, Engine]]:
    settings = batch_settings(tmp_path / "data", fresh_db_url, batch_hsm)
    engine = make_engine(settings)
    yield settings, engine
    engine.dispose()


class DefectiveFirstChips(VirtualBlankStock):
    """A chip manufacturer whose first ``n`` chips carry a wrong transport key (defective
    stock): the stations must spoil them and requeue the cards on fresh blanks."""

    def __init__(self, settings: Settings, key_service: object, n: int) -> None:
        super().__init__(settings, key_service)  # type: ignore[arg-type]
        self.defective = n

    def make_blank(self, serial: bytes, ref: CardKeyRef, profile: object) -> Path:
        path = super().make_blank(serial, ref, profile)  # type: ignore[arg-type]
        if self.defective > 0:
            self.defective -= 1
            data = json.loads(path.read_text())
            data["keys"]["kmc"] = "00" * 16
            path.write_text(json.dumps(data))
        return path


def test_batch_runs_ships_and_issues_with_spoiled_chips_requeued(
    env: tuple[Settings, Engine],
) -> None:
    settings, engine = env
    pop = populate(engine, settings, 5)
    factory = make_sessionmaker(engine)
    ks = key_service_from_settings(settings)
    stock = DefectiveFirstChips(settings, ks, 2)
    operator = pop.actors["demo-operator"]
    with runner_for(settings, pop.batch_id, engine=engine, key_service=ks, stock=stock,
                    actor=operator, options=RunOptions(readers=2)) as runner:  # fmt: skip
        summary = runner.run()
    assert summary.finished and summary.checked == 5 and summary.spoiled == 2
    assert summary.apdus > 5 * 40

    def txn(fn):  # type: ignore[no-untyped-def]
        with transaction(factory) as s:
            return fn(s)

    shipped = ship_batch(txn, settings, pop.batch_id, BRANCH_CODE, operator)
    assert shipped.shipped == 5
    teller = pop.actors["demo-teller"]
    for number in pop.card_numbers:
        txn(lambda s, n=number: issue_card(s, n, teller))
    with transaction(factory) as s:
        counts = assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
        assert counts == {**counts, "good": 5, "spoiled": 2, "assigned": 0, "failed": 0}
        spoiled = s.scalars(sa.select(BlankChip).where(BlankChip.status == ChipStatus.SPOILED))
        assert all("personalisation failed" in (c.reason or "") for c in spoiled)
        statuses = set(s.scalars(sa.select(Card.status).where(Card.batch_id == pop.batch_id)))
        assert statuses == {CardStatus.ISSUED}
        # every stage transition audited, with the chip it concerned
        assert len(audit_details(s, "batch_item.check")) == 5
        assert len(audit_details(s, "batch_item.spoil")) == 2
        assert len(audit_details(s, "batch_item.issue")) == 5
        # the batch's own transitions: started by the run, produced when no card was left
        (started,) = audit_details(s, "batch.started")
        (produced,) = audit_details(s, "batch.produced")
        assert produced == {"name": started["name"], "good": 5, "failed": 0, "withdrawn": 0}
        batch = s.get(Batch, pop.batch_id)
        assert batch is not None and batch.status == BatchStatus.PRODUCED and batch.completed_at
        # the PIN mailer is queued without the PIN; the chip holds the HSM-derived PIN
        item = s.scalars(sa.select(BatchItem).where(BatchItem.batch_id == pop.batch_id)).first()
        assert item is not None and item.stage == BatchStage.ISSUED
        card = s.get(Card, item.card_id)
        assert card is not None and card.card_identification_code is not None
        pin = dataprep.initial_pin(ks, dataprep.key_ref(card, card.card_identification_code))
        mailers = s.scalars(sa.select(OutboxMessage).where(
            OutboxMessage.topic == "card.initial_pin_mailer")).all()  # fmt: skip
        assert len(mailers) == 5
        assert all(pin not in json.dumps(m.payload) for m in mailers)
        report = build_report(s, pop.batch_id)
    chip = EmulatedCard.load(settings.cards_dir / f"{item.chip_serial}.json")
    reader = InProcessReader(chip)
    reader.connect()
    cardops.verify_pin(reader, pin, profile=get_profile(chip.state.profile_name))
    # faces printed to the spool, report and chart written
    assert len(list(settings.spool_dir.glob("*.pdf"))) == 5  # defective chips never printed
    assert report.good == 5 and report.spoil_rate == pytest.approx(2 / 7)
    assert report.spoiled_cards_shipped == 0
    text, png = write_report(report, settings.data_dir / "reports")
    assert "spoil rate 28.6%" in text.read_text() and png.stat().st_size > 10_000


def test_resume_after_a_dead_worker_spoils_cards_left_in_stations(
    env: tuple[Settings, Engine],
) -> None:
    """A worker that died (lease of a process that no longer exists) left one card in each
    station stage: recovery spoils those chips and the run finishes on fresh blanks."""
    settings, engine = env
    pop = populate(engine, settings, 4)
    factory = make_sessionmaker(engine)
    ks = key_service_from_settings(settings)
    with runner_for(settings, pop.batch_id, engine=engine, key_service=ks,
                    options=RunOptions(readers=1)) as runner:  # fmt: skip
        runner.prepare_all()
    dead = "ghost-host:1:1:station-1"  # another machine: only lease expiry frees it
    with transaction(factory) as s:
        items = s.scalars(sa.select(BatchItem).where(BatchItem.batch_id == pop.batch_id)
                          .order_by(BatchItem.id)).all()  # fmt: skip
        for item, stage in zip(items, (BatchStage.ENCODING, BatchStage.PERSONALISED,
                                       BatchStage.PRINTED), strict=False):  # fmt: skip
            item.stage, item.lease_owner = stage, dead
            item.lease_expires_at = item.created_at - timedelta(seconds=1)
    with runner_for(settings, pop.batch_id, engine=engine, key_service=ks,
                    options=RunOptions(readers=2)) as runner:  # fmt: skip
        recovered = runner.recover()
        summary = runner.run()
    assert len(recovered) == 3 and summary.finished
    with transaction(factory) as s:
        counts = assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
        assert counts["good"] == 4 and counts["spoiled"] == 3
        reasons = list(s.scalars(sa.select(BlankChip.reason).where(
            BlankChip.status == ChipStatus.SPOILED)))  # fmt: skip
        assert all(r and r.startswith("interrupted in stage") for r in reasons)
