"""Power cuts at the personalisation line, 20 of them: ``kill -9`` of the operator's commands
at random moments — during data preparation (``ykt batch prepare``), personalisation,
printing and quality check (``ykt batch run`` / ``resume``), shipping (``ykt batch ship``) and
during ``resume`` itself (its recovery and start-up) — each followed by the batch invariants
(every application accounted for, no card number reused, no card both spoiled and good or
shipped, every chip accounted for, audit chain intact). Then a last resume and ship finish the
batch. Real processes, pcscd + vpcd, SoftHSM, SQLite and PostgreSQL.

``YKT_CRASH_SEED`` replays a run (the seed is printed); ``YKT_CRASH_CARDS`` changes the batch
size (default 40)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "issuance" / "batches"))

from batch_helpers import (
    HsmRoot,
    assert_batch_invariants,
    batch_settings,
    hsm_root,
    populate,
)
from cli_helpers import ykt, ykt_cmd, ykt_env

from issuance.batches import items as bi
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import BatchItem, BatchStage, Card, CardStatus
from yikatong.demo import BRANCH_CODE

pytestmark = [pytest.mark.pcsc, pytest.mark.slow, pytest.mark.timeout(1500)]

KILLS = 20
#: After the command started working: kill within this many seconds.
WORK = {"prepare": 0.1, "resume": 5.0, "ship": 0.4}


@pytest.fixture(scope="session")
def kill_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("kill-hsm"))


def _phase(counts: dict[BatchStage, int], total: int) -> str:
    if counts[BatchStage.SELECTED] == total:
        return "prepare"
    if sum(counts[s] for s in bi.IN_PRODUCTION):
        return "produce"
    return "ship"


def test_kill_9_at_twenty_random_moments(
    tmp_path: Path, fresh_db_url: str, kill_hsm: HsmRoot
) -> None:
    seed = int(os.environ.get("YKT_CRASH_SEED") or random.SystemRandom().randrange(10**6))
    cards = int(os.environ.get("YKT_CRASH_CARDS") or 40)
    print(f"YKT_CRASH_SEED={seed}")
    rng = random.Random(seed)
    settings = batch_settings(tmp_path / "data", fresh_db_url, kill_hsm)
    engine = make_engine(settings)
    pop = populate(engine, settings, cards, name="kill")
    factory = make_sessionmaker(engine)
    shell = ykt_env(settings, kill_hsm, YKT_STAFF="demo-operator")
    log = tmp_path / "runs.log"
    moments: list[tuple[str, float, str, int]] = []

    def counts() -> dict[BatchStage, int]:
        with transaction(factory) as s:
            return bi.stage_counts(s, pop.batch_id)

    def working(pid: int, command: str, shipped_before: int, selected_before: int) -> bool:
        """The command started its work: it shipped a card (ship), committed a chunk of
        prepared cards (prepare: its leases live inside the chunk's transaction), holds a
        lease (resume)."""
        with transaction(factory) as s:
            if command == "ship":
                return bi.stage_counts(s, pop.batch_id)[BatchStage.SHIPPED] > shipped_before
            if command == "prepare":
                return bi.stage_counts(s, pop.batch_id)[BatchStage.SELECTED] < selected_before
            mine = s.scalar(sa.select(sa.func.count()).select_from(BatchItem).where(
                BatchItem.batch_id == pop.batch_id,
                BatchItem.lease_owner.like(f"%:{pid}:%")))  # fmt: skip
            return bool(mine)

    for n in range(KILLS):
        now = counts()
        phase = _phase(now, cards)
        if phase == "prepare" or (phase == "produce" and n % 5 == 1 and now[BatchStage.SELECTED]):
            args = ("batch", "prepare", "kill")
        elif phase == "produce" and n % 5 == 4 and now[BatchStage.CHECKED] >= 3:
            # ship what is checked so far while the rest is still being made
            args = ("batch", "ship", "kill", "--to", BRANCH_CODE)
        elif phase == "produce":
            args = ("batch", "resume", "kill", "--readers", "2", "--lease", "30")
        else:
            args = ("batch", "ship", "kill", "--to", BRANCH_CODE)
        # a kill either early (start-up, recovery: "during resume itself") or once the
        # command is working (it holds leases / ships cards), then after a random delay; the
        # machine is shared, so work is detected, not guessed from the clock
        early = n % 4 == 3
        delay = rng.uniform(0.2, 2.0) if early else rng.uniform(0.0, WORK[args[1]])
        with log.open("ab") as out:
            out.write(f"--- kill {n + 1}: {' '.join(args)}, {'early' if early else 'working'} "
                      f"+{delay:.2f} s\n".encode())  # fmt: skip
            out.flush()
            proc = subprocess.Popen(ykt_cmd(*args), env=shell, stdout=out, stderr=out)
            shipped = now[BatchStage.SHIPPED]
            if not early:
                limit = time.monotonic() + 120
                while proc.poll() is None and time.monotonic() < limit:
                    if working(proc.pid, args[1], shipped, now[BatchStage.SELECTED]):
                        break
                    time.sleep(0.02)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.01)
            before = counts()
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                outcome = "killed"
            else:
                outcome = f"ended {proc.returncode} before the kill"
            proc.wait(30)
        in_station = sum(before[s] for s in bi.IN_STATION)
        moments.append((" ".join(args[:2]) + (" (early)" if early else ""), round(delay, 2),
                        outcome, in_station))  # fmt: skip
        with transaction(factory) as s:
            assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
    for m in moments:
        print(m)
    killed = [m for m in moments if m[2] == "killed"]
    assert len(killed) >= KILLS // 2, moments
    # some kills hit cards inside a station (personalising, printing or checking)
    assert any(m[3] for m in killed), moments
    assert {m[0] for m in killed} >= {"batch prepare", "batch resume", "batch resume (early)",
                                      "batch ship"}, moments  # fmt: skip

    # the operator finishes the batch
    done = ykt(shell, "batch", "resume", "kill", "--readers", "2", timeout=600)
    assert done.returncode == 0, log.read_text()[-3000:] + done.stdout + done.stderr
    done = ykt(shell, "batch", "ship", "kill", "--to", BRANCH_CODE, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    with transaction(factory) as s:
        result = assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
        assert result["good"] == cards and result["assigned"] == 0
        stages = set(s.scalars(sa.select(BatchItem.stage).where(
            BatchItem.batch_id == pop.batch_id)))  # fmt: skip
        assert stages == {BatchStage.SHIPPED}
        statuses = set(s.scalars(sa.select(Card.status).where(Card.batch_id == pop.batch_id)))
        assert statuses == {CardStatus.SHIPPED}
    engine.dispose()
