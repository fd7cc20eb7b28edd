"""Issue 20: two batch worker hosts on one batch, over PostgreSQL managed by Patroni behind
HAProxy (network namespaces made and removed by the test: :mod:`devstack.hosts`).

Hosts: db1, db2 (Patroni + PostgreSQL, synchronous replica; etcd), lb (HAProxy, etcd), work1,
work2. Each worker host has its own hostname (its own UTS namespace: lease owners name the host),
its own SoftHSM token loaded by the same key ceremony (components and KCVs made once, loaded
into each token; no key copied between tokens), its own virtual readers (pcscd + vpcd, started
by ``ykt batch run``) and runs ``ykt batch run`` with a short lease.

1. work1 killed mid-batch (every process of the host, its link down): work2 takes the cards
   whose lease work1 held once it expires (a card that was in a station is spoiled and made
   again on a fresh blank) and finishes the batch; every card accounted for, no card number
   reused, no card good twice, audit chain intact.
2. work1 cut off from the network (link down, then up): its leases expire, work2 takes the
   cards over; work1 writes nothing for a card it lost (it finds the lease gone and leaves
   the card); the same invariants.
3. the PostgreSQL primary killed while both make a batch: Patroni promotes the synchronous
   replica, both workers reconnect by themselves and finish the batch; every card good before
   the kill is still good (nothing committed lost); the same invariants.

``ykt worker`` (the periodic jobs, sealing the audit chain with checkpoints signed by each
host's own HSM key) runs on both worker hosts throughout; after the failover it seals again by
itself.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from batch_helpers import assert_batch_invariants, populate

from cardspec import keyscheme
from cardspec.keyscheme import Algorithm
from devstack import hosts as H
from devstack.bank import IMK_SLOTS, demo_bank_toml
from hsm import ceremony, softhsm
from hsm.pkcs11 import open_token
from issuance.batches import items as bi
from issuance.batches.stock import MANUFACTURER, manufacturer_key_path
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import BatchItem, BatchStage, BlankChip, ChipStatus
from yikatong.demo import BRANCH_CODE, DEMO_BANK_DOMAIN
from yikatong.settings import Settings, load_settings

pytestmark = [
    pytest.mark.pcsc, pytest.mark.softhsm, pytest.mark.postgres, pytest.mark.slow,
    pytest.mark.timeout(900),
]  # fmt: skip

PROJECT = Path(__file__).resolve().parents[3]
LEASE = 6
CARDS = 12


def ykt(*args: str) -> list[str]:
    return [sys.executable, "-m", "yikatong.cli.main", *args]


def _split(key: bytes, alg: Algorithm) -> tuple[list[bytes], list[bytes], bytes]:
    first = secrets.token_bytes(len(key))
    comps = [first, bytes(a ^ b for a, b in zip(key, first, strict=True))]
    return comps, [keyscheme.kcv(c, alg) for c in comps], keyscheme.kcv(key, alg)


class KeyCeremony:
    """The key set, made once as components with their KCVs, loaded into each host's token by
    the custodians (here: the test) the same way."""

    def __init__(self) -> None:
        self.masters = {slot: secrets.token_bytes(16) for slot in ceremony.CENTRE_SLOTS}
        #: the co-operating bank's issuer master keys, in the bank's own key domain
        self.imks = {slot: secrets.token_bytes(16) for slot in IMK_SLOTS}
        self.klk = secrets.token_bytes(16)
        self.transport = secrets.token_bytes(16)  # agreed with the blank-chip maker

    def load(self, data_dir: Path, db_url: str) -> Settings:
        settings = settings_with_bank(data_dir, db_url)
        config = settings.hsm_config()
        softhsm.ensure_token(config)
        token = open_token(config)
        for slot, key in self.masters.items():
            comps, kcvs, kcv = _split(key, Algorithm.DES3)
            ceremony.import_master(token, slot, comps, kcvs, Algorithm.DES3, 1, expected_kcv=kcv)
        comps, kcvs, kcv = _split(self.klk, keyscheme.KLK_ALGORITHM)
        ceremony.import_klk_master(token, comps, kcvs, 1, expected_kcv=kcv)
        comps, kcvs, kcv = _split(self.transport, Algorithm.AES)
        ceremony.import_transport_key(token, MANUFACTURER, comps, kcvs, expected_kcv=kcv)
        for slot, key in self.imks.items():
            comps, kcvs, kcv = _split(key, Algorithm.DES3)
            ceremony.import_bank_master(token, DEMO_BANK_DOMAIN, slot, comps, kcvs,
                                        Algorithm.DES3, 1, expected_kcv=kcv)  # fmt: skip
        ceremony.generate_signing_key(token)
        # the blank-chip maker's own copy of the transport key (the virtual stock makes the
        # blanks on this host with it)
        path = manufacturer_key_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.transport.hex())
        return settings


def settings_with_bank(data_dir: Path, db_url: str) -> Settings:
    """A host's settings, the demo bank configured in its ``yikatong.toml`` (for the ``ykt``
    processes it starts too)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "yikatong.toml"
    if not config.exists():
        config.write_text(demo_bank_toml(BRANCH_CODE, DEMO_BANK_DOMAIN), encoding="utf-8")
    return load_settings(environ={"YKT_DATA_DIR": str(data_dir), "YKT_DATABASE__URL": db_url})


