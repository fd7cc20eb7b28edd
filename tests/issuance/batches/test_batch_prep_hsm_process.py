"""Data preparation with its HSM pass in the worker's HSM process (``bulkprep._HsmProcess``,
where the machine has the cores): the same cards as the one-process path (segment lines,
bureau bodies, committed rows), an HSM-process failure or death mid-run commits nothing of its
chunk and leaves the batch resumable, a stop gives every claimed chunk back, and a killed
worker takes its HSM process with it. Real SoftHSM, real processes, SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from batch_helpers import HsmRoot, batch_settings, hsm_root, populate
from cli_helpers import ykt, ykt_cmd, ykt_env
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine, make_url

from cardspec.keyscheme import KeySlot
from hsm import pkcs11 as p11
from hsm import prep as hsm_prep
from hsm.errors import HsmError
from hsm.export import FileKek
from hsm.prep import RecordCrypto
from hsm.service import Pkcs11KeyService
from issuance import audit
from issuance.batches import bulkprep, persofile
from issuance.batches import items as bi
from issuance.batches.dataprep import key_ref_of
from issuance.batches.stock import MANUFACTURER, manufacturer_key_path
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.errors import IssuanceError
from issuance.models import AuditEvent, BatchItem, BatchStage, BlankChip, Card
from yikatong.settings import Settings
from yikatong.wiring import batch_adapters, key_service_from_settings

pytestmark = pytest.mark.softhsm

ISSUE = date(2026, 12, 1)


@pytest.fixture(scope="module")
def pipe_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("pipe-hsm"))


@pytest.fixture
def env(tmp_path: Path, fresh_db_url: str, pipe_hsm: HsmRoot) -> Iterator[tuple[Settings, Engine]]:
    settings = batch_settings(tmp_path / "data", fresh_db_url, pipe_hsm)
    engine = make_engine(settings)
    yield settings, engine
    engine.dispose()


def _serials() -> Callable[[], bytes]:
    """The same chip serials, in the same order, for every run that takes one."""
    count = itertools.count(0x3A00_0000_0000_0001)
    return lambda: next(count).to_bytes(8, "big")


def _twin(request: pytest.FixtureRequest, url: str, tmp_path: Path) -> str:
    """A copy of the database at ``url`` (no connection to it open)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        path = Path(str(u.database))
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        copy = tmp_path / "twin.db"
        with sqlite3.connect(path) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        return f"sqlite:///{copy}"
    pg = request.getfixturevalue("pg_server")
    return str(pg.create_database(f"{u.database}_twin", template=str(u.database)))


def _rows(engine: Engine, batch_id: int) -> dict[str, list[tuple[Any, ...]]]:
    """What a run committed, but what differs by nature between two runs (times, the
    segment's random name part, the audit chain's hashes)."""
    with transaction(make_sessionmaker(engine)) as s:
        items = s.execute(sa.select(BatchItem.id, BatchItem.stage, BatchItem.chip_serial,
                                    BatchItem.issue_date, BatchItem.lease_owner,
                                    BatchItem.bureau_file_id)
                          .where(BatchItem.batch_id == batch_id)
                          .order_by(BatchItem.id)).all()  # fmt: skip
        chips = s.execute(sa.select(BlankChip.chip_serial, BlankChip.item_id, BlankChip.card_id,
                                    BlankChip.status, BlankChip.perso_offset,
                                    BlankChip.perso_file)
                          .where(BlankChip.batch_id == batch_id)
                          .order_by(BlankChip.item_id)).all()  # fmt: skip
        cards = s.execute(sa.select(Card.id, Card.card_identification_code, Card.key_version,
                                    Card.version, Card.status)
                          .where(Card.id.in_([c[2] for c in chips]))
                          .order_by(Card.id)).all()  # fmt: skip
        events = s.execute(sa.select(AuditEvent.action, AuditEvent.entity_type,
                                     AuditEvent.entity_id, AuditEvent.before, AuditEvent.after,
                                     AuditEvent.actor_name, AuditEvent.details)
                           .where(AuditEvent.action == "batch_item.prepare")
                           .order_by(AuditEvent.entity_id)).all()  # fmt: skip
    segment = {c[5]: c[5].split("-")[0] if c[5] else None for c in chips}
    return {
        "items": [tuple(i) for i in items],
        "chips": [(*c[:5], segment[c[5]]) for c in chips],
        "cards": [tuple(c) for c in cards],
        "events": [(*e[:6], {**json.loads(e[6]), "perso_file": None}) for e in events],
    }  # fmt: skip


