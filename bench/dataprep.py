"""Data preparation through the product's own path, from a populated database, against the raw
HSM derive limit measured in the same run.

For each database (PostgreSQL, a throwaway server with PostgreSQL's *durable* defaults:
fsync and synchronous_commit on; and SQLite, a file in WAL mode), each output and 1 and 2
worker processes, one batch of ``CARDS`` selected cards, populated beforehand by bulk inserts
(COPY on PostgreSQL) in the state ``ykt batch create`` leaves it, each card with its bank
account as the bank's response file leaves it (the demo bank of :mod:`yikatong.demo`, its
issuer master keys loaded by the key ceremony: the profile's financial application needs them):

* **in house**: ``BatchRunner.prepare_all`` with ``prepare_workers`` = 1 or 2 (what
  ``ykt batch prepare BATCH --workers N`` runs): chunks claimed from the database, every key
  slot of the card profile and the chip's KLK derived in the HSM per card, the WRITE KEY and
  SET PIN payloads made there, records encoded, signed perso file segments written and fsynced,
  chips, stage transitions and audit events written in bulk, committed;
* **bureau**: ``yikatong.cli.bureau.export_batch`` with ``workers`` = 1 or 2 (what
  ``ykt bureau export BATCH --workers N`` runs): the same data preparation, every key and the
  KLK wrapped under the file KEK with its KCV (computed in the HSM), streamed into one signed
  bureau file, then every card moved ``at_bureau``.

A run's "N proc" are its N workers (``--workers N``); where the machine has 2 cores a worker
(``issuance.batches.bulkprep.database_thread``) each worker is two processes, its HSM pass in
its HSM process and the rest in the worker's own (the line says which): the CPU split's "HSM
pass" is then the HSM process's CPU in the pass, "pipe" the cards' inputs and outputs pickled
and unpickled in both, and the line ends with how long the HSM process waited for the rest.

Each run is a forked process (the PKCS#11 module is loaded after the fork, as in the product);
its wall time covers everything from the call to the return (worker start-up, HSM log-in, the
last commit; for the bureau also the final signature and ``mark_exported``).

The limit, same run, same machine moment: the raw ``C_DeriveKey + C_DestroyObject`` rate with
the product's card-key template and call path (:func:`bench.hsm_derive._raw`: direct entry
points of :mod:`hsm.p11fast`, a cached master handle), measured in as many parallel processes
as the run has workers, just before and just after the run (the mean is used, both printed),
after a 4-second warm-up of the same calls (this VM's cores are slower for seconds after idling);
keys per card = the profile's key slots + the KLK (12 for ``ssc2-3des``), also *counted* (the
preparer counts every key object it derives); limit = raw / keys. Ratio = cards/s / limit
(target >= 0.70). Not counted as data preparation: blank chip images of the virtual stock
(the chip manufacturer's work: made when a station loads the chip), and the station's own HSM
work (KMC unwrapped, secure-channel MACs).

Sizes: ``YKT_BENCH_DATAPREP_CARDS`` cards per run (default 6000); ``YKT_BENCH_1M=1`` adds a real
1,000,000-card batch (PostgreSQL, in house, 2 workers or ``YKT_BENCH_1M_WORKERS``; ~20 minutes
with its population), whose
figures are printed as MEASURED; otherwise every 1,000,000-card figure is EXTRAPOLATED and says
so. ``YKT_BENCH_DATAPREP_DB=sqlite`` or ``postgres`` runs one database only. Run alone:
``python -m bench.dataprep``. The machine is shared: say what else ran (``uptime``).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import resource
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from yikatong.wiring import hsm_config

MILLION = 1_000_000
CARDS = int(os.environ.get("YKT_BENCH_DATAPREP_CARDS", "6000"))
BIG = os.environ.get("YKT_BENCH_1M", "") not in ("", "0")
#: worker processes of the runs (``YKT_BENCH_DATAPREP_WORKERS``, e.g. "1,2,3") and of the
#: 1,000,000-card run (``YKT_BENCH_1M_WORKERS``)
WORKERS = [int(w) for w in os.environ.get("YKT_BENCH_DATAPREP_WORKERS", "1,2").split(",") if w]
BIG_WORKERS = int(os.environ.get("YKT_BENCH_1M_WORKERS", "2"))
DATABASES = [d for d in os.environ.get("YKT_BENCH_DATAPREP_DB", "postgres,sqlite").split(",") if d]
OUTPUTS = ("in_house", "bureau")
TRANSPORT = "bench-bureau"
RAW_SECONDS = 1.5
WARM_SECONDS = 4.0
NAMES = ("王秀英", "李建国", "张伟", "刘洋", "陈静", "欧阳明华", "赵丽", "黄晓明")


# --- population ---------------------------------------------------------------------------------


def _citizen_ids(start: int, n: int) -> Iterator[str]:
    from cardspec.ids import citizen_id_check_char

    base = date(1950, 1, 1).toordinal()
    for i in range(start, start + n):
        birth = date.fromordinal(base + i % 20000)
        first17 = f"330106{birth:%Y%m%d}{(i // 20000) % 1000:03d}"
        yield first17 + citizen_id_check_char(first17)


def _pan(i: int) -> str:
    """The ``i``-th card's PAN: 19 digits in the demo bank's BIN, its Luhn digit last."""
    from cardspec.ids import luhn_digit
    from devstack.bank import DEMO_BIN

    body = f"{DEMO_BIN}{i:012d}"
    return body + luhn_digit(body)


def populate(settings: Any, batches: list[tuple[str, int]]) -> dict[str, int]:
    """Batches of selected cards, as ``ykt batch create`` leaves them (cards in production,
    items selected, the card numbers from the gapless series), by bulk inserts with explicit
    ids (PostgreSQL: COPY). Returns batch name -> id."""
    import sqlalchemy as sa

    from issuance import migrations
    from issuance.db import make_engine, make_sessionmaker, transaction
    from issuance.models import (
        ApplicationChannel,
        ApplicationStatus,
        BatchStage,
        CardAlgorithm,
        CardKind,
        CardStatus,
        ChipAppStatus,
    )
    from issuance.services.common import FORMAL_CHIP_APPS, allocate_card_numbers
    from yikatong.demo import BRANCH_CODE

    engine = make_engine(settings)
    migrations.upgrade(engine)
    factory = make_sessionmaker(engine)
    pg = engine.dialect.name == "postgresql"
    now = datetime(2026, 1, 5, 9, 0)
    region = settings.issuer.region_code
    ids: dict[str, int] = {}
    next_id = 1
    chunk = 50_000
    with transaction(factory) as s:  # the demo bank (yikatong.demo: its settings and keys)
        bank_id = s.execute(sa.text(
            "INSERT INTO agencies (code, name, kind, region_code, created_at, active) "
            "VALUES (:code, 'bank', 'bank', '330106', :now, true) RETURNING id"),
            {"code": BRANCH_CODE, "now": now}).scalar_one()  # fmt: skip
    for batch_no, (name, count) in enumerate(batches, start=1):
        ids[name] = batch_no
        with transaction(factory) as s:
            s.execute(sa.text(
                "INSERT INTO batches (id, name, status, created_at, region_code, card_count) "
                "VALUES (:id, :name, 'open', :now, '33', :n)"),
                {"id": batch_no, "name": name, "now": now, "n": count})  # fmt: skip
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            first = next_id
            next_id += n
            with transaction(factory) as s:
                numbers = allocate_card_numbers(s, n, settings.issuer.card_number_prefix)
                rows: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {
                    "persons": (["id", "citizen_id", "name", "sex", "birth_date", "ethnicity",
                                 "region_code", "address", "created_at"], []),
                    "applications": (["id", "person_id", "channel", "status", "received_at",
                                      "decided_at", "photo_exempt", "fee_fen", "version"], []),
                    "cards": (["id", "card_number", "kind", "status", "status_changed_at",
                               "person_id", "application_id", "region_code", "key_version",
                               "algorithm", "batch_id", "fee_fen", "created_at", "version"], []),
                    "chip_applications": (["card_id", "kind", "status", "status_changed_at",
                                           "pin_set", "version"], []),
                    "batch_items": (["id", "batch_id", "card_id", "application_id", "stage",
                                     "attempts", "created_at", "stage_changed_at"], []),
                    # the financial application's data, as the bank's response file leaves
                    # them (issuance.bank.load_response): every card of the profile has one
                    "bank_accounts": (["id", "card_id", "bank_agency_id", "request_id",
                                       "requested_at", "pan", "psn", "expiry", "service_code",
                                       "account_ref", "key_version", "opened_at"], []),
                }  # fmt: skip
                for k, (cid, number) in enumerate(zip(_citizen_ids(first, n), numbers,
                                                      strict=True)):  # fmt: skip
                    i = first + k
                    birth = date(int(cid[6:10]), int(cid[10:12]), int(cid[12:14]))
                    rows["persons"][1].append(
                        (
                            i,
                            cid,
                            NAMES[i % len(NAMES)],
                            "12"[i % 2],
                            birth,
                            "01",
                            "330106",
                            "杭州市西湖区示例路1号",
                            now,
                        )
                    )
                    channel = (
                        ApplicationChannel.EMPLOYER if i % 3 == 0 else ApplicationChannel.COUNTER
                    )
                    rows["applications"][1].append(
                        (
                            i,
                            i,
                            channel.value,
                            ApplicationStatus.APPROVED.value,
                            now,
                            now,
                            True,
                            0,
                            1,
                        )
                    )
                    rows["cards"][1].append(
                        (
                            i,
                            number,
                            CardKind.FORMAL.value,
                            CardStatus.IN_PRODUCTION.value,
                            now,
                            i,
                            i,
                            region,
                            1,
                            CardAlgorithm.DES3.value,
                            batch_no,
                            0,
                            now,
                            1,
                        )
                    )
                    for kind in FORMAL_CHIP_APPS:
                        rows["chip_applications"][1].append(
                            (i, kind.value, ChipAppStatus.SEALED.value, now, False, 1)
                        )
                    rows["batch_items"][1].append((i, batch_no, i, i, BatchStage.SELECTED.value,
                                                   0, now, now))  # fmt: skip
                    rows["bank_accounts"][1].append((i, i, bank_id, "YKTB-bench", now, _pan(i),
                                                     "00", date(2036, 12, 31), "220",
                                                     f"AC{i:010d}", 1, now))  # fmt: skip
                conn = s.connection()
                for table, (cols, values) in rows.items():
                    if pg:
                        raw: Any = conn.connection.driver_connection
                        sql = f"COPY {table} ({', '.join(cols)}) FROM STDIN"
                        with raw.cursor() as cur, cur.copy(sql) as copy:
                            for v in values:
                                copy.write_row(v)
                    else:
                        conn.exec_driver_sql(
                            f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                            f"({', '.join('?' for _ in cols)})",
                            values,
                        )
    with transaction(factory) as s:
        if pg:
            for table in ("persons", "applications", "cards", "chip_applications", "batch_items",
                          "bank_accounts", "batches"):  # fmt: skip
                s.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))  # fmt: skip
    with engine.connect() as conn:
        if pg:  # as a database in service is: vacuumed (no autovacuum of the bulk load
            # running beside the measured runs) and analysed
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM (ANALYZE)")
        else:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return ids


# --- one measured run ---------------------------------------------------------------------------


@dataclass
class Run:
    database: str
    output: str
    workers: int
    cards: int
    seconds: float
    raw_before: float
    raw_after: float
    keys_per_card: int
    keys_counted: float
    peak_rss_mib: float
    stats: dict[str, Any]
    file_bytes: int
    hsm_work_before: float = 0.0
    hsm_work_after: float = 0.0
    #: CPU seconds per card: the ceiling's HSM calls (mean of before and after), the product's
    #: processes (every thread), the database server's processes
    hsm_cpu: float = 0.0
    product_cpu: float = 0.0
    server_cpu: float = 0.0

    @property
    def hsm_work(self) -> float:
        """The HSM-work ceiling, cards/s (mean of before and after the run)."""
        return (self.hsm_work_before + self.hsm_work_after) / 2

    @property
    def ratio_to_hsm_work(self) -> float:
        return self.rate / self.hsm_work if self.hsm_work else 0.0

    @property
    def raw(self) -> float:
        return (self.raw_before + self.raw_after) / 2

    @property
    def rate(self) -> float:
        return self.cards / self.seconds

    @property
    def limit(self) -> float:
        return self.raw / self.keys_per_card

    @property
    def ratio(self) -> float:
        return self.rate / self.limit


def _raw_one(conf: Any, seconds: float, out: Any) -> None:
    from bench.hsm_derive import _raw

    out.put(_raw(conf, seconds))


def _raw_others(conf: Any, out: Any) -> None:
    """The other HSM calls every card needs, per second, on the same session: C_WrapKey
    (CKM_AES_KEY_WRAP_PAD) of a card key under a session AES key, and C_EncryptInit +
    C_Encrypt (DES3 ECB, one block) under a card key."""
    from pkcs11 import Attribute, KeyType

    from cardspec import keyscheme
    from cardspec.keyscheme import Algorithm, KeySlot
    from hsm import ceremony, p11fast
    from hsm import pkcs11 as p11

    token = p11.open_token(conf)
    fast = p11fast.fast_ops(str(conf.module))
    tmpl = p11fast.key_template(Algorithm.DES3, Attribute.ENCRYPT, extractable=True)
    with token.use() as session:
        sh = session.handle
        master = p11.find_one(session, ceremony.master_label(KeySlot.IRK, Algorithm.DES3, 1))
        data = keyscheme.diversification_data(bytes(8), Algorithm.DES3)
        key = fast.derive(sh, master.handle, Algorithm.DES3, data, tmpl)
        kek = session.generate_key(KeyType.AES, 128, template={
            Attribute.TOKEN: False, Attribute.PRIVATE: False, Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False, **p11.capabilities(Attribute.WRAP)})  # fmt: skip
        rates = []
        for call in (lambda: fast.wrap_kwp(sh, kek.handle, key),
                     lambda: fast.encrypt_ecb(sh, key, Algorithm.DES3, bytes(8))):  # fmt: skip
            n, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < RAW_SECONDS / 2:
                call()
                n += 1
            rates.append(n / elapsed)
        fast.destroy(sh, key)
        kek.destroy()
    out.put(tuple(rates))


def hsm_calls(profile: Any) -> dict[str, tuple[int, int]]:
    """The HSM calls of one card beyond its derivations (outputs, not overhead), (wraps,
    encryptions) by output, from the card profile (``hsm.prep.PrepOps``): in house, every key
    slot wrapped once (the WRITE KEY payloads under the KLK, KMC under the file KEK), one MAC
    per PIN (its natural PIN) and one ECB call for the PIN payloads; bureau, every slot and
    the KLK wrapped under the file KEK, each with its KCV (an encryption), the same MACs and
    PIN payloads (ssc2-3des: in house 11 wraps + 3 encryptions, bureau 12 + 15)."""
    slots = sum(1 for _ in profile.key_specs())
    pins = sum(1 for _ in profile.pin_specs())
    return {"in_house": (slots, pins + 1), "bureau": (slots + 1, slots + 1 + pins + 1)}


class _Trace:
    """A :class:`hsm.p11fast.FastOps` that passes every call on and, while ``recording``,
    writes it down as a line of straight-line Python: the handles the card made become
    variables, everything else (masters, the file KEK, data, templates, mechanisms) constants.
    :meth:`compile` makes of the lines one function: the card's own HSM calls, in the product's
    order, with the product's masters, templates, mechanisms, data sizes and key lifetimes, and
    no Python around them but the calls."""

    def __init__(self, fast: Any) -> None:
        self.fast = fast
        self.recording = False
        self.lines: list[str] = []
        self.consts: list[Any] = []
        self.made: dict[int, str] = {}
        self.session = 0
        self.counts: dict[str, int] = {}

    def _const(self, value: Any) -> str:
        self.consts.append(value)
        return f"c[{len(self.consts) - 1}]"

    def _handle(self, handle: int) -> str:
        return self.made.get(handle) or self._const(handle)

    def _note(self, session: int, name: str, line: str) -> None:
        self.session = session
        self.counts[name] = self.counts.get(name, 0) + 1
        self.lines.append(line)

    def derive(self, session: int, base: int, alg: Any, data: bytes, tmpl: Any) -> int:
        handle = int(self.fast.derive(session, base, alg, data, tmpl))
        if self.recording:
            var = f"h{len(self.lines)}"
            args = f"{self._const(alg)}, {self._const(data)}, {self._const(tmpl)}"
            self._note(session, "derive", f"{var} = derive(sh, {self._handle(base)}, {args})")
            self.made[handle] = var
        return handle

    def destroy(self, session: int, handle: int) -> None:
        if self.recording:
            self._note(session, "destroy", f"destroy(sh, {self._handle(handle)})")
            self.made.pop(handle, None)
        self.fast.destroy(session, handle)

    def wrap_kwp(self, session: int, wrapping: int, key: int) -> bytes:
        if self.recording:
            self._note(session, "wrap", f"wrap_kwp(sh, {self._handle(wrapping)}, "
                       f"{self._handle(key)})")  # fmt: skip
        return self.fast.wrap_kwp(session, wrapping, key)

    def encrypt_ecb(self, session: int, key: int, alg: Any, data: bytes) -> bytes:
        if self.recording:
            self._note(session, "encrypt", f"encrypt_ecb(sh, {self._handle(key)}, "
                       f"{self._const(alg)}, {self._const(data)})")  # fmt: skip
        return self.fast.encrypt_ecb(session, key, alg, data)

    def encrypt_cbc(self, session: int, key: int, alg: Any, data: bytes, iv: bytes) -> bytes:
        if self.recording:
            self._note(session, "encrypt", f"encrypt_cbc(sh, {self._handle(key)}, "
                       f"{self._const(alg)}, {self._const(data)}, {self._const(iv)})")  # fmt: skip
        return self.fast.encrypt_cbc(session, key, alg, data, iv)

    def compile(self) -> Any:
        """The recorded card as a function ``card()`` (its constants and the real calls bound)."""
        if self.made:
            raise RuntimeError(f"the recorded card left {len(self.made)} key objects behind")
        fast = self.fast
        body = "".join(f"    {line}\n" for line in self.lines)
        source = (f"def card(sh={self.session}, c=c, derive=derive, destroy=destroy, "
                  f"wrap_kwp=wrap_kwp, encrypt_ecb=encrypt_ecb, encrypt_cbc=encrypt_cbc):\n"
                  f"{body}")  # fmt: skip
        scope: dict[str, Any] = {"c": self.consts, "derive": fast.derive,
                                 "destroy": fast.destroy, "wrap_kwp": fast.wrap_kwp,
                                 "encrypt_ecb": fast.encrypt_ecb,
                                 "encrypt_cbc": fast.encrypt_cbc}  # fmt: skip
        exec(compile(source, "<the card's HSM calls>", "exec"), scope)
        return scope["card"]


def _hsm_work_one(settings: Any, output: str, seconds: float, out: Any) -> None:
    """Cards/s of one process doing nothing but a card's own HSM calls back to back: the calls
    ``hsm.prep.PrepOps`` makes for one card of the profile (``in_house`` or ``bureau``,
    recorded by :class:`_Trace` as the product makes them - the same masters, templates,
    mechanisms, data sizes, order and key lifetimes, every derived key destroyed), replayed
    as straight-line code; no database, no records, no file, no Python around the calls.
    Also: the CPU seconds per card and the calls per card counted."""
    from datetime import date

    from cardspec.keyscheme import Algorithm
    from hsm import prep as hsm_prep
    from issuance.bank import CardBankData
    from issuance.batches.bulkprep import ProfilePins
    from issuance.batches.dataprep import card_profile, key_ref_of
    from yikatong.demo import DEMO_BANK_DOMAIN
    from yikatong.wiring import key_service_from_settings

    keys = key_service_from_settings(settings)
    service = keys.hsm_keys
    assert service is not None, "the bench runs on SoftHSM2"
    profile = card_profile(settings, "3des")
    slots = tuple(spec.slot for _, spec in profile.key_specs())
    bank = CardBankData(_pan(1), "00", date(2036, 12, 31), "220", DEMO_BANK_DOMAIN, 1)
    ref = key_ref_of("330106D156000005" + "00000000000000A1",
                     keys.current_key_version(Algorithm.DES3), Algorithm.DES3, bank)  # fmt: skip
    trace = _Trace(service.fast)
    with hsm_prep.PrepOps(service, trace, TRANSPORT) as ops, ops.chunk():  # type: ignore[arg-type]
        trace.recording = True
        (ops.in_house if output == "in_house" else ops.bureau)(ref, slots, ProfilePins(profile))
        trace.recording = False
        card = trace.compile()
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        while (elapsed := time.perf_counter() - start) < seconds:
            card()
            n += 1
        cpu = time.process_time() - cpu
    out.put((n / elapsed, cpu / n, trace.counts))


def hsm_work_rate(settings: Any, output: str, procs: int,
                  seconds: float = RAW_SECONDS) -> tuple[float, float]:  # fmt: skip
    """Cards/s of ``procs`` processes running :func:`_hsm_work_one` together: the HSM-work
    ceiling of data preparation (issue 20); and the CPU seconds a card's HSM calls took (the
    mean over the processes, from their CPU time in the loop)."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    ps = [ctx.Process(target=_hsm_work_one, args=(settings, output, seconds, out))
          for _ in range(procs)]  # fmt: skip
    for p in ps:
        p.start()
    got = results_of(out, ps)
    for p in ps:
        p.join()
    return float(sum(r for r, _, _ in got)), sum(c for _, c, _ in got) / len(got)