def host_env(settings: Settings) -> dict[str, str]:
    drop = ("SOFTHSM2_CONF", "PCSCLITE_CSOCK_NAME")
    env = {k: v for k, v in os.environ.items() if not k.startswith("YKT_") and k not in drop}
    return env | {"YKT_DATA_DIR": str(settings.data_dir),
                  "YKT_DATABASE__URL": settings.database_url, "PYTHONUNBUFFERED": "1",
                  "COLUMNS": "200"}  # fmt: skip


def start_worker(host: H.Host, settings: Settings, batch: str, log: str) -> subprocess.Popen[bytes]:
    """``ykt batch run`` on ``host``, under the host's own hostname."""
    argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host.name,
            *ykt("batch", "run", batch, "--readers", "2", "--lease", str(LEASE))]  # fmt: skip
    return host.start(argv, log, env=host_env(settings), cwd=PROJECT)


def start_periodic(host: H.Host, settings: Settings, log: str) -> subprocess.Popen[bytes]:
    """``ykt worker`` (the periodic jobs, audit sealing with checkpoints signed by the host's
    own HSM key) on ``host``, a round a second."""
    argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host.name,
            *ykt("worker", "--interval", "1", "--seal")]  # fmt: skip
    return host.start(argv, log, env=host_env(settings), cwd=PROJECT)


def _sealed_rounds(host: H.Host, log: str) -> int:
    """Rounds of ``ykt worker`` on ``host`` that sealed audit events."""
    return len(re.findall(r"round \d+: .*audit_seal [1-9]", host.log(log)))