def _prepare(settings: Settings, engine: Engine, batch_id: int, *, hsm_process: bool,
             **kwargs: Any) -> bulkprep.PrepStats:  # fmt: skip
    factory = make_sessionmaker(engine)
    keys = key_service_from_settings(settings)
    bulkprep.ensure_batch_perso_key(factory, keys, batch_id)
    return bulkprep.Preparer(settings, factory, keys, batch_id, audit.SYSTEM_ACTOR, chunk=4,
                             today=ISSUE, new_serial=_serials(), overlap=True,
                             hsm_process=hsm_process, **kwargs).run()  # fmt: skip


def test_the_hsm_process_makes_the_cards_one_process_makes(
    env: tuple[Settings, Engine], request: pytest.FixtureRequest, tmp_path: Path, pipe_hsm: HsmRoot
) -> None:
    """The same batch (two copies of one database), the same chip serials: the pipelined run
    writes the same perso records (every byte but KMC's wrapping under each run's own random
    file KEK: KMC unwrapped at a station is the same key) and commits the same rows."""
    settings, engine = env
    pop = populate(engine, settings, 10, name="twin")
    engine.dispose()
    twin_settings = batch_settings(tmp_path / "twin-data", _twin(request, str(engine.url),
                                                                 tmp_path), pipe_hsm)  # fmt: skip
    twin = make_engine(twin_settings)
    try:
        one = _prepare(settings, engine, pop.batch_id, hsm_process=False)
        two = _prepare(twin_settings, twin, pop.batch_id, hsm_process=True)
        assert one.prepared == two.prepared == 10 and one.errors == two.errors == []
        assert one.keys_derived == two.keys_derived == 10 * 12
        assert one.pipe_cpu == 0 and two.pipe_cpu > 0 and two.hsm_cpu > 0
        rows = _rows(engine, pop.batch_id)
        assert rows == _rows(twin, pop.batch_id)
        assert {i[1] for i in rows["items"]} == {BatchStage.PREPARED}
        keys = key_service_from_settings(settings)
        assert isinstance(keys, Pkcs11KeyService)
        pem = keys.public_key_pem()
        chips = [_chips(e, pop.batch_id) for e in (engine, twin)]
        assert [(c.item_id, c.chip_serial, c.perso_offset) for c in chips[0]] == [
            (c.item_id, c.chip_serial, c.perso_offset) for c in chips[1]
        ]
        keks = set()
        for a, b in zip(*chips, strict=True):
            records = [
                persofile.load_record(s.data_dir, str(c.perso_file), int(c.perso_offset or 0),
                                      pem, batch_id=pop.batch_id, item_id=c.item_id,
                                      card_id=c.card_id, chip_serial=c.chip_serial)
                for s, c in ((settings, a), (twin_settings, b))
            ]  # fmt: skip
            same = [dataclasses.replace(r, segment="", kek=FileKek(0, b"", b""),
                                        kmc_wrapped=b"") for r in records]  # fmt: skip
            assert same[0] == same[1]
            keks.add(tuple(r.kek.wrapped for r in records))
            kcvs = []
            for r in records:
                with RecordCrypto(keys, r.perso_key, r.kek, r.kmc_wrapped, r.algorithm,
                                  r.write_keys()) as station:  # fmt: skip
                    kcvs.append(station.kcv(KeySlot.KMC))
            assert kcvs[0] == kcvs[1]
        assert all(x != y for x, y in keks)  # each run its own file KEK: a real comparison
    finally:
        twin.dispose()


class _Lines(bulkprep.BureauSink):
    def __init__(self) -> None:
        self.got: list[tuple[FileKek, list[tuple[int, int, str, bytes]]]] = []

    def put(self, kek: FileKek, entries: list[tuple[int, int, str, bytes]]) -> None:
        self.got.append((kek, entries))


