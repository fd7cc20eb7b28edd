"""Delivered blank stock on real readers: a chip supplier pre-personalises blank chips with
transport keys diversified from a key set shared with the issuer in a key ceremony; the
delivery's serials are imported (``ykt stock import``); the stations read the chip fed into
them, check it against the stock, bind the card to it and personalise it with the keys
derived in the HSM.

Everything real: SoftHSM (the supplier key set imported through ``ykt hsm import --supplier``
from custodians' components), an isolated pcscd + vpcd stack used as ``[readers] backend =
"pcsc"`` (the test is the operator feeding chips into the slots through the stack's control
socket), the card emulator, the file spool, SQLite and PostgreSQL. The "supplier" makes its
chips with an independent implementation of the diversification (pyemv's EMV option A for the
3DES KMC, ``cryptography`` AES for the KLK), never with the product's key code.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from batch_helpers import HsmRoot, assert_batch_invariants, batch_settings, hsm_root, populate
from cli_helpers import ykt, ykt_cmd, ykt_env
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pyemv import kd
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from cardspec import ids
from cardspec.emulator import blank_card
from cardspec.emulator.image import LifeCycle, read_image
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import ceremony
from hsm.errors import HsmError
from hsm.pkcs11 import open_token
from issuance.audit import SYSTEM_ACTOR
from issuance.batches import items as bi
from issuance.batches.blanks import ChipRefused, DeliveredBlankStock
from issuance.batches.dataprep import card_profile, key_ref
from issuance.batches.deliveries import import_delivery, parse_delivery, stock_status
from issuance.batches.pipeline import RunOptions
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.errors import ConfigError, PermissionDenied, ValidationError
from issuance.models import (
    AuditEvent,
    BatchItem,
    BatchStage,
    BlankChip,
    Card,
    ChipStatus,
    StockChip,
    StockChipStatus,
    StockRefusal,
    StockRejection,
)
from printers.prepared import PreparedCard
from readers.virtual import VirtualReaderStack
from yikatong.settings import Settings, get_settings, load_settings
from yikatong.wiring import hsm_config, key_service_from_settings, make_stock, run_batch

pytestmark = [pytest.mark.pcsc, pytest.mark.softhsm, pytest.mark.slow]

SUPPLIER = "acme-chips"
READERS = 2


# --- the chip supplier (independent of the product's key code) ---------------------------
def _aes_ecb(key: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def _des3_ecb(key: bytes, data: bytes) -> bytes:
    enc = Cipher(TripleDES(key + key[:8]), modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def _xor(parts: list[bytes]) -> bytes:
    out = bytearray(16)
    for part in parts:
        for i, b in enumerate(part):
            out[i] ^= b
    return bytes(out)


@dataclass(frozen=True)
class Supplier:
    """The chip manufacturer's side of the key ceremony: it holds the combined masters (the
    issuer's HSM holds the same, imported from the same components)."""

    kmc_master: bytes  # double-length 3DES
    klk_master: bytes  # AES-128
    aes_kmc_master: bytes  # AES-128, for third-generation (AES) chips

    def kmc(self, serial: bytes, alg: Algorithm = Algorithm.DES3) -> bytes:
        if alg is Algorithm.AES:  # D || D xor FF.. under AES (the profile's AES choice)
            return _aes_ecb(self.aes_kmc_master, serial + bytes(b ^ 0xFF for b in serial))
        # EMV 4.3 Book 2 A1.4.1 option A with the serial as the 16 digits of "PAN || PSN"
        return kd.derive_icc_mk_a(self.kmc_master, pan=serial.hex(), psn="")

    def klk(self, serial: bytes) -> bytes:
        return _aes_ecb(self.klk_master, serial + bytes(b ^ 0xFF for b in serial))

    def kcvs(self, serial: bytes, alg: Algorithm = Algorithm.DES3) -> tuple[str, str]:
        kmc = self.kmc(serial, alg)
        kmc_kcv = (_des3_ecb(kmc, bytes(8)) if alg is Algorithm.DES3
                   else _aes_ecb(kmc, b"\x01" * 16))[:3]  # fmt: skip
        return kmc_kcv.hex().upper(), _aes_ecb(self.klk(serial), b"\x01" * 16)[:3].hex().upper()

    def make_chip(self, settings: Settings, serial: bytes, alg: Algorithm = Algorithm.DES3) -> Path:
        """A blank chip as delivered: its serial, KMC and KLK (image where the operator keeps
        the physical cards of this test: ``<data_dir>/cards``)."""
        path = settings.cards_dir / f"{serial.hex().upper()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        blank_card(serial, self.kmc(serial, alg), alg, klk=self.klk(serial),
                   profile=card_profile(settings, alg), path=path)  # fmt: skip
        return path


