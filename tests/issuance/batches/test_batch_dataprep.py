"""Data preparation at scale (:mod:`issuance.batches.bulkprep`): chunks claimed by several
worker processes, no card prepared twice, no chip reused, every item accounted for, the perso
records exactly what the HSM derives card by card, tampering refused, a kill -9 in the middle
then a resume, the bureau export by two workers. Real SoftHSM, real ``ykt`` processes, SQLite
and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from batch_helpers import (
    HsmRoot,
    Populated,
    assert_batch_invariants,
    audit_details,
    batch_settings,
    bureau_blank,
    hsm_root,
    populate,
)
from cli_helpers import ykt, ykt_cmd, ykt_env
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from cardspec import cardops, perso
from cardspec.emulator import Card as EmulatedCard
from cardspec.keyscheme import KeySlot
from cardspec.profile import get_profile
from cardspec.reader import InProcessReader
from hsm import pkcs11 as p11
from hsm.prep import RecordCrypto, perso_key_label
from hsm.service import KeyService, Pkcs11KeyService
from issuance import audit
from issuance.batches import bulkprep, dataprep, persofile
from issuance.batches import items as bi
from issuance.batches.bureau import BureauCardCrypto, bureau_personalise, read_bureau_file
from issuance.batches.pipeline import RunOptions
from issuance.batches.stock import MANUFACTURER, manufacturer_key_path
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import BatchItem, BatchStage, BlankChip, Card, ChipStatus
from yikatong.cli.bureau import export_batch
from yikatong.settings import Settings
from yikatong.wiring import key_service_from_settings, runner_for

pytestmark = pytest.mark.softhsm


@pytest.fixture(scope="module")
def prep_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("prep-hsm"))


@pytest.fixture
def env(tmp_path: Path, fresh_db_url: str, prep_hsm: HsmRoot) -> Iterator[tuple[Settings, Engine]]:
    settings = batch_settings(tmp_path / "data", fresh_db_url, prep_hsm)
    engine = make_engine(settings)
    yield settings, engine
    engine.dispose()


def _items(engine: Engine, batch_id: int) -> list[BatchItem]:
    with transaction(make_sessionmaker(engine)) as s:
        return list(s.scalars(sa.select(BatchItem).where(BatchItem.batch_id == batch_id)
                              .order_by(BatchItem.id)))  # fmt: skip


def _chips(engine: Engine, batch_id: int) -> list[BlankChip]:
    with transaction(make_sessionmaker(engine)) as s:
        return list(s.scalars(sa.select(BlankChip).where(BlankChip.batch_id == batch_id)))


def assert_prepared_once(settings: Settings, engine: Engine, batch_id: int) -> dict[int, BlankChip]:
    """Every prepared item has exactly one chip (assigned, its own serial, a perso record that
    verifies and is this card's), every selected item none; no serial twice; one prepare event
    per prepared item; the audit chain holds."""
    items = _items(engine, batch_id)
    chips = _chips(engine, batch_id)
    assert len({c.chip_serial for c in chips}) == len(chips)
    by_item: dict[int, list[BlankChip]] = {}
    for c in chips:
        by_item.setdefault(c.item_id, []).append(c)
    keys = key_service_from_settings(settings)
    pem = keys.public_key_pem()
    mine: dict[int, BlankChip] = {}
    with transaction(make_sessionmaker(engine)) as s:
        for item in items:
            if item.stage == BatchStage.SELECTED:
                assert item.id not in by_item and item.chip_serial is None
                assert item.lease_owner is None or bi.owner_alive(item.lease_owner) is False
                continue
            assert item.stage == BatchStage.PREPARED
            (chip,) = by_item[item.id]
            assert chip.status == ChipStatus.ASSIGNED and chip.chip_serial == item.chip_serial
            card = s.get(Card, item.card_id)
            assert card is not None and card.card_identification_code == (
                card.region_code + "D156000005" + chip.chip_serial
            )
            assert chip.perso_file is not None and chip.perso_offset is not None
            record = persofile.load_record(
                settings.data_dir, chip.perso_file, chip.perso_offset, pem, batch_id=batch_id,
                item_id=item.id, card_id=item.card_id, chip_serial=chip.chip_serial,
            )  # fmt: skip
            assert record.card_identification_code == card.card_identification_code
            assert record.card_number == card.card_number
            mine[item.id] = chip
        events = audit_details(s, "batch_item.prepare")
        prepared = [e for e in events if e["batch_id"] == batch_id]
        assert sorted(e["card_id"] for e in prepared) == sorted(
            i.card_id for i in items if i.stage != BatchStage.SELECTED
        )
        audit.seal(s, delay=timedelta(0))
        audit.verify_chain(s)
    return mine


def test_two_workers_prepare_every_card_once(env: tuple[Settings, Engine]) -> None:
    settings, engine = env
    pop = populate(engine, settings, 30, name="w2")
    with runner_for(settings, pop.batch_id, engine=engine,
                    options=RunOptions(prepare_workers=2, prepare_chunk=4)) as runner:  # fmt: skip
        assert runner.prepare_all() == 30
        stats = runner.prep_stats
    assert stats is not None and stats.prepared == 30 and stats.chunks == 8
    profile = dataprep.card_profile(settings, "3des")
    per_card = sum(1 for _ in profile.key_specs()) + 1  # every key slot and the chip's KLK
    assert stats.keys_derived == 30 * per_card
    chips = assert_prepared_once(settings, engine, pop.batch_id)
    assert len(chips) == 30
    # one signed segment per chunk, the files of this user only
    segments = sorted((settings.data_dir / "perso" / str(pop.batch_id)).iterdir())
    assert len(segments) == 8 and {f.stat().st_mode & 0o777 for f in segments} == {0o600}
    with transaction(make_sessionmaker(engine)) as s:
        assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
    # nothing left to prepare: a second run does nothing
    with runner_for(settings, pop.batch_id, engine=engine,
                    options=RunOptions(prepare_workers=2)) as runner:  # fmt: skip
        assert runner.prepare_all() == 0


def test_perso_records_hold_what_the_hsm_derives_card_by_card(
    env: tuple[Settings, Engine],
) -> None:
    """The bulk path's output against the per-card path (``HsmCardCrypto``, masters in the
    HSM): the same WRITE KEY payloads, KMC, PIN payloads and records, byte for byte."""
    settings, engine = env
    pop = populate(engine, settings, 5, name="eq")
    keys = key_service_from_settings(settings)
    assert isinstance(keys, Pkcs11KeyService)
    with runner_for(settings, pop.batch_id, engine=engine, key_service=keys) as runner:
        assert runner.prepare_all() == 5
    chips = assert_prepared_once(settings, engine, pop.batch_id)
    pem = keys.public_key_pem()
    factory = make_sessionmaker(engine)
    for item_id, chip in chips.items():
        with transaction(factory) as s:
            item = s.get(BatchItem, item_id)
            assert item is not None
            prepared = dataprep.prepared_for_item(s, settings, keys, item)
        assert chip.perso_file is not None and chip.perso_offset is not None
        record = persofile.load_record(
            settings.data_dir, chip.perso_file, chip.perso_offset, pem,
            batch_id=pop.batch_id, item_id=item_id, card_id=prepared.card_id,
            chip_serial=chip.chip_serial,
        )  # fmt: skip
        assert record.perso_key == perso_key_label(pop.batch_id)
        profile = get_profile(prepared.profile_name)
        plan = perso.plan_records(prepared.perso, profile)
        assert {f.ef: list(f.records) for f in record.files} == plan
        assert [f.ef for f in record.files] == list(plan)
        blocks = perso.initial_pin_blocks(prepared.perso, profile)
        with keys.card_crypto(prepared.key_ref) as crypto:
            assert record.write_keys() == {
                slot: crypto.wrapped_card_key(slot) for slot in prepared.key_slots
            }
            assert [p.encrypted for p in record.pins] == [
                crypto.encrypt(KeySlot.KMC, b) for b in blocks
            ]
            kmc_kcv = crypto.kcv(KeySlot.KMC)
        with RecordCrypto(keys, record.perso_key, record.kek, record.kmc_wrapped,
                          record.algorithm, record.write_keys()) as station:  # fmt: skip
            assert station.kcv(KeySlot.KMC) == kmc_kcv
            with pytest.raises(Exception, match="no internal-authentication key"):
                station.internal_auth_response(bytes(8), bytes(8))


def test_a_tampered_or_foreign_record_is_refused(env: tuple[Settings, Engine]) -> None:
    settings, engine = env
    pop = populate(engine, settings, 3, name="tamper")
    with runner_for(settings, pop.batch_id, engine=engine,
                    options=RunOptions(prepare_chunk=3)) as runner:  # fmt: skip
        assert runner.prepare_all() == 3
    chips = sorted(_chips(engine, pop.batch_id), key=lambda c: c.item_id)
    pem = key_service_from_settings(settings).public_key_pem()
    first, second = chips[0], chips[1]
    assert first.perso_file == second.perso_file and first.perso_file is not None
    assert first.perso_offset is not None

    def load(chip: BlankChip, **override: object) -> persofile.PersoRecord:
        args: dict[str, object] = {
            "batch_id": pop.batch_id,
            "item_id": chip.item_id,
            "card_id": chip.card_id,
            "chip_serial": chip.chip_serial,
        }
        args.update(override)  # fmt: skip
        assert chip.perso_file is not None and chip.perso_offset is not None
        return persofile.load_record(settings.data_dir, chip.perso_file, chip.perso_offset,
                                     pem, **args)  # type: ignore[arg-type]  # fmt: skip

    assert load(first).chip_serial == first.chip_serial
    with pytest.raises(persofile.PersoRecordInvalid, match="another card or chip"):
        load(first, chip_serial=second.chip_serial)
    with pytest.raises(persofile.PersoRecordInvalid, match="another segment or batch"):
        load(first, batch_id=pop.batch_id + 1)
    path = settings.data_dir / "perso" / first.perso_file
    original = path.read_bytes()
    # one changed character in a holder record: the digest no longer matches
    at = original.index(b'"records":["', first.perso_offset) + 14
    path.write_bytes(original[:at] + bytes([original[at] ^ 0x01]) + original[at + 1 :])
    with pytest.raises(persofile.PersoRecordInvalid, match="altered"):
        load(first)
    path.write_bytes(original[: len(original) // 2])
    with pytest.raises(persofile.PersoRecordInvalid, match=r"truncated|trailer"):
        load(first)
    path.unlink()
    with pytest.raises(persofile.PersoRecordInvalid, match="missing"):
        load(first)
    path.write_bytes(original)
    assert load(second).card_id == second.card_id


@pytest.mark.pcsc
def test_stations_run_the_perso_file_and_derive_keys_for_a_refused_record(
    env: tuple[Settings, Engine],
) -> None:
    """The stations personalise from the perso records (no issuer key derived there); a
    record that fails its checks makes the station derive the card's keys itself; every card
    passes quality control."""
    settings, engine = env
    pop = populate(engine, settings, 4, name="st")
    with runner_for(settings, pop.batch_id, engine=engine,
                    options=RunOptions(prepare_chunk=2)) as runner:  # fmt: skip
        assert runner.prepare_all() == 4
    chips = sorted(_chips(engine, pop.batch_id), key=lambda c: c.item_id)
    assert chips[0].perso_file is not None
    damaged = settings.data_dir / "perso" / chips[0].perso_file
    damaged.write_bytes(damaged.read_bytes().replace(b'"type":"trailer"', b'"type":"trailor"'))
    with runner_for(settings, pop.batch_id, engine=engine,
                    options=RunOptions(readers=2)) as runner:  # fmt: skip
        summary = runner.run()
    assert summary.finished and summary.checked == 4 and summary.spoiled == 0
    with transaction(make_sessionmaker(engine)) as s:
        used = {
            e["card_id"]: e["perso_record"] for e in audit_details(s, "batch_item.personalised")
        }
        assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
    same_segment = {c.card_id for c in chips if c.perso_file == chips[0].perso_file}
    assert {cid for cid, rec in used.items() if not rec} == same_segment
    assert len(used) == 4 and sum(used.values()) == 4 - len(same_segment)
    # the batch is produced: its perso key is gone from the HSM, its perso file removed
    assert not (settings.data_dir / "perso" / str(pop.batch_id)).exists()
    keys = key_service_from_settings(settings)
    assert isinstance(keys, Pkcs11KeyService)
    with keys.token.use() as session:
        assert not p11.exists(session, perso_key_label(pop.batch_id))


def _ready(
    env: tuple[Settings, Engine], cards: int, name: str
) -> tuple[Populated, sessionmaker[Session], KeyService]:
    """A populated batch with its perso key: (population, session factory, key service)."""
    settings, engine = env
    pop = populate(engine, settings, cards, name=name)
    factory = make_sessionmaker(engine)
    keys = key_service_from_settings(settings)
    bulkprep.ensure_batch_perso_key(factory, keys, pop.batch_id)
    return pop, factory, keys


def test_a_lost_lease_changes_nothing(env: tuple[Settings, Engine]) -> None:
    """A worker whose chunk lease expired and was taken over by another worker commits
    nothing: its cards stay the other worker's, no chip is recorded."""
    settings, engine = env
    pop, factory, keys = _ready(env, 3, "lease")
    from hsm.prep import prep_ops

    preparer = bulkprep.Preparer(settings, factory, keys, pop.batch_id, audit.SYSTEM_ACTOR,
                                 chunk=3)  # fmt: skip
    with transaction(factory) as s:
        rows = preparer._claim(s, (BatchStage.SELECTED,))
    assert len(rows) == 3
    with transaction(factory) as s:  # the lease expired; another worker claimed the items
        s.execute(sa.update(BatchItem).where(BatchItem.batch_id == pop.batch_id)
                  .values(lease_owner="other-host:1:1:prepare", lease_expires_at=None))  # fmt: skip
    ops = prep_ops(keys, perso_key_label(pop.batch_id))
    assert ops is not None
    with ops:
        made = preparer._chunk(ops, rows)
    assert len(made) == 3
    with pytest.raises(bi.LeaseLost):
        preparer._commit_timed(made)
    assert preparer.stats.prepared == 0
    assert {i.stage for i in _items(engine, pop.batch_id)} == {BatchStage.SELECTED}
    assert _chips(engine, pop.batch_id) == []