def test_the_hsm_process_makes_the_bureau_bodies_one_process_makes(
    env: tuple[Settings, Engine], request: pytest.FixtureRequest, tmp_path: Path, pipe_hsm: HsmRoot
) -> None:
    """The same for a bureau export: the same card bodies but the keys' wrapping under each
    run's file KEK, and under it the same clear keys (the file KEK unwrapped with the bureau's
    transport key, as the bureau does); the same committed rows."""
    settings, engine = env
    pop = populate(engine, settings, 9, name="btwin")
    engine.dispose()
    twin_settings = batch_settings(tmp_path / "twin-data", _twin(request, str(engine.url),
                                                                 tmp_path), pipe_hsm)  # fmt: skip
    twin = make_engine(twin_settings)
    transport = bytes.fromhex(manufacturer_key_path(settings).read_text().strip())
    try:
        bodies = []
        for s, e, piped in ((settings, engine, False), (twin_settings, twin, True)):
            sink = _Lines()
            stats = _prepare(s, e, pop.batch_id, hsm_process=piped, output=bulkprep.BUREAU,
                             transport=MANUFACTURER, bureau_file_id="f" * 32,
                             sink=sink)  # fmt: skip
            assert stats.exported == stats.prepared == 9 and stats.keys_derived == 9 * 12
            cards = {}
            for kek, entries in sink.got:
                clear_kek = aes_key_unwrap_with_padding(transport, kek.wrapped)
                for item_id, card_id, serial, body in entries:
                    card = json.loads(body)
                    for k in [*card["keys"], card["klk"]]:
                        k["wrapped"] = aes_key_unwrap_with_padding(
                            clear_kek, bytes.fromhex(k["wrapped"])
                        ).hex()
                    cards[item_id] = (card_id, serial, card)
            bodies.append(cards)
        assert len(bodies[0]) == 9 and bodies[0] == bodies[1]
        assert _rows(engine, pop.batch_id) == _rows(twin, pop.batch_id)
    finally:
        twin.dispose()


def _chips(engine: Engine, batch_id: int) -> list[BlankChip]:
    with transaction(make_sessionmaker(engine)) as s:
        return list(s.scalars(sa.select(BlankChip).where(BlankChip.batch_id == batch_id)
                              .order_by(BlankChip.item_id)))  # fmt: skip


def _items(engine: Engine, batch_id: int) -> list[BatchItem]:
    with transaction(make_sessionmaker(engine)) as s:
        return list(s.scalars(sa.select(BatchItem).where(BatchItem.batch_id == batch_id)
                              .order_by(BatchItem.id)))  # fmt: skip


