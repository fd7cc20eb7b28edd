"""Power cut at the personalisation line: ``ykt batch run`` is killed with SIGKILL while cards
are in the stations, then ``ykt batch resume`` finishes the batch. Invariants afterwards: every
application accounted for, no card number reused, no half-made card counted good, every chip
accounted for, audit chain intact. Real processes, real pcscd/vpcd, SoftHSM, SQLite and
PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from batch_helpers import (
    HsmRoot,
    assert_batch_invariants,
    batch_settings,
    hsm_root,
    populate,
    subprocess_env,
)

from issuance.batches import items as bi
from issuance.batches.stations import stations_run_dir
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import BatchItem, BatchStage, BlankChip, ChipStatus

pytestmark = [pytest.mark.pcsc, pytest.mark.slow]


@pytest.fixture(scope="session")
def crash_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("crash-hsm"))


def _ykt(*args: str, env: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "yikatong.cli.main", *args]


def _processes_mentioning(needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle.encode() in cmd and state != "Z":
            found.append(int(entry.name))
    return found


def test_kill_9_mid_batch_then_resume_finishes_it(
    tmp_path: Path, fresh_db_url: str, crash_hsm: HsmRoot
) -> None:
    settings = batch_settings(tmp_path / "data", fresh_db_url, crash_hsm)
    engine = make_engine(settings)
    pop = populate(engine, settings, 6, name="crash")
    env = {
        **os.environ,
        **subprocess_env(settings, crash_hsm),
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
    }
    env.pop("PCSCLITE_CSOCK_NAME", None)
    factory = make_sessionmaker(engine)
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(_ykt("batch", "run", "crash", "--readers", "2", env=env),
                            env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    # wait until some cards are done and at least one is inside a station, then pull the plug
    deadline = time.monotonic() + 120
    in_station: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        with transaction(factory) as s:
            counts = bi.stage_counts(s, pop.batch_id)
            if counts[BatchStage.CHECKED] >= 2 and any(counts[st] for st in bi.IN_STATION):
                where = (BatchItem.batch_id == pop.batch_id, BatchItem.stage.in_(bi.IN_STATION))
                in_station = list(s.scalars(sa.select(BatchItem.id).where(*where)))
                break
        time.sleep(0.01)
    assert proc.poll() is None, (tmp_path / "run.log").read_text()
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    log.close()
    assert in_station
    # the killed worker's virtual readers go with it (the card server watches its parent)
    stations_dir = str(stations_run_dir(settings, proc.pid))
    end = time.monotonic() + 10
    while _processes_mentioning(stations_dir) and time.monotonic() < end:
        time.sleep(0.1)
    assert _processes_mentioning(stations_dir) == []
    with transaction(factory) as s:
        left = {i.id: i.stage for i in s.scalars(
            sa.select(BatchItem).where(BatchItem.batch_id == pop.batch_id))}  # fmt: skip
    assert any(st in bi.IN_STATION for st in left.values())

    done = subprocess.run(_ykt("batch", "resume", "crash", "--readers", "2", env=env), env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "spoiled, card requeued" in done.stderr
    with transaction(factory) as s:
        counts = assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
        assert counts["good"] == 6 and counts["assigned"] == 0
        interrupted = list(s.scalars(sa.select(BlankChip.item_id).where(
            BlankChip.status == ChipStatus.SPOILED,
            BlankChip.reason.startswith("interrupted"))))  # fmt: skip
        # every card that was in a station at the kill had its chip spoiled, not counted good
        assert set(in_station) <= set(interrupted)
    engine.dispose()