def test_a_stop_gives_back_the_chunk_claimed_ahead(env: tuple[Settings, Engine]) -> None:
    """The next chunk is claimed while the current one is made (on the database thread); a
    stop after a chunk leaves that chunk prepared and the one claimed ahead free at once, not
    leased: the next run prepares every remaining card."""
    settings, engine = env
    pop, factory, keys = _ready(env, 12, "stop")
    stop = threading.Event()
    reported: list[int] = []

    def chunk_done(n: int) -> None:
        reported.append(n)
        stop.set()

    first = bulkprep.Preparer(settings, factory, keys, pop.batch_id, audit.SYSTEM_ACTOR,
                              chunk=3, on_chunk=chunk_done, stop=stop,
                              overlap=True, hsm_process=False).run()  # fmt: skip
    # the chunk in hand when the first commit was reported is finished too
    assert first.prepared in (3, 6) and sum(reported) == first.prepared == 3 * first.chunks
    left = [i for i in _items(engine, pop.batch_id) if i.stage == BatchStage.SELECTED]
    assert len(left) == 12 - first.prepared
    assert all(i.lease_owner is None and i.lease_expires_at is None for i in left)
    second = bulkprep.Preparer(settings, factory, keys, pop.batch_id, audit.SYSTEM_ACTOR,
                               chunk=3).run()  # fmt: skip
    assert second.prepared == 12 - first.prepared and second.leases_lost == 0
    assert len(assert_prepared_once(settings, engine, pop.batch_id)) == 12