def _note(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def _leased_in_station(factory: object, batch_id: int, host: str) -> list[int]:
    with transaction(factory) as s:  # type: ignore[arg-type]
        return list(s.scalars(sa.select(BatchItem.id).where(
            BatchItem.batch_id == batch_id, BatchItem.stage.in_(bi.IN_STATION),
            BatchItem.lease_owner.startswith(f"{host}:"))))  # fmt: skip


def _interrupted(factory: object, batch_id: int) -> list[tuple[int, datetime]]:
    with transaction(factory) as s:  # type: ignore[arg-type]
        rows = s.execute(sa.select(BlankChip.item_id, BlankChip.closed_at).where(
            BlankChip.batch_id == batch_id, BlankChip.status == ChipStatus.SPOILED,
            BlankChip.reason.startswith("interrupted")))  # fmt: skip
        return [(i, t) for i, t in rows]


def _gather_cards(workers: list[Settings], into: Settings) -> None:
    """The emulated chips' images, made on each worker host, where the checks read them."""
    into.cards_dir.mkdir(parents=True, exist_ok=True)
    for w in workers:
        if w.cards_dir.exists():
            for f in w.cards_dir.iterdir():
                shutil.copy2(f, into.cards_dir / f.name)


def _wait_exit(proc: subprocess.Popen[bytes], host: H.Host, log: str, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{host.name} did not finish:\n{host.log(log)[-3000:]}") from None


def test_worker_host_killed_partitioned_and_database_failover(tmp_path: Path) -> None:
    with H.Lan(tmp_path / "hosts") as lan:
        db1, db2, lb, work1, work2 = (lan.host(n) for n in ("db1", "db2", "lb", "work1", "work2"))
        H.start_database_tier([db1, db2], lb)
        db_url = H.database_url(lb, "ykt", "postgresql+psycopg")
        operator = settings_with_bank(tmp_path / "operator", db_url)
        subprocess.run(ykt("db", "upgrade"), env=host_env(operator), cwd=PROJECT, check=True,
                       capture_output=True, timeout=120)  # fmt: skip
        keys = KeyCeremony()
        w1 = keys.load(work1.dir / "data", db_url)
        w2 = keys.load(work2.dir / "data", db_url)
        _note(f"stack up on {lan.net}: db1 primary, db2 sync replica, lb, work1, work2")
        engine = make_engine(url=db_url)
        factory = make_sessionmaker(engine)
        # the periodic jobs on both worker hosts, through every fault below
        periodic1 = start_periodic(work1, w1, "periodic-1")
        periodic2 = start_periodic(work2, w2, "periodic")

        # -- 1: work1 dies mid-batch ------------------------------------------------------
        pop = populate(engine, operator, CARDS, name="mh-kill")
        p1 = start_worker(work1, w1, "mh-kill", "run-kill")
        p2 = start_worker(work2, w2, "mh-kill", "run-kill")
        deadline = time.monotonic() + 300
        held: list[int] = []
        while time.monotonic() < deadline and not held:
            with transaction(factory) as s:
                done = bi.stage_counts(s, pop.batch_id)[BatchStage.CHECKED]
            if done >= 2 and _leased_in_station(factory, pop.batch_id, "work1"):
                # frozen where it is, and what it had sent given time to land: the cards it
                # holds in its stations now are the ones it will never finish (read before
                # the freeze, a card finished meanwhile was counted as held)
                work1.signal_all(signal.SIGSTOP)
                time.sleep(0.5)
                held = _leased_in_station(factory, pop.batch_id, "work1")
                if not held:
                    work1.signal_all(signal.SIGCONT)
            time.sleep(0.05)
        assert held, work1.log("run-kill")[-3000:]
        killed = time.monotonic()
        work1.kill()
        _note(f"work1 killed with {done} card(s) good and items {held} in its stations")
        took = H.wait_for("work2 takes work1's cards",
                          lambda: set(held) <= {i for i, _ in _interrupted(factory, pop.batch_id)},
                          300, 0.2)  # fmt: skip
        _note(f"work2 took work1's cards over {took:.1f} s after the kill (lease {LEASE} s)")
        assert _wait_exit(p2, work2, "run-kill", 400) == 0, work2.log("run-kill")[-3000:]
        assert p1.poll() is not None
        _note(f"work2 finished the batch {time.monotonic() - killed:.1f} s after the kill")
        _gather_cards([w1, w2], operator)
        with transaction(factory) as s:
            counts = assert_batch_invariants(s, operator, pop.batch_id, pop.card_numbers)
        assert counts["good"] == CARDS and counts["assigned"] == 0
        _note(f"fault 1: {counts}")

        # -- 2: work1 cut off from the database, then back --------------------------------
        work1.link(up=True)  # the host comes back (new processes)
        assert periodic1.poll() is not None  # died with the host
        periodic1 = start_periodic(work1, w1, "periodic")
        pop = populate(engine, operator, CARDS, name="mh-part")
        p1 = start_worker(work1, w1, "mh-part", "run-part")
        p2 = start_worker(work2, w2, "mh-part", "run-part")
        deadline = time.monotonic() + 300
        held = []
        while time.monotonic() < deadline and not held:
            held = _leased_in_station(factory, pop.batch_id, "work1")
            time.sleep(0.05)
        assert held, work1.log("run-part")[-3000:]
        work1.link(up=False)
        _note(f"work1 cut off with items {held} in its stations")
        took = H.wait_for("work2 takes work1's cards",
                          lambda: set(held) <= {i for i, _ in _interrupted(factory, pop.batch_id)},
                          300, 0.2)  # fmt: skip
        _note(f"work2 took work1's cards over {took:.1f} s after the cut")
        time.sleep(2)
        work1.link(up=True)
        _note("work1 back on the network")
        assert _wait_exit(p2, work2, "run-part", 400) in (0, 3), work2.log("run-part")[-3000:]
        rc1 = _wait_exit(p1, work1, "run-part", 400)
        out1 = work1.log("run-part")
        said = [ln for ln in out1.splitlines() if "another worker" in ln or "error:" in ln]
        _note(f"work1 ended with {rc1}: " + " | ".join(said)[:600])
        with transaction(factory) as s:
            stages = bi.stage_counts(s, pop.batch_id)
        if stages[BatchStage.SELECTED] or any(stages[st] for st in bi.IN_STATION):
            # work1 stopped (a station error while cut off) and work2 finished before the
            # cards work1 gave up were free: the operator's resume finishes them
            done = subprocess.run(
                ["ip", "netns", "exec", work2.netns,
                 *ykt("batch", "resume", "mh-part", "--readers", "2", "--lease", str(LEASE))],
                env=host_env(w2), cwd=PROJECT, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
        _gather_cards([w1, w2], operator)
        with transaction(factory) as s:
            counts = assert_batch_invariants(s, operator, pop.batch_id, pop.card_numbers)
        assert counts["good"] == CARDS and counts["assigned"] == 0
        _note(f"fault 2: {counts}")

        # -- 3: the PostgreSQL primary dies while both workers make a batch ---------------
        pop = populate(engine, operator, CARDS, name="mh-db")
        p1 = start_worker(work1, w1, "mh-db", "run-db")
        p2 = start_worker(work2, w2, "mh-db", "run-db")
        H.wait_for("a few cards good", lambda: _good(factory, pop.batch_id) >= 3, 300, 0.05)
        before = _good(factory, pop.batch_id, ids=True)
        sealed = {h.name: _sealed_rounds(h, "periodic") for h in (work1, work2)}
        killed_at = time.monotonic()
        db1.kill()
        _note(f"db1 (primary) killed with {len(before)} card(s) good")
        promoted = H.wait_for("db2 promoted", lambda: H.patroni_role(db2) == "primary", 90, 0.1)
        _note(f"db2 promoted {promoted:.1f} s after the kill")
        engine.dispose()  # the test's own pooled connections went with db1
        for p, h in ((p1, work1), (p2, work2)):
            assert _wait_exit(p, h, "run-db", 400) == 0, h.log("run-db")[-3000:]
        _note(f"both workers finished the batch by themselves "
              f"{time.monotonic() - killed_at:.1f} s after the kill")  # fmt: skip
        after = _good(factory, pop.batch_id, ids=True)
        assert set(before) <= set(after), "a card committed good before the failover is lost"
        # the periodic workers reconnect by themselves too: they seal the events written
        # after the failover (before the checks below seal whatever is left)
        H.wait_for("ykt worker sealing after the failover",
                   lambda: any(_sealed_rounds(h, "periodic") > sealed[h.name]
                               for h in (work1, work2)), 60, 0.2)  # fmt: skip
        _gather_cards([w1, w2], operator)
        with transaction(factory) as s:
            counts = assert_batch_invariants(s, operator, pop.batch_id, pop.card_numbers)
        assert counts["good"] == CARDS and counts["assigned"] == 0
        _note(f"fault 3: {counts}")
        assert periodic1.poll() is None and periodic2.poll() is None
        failed = sum(h.log("periodic").count("FAILED") for h in (work1, work2))
        _note(
            f"ykt worker on work1 and work2: still running through every fault; {failed} "
            "job run(s) failed while the database was away, each retried the next round"
        )
        engine.dispose()


def _good(factory: object, batch_id: int, ids: bool = False) -> Any:
    with transaction(factory) as s:  # type: ignore[arg-type]
        good = list(s.scalars(sa.select(BatchItem.id).where(
            BatchItem.batch_id == batch_id, BatchItem.stage.in_(bi.GOOD))))  # fmt: skip
    return good if ids else len(good)