@pytest.mark.parametrize("fault", ["error", "death"])
def test_an_hsm_process_failure_commits_nothing_of_its_chunk(
    env: tuple[Settings, Engine], monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """The HSM process fails (an HSM error) or dies (SIGKILL) at the 5th card, in the second
    chunk: the run fails with an IssuanceError saying so; the first chunk stays prepared,
    nothing of the second is committed, every other card is free again, and the next run
    prepares the rest."""
    settings, engine = env
    pop = populate(engine, settings, 12, name=f"fail-{fault}")
    made = hsm_prep.PrepOps.in_house
    calls = itertools.count(1)

    def in_house(self: hsm_prep.PrepOps, *args: Any) -> Any:
        if next(calls) == 5:  # (counted in the HSM process: the class is the fork's copy)
            if fault == "death":
                os.kill(os.getpid(), signal.SIGKILL)
            raise HsmError("the HSM stopped answering")
        return made(self, *args)

    monkeypatch.setattr(hsm_prep.PrepOps, "in_house", in_house)
    factory = make_sessionmaker(engine)
    keys = key_service_from_settings(settings)
    bulkprep.ensure_batch_perso_key(factory, keys, pop.batch_id)
    preparer = bulkprep.Preparer(settings, factory, keys, pop.batch_id, audit.SYSTEM_ACTOR,
                                 chunk=3, overlap=True, hsm_process=True)  # fmt: skip
    message = "stopped answering" if fault == "error" else "ended without its results"
    with pytest.raises(IssuanceError, match=f"HSM process.*{message}"):
        preparer.run()
    items = _items(engine, pop.batch_id)
    prepared = [i for i in items if i.stage == BatchStage.PREPARED]
    assert [i.id for i in prepared] == [i.id for i in items[:3]]
    assert {c.item_id for c in _chips(engine, pop.batch_id)} == {i.id for i in prepared}
    left = [i for i in items if i.stage == BatchStage.SELECTED]
    assert len(left) == 9 and all(i.lease_owner is None for i in left)
    monkeypatch.setattr(hsm_prep.PrepOps, "in_house", made)
    again = bulkprep.Preparer(settings, factory, keys, pop.batch_id, audit.SYSTEM_ACTOR,
                              chunk=3, hsm_process=True).run()  # fmt: skip
    assert again.prepared == 9 and again.errors == []
    assert {i.stage for i in _items(engine, pop.batch_id)} == {BatchStage.PREPARED}
    assert len({c.chip_serial for c in _chips(engine, pop.batch_id)}) == 12


@pytest.mark.parametrize("hsm_process", [True, False], ids=["hsm-process", "one-process"])
def test_the_run_makes_the_missing_perso_key_before_the_first_hsm_pass(
    env: tuple[Settings, Engine], hsm_process: bool
) -> None:
    """In house, the run makes the batch's perso key when it is missing: with an HSM process
    on a thread of the worker while it claims its first chunk (the HSM process, whose session
    may be open before the key exists, looks it up with its first chunk); in one process
    before the first chunk. The cards are prepared under it: each card's KMC, unwrapped as a
    station does, is the one its masters give."""
    settings, engine = env
    pop = populate(engine, settings, 9, name="newkey")
    factory = make_sessionmaker(engine)
    keys = key_service_from_settings(settings)
    service = keys.hsm_keys
    assert isinstance(service, Pkcs11KeyService)
    label = hsm_prep.perso_key_label(pop.batch_id)
    hsm_prep.destroy_perso_key(service, label)  # (the token is the module's: an earlier batch 1's)
    with service.token.use() as session:
        assert not p11.exists(session, label)
    stats = bulkprep.Preparer(settings, factory, keys, pop.batch_id, audit.SYSTEM_ACTOR,
                              chunk=4, today=ISSUE, new_serial=_serials(), overlap=True,
                              hsm_process=hsm_process).run()  # fmt: skip
    assert (stats.prepared, stats.errors) == (9, [])
    assert (stats.pipe_cpu > 0) is hsm_process  # (the HSM process's pipes: it ran)
    with service.token.use() as session:
        assert p11.exists(session, label)
    chips = _chips(engine, pop.batch_id)
    assert len(chips) == 9
    pem = keys.public_key_pem()
    for c in chips:  # each card's KMC, unwrapped at a station, is the one of its masters
        r = persofile.load_record(settings.data_dir, str(c.perso_file), int(c.perso_offset or 0),
                                  pem, batch_id=pop.batch_id, item_id=c.item_id,
                                  card_id=c.card_id, chip_serial=c.chip_serial)  # fmt: skip
        assert r.perso_key == label
        with RecordCrypto(service, r.perso_key, r.kek, r.kmc_wrapped, r.algorithm,
                          r.write_keys()) as station:  # fmt: skip
            got = station.kcv(KeySlot.KMC)
        ref = key_ref_of(r.card_identification_code, r.key_version, r.algorithm, None)
        with service.card_crypto(ref) as crypto:
            assert got == crypto.kcv(KeySlot.KMC)


def test_a_stop_gives_back_every_chunk_claimed(env: tuple[Settings, Engine]) -> None:
    """A stop after the first commit: the HSM process finishes the chunk in its hands and skips
    the ones queued; every card is then prepared (committed, reported) or free, none leased;
    the next run prepares the rest."""
    settings, engine = env
    pop = populate(engine, settings, 30, name="pstop")
    stop = threading.Event()
    reported: list[int] = []

    def chunk_done(n: int) -> None:
        reported.append(n)
        stop.set()

    factory = make_sessionmaker(engine)
    keys = key_service_from_settings(settings)
    bulkprep.ensure_batch_perso_key(factory, keys, pop.batch_id)
    first = bulkprep.Preparer(settings, factory, keys, pop.batch_id, audit.SYSTEM_ACTOR,
                              chunk=3, on_chunk=chunk_done, stop=stop, overlap=True,
                              hsm_process=True).run()  # fmt: skip
    assert 3 <= first.prepared < 30 and sum(reported) == first.prepared == 3 * first.chunks
    items = _items(engine, pop.batch_id)
    left = [i for i in items if i.stage == BatchStage.SELECTED]
    assert len(left) == 30 - first.prepared
    assert all(i.lease_owner is None and i.lease_expires_at is None for i in left)
    second = bulkprep.Preparer(settings, factory, keys, pop.batch_id, audit.SYSTEM_ACTOR,
                               chunk=3, hsm_process=True).run()  # fmt: skip
    assert second.prepared == len(left) and second.leases_lost == 0
    assert {i.stage for i in _items(engine, pop.batch_id)} == {BatchStage.PREPARED}


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_a_killed_worker_takes_its_hsm_process_with_it(
    env: tuple[Settings, Engine], pipe_hsm: HsmRoot, tmp_path: Path
) -> None:
    """``ykt batch prepare`` (one worker: with the cores, its HSM pass in its HSM process)
    killed with SIGKILL while it prepares: its HSM process dies with it, and the cards it held
    are free for the next run (the dead owner's leases are void)."""
    if not bulkprep.database_thread(1):
        pytest.skip("one core: no HSM process")
    settings, engine = env
    pop = populate(engine, settings, 60, name="kill1")
    factory = make_sessionmaker(engine)
    shell = ykt_env(settings, pipe_hsm, YKT_STAFF="demo-operator")
    with (tmp_path / "kill.log").open("wb") as log:
        proc = subprocess.Popen(ykt_cmd("batch", "prepare", "kill1", "--chunk", "3"), env=shell,
                                stdout=log, stderr=log)  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            with transaction(factory) as s:
                if bi.stage_counts(s, pop.batch_id)[BatchStage.PREPARED] >= 6:
                    break
            time.sleep(0.01)
        assert proc.poll() is None, (tmp_path / "kill.log").read_text()
        children = _children(proc.pid)
        assert children, "no HSM process"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    end = time.monotonic() + 10
    while time.monotonic() < end and any(_alive(c) for c in children):
        time.sleep(0.05)
    assert not any(_alive(c) for c in children)
    done = ykt(shell, "batch", "prepare", "kill1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert {i.stage for i in _items(engine, pop.batch_id)} == {BatchStage.PREPARED}
    assert len({c.chip_serial for c in _chips(engine, pop.batch_id)}) == 60


def test_two_workers_with_the_cores_each_have_their_hsm_process(
    env: tuple[Settings, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--workers 2`` on a machine with 4 cores (the count the forked workers see): each
    worker pipelines with its own HSM process (forked from a worker, itself forked); every
    card prepared once, every key counted, the pipe used."""
    settings, engine = env
    pop = populate(engine, settings, 24, name="two")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert bulkprep.database_thread(2)
    factory = make_sessionmaker(engine)
    req = bulkprep.PrepRequest(pop.batch_id, audit.SYSTEM_ACTOR, workers=2, chunk=3)
    stats = bulkprep.prepare_in_house(settings, factory, key_service_from_settings(settings),
                                      req, adapters=batch_adapters(settings))  # fmt: skip
    assert stats.prepared == 24 and stats.errors == [] and stats.keys_derived == 24 * 12
    assert stats.pipe_cpu > 0 and stats.hsm_cpu > 0
    assert {i.stage for i in _items(engine, pop.batch_id)} == {BatchStage.PREPARED}
    assert len({c.chip_serial for c in _chips(engine, pop.batch_id)}) == 24


@given(total=st.integers(0, 20_000), chunk=st.integers(1, 2_000))
def test_piped_claims_ramp_up_and_taper_within_the_chunk(total: int, chunk: int) -> None:
    """A worker with an HSM process claims a small chunk first, then doubles; near the end
    it halves what is left, never leaving a last chunk of a few cards; never more than the
    chunk; every card claimed (``left`` exact here: one worker)."""
    left, claims, sizes = total, 0, []
    while left > 0:
        size = bulkprep.piped_claim(chunk, claims, left)
        assert 1 <= size <= chunk
        got = min(size, left)
        sizes.append(got)
        left -= got
        claims += 1
    assert sum(sizes) == total
    if sizes:
        assert sizes[0] == min(chunk, bulkprep.FIRST_CLAIM, total) or total < 2 * chunk
        if chunk >= 2 * bulkprep.FIRST_CLAIM:
            assert sizes[-1] >= min(bulkprep.FIRST_CLAIM, total)
        assert len(sizes) <= -(-total // chunk) + 12
