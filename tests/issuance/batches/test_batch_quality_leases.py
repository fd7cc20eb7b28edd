"""Quality control against the printed face and every personalised file, lease heartbeats and
take-overs, failed cards (retry / withdraw) and the operator commands around a batch. Real
SoftHSM, pcscd + vpcd with the emulated chips, the file spool; SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from batch_helpers import HsmRoot, assert_batch_invariants, batch_settings, hsm_root, populate
from cli_helpers import ykt, ykt_env
from sqlalchemy.engine import Engine
from test_batch_pipeline import DefectiveFirstChips

from issuance.batches import dataprep
from issuance.batches import items as bi
from issuance.batches.pipeline import BatchRunner, RunOptions
from issuance.batches.stations import PrintedFace, QualityCheckFailed, open_stations
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import (
    Application,
    BatchItem,
    BatchStage,
    BlankChip,
    Card,
    CardStatus,
    ChipStatus,
)
from printers.layout import DEFAULT_LAYOUT
from printers.spool import FileSpool
from yikatong.demo import BRANCH_CODE
from yikatong.settings import Settings
from yikatong.wiring import batch_adapters, key_service_from_settings, runner_for

pytestmark = pytest.mark.pcsc


@pytest.fixture(scope="session")
def qc_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("qc-hsm"))


@pytest.fixture
def env(tmp_path: Path, fresh_db_url: str, qc_hsm: HsmRoot) -> Iterator[tuple[Settings, Engine]]:
    settings = batch_settings(tmp_path / "data", fresh_db_url, qc_hsm)
    engine = make_engine(settings)
    yield settings, engine
    engine.dispose()


class MisprintOnce(BatchRunner):
    """A printer line whose first face is rendered with another name (a mix-up at the
    printer): the quality check must catch it."""

    misprints = 1

    def face_for(self, s: Any, prepared: Any) -> Any:
        face = super().face_for(s, prepared)
        if self.misprints:
            self.misprints -= 1
            return dataclasses.replace(face, name="王错名")
        return face


def test_a_face_that_does_not_match_the_chip_spoils_the_card(
    env: tuple[Settings, Engine],
) -> None:
    settings, engine = env
    pop = populate(engine, settings, 2, name="qc1")
    runner = MisprintOnce(settings, pop.batch_id, adapters=batch_adapters(settings),
                          engine=engine, options=RunOptions(readers=1))  # fmt: skip
    try:
        summary = runner.run()
    finally:
        runner.close()
    assert summary.finished and summary.checked == 2 and summary.spoiled == 1
    with transaction(make_sessionmaker(engine)) as s:
        counts = assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
        assert counts["good"] == 2 and counts["spoiled"] == 1
        (reason,) = s.scalars(sa.select(BlankChip.reason).where(
            BlankChip.status == ChipStatus.SPOILED))  # fmt: skip
        assert reason is not None and "quality check failed" in reason
        assert "printed name 王错名 is not the chip's" in reason
        faces = list(s.scalars(sa.select(BatchItem.face_sha256).where(
            BatchItem.batch_id == pop.batch_id)))  # fmt: skip
        assert all(f and len(f) == 64 for f in faces) and len(set(faces)) == 2


def test_quality_check_reads_every_file_pin_counters_and_the_printed_photo(
    env: tuple[Settings, Engine], tmp_path: Path
) -> None:
    settings, engine = env
    pop = populate(engine, settings, 2, name="qc2")
    ks = key_service_from_settings(settings)
    with runner_for(settings, pop.batch_id, engine=engine, key_service=ks,
                    options=RunOptions(readers=1)) as runner:  # fmt: skip
        assert runner.run().checked == 2
    with transaction(make_sessionmaker(engine)) as s:
        items = s.scalars(sa.select(BatchItem).where(BatchItem.batch_id == pop.batch_id)
                          .order_by(BatchItem.id)).all()  # fmt: skip
        prepared = [dataprep.prepared_for_item(s, settings, ks, i) for i in items]
        photos = []
        for i in items:
            app = s.get(Application, i.application_id)
            assert app is not None
            photos.append(app.photo_sha256)
        refs = [Path(i.print_ref or "") for i in items]
    backs = [r.with_name(r.name.replace(".pdf", ".back.png")) for r in refs]
    box = DEFAULT_LAYOUT.back.face_code.px(settings.printer.dpi)  # type: ignore[union-attr]
    good = settings.cards_dir / f"{prepared[0].chip_serial}.json"
    # tampered copies of the first (good) card: an EF15 record and a PIN try counter changed
    data = json.loads(good.read_text())
    med = next(k for k in data["records"] if k.endswith("EF15"))
    record = bytearray.fromhex(data["records"][med][0])
    record[-1] ^= 0x01
    data["records"][med][0] = record.hex()
    data["pins"]["ss"]["tries_left"] -= 1
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data))
    untouched = tmp_path / "untouched.json"
    shutil.copyfile(good, untouched)
    with open_stations(settings, 1, run_dir=tmp_path / "st") as (station,):
        station.load(untouched)
        report = station.check(prepared[0], ks, PrintedFace(backs[0], box, photos[0]))
        assert report.face is not None and report.face.card_number == pop.card_numbers[0]
        assert report.apdu_count >= 12
        station.eject()
        station.load(tampered)
        with pytest.raises(QualityCheckFailed) as info:
            station.check(prepared[0], ks, PrintedFace(backs[0], box, photos[0]))
        problems = " | ".join(info.value.problems)
        assert "EF15 differs from the database (record 1)" in problems
        assert "PIN ss has 2 tries left, not 3" in problems
        station.eject()
        # the right chip with the other card's printed back, and with another photo
        station.load(untouched)
        with pytest.raises(QualityCheckFailed) as info:
            station.check(prepared[0], ks, PrintedFace(backs[1], box, photos[0]))
        problems = " | ".join(info.value.problems)
        assert "printed card number" in problems and "printed social security number" in problems
        with pytest.raises(QualityCheckFailed) as info:
            station.check(prepared[0], ks, PrintedFace(backs[0], box, "ab" * 32))
        assert info.value.problems == ["printed photo is not the card's photo in the database"]
        station.eject()


class SlowSpool(FileSpool):
    """A card printer that takes ``delay`` seconds a card (longer than the lease)."""

    def __init__(self, directory: Path, delay: float) -> None:
        super().__init__(directory)
        self.delay = delay
        self.started = threading.Event()

    def print_card(self, job_id: str, front: Any, back: Any) -> Any:
        self.started.set()
        time.sleep(self.delay)
        return super().print_card(job_id, front, back)


def test_heartbeat_keeps_the_lease_while_a_slow_device_works(
    env: tuple[Settings, Engine],
) -> None:
    """Printing takes 2.5 s with a 2 s lease, and another station keeps running recovery:
    the heartbeat renews the lease, so nothing is spoiled as interrupted."""
    settings, engine = env
    pop = populate(engine, settings, 2, name="hb")
    factory = make_sessionmaker(engine)
    stop = threading.Event()
    recovered: list[object] = []

    def other_station() -> None:
        while not stop.is_set():
            with transaction(factory) as s:
                recovered.extend(bi.recover_interrupted(s, pop.batch_id, bi_actor()))
            time.sleep(0.1)

    spool = SlowSpool(settings.spool_dir, 2.5)
    with runner_for(settings, pop.batch_id, engine=engine, printer=spool,
                    options=RunOptions(readers=1, lease_seconds=2)) as runner:  # fmt: skip
        thread = threading.Thread(target=other_station, daemon=True)
        thread.start()
        try:
            summary = runner.run()
        finally:
            stop.set()
            thread.join()
    assert recovered == [] and summary.spoiled == 0 and summary.checked == 2
    assert summary.leases_lost == 0


def bi_actor() -> Any:
    from issuance.audit import SYSTEM_ACTOR

    return SYSTEM_ACTOR


def test_a_station_whose_lease_was_taken_over_stops_cleanly(
    env: tuple[Settings, Engine],
) -> None:
    """While a card prints, its lease is voided and taken by another worker: the station
    gives the card up without touching it; the other worker's recovery spoils the chip (it
    was in a station) and the card is made again on a fresh blank."""
    settings, engine = env
    pop = populate(engine, settings, 1, name="steal")
    factory = make_sessionmaker(engine)
    spool = SlowSpool(settings.spool_dir, 2.0)

    def steal() -> None:
        spool.started.wait(30)
        with transaction(factory) as s:
            item = s.scalars(sa.select(BatchItem).where(BatchItem.batch_id == pop.batch_id)).one()
            assert item.stage == BatchStage.PERSONALISED
            item.lease_owner = "ghost-host:1:1:station-9"
            item.lease_expires_at = item.created_at - timedelta(seconds=1)
        spool.delay = 0.0

    thread = threading.Thread(target=steal, daemon=True)
    thread.start()
    with runner_for(settings, pop.batch_id, engine=engine, printer=spool,
                    options=RunOptions(readers=1, lease_seconds=4)) as runner:  # fmt: skip
        summary = runner.run()
    thread.join()
    assert summary.leases_lost == 1 and summary.finished and summary.checked == 1
    with transaction(factory) as s:
        counts = assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
        assert counts["good"] == 1 and counts["spoiled"] == 1
        (reason,) = s.scalars(sa.select(BlankChip.reason).where(
            BlankChip.status == ChipStatus.SPOILED))  # fmt: skip
        assert reason is not None and reason.startswith("interrupted in stage personalised")
        # the station that lost the lease never printed: no "print" audit for the first chip
        item = s.scalars(sa.select(BatchItem).where(BatchItem.batch_id == pop.batch_id)).one()
        with pytest.raises(bi.LeaseLost):
            bi.hold(s, item.id, "someone-else")


def test_failed_cards_retry_withdraw_and_the_batch_commands(
    env: tuple[Settings, Engine], qc_hsm: HsmRoot
) -> None:
    settings, engine = env
    pop = populate(engine, settings, 3, name="fail")
    ks = key_service_from_settings(settings)
    stock = DefectiveFirstChips(settings, ks, 6)  # the first two cards spoil 3 chips each
    with runner_for(settings, pop.batch_id, engine=engine, key_service=ks, stock=stock,
                    options=RunOptions(readers=1, prepare_first=False)) as runner:  # fmt: skip
        summary = runner.run()
    assert summary.checked == 1 and summary.failed == 2 and summary.finished
    failed = [f.card_number for f in summary.failed_cards]
    assert len(failed) == 2 and all(f.attempts == 3 for f in summary.failed_cards)
    with transaction(make_sessionmaker(engine)) as s:  # failed cards stay in production
        statuses = {c.card_number: c.status for c in s.scalars(
            sa.select(Card).where(Card.batch_id == pop.batch_id))}  # fmt: skip
    assert {statuses[n] for n in failed} == {CardStatus.IN_PRODUCTION}

    shell = ykt_env(settings, qc_hsm, YKT_STAFF="demo-operator")
    done = ykt(shell, "batch", "status", "fail")
    assert done.returncode == 0 and "fail" in done.stdout, done.stderr
    done = ykt(shell, "batch", "report", "fail")
    assert done.returncode == 0, done.stderr
    assert "failed cards (2)" in done.stdout and failed[0] in done.stdout
    assert "report:" in done.stdout and "chart:" in done.stdout

    done = ykt(shell, "batch", "retry", "fail", "--card", failed[0])
    assert done.returncode == 0 and "1 failed card(s)" in done.stdout, done.stderr
    done = ykt(shell, "batch", "withdraw", "fail", "--card", failed[1], "--reason",
               "photo unusable, holder asked to reapply")  # fmt: skip
    assert done.returncode == 0 and "withdrawn" in done.stdout, done.stderr
    done = ykt(shell, "batch", "withdraw", "fail", "--card", pop.card_numbers[0], "--reason", "x")
    assert done.returncode == 2 and "not failed" in done.stderr + done.stdout
    done = ykt(shell, "batch", "resume", "fail", "--readers", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 good card(s) this run" in done.stdout
    done = ykt(shell, "batch", "ship", "fail", "--to", BRANCH_CODE)
    assert done.returncode == 0 and "2 card(s) shipped" in done.stdout, done.stderr
    done = ykt(shell, "batch", "collect", failed[0], "--as", "demo-teller")
    assert done.returncode == 0 and "issued to its holder" in done.stdout, done.stderr
    with transaction(make_sessionmaker(engine)) as s:
        cards = {c.card_number: c.status for c in s.scalars(
            sa.select(Card).where(Card.batch_id == pop.batch_id))}  # fmt: skip
        assert cards[failed[0]] == CardStatus.ISSUED
        assert cards[failed[1]] == CardStatus.CANCELLED
        stages = {i.stage for i in s.scalars(
            sa.select(BatchItem).where(BatchItem.batch_id == pop.batch_id))}  # fmt: skip
        assert stages == {BatchStage.ISSUED, BatchStage.SHIPPED, BatchStage.WITHDRAWN}
        counts = assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
        assert counts["good"] == 2 and counts["spoiled"] == 6