def test_the_database_thread_only_where_the_cores_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker's HSM work and its database work each need a core."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert bulkprep.database_thread(1) and not bulkprep.database_thread(2)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert bulkprep.database_thread(4) and not bulkprep.database_thread(5)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert not bulkprep.database_thread(1)


def test_a_chunk_taken_over_while_made_costs_that_chunk_only(
    env: tuple[Settings, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease lost between claim and commit (another worker took the chunk, seen by the
    commit's guard on the database thread): counted, nothing written for it, and the run goes
    on with the next chunks."""
    settings, engine = env
    pop, factory, keys = _ready(env, 9, "taken")
    preparer = bulkprep.Preparer(settings, factory, keys, pop.batch_id, audit.SYSTEM_ACTOR,
                                 chunk=3, overlap=True, hsm_process=False)  # fmt: skip
    made = bulkprep.Preparer._chunk
    stolen: list[int] = []

    def chunk(self: bulkprep.Preparer, ops: object, rows: list[bulkprep.Row]) -> object:
        out = made(self, ops, rows)  # type: ignore[arg-type]
        if not stolen:  # the first chunk: its lease taken over before its commit
            stolen.extend(r.item_id for r in rows)
            with transaction(factory) as s:
                s.execute(sa.update(BatchItem).where(BatchItem.id.in_(stolen))
                          .values(lease_owner="other-host:1:1:prepare"))  # fmt: skip
        return out

    monkeypatch.setattr(bulkprep.Preparer, "_chunk", chunk)
    stats = preparer.run()
    assert stats.leases_lost == 3 and stats.prepared == 6 and stats.chunks == 2
    items = {i.id: i for i in _items(engine, pop.batch_id)}
    assert {items[i].stage for i in stolen} == {BatchStage.SELECTED}
    assert {items[i].lease_owner for i in stolen} == {"other-host:1:1:prepare"}
    assert {c.item_id for c in _chips(engine, pop.batch_id)}.isdisjoint(stolen)


def test_an_error_in_a_chunk_gives_back_what_was_claimed(
    env: tuple[Settings, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error while a chunk is made (here the HSM failing) stops the run with that error;
    the chunk in hand and the one claimed ahead are free again, the chunk committed before
    stays prepared."""
    from hsm.errors import HsmError

    settings, engine = env
    pop, factory, keys = _ready(env, 12, "err")
    made = bulkprep.Preparer._chunk
    calls: list[int] = []

    def chunk(self: bulkprep.Preparer, ops: object, rows: list[bulkprep.Row]) -> object:
        calls.append(len(rows))
        if len(calls) == 2:
            raise HsmError("the HSM stopped answering")
        return made(self, ops, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(bulkprep.Preparer, "_chunk", chunk)
    preparer = bulkprep.Preparer(settings, factory, keys, pop.batch_id, audit.SYSTEM_ACTOR,
                                 chunk=3, overlap=True, hsm_process=False)  # fmt: skip
    with pytest.raises(HsmError, match="stopped answering"):
        preparer.run()
    items = _items(engine, pop.batch_id)
    assert sum(1 for i in items if i.stage == BatchStage.PREPARED) == 3
    left = [i for i in items if i.stage == BatchStage.SELECTED]
    assert len(left) == 9 and all(i.lease_owner is None for i in left)
    assert len(assert_prepared_once(settings, engine, pop.batch_id)) == 3


def _selected(factory: object, batch_id: int) -> int:
    with transaction(factory) as s:  # type: ignore[arg-type]
        return bi.stage_counts(s, batch_id)[BatchStage.SELECTED]


@pytest.mark.slow
def test_kill_9_during_prepare_with_two_workers_then_resume(
    env: tuple[Settings, Engine], prep_hsm: HsmRoot, tmp_path: Path
) -> None:
    """``ykt batch prepare --workers 2`` killed with SIGKILL once chunks are being committed
    (its workers die with it); the batch is consistent at once (prepared cards have their
    chip and record, the rest are selected); ``ykt batch prepare`` again finishes it."""
    settings, engine = env
    pop = populate(engine, settings, 60, name="kill")
    factory = make_sessionmaker(engine)
    shell = ykt_env(settings, prep_hsm, YKT_STAFF="demo-operator")
    with (tmp_path / "kill.log").open("wb") as log:
        cmd = ykt_cmd("batch", "prepare", "kill", "--workers", "2", "--chunk", "3")
        proc = subprocess.Popen(cmd, env=shell, stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if _selected(factory, pop.batch_id) <= 60 - 9:
                break
            time.sleep(0.01)
        assert proc.poll() is None, (tmp_path / "kill.log").read_text()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    # the workers die with their parent (PR_SET_PDEATHSIG)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        with transaction(factory) as s:
            leased = (BatchItem.batch_id == pop.batch_id, BatchItem.lease_owner.is_not(None))
            owners = set(s.scalars(sa.select(BatchItem.lease_owner).where(*leased)))
        if all(not bi.owner_alive(o) for o in owners):
            break
        time.sleep(0.1)
    assert all(not bi.owner_alive(o) for o in owners), owners
    left = _selected(factory, pop.batch_id)
    assert 0 < left < 60
    assert_prepared_once(settings, engine, pop.batch_id)
    with transaction(factory) as s:
        assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)

    done = ykt(shell, "batch", "prepare", "kill", "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{left} card(s) prepared now, 60 prepared in all" in done.stdout
    chips = assert_prepared_once(settings, engine, pop.batch_id)
    assert len(chips) == 60
    with transaction(factory) as s:
        assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)


def test_two_workers_export_a_bureau_file_the_bureau_can_use(
    env: tuple[Settings, Engine], tmp_path: Path
) -> None:
    """``ykt bureau export --workers 2``'s path: selected and prepared cards alike, every card
    once in one signed file (the workers' KEKs each announced), then ``at_bureau``; the bureau
    personalises chips from it that verify in the issuer's HSM."""
    settings, engine = env
    pop = populate(engine, settings, 24, name="bx")
    keys = key_service_from_settings(settings)
    factory = make_sessionmaker(engine)
    # a few cards prepared in house first (one chunk; without the database thread, whose
    # commit reports a chunk while the next one is made): the export takes them too
    one_chunk = threading.Event()
    preparer = bulkprep.Preparer(settings, factory, keys, pop.batch_id, audit.SYSTEM_ACTOR,
                                 chunk=5, on_chunk=lambda n: one_chunk.set(),
                                 stop=one_chunk, overlap=False)  # fmt: skip
    bulkprep.ensure_batch_perso_key(factory, keys, pop.batch_id)
    assert preparer.run().prepared == 5
    before = {i.card_id: i.chip_serial for i in _items(engine, pop.batch_id) if i.chip_serial}
    path = tmp_path / "bx.bureau.jsonl"
    info, moved, _refused = export_batch(settings, keys, pop.batch_name, path, MANUFACTURER,
                               pop.actors["demo-operator"], factory=factory, workers=2,
                               chunk=4)  # fmt: skip
    assert info.count == 24 and moved == 24
    assert path.stat().st_mode & 0o777 == 0o600
    lines = list(read_bureau_file(path, keys.public_key_pem()))
    assert sorted(c.card_id for c in lines) == sorted(
        i.card_id for i in _items(engine, pop.batch_id)
    )
    assert len({c.chip_serial for c in lines}) == 24
    for card_id, serial in before.items():  # prepared before: exported on the same chip
        assert next(c.chip_serial for c in lines if c.card_id == card_id) == serial
    kek_lines = [json.loads(x) for x in path.read_text().splitlines() if '"type":"kek"' in x]
    assert [k["kek"] for k in kek_lines] == list(range(1, len(kek_lines) + 1))
    assert {i.stage for i in _items(engine, pop.batch_id)} == {BatchStage.AT_BUREAU}
    assert {i.bureau_file_id for i in _items(engine, pop.batch_id)} == {info.file_id}
    with transaction(factory) as s:
        assert len([e for e in audit_details(s, "batch_item.export")
                    if e["batch_id"] == pop.batch_id]) == 24  # fmt: skip
        assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
    transport = bytes.fromhex(manufacturer_key_path(settings).read_text().strip())
    for line in lines[:2]:
        chip = EmulatedCard.load(bureau_blank(settings, keys, line))
        crypto = BureauCardCrypto(line, lambda w: aes_key_unwrap_with_padding(transport, w))
        reader = InProcessReader(chip)
        bureau_personalise(reader, line, crypto)
        reader.connect()
        cardops.select_df(reader, get_profile(line.profile_name), "SSSE")
        factor, random = bytes.fromhex(line.card_identification_code[16:]), os.urandom(8)
        answer = cardops.internal_authenticate(reader, factor, random)
        with transaction(factory) as s:
            card = s.get(Card, line.card_id)
            assert card is not None
            ref = dataprep.key_ref(card, line.card_identification_code)
        keys.verify_internal_auth(ref, factor, random, answer)
    # nothing left to export
    with pytest.raises(Exception, match="no card to export"):
        export_batch(settings, keys, pop.batch_name, tmp_path / "again.jsonl", MANUFACTURER,
                     pop.actors["demo-operator"], factory=factory)  # fmt: skip
    assert not (tmp_path / "again.jsonl").exists()
    assert not (tmp_path / "again.jsonl.part").exists()


def test_a_card_whose_data_cannot_go_on_a_chip_is_refused_alone(
    env: tuple[Settings, Engine],
) -> None:
    """One holder's name has a character outside GBK (EF06 cannot hold it): that card is
    refused with the reason and left selected (no chip, no lease); the others are prepared."""
    settings, engine = env
    pop = populate(engine, settings, 4, name="bad")
    factory = make_sessionmaker(engine)
    from issuance.models import Person

    with transaction(factory) as s:
        item = s.scalars(sa.select(BatchItem).where(BatchItem.batch_id == pop.batch_id)
                         .order_by(BatchItem.id)).first()  # fmt: skip
        assert item is not None
        card = s.get(Card, item.card_id)
        assert card is not None
        person = s.get(Person, card.person_id)
        assert person is not None
        person.name = "王\U0001f600"
        bad_id, bad_number = item.id, card.card_number
    with runner_for(settings, pop.batch_id, engine=engine) as runner:
        assert runner.prepare_all() == 3
        stats = runner.prep_stats
    assert stats is not None and len(stats.errors) == 1
    assert stats.errors[0].startswith(f"card {bad_number}:") and "王" not in stats.errors[0]
    items = {i.id: i for i in _items(engine, pop.batch_id)}
    assert items[bad_id].stage == BatchStage.SELECTED and items[bad_id].lease_owner is None
    assert {i.stage for k, i in items.items() if k != bad_id} == {BatchStage.PREPARED}
    assert len(assert_prepared_once(settings, engine, pop.batch_id)) == 3


def test_card_lines_are_the_json_of_the_format() -> None:
    """The hand-built card line is byte for byte ``json.dumps`` of the documented object."""
    files = [("MF/SSSE", "EF05", 5, [b"\x01\x02", b"\xff"]), ("MF/SSSE", "EF06", 6, [])]
    line = persofile.card_line(
        3, item_id=7, card_id=42, chip_serial="AB12", cic="330100D156000005AB12",
        card_number="B0000001X", profile="ssc2-3des", algorithm="3des", key_version=1,
        files=files, kmc_wrapped=bytes(24), keys=[("dmk", 1, b"\x01" * 24)],
        pins=[("ss", "MF/SSSE", 0, b"\x02" * 8), ("bank", "MF/\"FIN\"", 1, b"\x03")],
    )  # fmt: skip
    expected = {
        "type": "card", "seq": 3, "item_id": 7, "card_id": 42, "chip_serial": "AB12",
        "cic": "330100D156000005AB12", "card_number": "B0000001X", "profile": "ssc2-3des",
        "algorithm": "3des", "key_version": 1,
        "files": [{"df": "MF/SSSE", "ef": "EF05", "sfi": 5, "records": ["0102", "ff"]},
                  {"df": "MF/SSSE", "ef": "EF06", "sfi": 6, "records": []}],
        "kmc": "00" * 24, "keys": [{"slot": "dmk", "key_id": 1, "payload": "01" * 24}],
        "pins": [{"name": "ss", "df": "MF/SSSE", "ref": 0, "payload": "02" * 8},
                 {"name": "bank", "df": "MF/\"FIN\"", "ref": 1, "payload": "03"}],
    }  # fmt: skip
    assert line == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