def other_rates(settings: Any) -> tuple[float, float]:

    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=_raw_others, args=(hsm_config(settings), out))
    p.start()
    (rates,) = results_of(out, [p])
    p.join()
    return rates[0], rates[1]


def raw_rate(settings: Any, procs: int, seconds: float = RAW_SECONDS) -> float:
    """Raw derive+destroy/s of ``procs`` processes running together (the product's template
    and call path)."""

    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    conf = hsm_config(settings)
    ps = [ctx.Process(target=_raw_one, args=(conf, seconds, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    rates = results_of(out, ps)
    for p in ps:
        p.join()
    return float(sum(rates))


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the workers of a run)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def server_cpu(data_dir: Path | None) -> float:
    """CPU seconds of a throwaway PostgreSQL server so far: the postmaster with its finished
    children and its live ones (backends, WAL writer, checkpointer); 0 for none (SQLite)."""
    if data_dir is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")

    def fields(pid: int | str) -> list[str]:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    main = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = sum(int(x) for x in fields(main)[11:15])  # utime stime cutime cstime
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                f = fields(pid)
            except OSError:
                continue
            if int(f[1]) == main:
                total += int(f[11]) + int(f[12])
    return total / tick


def _product(settings: Any, output: str, batch_id: int, workers: int, path: str, out: Any) -> None:
    """In a forked process: the product's data preparation of the batch, timed."""
    from issuance.audit import SYSTEM_ACTOR
    from issuance.batches.pipeline import RunOptions
    from yikatong.wiring import runner_for

    if output == "in_house":
        with runner_for(settings, batch_id, options=RunOptions(prepare_workers=workers)) as r:
            start, cpu0 = time.perf_counter(), _cpu()
            n = r.prepare_all()
            seconds = time.perf_counter() - start
            stats = r.prep_stats
    else:  # what ykt bureau export runs (yikatong.cli.bureau.export_batch)
        from issuance.batches import bulkprep
        from issuance.db import make_engine, make_sessionmaker
        from yikatong.wiring import batch_adapters, key_service_from_settings

        keys = key_service_from_settings(settings)
        engine = make_engine(settings)
        req = bulkprep.PrepRequest(batch_id, SYSTEM_ACTOR, bulkprep.BUREAU, workers=workers,
                                   transport=TRANSPORT)  # fmt: skip
        start, cpu0 = time.perf_counter(), _cpu()
        factory = make_sessionmaker(engine)
        _info, stats, n = bulkprep.export_to_bureau(settings, factory, keys, req, Path(path),
                                                    f"batch {batch_id}",
                                                    adapters=batch_adapters(settings))  # fmt: skip
        seconds = time.perf_counter() - start
        engine.dispose()
    cpu = _cpu() - cpu0
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out.put({"cards": n, "seconds": seconds, "rss_kib": max(me, kids), "cpu": cpu,
             "stats": asdict(stats) if stats is not None else {}})  # fmt: skip


def measure(settings: Any, database: str, output: str, batch_id: int, workers: int,
            tmp: Path, keys_per_card: int, server: Path | None = None) -> Run:  # fmt: skip
    import sqlalchemy as sa

    from issuance.db import make_engine

    # this VM's cores run slower for a few seconds after being idle (measured: the raw rate
    # climbs from ~14,000 to ~23,000/s over 4 s of load): warm them up first, so that the
    # limit and the run that follows it are measured on the same machine state
    raw_rate(settings, workers, WARM_SECONDS)
    before = raw_rate(settings, workers)
    work_before, cpu_before = hsm_work_rate(settings, output, workers)
    server0 = server_cpu(server)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    path = tmp / f"{database}-{output}-{workers}.bureau.jsonl"
    p = ctx.Process(target=_product, args=(settings, output, batch_id, workers, str(path), out))
    p.start()
    (result,) = results_of(out, [p])
    p.join()
    server1 = server_cpu(server)
    if p.exitcode:
        raise RuntimeError(f"data preparation run failed (exit {p.exitcode})")
    after = raw_rate(settings, workers)
    work_after, cpu_after = hsm_work_rate(settings, output, workers)
    engine = make_engine(settings)
    with engine.connect() as conn:
        n_chips = conn.execute(sa.text("SELECT count(*) FROM blank_chips WHERE batch_id = :b"),
                               {"b": batch_id}).scalar_one()  # fmt: skip
    engine.dispose()
    # what was counted: every key object the preparer derived, per card
    counted = result["stats"]["keys_derived"] / result["cards"]
    if output == "in_house":
        size = sum(
            f.stat().st_size for f in (settings.data_dir / "perso" / str(batch_id)).iterdir()
        )
    else:
        size = path.stat().st_size
        path.unlink()
    assert n_chips == result["cards"], (n_chips, result["cards"])
    return Run(database, output, workers, result["cards"], result["seconds"], before, after,
               keys_per_card, counted, result["rss_kib"] / 1024, result["stats"], size,
               work_before, work_after, (cpu_before + cpu_after) / 2,
               result["cpu"] / result["cards"], (server1 - server0) / result["cards"])  # fmt: skip


# --- main ---------------------------------------------------------------------------------------


def _setup(settings: Any) -> None:
    from hsm import ceremony, softhsm
    from hsm.pkcs11 import open_token
    from issuance.batches.stock import ensure_manufacturer_key
    from yikatong.demo import ensure_bank_keys, ensure_hsm

    softhsm.ensure_token(hsm_config(settings))
    ensure_hsm(settings)
    ensure_bank_keys(settings)
    ensure_manufacturer_key(settings)
    ceremony.generate_transport_key(open_token(hsm_config(settings)), TRANSPORT, 2)


def results_of(out: Any, procs: list[Any]) -> list[Any]:
    """One result from each of ``procs`` (forked processes that each put one on the queue
    ``out``), in the order they came; raises if one of them died without putting its result,
    instead of waiting for it forever."""
    got: list[Any] = []
    while len(got) < len(procs):
        try:
            got.append(out.get(timeout=1.0))
        except queue.Empty:
            codes = [p.exitcode for p in procs]
            if any(c not in (None, 0) for c in codes) or all(c is not None for c in codes):
                raise RuntimeError(
                    f"a measuring process ended without its result (exit codes {codes})"
                ) from None
    return got


def _in_child(fn: Any, *args: Any) -> None:
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=fn, args=args)
    p.start()
    p.join()
    if p.exitcode:
        raise RuntimeError(f"{fn.__name__} failed")


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _shape(workers: int) -> str:
    """How the run's workers are made (``issuance.batches.bulkprep.database_thread``: where the
    machine has 2 cores a worker, each worker is 2 processes, its HSM pass in one)."""
    from issuance.batches.bulkprep import database_thread

    many = "s" if workers > 1 else ""
    if database_thread(workers):
        return f"{workers} worker{many}, each an HSM process + the rest"
    return f"{workers} worker{many}, each one process"


def _line(r: Run) -> str:
    return (
        f"  {r.output:8s} {r.workers} proc ({_shape(r.workers)}): {r.cards:>9,} cards in "
        f"{r.seconds:7.1f} s = "
        f"{r.rate:7.0f} cards/s | raw {r.raw_before:7.0f}/{r.raw_after:7.0f} derive+destroy/s "
        f"(before/after, {r.workers} proc) / {r.keys_per_card} keys = limit {r.limit:6.0f} "
        f"cards/s | ratio {r.ratio:.3f} {_verdict(r.ratio >= 0.7)} | peak RSS "
        f"{r.peak_rss_mib:6.1f} MiB\n"
        f"           HSM-work ceiling (the card's HSM calls back to back, no database) "
        f"{r.hsm_work_before:6.0f}/{r.hsm_work_after:6.0f} cards/s (before/after) | ratio "
        f"{r.ratio_to_hsm_work:.3f} {_verdict(r.ratio_to_hsm_work >= 0.85)} (limit >= 0.85)\n"
        f"           {_cpu_line(r)}"
    )


def _cpu_split(r: Run) -> dict[str, float]:
    """Where a card's CPU goes, microseconds (the worker's threads, ``PrepStats``)."""
    st, us = r.stats, 1e6 / r.cards
    parts = {
        "records": st["records_cpu"] * us,
        "HSM pass": st["hsm_cpu"] * us,
        "lines+segment": st["lines_cpu"] * us,
        "database client": st["db_cpu"] * us,
    }
    if st.get("pipe_cpu"):  # with an HSM process
        parts["pipe"] = st["pipe_cpu"] * us
    parts["rest"] = r.product_cpu * 1e6 - sum(parts.values())
    return parts


def _cpu_line(r: Run) -> str:
    """CPU per card, which the machine's other work does not stretch as it stretches wall
    time: the ceiling's HSM calls beside the product's, split (the HSM pass holds the same
    calls plus the Python around them), and the database server's."""
    parts = _cpu_split(r)
    product = r.product_cpu * 1e6
    server = r.server_cpu * 1e6
    total = product + server
    return (
        f"CPU per card: the ceiling's HSM calls {r.hsm_cpu * 1e6:4.0f} us | the product "
        f"{product:4.0f} us = " + " + ".join(f"{k} {v:.0f}" for k, v in parts.items())
        + f" (start-up, leases, thread hand-offs); database server {server:.0f} us | CPU "
        f"ratio {r.hsm_cpu * 1e6 / product:.3f} (product), "
        f"{r.hsm_cpu * 1e6 / total if total else 0:.3f} (with the server)"
        + (f" | the HSM process waited {r.stats['hsm_wait_s'] * 1e3:.0f} ms for the rest"
           if r.stats.get("hsm_wait_s") else "")
    )  # fmt: skip


def main() -> dict[str, Any]:
    from devstack.dbserver import REPORTED_SETTINGS, TemporaryPostgres
    from issuance.batches.dataprep import card_profile
    from yikatong.demo import with_demo_bank
    from yikatong.settings import load_settings

    print(f"load before the run: {os.getloadavg()[0]:.2f} (1-min load average; 2 cores shared "
          "with other work: figures are noisy)")  # fmt: skip
    runs: list[Run] = []
    ceilings: dict[tuple[str, str], float] = {}
    big: Run | None = None
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ykt-bench-dataprep-") as tmp:
        root = Path(tmp)
        for database in DATABASES:
            data = root / database
            pg: TemporaryPostgres | None = None
            env = {"YKT_DATA_DIR": str(data)}
            if database == "postgres":
                pg = TemporaryPostgres(root / "pg", durable=True).__enter__()
                env["YKT_DATABASE__URL"] = pg.url
            try:
                settings = with_demo_bank(load_settings(environ=env))
                if pg is not None:
                    shown = pg.settings_in_force()
                    print("PostgreSQL (throwaway, durable): "
                          + ", ".join(f"{k}={shown.get(k)}" for k in REPORTED_SETTINGS
                                      if k in shown))  # fmt: skip
                else:
                    print("SQLite (file, WAL, synchronous=NORMAL): one writer; the workers' "
                          "HSM work runs in parallel, their two short transactions per chunk "
                          "take turns")  # fmt: skip
                _in_child(_setup, settings)
                profile = card_profile(settings, "3des")
                keys = sum(1 for _ in profile.key_specs()) + 1
                plan = [(f"{o}-{w}", CARDS) for o in OUTPUTS for w in WORKERS]
                if BIG and database == "postgres":
                    plan.append(("million", MILLION))
                t0 = time.perf_counter()
                batch_ids = populate(settings, plan)
                populated = time.perf_counter() - t0
                print(f"{database}: populated {sum(n for _, n in plan):,} cards in "
                      f"{populated:.0f} s (bulk inserts{', COPY' if pg else ''})")  # fmt: skip
                derive = raw_rate(settings, 1)
                wrap, ecb = other_rates(settings)
                # the HSM calls each card needs beyond its derivations
                calls = hsm_calls(profile)
                for output, (wraps, encs) in calls.items():
                    t_derive = keys / derive
                    ceiling = t_derive / (t_derive + wraps / wrap + encs / ecb)
                    ceilings[(database, output)] = ceiling
                print(f"  HSM calls besides derivation, same run: C_WrapKey {wrap:.0f}/s, "
                      f"C_EncryptInit+C_Encrypt {ecb:.0f}/s (derive+destroy {derive:.0f}/s): "
                      f"even with nothing but HSM calls the ratio could reach at most "
                      f"{ceilings[(database, 'in_house')]:.2f} in house, "
                      f"{ceilings[(database, 'bureau')]:.2f} bureau")  # fmt: skip
                for output in OUTPUTS:
                    for workers in WORKERS:
                        r = measure(settings, database, output, batch_ids[f"{output}-{workers}"],
                                    workers, root, keys,
                                    pg.data_dir if pg else None)  # fmt: skip
                        runs.append(r)
                        print(_line(r), flush=True)
                if BIG and database == "postgres":
                    big = measure(settings, database, "in_house", batch_ids["million"],
                                  BIG_WORKERS, root, keys,
                                  pg.data_dir if pg else None)  # fmt: skip
                    runs.append(big)
                    print("  REAL 1,000,000-card batch:")
                    print(_line(big), flush=True)
            finally:
                if pg is not None:
                    pg.__exit__(None, None, None)
    # summary
    for r in runs:
        key = f"{r.database}_{r.output}_{r.workers}p" + ("_1m" if r.cards >= MILLION else "")
        figures[f"{key}_cards_per_s"] = round(r.rate, 1)
        figures[f"{key}_limit"] = round(r.limit, 1)
        figures[f"{key}_ratio"] = round(r.ratio, 3)
        figures[f"{key}_peak_rss_mib"] = round(r.peak_rss_mib, 1)
        figures[f"{key}_hsm_work_limit"] = round(r.hsm_work, 1)
        figures[f"{key}_ratio_to_hsm_work"] = round(r.ratio_to_hsm_work, 3)
        figures[f"{key}_cpu_us_per_card"] = round(r.product_cpu * 1e6)
        figures[f"{key}_server_cpu_us_per_card"] = round(r.server_cpu * 1e6)
        figures[f"{key}_hsm_work_cpu_us_per_card"] = round(r.hsm_cpu * 1e6)
    first = runs[0]
    print(f"keys per card: {first.keys_per_card} (the profile's {first.keys_per_card - 1} key "
          f"slots, KMC included, + the chip's KLK); counted by the preparer: "
          f"{first.keys_counted:.2f} per card")  # fmt: skip
    small = [r for r in runs if r.cards < MILLION]
    best = max(small, key=lambda r: r.rate)
    minutes = MILLION / best.rate / 60
    if big is not None:
        print(f"1,000,000 cards: {big.seconds / 60:.1f} min MEASURED (postgres, in house, "
              f"{big.workers} processes; target <= 12 min: {_verdict(big.seconds <= 720)}); "
              "peak RSS "
              f"{big.peak_rss_mib:.0f} MiB MEASURED (target < 1024 MiB: "
              f"{_verdict(big.peak_rss_mib < 1024)})")  # fmt: skip
        figures["million_minutes_measured"] = round(big.seconds / 60, 1)
        figures["million_peak_rss_mib_measured"] = round(big.peak_rss_mib, 1)
    else:
        print(f"1,000,000 cards: {minutes:.1f} min EXTRAPOLATED from {best.cards:,} cards at the "
              f"best rate ({best.database}, {best.output}, {best.workers} proc; target <= 12 "
              f"min: {_verdict(minutes <= 12)}). Peak RSS of a run is bounded by the chunk, not "
              f"the batch: {max(r.peak_rss_mib for r in small):.0f} MiB measured on "
              f"{best.cards:,} cards (a real 1,000,000-card run: YKT_BENCH_1M=1)")  # fmt: skip
        figures["million_minutes_extrapolated"] = round(minutes, 1)
    one = next((r for r in runs if r.workers == 1 and r.output == "in_house"), None)
    if one is not None and one.stats:
        parts = _cpu_split(one)
        beyond = one.product_cpu * 1e6 + one.server_cpu * 1e6 - one.hsm_cpu * 1e6
        print(f"where a card's time goes ({one.database}, in house, 1 process, CPU, every "
              f"thread and the database server): {beyond:.0f} us beyond the ceiling's HSM calls "
              f"({one.hsm_cpu * 1e6:.0f} us): the HSM pass's Python and hand-offs "
              f"{parts['HSM pass'] - one.hsm_cpu * 1e6:.0f}, records {parts['records']:.0f}, "
              f"lines+segment {parts['lines+segment']:.0f}, database client "
              f"{parts['database client']:.0f}, database server {one.server_cpu * 1e6:.0f}, "
              f"rest {parts['rest']:.0f}")  # fmt: skip
    sizes = {r.output: r.file_bytes / r.cards for r in small}
    print("output size: " + ", ".join(f"{k} {v:.0f} B/card" for k, v in sizes.items()))
    for (database, output), ceiling in ceilings.items():
        figures[f"{database}_{output}_hsm_only_ceiling"] = round(ceiling, 3)
    figures["keys_per_card"] = first.keys_per_card
    figures["cards_per_run"] = CARDS
    return figures


if __name__ == "__main__":
    os.environ.pop("SOFTHSM2_CONF", None)
    main()