def _typed(parts: list[bytes], alg: Algorithm) -> str:
    """What the custodians type at ``ykt hsm import``: each component, then its KCV."""
    from cardspec import keyscheme

    return "".join(f"{p.hex()}\n{keyscheme.kcv(p, alg).hex()}\n" for p in parts)


@dataclass(frozen=True)
class SupplierHsm:
    hsm: HsmRoot
    supplier: Supplier


@pytest.fixture(scope="session")
def supplier_hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupplierHsm]:
    """The issuer's token (issuer masters) with the supplier's delivery key set imported from
    the ceremony's components through the real ``ykt hsm import ... --supplier``."""
    from yikatong.cli.hsm import app

    root = hsm_root(tmp_path_factory.mktemp("delivered-hsm"))
    comps = {name: [os.urandom(16), os.urandom(16)] for name in ("kmc", "klk", "aes_kmc")}
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("YKT_"):
                mp.delenv(name)
        mp.setenv("YKT_DATA_DIR", str(root.root))
        get_settings.cache_clear()
        for key, alg, parts in (("kmc", "3des", comps["kmc"]), ("klk", "aes", comps["klk"]),
                                ("kmc", "aes", comps["aes_kmc"])):  # fmt: skip
            result = runner.invoke(
                app, ["import", key, "--supplier", SUPPLIER, "--algorithm", alg,
                      "-c", "custodian-a", "-c", "custodian-b", "--no-audit"],
                input=_typed(parts, Algorithm(alg) if key == "kmc" else Algorithm.AES),
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            assert f"ykt:supplier:{SUPPLIER}:{key}:{alg}:v1 imported" in result.output
        listed = runner.invoke(app, ["list", "--json"])
        assert listed.exit_code == 0, listed.output
    get_settings.cache_clear()
    supplier = Supplier(_xor(comps["kmc"]), _xor(comps["klk"]), _xor(comps["aes_kmc"]))
    rows = {r["label"]: r for r in map(json.loads, listed.output.splitlines())}
    kmc_row = rows[f"ykt:supplier:{SUPPLIER}:kmc:3des:v1"]
    # the HSM's KCV of the imported master is the supplier's own (ECB of a zero block)
    assert kmc_row["kind"] == "supplier" and kmc_row["kcv_source"] == "hsm"
    assert kmc_row["kcv"] == _des3_ecb(supplier.kmc_master, bytes(8))[:3].hex().upper()
    assert kmc_row["extractable"] is False and kmc_row["sensitive"] is True
    # the supplier keys never count as (or complete) an issuer key set
    token = open_token(hsm_config(load_settings(
        environ={"YKT_DATA_DIR": str(root.root)})))  # fmt: skip
    assert ceremony.complete_versions(token, Algorithm.DES3) == [1]
    assert ceremony.complete_versions(token, Algorithm.AES) == []
    yield SupplierHsm(root, supplier)


# --- an isolated PC/SC stack used as "real readers" ----------------------------------------
@pytest.fixture
def readers() -> Iterator[VirtualReaderStack]:
    where = Path(tempfile.mkdtemp(prefix="ykt-dl-", dir="/tmp"))
    try:
        with VirtualReaderStack(where / "st", READERS) as stack:
            yield stack
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _line_env(stack: VirtualReaderStack) -> dict[str, str]:
    """A production line on "real" readers (the stack's pcscd) taking delivered chips."""
    return {
        "YKT_READERS__BACKEND": "pcsc", "YKT_READERS__CSOCK": str(stack.csock),
        "YKT_READERS__COUNT": str(READERS), "YKT_READERS__FEED_TIMEOUT_SECONDS": "4",
        "YKT_STOCK__BACKEND": "delivered",
    }  # fmt: skip


def _settings(tmp_path: Path, db_url: str, sh: SupplierHsm, stack: VirtualReaderStack) -> Settings:
    return batch_settings(tmp_path / "data", db_url, sh.hsm, _line_env(stack))


def _delivery_file(
    path: Path, sh: SupplierHsm, serials: list[bytes], lot: str, alg: Algorithm = Algorithm.DES3
) -> Path:
    """The supplier's delivery file (CSV: serial, lot, KMC and KLK check values)."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["serial", "lot", "kmc_kcv", "klk_kcv"])
        for s in serials:
            w.writerow([s.hex().upper(), lot, *sh.supplier.kcvs(s, alg)])
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


REUSE = "reuse"


@dataclass
class Fed:
    serial: str
    path: Path
    rejections_before: int
    chip_before: tuple[str | None, str | None]


@dataclass
class Operator:
    """Feeds chips into the readers as each station frees its slot, and takes a chip out when
    the station is done with it: its card passed (chip good), the station spoiled it, or the
    station refused it (a chip interrupted by a crash stays in until the station says so).
    ``REUSE`` in the queue: a finished card fed again."""

    stack: VirtualReaderStack
    engine: Engine
    queue: list[Path | str]
    slots: int = READERS
    fed: list[Fed] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    in_slot: dict[int, Fed | None] = field(default_factory=dict)
    finished: list[Path] = field(default_factory=list)
    reused: list[tuple[Path, str]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _state(self, s: Session, serial: str) -> tuple[int, tuple[str | None, str | None]]:
        rejected = s.scalar(sa.select(sa.func.count()).select_from(StockRejection).where(
            StockRejection.chip_serial == serial)) or 0  # fmt: skip
        chip = s.execute(sa.select(BlankChip.status, BlankChip.reason).where(
            BlankChip.chip_serial == serial)).first()  # fmt: skip
        return int(rejected), ((str(chip[0]), chip[1]) if chip else (None, None))

    def _done(self, s: Session, fed: Fed) -> str | None:
        rejected, (status, reason) = self._state(s, fed.serial)
        if rejected > fed.rejections_before:
            return "refused"
        if (status, reason) == fed.chip_before:
            return None
        if status == ChipStatus.GOOD:
            return "good"
        if status == ChipStatus.SPOILED and not (reason or "").startswith("interrupted"):
            return "spoiled"
        return None

    def _next(self) -> Path | None:
        while self.queue:
            head = self.queue[0]
            if head == REUSE:
                if not self.finished:
                    return None  # no finished card yet: feed it later
                self.queue.pop(0)
                card = self.finished[0]
                self.reused.append((card, _sha(card)))
                return card
            self.queue.pop(0)
            return Path(head)
        return None

    def step(self) -> None:
        factory = make_sessionmaker(self.engine)
        for slot in range(self.slots):
            fed = self.in_slot.get(slot)
            with transaction(factory) as s:
                if fed is not None:
                    why = self._done(s, fed)
                    if why is None:
                        continue
                    self.stack.remove(slot)
                    self.removed.append((fed.serial, why))
                    if why == "good":
                        self.finished.append(fed.path)
                    self.in_slot[slot] = None
                    continue
                path = self._next()
                if path is None:
                    continue
                serial = path.stem
                rejected, chip = self._state(s, serial)
            fed = Fed(serial, path, rejected, chip)
            self.stack.insert(slot, path)
            self.fed.append(fed)
            self.in_slot[slot] = fed

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step()
                time.sleep(0.05)
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def start(self) -> Operator:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="operator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.errors:
            raise self.errors[0]


def _refusals(s: Session) -> list[StockRejection]:
    return list(s.scalars(sa.select(StockRejection).order_by(StockRejection.id)))


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- tests -----------------------------------------------------------------------------------
def test_delivered_chips_are_bound_at_the_stations_and_strangers_refused(
    tmp_path: Path, fresh_db_url: str, supplier_hsm: SupplierHsm, readers: VirtualReaderStack
) -> None:
    settings = _settings(tmp_path, fresh_db_url, supplier_hsm, readers)
    engine = make_engine(settings)
    pop = populate(engine, settings, 4, name="delivered")
    env = ykt_env(settings, supplier_hsm.hsm, **_line_env(readers))
    serials = [os.urandom(8) for _ in range(7)]
    delivery = _delivery_file(tmp_path / "acme-lot-42.csv", supplier_hsm, serials, "ACME-42")
    # goods receipt: the delivery file into stock, through the real command
    done = ykt(env, "stock", "import", str(delivery), "--supplier", SUPPLIER, "--as",
               "demo-operator")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported 7 chip(s) of lot(s) ACME-42" in done.stdout
    assert "14 check value(s) verified in the HSM" in done.stdout
    chips = [supplier_hsm.supplier.make_chip(settings, s) for s in serials]
    # a chip of another delivery (right keys, never imported): must be refused unopened
    stranger = supplier_hsm.supplier.make_chip(settings, os.urandom(8))
    stranger_sha = _sha(stranger)
    operator = Operator(readers, engine, [stranger, chips[0], chips[1], REUSE, *chips[2:]])
    operator.start()
    try:
        summary = run_batch(settings, pop.batch_name, engine=engine,
                            options=RunOptions(readers=READERS))  # fmt: skip
    finally:
        operator.stop()
    assert summary.finished and summary.checked == 4, summary
    assert not summary.errors
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        counts = assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
        assert counts["good"] == 4
        items = s.scalars(sa.select(BatchItem).where(BatchItem.batch_id == pop.batch_id)).all()
        stock = {c.chip_serial: c for c in s.scalars(sa.select(StockChip))}
        for item in items:
            assert item.stage == BatchStage.CHECKED
            chip = stock[item.chip_serial]  # every good card is on a delivered chip ...
            assert chip.status == StockChipStatus.USED and chip.card_id == item.card_id
            assert chip.supplier == SUPPLIER and chip.lot == "ACME-42"
            card = s.get(Card, item.card_id)
            assert card is not None and card.card_identification_code is not None
            assert card.card_identification_code.endswith(item.chip_serial)
        used = {i.chip_serial for i in items}
        assert {k for k, c in stock.items() if c.status == StockChipStatus.USED} == used
        refusals = _refusals(s)
        by_reason = {r.reason: r for r in refusals}
        # ... the stranger was refused as unknown, recorded, audited
        unknown = by_reason[StockRefusal.UNKNOWN]
        assert unknown.chip_serial == stranger.stem and unknown.batch_id == pop.batch_id
        assert unknown.station in {f"station-{n + 1}" for n in range(READERS)}
        # ... a finished card fed again was refused as used
        reused_path, reused_sha = operator.reused[0]
        used_again = by_reason[StockRefusal.USED]
        assert used_again.chip_serial == reused_path.stem and used_again.chip_serial in used
        assert {r.reason for r in refusals} == {StockRefusal.UNKNOWN, StockRefusal.USED}
        audited = s.scalars(sa.select(AuditEvent.entity_id).where(
            AuditEvent.action == "stock.chip_refused")).all()  # fmt: skip
        assert sorted(audited) == sorted(r.chip_serial for r in refusals)
        status = stock_status(s)
        assert status.total(StockChipStatus.USED) == 4
        assert status.total(StockChipStatus.AVAILABLE) == 3
        assert status.refused == {StockRefusal.UNKNOWN: 1, StockRefusal.USED: 1}
    # refused chips were never sent a personalisation command: their images are unchanged
    assert _sha(stranger) == stranger_sha
    assert read_image(stranger).life_cycle is not LifeCycle.SECURED
    assert _sha(reused_path) == reused_sha
    assert (reused_path.stem, "refused") in operator.removed
    # the operator's view
    shown = ykt(env, "stock", "status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "ACME-42" in shown.stdout and "refused at the stations: 2" in shown.stdout
    assert "1 unknown" in shown.stdout and "1 used" in shown.stdout
    engine.dispose()


def test_a_chip_bound_when_the_worker_dies_is_spoiled_and_refused_on_resume(
    tmp_path: Path, fresh_db_url: str, supplier_hsm: SupplierHsm, readers: VirtualReaderStack
) -> None:
    settings = _settings(tmp_path, fresh_db_url, supplier_hsm, readers)
    engine = make_engine(settings)
    pop = populate(engine, settings, 4, name="dl-crash")
    serials = [os.urandom(8) for _ in range(10)]
    delivery = _delivery_file(tmp_path / "lot.csv", supplier_hsm, serials, "ACME-43")
    factory = make_sessionmaker(engine)
    keys = key_service_from_settings(settings)
    with transaction(factory) as s:
        import_delivery(s, keys, settings.issuer.region_code,
                        parse_delivery(delivery, SUPPLIER), SYSTEM_ACTOR)  # fmt: skip
    chips = [supplier_hsm.supplier.make_chip(settings, s) for s in serials]
    env = ykt_env(settings, supplier_hsm.hsm, **_line_env(readers))
    operator = Operator(readers, engine, list(chips)).start()
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(ykt_cmd("batch", "run", "dl-crash", "--readers", str(READERS)),
                            env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    bound: list[str] = []
    try:
        # pull the plug while a delivered chip is bound to a card inside a station
        def in_station() -> bool:
            with transaction(factory) as s:
                bound[:] = s.scalars(sa.select(BatchItem.chip_serial).where(
                    BatchItem.batch_id == pop.batch_id,
                    BatchItem.stage.in_(bi.IN_STATION))).all()  # fmt: skip
            return bool(bound) or proc.poll() is not None

        _wait(in_station, 120, "a bound chip in a station")
        assert proc.poll() is None, (tmp_path / "run.log").read_text()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        log.close()
        assert bound
        with transaction(factory) as s:
            for serial in bound:  # the chip is still bound to its card, in the reader
                assert s.scalars(sa.select(StockChip.status).where(
                    StockChip.chip_serial == serial)).one() == StockChipStatus.USED  # fmt: skip
        slots = {st.image for st in readers.status() if st.image}
        assert {Path(p).stem for p in slots} >= set(bound)

        resumed = subprocess.run(ykt_cmd("batch", "resume", "dl-crash", "--readers",
                                         str(READERS)), env=env, capture_output=True, text=True,
                                 timeout=240)  # fmt: skip
    finally:
        operator.stop()
        if proc.poll() is None:
            proc.kill()
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "spoiled, card requeued" in resumed.stderr
    assert "refused" in resumed.stderr
    with transaction(factory) as s:
        counts = assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
        assert counts["good"] == 4 and counts["assigned"] == 0
        stock = {c.chip_serial: c for c in s.scalars(sa.select(StockChip))}
        blank = {c.chip_serial: c for c in s.scalars(sa.select(BlankChip))}
        refusals = _refusals(s)
        for serial in bound:
            # spoiled on resume (the card requeued on a fresh chip), in the stock too ...
            assert blank[serial].status == ChipStatus.SPOILED
            assert (blank[serial].reason or "").startswith("interrupted")
            assert stock[serial].status == StockChipStatus.SPOILED
            # ... and refused when the resumed station found it still in the reader
            assert any(r.chip_serial == serial and r.reason == StockRefusal.SPOILED
                       for r in refusals), refusals  # fmt: skip
            assert read_image(settings.cards_dir / f"{serial}.json") is not None
        # a refusal is only ever for a chip that is not available
        for r in refusals:
            assert r.reason in (StockRefusal.SPOILED, StockRefusal.USED)
            assert stock[r.chip_serial or ""].status != StockChipStatus.AVAILABLE
        # stock and production agree chip for chip
        for serial, chip in blank.items():
            want = {ChipStatus.GOOD: StockChipStatus.USED,
                    ChipStatus.SPOILED: StockChipStatus.SPOILED}[chip.status]  # fmt: skip
            assert stock[serial].status == want and stock[serial].card_id == chip.card_id
    engine.dispose()


# --- the delivery file and the binding, without readers ------------------------------------
@pytest.fixture
def stock_settings(tmp_path: Path, supplier_hsm: SupplierHsm) -> Settings:
    return load_settings(environ={
        "YKT_DATA_DIR": str(tmp_path), **supplier_hsm.hsm.environ(),
        "YKT_READERS__BACKEND": "pcsc", "YKT_STOCK__BACKEND": "delivered",
    })  # fmt: skip


def _count(session: Session) -> int:
    return int(session.scalar(sa.select(sa.func.count()).select_from(StockChip)) or 0)


def test_delivery_import_is_all_or_nothing_and_checked_in_the_hsm(
    tmp_path: Path, session: Session, stock_settings: Settings, supplier_hsm: SupplierHsm,
    actors: dict[str, object],
) -> None:  # fmt: skip
    keys = key_service_from_settings(stock_settings)
    region = stock_settings.issuer.region_code
    clerk = actors["clerk"]
    good = [os.urandom(8) for _ in range(3)]
    # JSON, serials only: the supplier's key set is still checked in the HSM (first chip)
    doc = {"supplier": SUPPLIER, "lot": "J-1", "algorithm": "3des",
           "serials": [s.hex() for s in good]}  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps(doc))
    result = import_delivery(session, keys, region, parse_delivery(tmp_path / "d.json", SUPPLIER),
                             clerk)  # type: ignore[arg-type]  # fmt: skip
    assert (result.chips, result.kcvs_checked, result.lots) == (3, 0, ["J-1"])
    before = _count(session)
    assert before == 3
    rows = session.scalars(sa.select(StockChip).where(StockChip.lot == "J-1")).all()
    assert {r.chip_serial for r in rows} == {s.hex().upper() for s in good}
    assert all(r.status == StockChipStatus.AVAILABLE and r.key_version == 1 for r in rows)

    # a bad CSV: every problem listed, nothing written
    fresh = [os.urandom(8) for _ in range(3)]
    bad = tmp_path / "bad.csv"
    _delivery_file(bad, supplier_hsm, fresh, "C-1")
    lines = bad.read_text().splitlines()
    wrong_kmc = lines[2].split(",")
    wrong_kmc[2] = "000000" if wrong_kmc[2] != "000000" else "111111"
    lines[2] = ",".join(wrong_kmc)
    lines += [lines[1], f"{good[0].hex()},C-1,,", "XYZ,C-1,,", f"{os.urandom(8).hex()},,,"]
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValidationError) as refused:
        import_delivery(session, keys, region, parse_delivery(bad, SUPPLIER), clerk)  # type: ignore[arg-type]
    text = str(refused.value)
    assert "line 5" in text and "also at line 2" in text  # duplicate in the file
    assert "line 7: chip serial 'XYZ'" in text
    assert "line 8: a lot of 1-64 characters" in text
    assert _count(session) == before
    # the file parses once the format problems are gone; then stock and HSM are checked
    lines = [*lines[:3], f"{good[0].hex()},C-1,,"]
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValidationError) as refused:
        import_delivery(session, keys, region, parse_delivery(bad, SUPPLIER), clerk)  # type: ignore[arg-type]
    text = str(refused.value)
    assert f"chip {good[0].hex().upper()} is already in stock (lot J-1 of {SUPPLIER})" in text
    lines = lines[:3]
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValidationError) as refused:
        import_delivery(session, keys, region, parse_delivery(bad, SUPPLIER), clerk)  # type: ignore[arg-type]
    assert f"line 3: chip {fresh[1].hex().upper()}: KMC KCV" in str(refused.value)
    assert "does not match the key set acme-chips v1 in the HSM" in str(refused.value)
    assert _count(session) == before

    # the file's supplier and the command line's must agree; a supplier without key set
    with pytest.raises(ValidationError, match="the file is from 'acme-chips', not 'other'"):
        parse_delivery(tmp_path / "d.json", "other")
    other = [os.urandom(8)]
    (tmp_path / "o.json").write_text(json.dumps({"lot": "O-1", "serials": [other[0].hex()]}))
    with pytest.raises(ConfigError, match="ykt hsm import kmc --supplier nobody"):
        import_delivery(session, keys, region, parse_delivery(tmp_path / "o.json", "nobody"),
                        clerk)  # type: ignore[arg-type]  # fmt: skip
    with pytest.raises(PermissionDenied):
        import_delivery(session, keys, region, parse_delivery(tmp_path / "o.json", SUPPLIER),
                        actors["auditor"])  # type: ignore[arg-type]  # fmt: skip
    assert _count(session) == before

    # correct check values of a third-generation (AES) lot pass
    aes = [os.urandom(8) for _ in range(2)]
    _delivery_file(tmp_path / "aes.csv", supplier_hsm, aes, "A-1", Algorithm.AES)
    result = import_delivery(session, keys, region, parse_delivery(
        tmp_path / "aes.csv", SUPPLIER, algorithm="aes"), clerk)  # type: ignore[arg-type]  # fmt: skip
    assert (result.chips, result.kcvs_checked) == (2, 4)
    imported = session.scalars(sa.select(AuditEvent).where(
        AuditEvent.action == "stock.delivery_imported")).all()  # fmt: skip
    assert sorted(e.entity_id for e in imported) == ["A-1", "J-1"]


def test_binding_refuses_what_the_stock_cannot_vouch_for(
    session: Session, stock_settings: Settings, supplier_hsm: SupplierHsm, tmp_path: Path,
    actors: dict[str, object], new_card: Callable[[str], Card],
) -> None:  # fmt: skip
    keys = key_service_from_settings(stock_settings)
    stock = make_stock(stock_settings, keys)
    assert isinstance(stock, DeliveredBlankStock)
    region = stock_settings.issuer.region_code
    des, aes = os.urandom(8), os.urandom(8)
    for serial, alg, lot in ((des, Algorithm.DES3, "B-1"), (aes, Algorithm.AES, "B-2")):
        path = _delivery_file(tmp_path / f"{lot}.csv", supplier_hsm, [serial], lot, alg)
        import_delivery(session, keys, region, parse_delivery(path, SUPPLIER, algorithm=alg),
                        actors["clerk"])  # type: ignore[arg-type]  # fmt: skip
    card = new_card("in_production")
    profile = card_profile(stock_settings, "3des")

    def refused(serial: bytes) -> StockRefusal:
        with pytest.raises(ChipRefused) as exc:
            stock.bind(session, serial.hex().upper(), card, profile)
        return exc.value.reason

    assert refused(os.urandom(8)) is StockRefusal.UNKNOWN
    assert refused(aes) is StockRefusal.WRONG_ALGORITHM
    stock.bind(session, des.hex().upper(), card, profile)
    chip = session.scalars(
        sa.select(StockChip).where(StockChip.chip_serial == des.hex().upper())
    ).one()
    assert chip.status == StockChipStatus.USED and chip.card_id == card.id
    assert refused(des) is StockRefusal.USED
    # the card's keys at the station: the chip's KMC as the supplier made it
    code = ids.make_card_identification_code(card.region_code, des)
    prepared = PreparedCard(card.id, des.hex().upper(), None, key_ref(card, code), (),  # type: ignore[arg-type]
                            profile.name)  # fmt: skip
    with stock.card_crypto(prepared) as crypto:
        assert crypto.kcv(KeySlot.KMC).hex().upper() == supplier_hsm.supplier.kcvs(des)[0]
    # a virtual-reader line cannot take delivered chips
    virtual = load_settings(
        environ={"YKT_DATA_DIR": str(tmp_path), "YKT_STOCK__BACKEND": "delivered"}
    )
    with pytest.raises(ConfigError, match='backend = "pcsc"'):
        make_stock(virtual, keys)


def test_supplier_labels_are_checked() -> None:
    assert ceremony.supplier_label("acme", "kmc", Algorithm.DES3, 2) == (
        "ykt:supplier:acme:kmc:3des:v2"
    )
    assert ceremony.supplier_label("acme", "klk", Algorithm.DES3) == "ykt:supplier:acme:klk:aes:v1"
    for bad in ("Acme", "", "a:b", "x" * 41):
        with pytest.raises(HsmError):
            ceremony.supplier_label(bad, "kmc", Algorithm.DES3)
    with pytest.raises(HsmError):
        ceremony.supplier_label("acme", "irk", Algorithm.DES3)


def test_a_real_reader_station_takes_each_fed_card_once(
    tmp_path: Path, readers: VirtualReaderStack
) -> None:
    """The card in hand stays in a real reader until taken out: the next load waits for
    another card (also the same card put back), and a card put in at once after a refusal is
    not mistaken for the one dealt with."""
    from issuance.batches.stations import EncodingStation, NoCardFed, PresenceFeeder
    from readers.pcsc import PcscReader

    name = readers.reader_name(0)
    feeder = PresenceFeeder(name, readers.csock, timeout=1.5)
    station = EncodingStation("station-1", PcscReader(name, csock=readers.csock), feeder)
    cards = []
    for _ in range(2):
        serial = os.urandom(8)
        cards.append((serial.hex().upper(), tmp_path / f"{serial.hex()}.json"))
        blank_card(serial, os.urandom(16), klk=os.urandom(16), path=cards[-1][1])
    try:
        with pytest.raises(NoCardFed, match="no card fed"):
            station.load(None)
        readers.insert(0, cards[0][1])
        station.load(None)
        assert station.fed_serial() == cards[0][0]
        station.eject()
        with pytest.raises(NoCardFed, match="still in"):  # the card dealt with is not new
            station.load(None)
        assert station.wait_removed(0.2) is False
        # refused and replaced at once, before the station got to eject it
        readers.remove(0)
        readers.insert(0, cards[1][1])
        assert station.wait_removed(1.0) is True
        station.eject()
        station.load(None)
        assert station.fed_serial() == cards[1][0]
        station.eject()
        # the same card taken out and put straight back counts as fed again
        readers.remove(0)
        readers.insert(0, cards[1][1])
        station.load(None)
        assert station.fed_serial() == cards[1][0]
    finally:
        station.close()
