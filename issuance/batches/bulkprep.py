"""Data preparation at scale: chunks of cards, bulk reads and writes, N worker processes.

Design notes: ``docs/design/batches.md`` (section ``issuance.batches.bulkprep``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import mmap
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from cardspec import ids, perso
from cardspec.errors import EncodingError, InvalidIdentifier
from cardspec.keyscheme import KeySlot
from cardspec.profile import CardProfile
from hsm import pkcs11 as hsm_pkcs11
from hsm import prep as hsm_prep
from hsm.chain import PrepData, prep_data
from hsm.export import BureauExport, FileKek
from hsm.service import CardKeyRef, KeyService
from issuance import audit, lifecycle
from issuance.audit import Actor
from issuance.bank import CardBankData, NoBankData
from issuance.batches import dataprep, persofile
from issuance.batches import items as bi
from issuance.batches.adapters import BatchAdapters
from issuance.batches.bureau import (
    BureauFileWriter,
    CardBodyTemplate,
    card_body,
    mark_exported,
    signer_fingerprint,
)
from issuance.db import (
    bind_value,
    copies,
    insert_rows,
    make_engine,
    make_sessionmaker,
    transaction,
    with_retry,
)
from issuance.errors import ConflictError, IntegrityError, IssuanceError, ValidationError
from issuance.models import (
    Agency,
    Application,
    AuditEvent,
    BankAccount,
    Batch,
    BatchItem,
    BatchStage,
    BlankChip,
    Card,
    ChipStatus,
    Person,
    utcnow,
)
from issuance.services.pins import SS_PIN
from issuance.settings import IssuanceConfig

log = logging.getLogger("issuance.batches.prep")
S = BatchStage
_ITEMS = cast(sa.Table, BatchItem.__table__)
_CARDS = cast(sa.Table, Card.__table__)
_CHIPS = cast(sa.Table, BlankChip.__table__)
_EVENTS = cast(sa.Table, AuditEvent.__table__)
#: The transition step 3 makes in bulk (``selected -> prepared``), declared in the table:
#: its stages and audit event come from there (looked up, so checked, at import).
_PREPARE = lifecycle.item_transition(S.SELECTED, lifecycle.ItemEvent.PREPARE)

#: Cards per chunk (one segment, two short transactions) for large batches.
CHUNK = 500
IN_HOUSE, BUREAU = "in_house", "bureau"


def chunk_size(remaining: int, workers: int = 1, chunk: int | None = None) -> int:
    """``chunk`` if given, else :data:`CHUNK` cards, smaller for a small batch (at least 4
    chunks per worker, at least 10 cards: progress and interruptions stay fine-grained)."""
    if chunk:
        return max(1, chunk)
    return max(10, min(CHUNK, remaining // max(1, 4 * workers)))


#: The first claim of a worker with an HSM process, and the smallest of its last claims.
FIRST_CLAIM = 64


def piped_claim(chunk: int, claims: int, left: int) -> int:
    """How many cards a worker with an HSM process claims next (:meth:`Preparer._run_piped`),
    after ``claims`` claims, with about ``left`` cards of the batch still to claim: the
    pipeline filled and drained with small chunks, never more than ``chunk``.

    The first claims ramp up from :data:`FIRST_CLAIM`, doubling to ``chunk``: the HSM process
    starts after a small chunk's claim and records (not a full chunk's), and the next chunk is
    ready before it has finished. Within the batch's last two chunks' worth, each claim takes
    half of what is left, and under twice :data:`FIRST_CLAIM` all of it (so the last chunk has
    at least :data:`FIRST_CLAIM` cards, not a few): what runs after the HSM process's last card
    (that chunk's lines and commit) is short. A chunk under twice :data:`FIRST_CLAIM` is not
    tapered. ``left`` is an estimate (other workers claim from the same batch): a
    claim that finds fewer cards just returns them."""
    size = min(chunk, FIRST_CLAIM << min(claims, 16))
    if chunk >= 2 * FIRST_CLAIM and left < 2 * chunk:
        # under 2 x FIRST_CLAIM: the rest at once (the claim before left at least FIRST_CLAIM)
        size = max(1, left) if left < 2 * FIRST_CLAIM else min(size, (left + 1) // 2)
    return max(1, size)


# --- records ----------------------------------------------------------------------------------


class ProfilePins:
    """:class:`hsm.prep.PinPolicy` of data preparation: the natural PIN of
    :func:`issuance.batches.dataprep.natural_pin`, one PIN block per PIN of the profile."""

    def __init__(self, profile: CardProfile) -> None:
        self.specs = list(profile.pin_specs())
        #: (spec, its name if not ``ss``: None for ``ss``) of each PIN, in profile order
        self._own = [(spec, None if spec.name == SS_PIN else spec.name) for _, spec in self.specs]

    def pin(self, card_identification_code: str, mac: Callable[[bytes], bytes]) -> str:
        return dataprep.natural_pin(card_identification_code, mac)

    def blocks(
        self, pin: str, card_identification_code: str, mac: Callable[[bytes], bytes]
    ) -> list[bytes]:
        """``pin`` (the social security PIN) for ``ss``; every other PIN (the bank PIN) its
        own natural PIN: never the social security PIN."""
        natural = dataprep.natural_pin
        return [
            spec.encode(pin if name is None
                        else natural(card_identification_code, mac, pin_name=name))
            for spec, name in self._own
        ]  # fmt: skip


@dataclass
class _Profile:
    """Per-profile constants of the card lines."""

    profile: CardProfile
    planner: perso.RecordPlanner
    pins: ProfilePins
    slots: tuple[KeySlot, ...]
    key_ids: dict[KeySlot, int]
    ef_paths: dict[str, tuple[str, int]]
    emv_slot: KeySlot | None
    """A financial key slot of the profile (None: it has none; ``hsm.chain.prep_data``)."""
    templates: dict[tuple[tuple[str, ...], tuple[KeySlot, ...]], persofile.CardLineTemplate] = (
        field(default_factory=dict)
    )
    bodies: dict[tuple[tuple[str, ...], tuple[KeySlot, ...]], CardBodyTemplate] = field(
        default_factory=dict
    )

    @classmethod
    def of(cls, profile: CardProfile) -> _Profile:
        specs = list(profile.key_specs())
        return cls(
            profile, perso.planner(profile), ProfilePins(profile),
            tuple(s.slot for _, s in specs), {s.slot: s.key_id for _, s in specs},
            {ef.name: (df, ef.sfi or 0) for df, ef in profile.files()},
            next((s.slot for _, s in specs if s.slot.financial), None),
        )  # fmt: skip

    def template(
        self, files: tuple[str, ...], slots: tuple[KeySlot, ...]
    ) -> persofile.CardLineTemplate:
        """The card line template of cards with these files and WRITE KEY slots."""
        key = (files, slots)
        tmpl = self.templates.get(key)
        if tmpl is None:
            tmpl = self.templates[key] = persofile.CardLineTemplate(
                self.profile.name, self.profile.algorithm.value,
                [(self.ef_paths[name][0], name, self.ef_paths[name][1]) for name in files],
                [(slot.value, self.key_ids[slot]) for slot in slots],
                [(spec.name, df, spec.ref) for df, spec in self.pins.specs],
            )  # fmt: skip
        return tmpl

    def body_template(self, files: tuple[str, ...], slots: tuple[KeySlot, ...]) -> CardBodyTemplate:
        """The bureau card body template of cards with these files and exported slots."""
        key = (files, slots)
        tmpl = self.bodies.get(key)
        if tmpl is None:
            tmpl = self.bodies[key] = CardBodyTemplate(self.profile, files, slots)
        return tmpl


# --- rows ---------------------------------------------------------------------------------------


class _CardRow(NamedTuple):
    id: int
    card_number: str


class _PersonRow(NamedTuple):
    name: str
    citizen_id: str
    sex: str
    ethnicity: str | None
    birth_date: date
    region_code: str
    card_name: str | None = None


class _AppRow(NamedTuple):
    decided_at: datetime | None
    channel: str


class Row(NamedTuple):
    """One claimed item with what its card's data needs (one bulk query per chunk)."""

    item_id: int
    stage: BatchStage
    chip_serial: str | None
    issue_date: date | None
    card: _CardRow
    region_code: str
    algorithm: str
    key_version: int
    card_identification_code: str | None
    person: _PersonRow
    application: _AppRow | None
    bank: _BankRow | None = None


class _BankRow(NamedTuple):
    """The card's account data from its bank (:class:`issuance.models.BankAccount`)."""

    pan: str
    psn: str
    expiry: date
    service_code: str
    key_version: int
    bank_code: str


_BANK_AGENCY = sa.orm.aliased(Agency)


def _read_rows_query(items: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """The chunk's rows, the items picked by ``items``."""
    return (
        sa.select(
            BatchItem.id, sa.type_coerce(BatchItem.stage, sa.String()), BatchItem.chip_serial,
            BatchItem.issue_date, Card.id, Card.card_number, Card.region_code,
            sa.type_coerce(Card.algorithm, sa.String()), Card.key_version,
            Card.card_identification_code, Person.name, Person.citizen_id, Person.sex,
            Person.ethnicity, Person.birth_date, Person.region_code, Card.application_id,
            Application.decided_at, sa.type_coerce(Application.channel, sa.String()),
            Person.card_name,
            BankAccount.pan, BankAccount.psn, BankAccount.expiry, BankAccount.service_code,
            BankAccount.key_version, _BANK_AGENCY.code,
        )  # the enums as their stored values (no per-row enum processing)
        .join(Card, Card.id == BatchItem.card_id)
        .join(Person, Person.id == Card.person_id)
        .outerjoin(Application, Application.id == Card.application_id)
        .outerjoin(BankAccount,
                   sa.and_(BankAccount.card_id == Card.id, BankAccount.pan.is_not(None)))
        .outerjoin(_BANK_AGENCY, _BANK_AGENCY.id == BankAccount.bank_agency_id)
        .where(items)
        .order_by(BatchItem.id)
    )  # fmt: skip


#: The ids as a list of parameters (``IN (?, ?, ...)``: SQLite).
_READ_ROWS = _read_rows_query(BatchItem.id.in_(sa.bindparam("ids", expanding=True)))
#: PostgreSQL: the ids as one array parameter (``= ANY(%s)``): the same text whatever the chunk
#: (the driver parsed the 500 placeholders of an ``IN`` list for every chunk: its statement
#: cache keeps short texts only).
_READ_ROWS_ARRAY = _read_rows_query(
    BatchItem.id == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(sa.BigInteger())))
)
#: ... as psycopg runs it (``%(ids)s``), prepared, with a generic plan (see :func:`read_rows`)
_READ_ROWS_PG = str(_READ_ROWS_ARRAY.compile(dialect=postgresql.psycopg.dialect()))


_STAGES = {st.value: st for st in BatchStage}


def read_rows(session: Session, item_ids: Sequence[int]) -> list[Row]:
    """The rows of the items ``item_ids``, in id order (no ORM row processing: the columns
    need none).

    On PostgreSQL (psycopg) the statement is prepared and run with its generic plan
    (``plan_cache_mode = force_generic_plan`` for this statement alone, then as it was):
    index probes by id all the way, planned once per connection. A custom plan was made for
    every chunk (1.07 ms for 500 ids) and, the ids' count known, hashed a scan of every card
    (the cost model's ``random_page_cost`` against a table in memory): 2.99 ms a chunk of 500
    at 12,000 cards against 1.93 ms for the generic plan, measured."""
    stages = _STAGES
    conn = session.connection()
    ids_ = list(item_ids)
    found: Sequence[Any]
    if copies(conn):
        raw: Any = conn.connection.driver_connection
        was = raw.execute(
            "SELECT current_setting('plan_cache_mode'), "
            "set_config('plan_cache_mode', 'force_generic_plan', true)"
        ).fetchone()
        found = raw.execute(_READ_ROWS_PG, {"ids": ids_}, prepare=True).fetchall()
        raw.execute("SELECT set_config('plan_cache_mode', %s, true)", (was[0],))
    else:
        query = _READ_ROWS_ARRAY if conn.dialect.name == "postgresql" else _READ_ROWS
        found = conn.execute(query, {"ids": ids_}).all()
    return [
        Row(r[0], stages[r[1]], r[2], r[3], _CardRow(r[4], r[5]), r[6], r[7], r[8],
            r[9], _PersonRow(r[10], r[11], r[12], r[13], r[14], r[15], r[19]),
            _AppRow(r[17], r[18]) if r[16] is not None else None,
            _BankRow(*r[20:26]) if r[20] is not None else None)
        for r in found
    ]  # fmt: skip


# --- one process --------------------------------------------------------------------------------


@dataclass
class PrepStats:
    """What one worker did, and where its time went (seconds)."""

    prepared: int = 0
    """Cards moved ``selected → prepared`` (chip assigned)."""
    exported: int = 0
    """Cards written to a bureau file (prepared now or before)."""
    chunks: int = 0
    keys_derived: int = 0
    """Per-card key objects derived in the HSM (card keys and KLKs)."""
    leases_lost: int = 0
    seconds: float = 0.0
    claim_s: float = 0.0
    cards_s: float = 0.0
    """HSM work, records and lines (step 2) without the segment file."""
    file_s: float = 0.0
    commit_s: float = 0.0
    # CPU seconds of this worker's threads (``time.thread_time``: what a card costs the
    # machine, whatever else shares it; the wall times above wait for it too)
    records_cpu: float = 0.0
    """Step 2's first pass: chips, key references, records (no HSM call)."""
    hsm_cpu: float = 0.0
    """Step 2's HSM pass: every HSM call of the cards and the Python around them (PINs); the
    HSM process's CPU in the pass when the worker has one (:class:`_HsmProcess`)."""
    lines_cpu: float = 0.0
    """Step 2's last pass and the segment: card lines, the file written and signed."""
    db_cpu: float = 0.0
    """Steps 1 and 3 in this process: claims, reads and commits (on the database thread when
    there is one); a database server's own CPU is not in it (SQLite's is: it runs here)."""
    pipe_cpu: float = 0.0
    """With an HSM process: the cards' inputs and HSM outputs through its pipes (pickled and
    unpickled, in both processes)."""
    hsm_wait_s: float = 0.0
    """With an HSM process: the seconds it waited for this process between its first chunk
    and its last (for the next chunk's inputs, or for its results to be read)."""
    errors: list[str] = field(default_factory=list)

    def add(self, other: PrepStats) -> None:
        for f in fields(self):
            if f.name == "errors":
                self.errors.extend(other.errors)
            elif f.name != "seconds":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.seconds = max(self.seconds, other.seconds)


@dataclass(slots=True)
class Prepared:
    """One card of a chunk, after step 2 (what step 3 writes)."""

    row: Row
    chip_serial: str
    cic: str
    issue_date: date
    key_version: int
    profile_name: str
    perso_file: str | None = None
    perso_offset: int | None = None


#: One card after pass 1: its profile's constants, the card, its key reference, its records.
_Made = tuple[_Profile, Prepared, CardKeyRef, dict[str, list[bytes]]]


class _Refused(NamedTuple):
    """A card refused in the HSM pass (its PIN policy could not encode its PINs)."""

    reason: str


class BureauSink:
    """Where a bureau export's card lines go: the file writer in this process, or the
    parent's queue (workers). ``put(kek, [(item_id, card_id, chip_serial, body)])``."""

    def put(self, kek: FileKek, entries: list[tuple[int, int, str, bytes]]) -> None:
        raise NotImplementedError


def database_thread(workers: int) -> bool:
    """Whether a worker runs its claims and commits on a database thread and its HSM pass in
    its HSM process (:class:`_HsmProcess`), the default: when the machine has a core for each
    worker's HSM work and one for the rest of its work (the database's: the PostgreSQL
    backend, or SQLite in process). With fewer cores the thread only competes for them and
    the GIL: measured on 2 cores, 1 worker gains with it, 2 workers lose (each one's HSM calls
    wait for the GIL its database thread holds); 2 workers with their HSM processes on 2
    cores did not show a gain either (``docs/design/capacity.md``)."""
    return 2 * workers <= (os.cpu_count() or 1)


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """The objects alive when a run starts (modules, the engine, the profiles: some 140,000 in
    a worker) out of the cyclic garbage collector's sight for the run (:func:`gc.freeze`):
    the cards' own objects live a chunk or two, so they reach the oldest generation, whose
    collections then walk only what was made since instead of the whole heap (measured on
    30,000 cards' records: the collector's time 16 -> 6 us a card). Given back at the end
    (:func:`gc.unfreeze`): nothing that dies later stays uncollected. A process whose heap
    was frozen already (an API worker freezes its own at start-up, ``api.app``) is left as
    it is: freezing again there would keep whatever is alive at the run's start, garbage
    included, out of the collector's reach for good."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Preparer:
    """One process's data preparation loop on one batch (see the module docstring)."""

    def __init__(
        self,
        settings: IssuanceConfig,
        factory: sessionmaker[Session],
        key_service: KeyService,
        batch_id: int,
        actor: Actor,
        *,
        output: str = IN_HOUSE,
        chunk: int = CHUNK,
        lease_seconds: int = bi.DEFAULT_LEASE_SECONDS,
        today: date | None = None,
        transport: str | None = None,
        bureau_file_id: str | None = None,
        sink: BureauSink | None = None,
        new_serial: Callable[[], bytes] | None = None,
        on_chunk: Callable[[int], None] | None = None,
        stop: Any = None,
        overlap: bool | None = None,
        hsm_process: bool | None = None,
        left: int | None = None,
    ) -> None:
        self.settings = settings
        #: The cards of the batch left to prepare as the caller counted them (the claims'
        #: sizes with an HSM process, :func:`piped_claim`); None: counted at the run's start.
        self.left = left
        self.overlap = database_thread(1) if overlap is None else overlap
        #: The HSM pass in the worker's HSM process (:class:`_HsmProcess`): by default where
        #: the database thread is (the same cores rule, :func:`database_thread`).
        self.hsm_process = self.overlap if hsm_process is None else hsm_process
        self.factory = factory
        self.key_service = key_service
        self.batch_id = batch_id
        self.actor = actor
        self.output = output
        self.chunk = max(1, chunk)
        self.lease_seconds = lease_seconds
        self.today = today
        self.new_serial = new_serial or _random_serial
        self.on_chunk = on_chunk
        self.stop = stop
        self.sink = sink
        self.owner = bi.worker_id(f"prepare-{os.getpid()}")
        self.stats = PrepStats()
        self._profiles: dict[str, _Profile] = {}
        self._refused: list[int] = []
        self._regions: set[str] = set()
        self.bureau_file_id = bureau_file_id
        if output == IN_HOUSE:
            self.wrapping = hsm_prep.perso_key_label(batch_id)
        elif transport is None or sink is None or bureau_file_id is None:
            raise ValueError("a bureau export needs its transport key, file id and sink")
        else:
            self.wrapping = transport
        self._signer = ""

    # helpers -------------------------------------------------------------------------------
    def _txn(self, fn: Callable[[Session], Any]) -> Any:
        def once() -> Any:
            with transaction(self.factory) as s:
                return fn(s)

        return with_retry(once)

    def _profile(self, algorithm: str) -> _Profile:
        prof = self._profiles.get(algorithm)
        if prof is None:
            prof = self._profiles[algorithm] = _Profile.of(
                dataprep.card_profile(self.settings, algorithm)
            )
        return prof

    def _stopped(self) -> bool:
        return bool(self.stop is not None and self.stop.is_set())

    # the loop ------------------------------------------------------------------------------
    def run(self) -> PrepStats:
        with heap_frozen():
            return self._run()

    def _run(self) -> PrepStats:
        """The run: in house, first :meth:`_perso_ready` (with an HSM process, while the first
        chunk is claimed and its records made, :meth:`_run_piped`)."""
        hsm_keys = self.key_service.hsm_keys
        if hsm_keys is None:
            raise IssuanceError("bulk data preparation needs a PKCS#11 key service (hsm.prep)")
        start = time.perf_counter()
        stages = (S.SELECTED,) if self.output == IN_HOUSE else (S.SELECTED, S.PREPARED)
        ops: hsm_prep.PrepOps | None = None
        hsm: _HsmProcess | None = None
        try:
            if not self.hsm_process:
                if self.output == IN_HOUSE:
                    self._perso_ready()
                ops = hsm_prep.prep_ops(self.key_service, self.wrapping)
                assert ops is not None  # (a PKCS#11 key service: checked above)
                with ops:
                    self._run_here(ops, stages)
            else:
                if self.output != IN_HOUSE:
                    hsm_keys.transport(self.wrapping)  # fail early on an unknown key
                # forked before the database thread starts (a fork copies only the caller's
                # thread) and before :meth:`_perso_ready`'s thread (no PKCS#11 call in flight)
                hsm = _HsmProcess(self)
                self._run_piped(hsm, stages)
        finally:
            if hsm is not None:  # waited for: its CPU counts in this process's children's
                hsm.close()
                self.stats.keys_derived += hsm.derived
                self.stats.pipe_cpu += hsm.pipe_cpu
                self.stats.hsm_wait_s += hsm.waited
            if ops is not None:
                self.stats.keys_derived += ops.derived
            self.stats.seconds = time.perf_counter() - start
            self._release_refused()
        return self.stats

    def _perso_ready(self) -> None:
        """In house, before the first chunk's HSM work: the batch's perso key made if missing
        (:func:`ensure_batch_perso_key`: the file KEKs are wrapped under it) and the signing
        key's fingerprint read (the segments name it)."""
        ensure_batch_perso_key(self.factory, self.key_service, self.batch_id)
        self._signer = signer_fingerprint(self.key_service.public_key_pem())

    def _run_here(self, ops: hsm_prep.PrepOps, stages: Sequence[BatchStage]) -> None:
        """The loop with every pass in this process (:meth:`_chunk`)."""
        # Steps 1 and 3 run on a second thread, in order (one connection at a time): the
        # next chunk's claim and the previous chunk's commit wait for the database while
        # this thread does the HSM work of the current chunk. Their own Python work (about
        # 100 us a card, measured) still takes turns with this thread's for the GIL.
        db = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="prep-db")
            if self.overlap
            else None
        )
        rows: list[Row] = []  # claimed and not prepared yet
        nxt: Future[list[Row]] | None = None
        try:
            with db or contextlib.nullcontext():
                rows = [] if self._stopped() else self._claim_timed(stages)
                pending: tuple[Callable[[], int], int] | None = None
                while rows and not self._stopped():
                    # with the thread, the next chunk is claimed while this one is made;
                    # without, once this one is committed (so that no worker holds a chunk
                    # ahead while another finds none left at the end of the batch)
                    nxt = db.submit(self._claim_timed, stages) if db is not None else None
                    try:
                        out = self._chunk(ops, rows)
                    except bi.LeaseLost as exc:
                        self._lost(len(rows), exc)
                        out = []
                    rows = []
                    if db is None or nxt is None:  # no thread: commit now, then claim
                        if out:
                            self._settle(partial(self._commit_timed, out), len(out))
                        rows = [] if self._stopped() else self._claim_timed(stages)
                        continue
                    rows, nxt = nxt.result(), None
                    pending = self._queue_commit(db, out, pending)
                if pending is not None:
                    self._settle(*pending)
        finally:
            # a stop, or an error: the chunks claimed and not prepared are given back now
            # (a next run takes them at once, not when their lease ends)
            if nxt is not None and nxt.done() and nxt.exception() is None:
                rows = rows + nxt.result()
            self._give_back_rows(rows)

    def _run_piped(self, hsm: _HsmProcess, stages: Sequence[BatchStage]) -> None:
        """The loop with the HSM pass in the worker's HSM process (:class:`_HsmProcess`): as
        soon as chunk N's HSM outputs are back, chunk N+2 is claimed, its records made
        (pass 1) and sent, so that the HSM process always has the next chunk queued behind
        the one in its hands (:data:`HSM_QUEUE`); then chunk N's lines and segment (pass 3),
        and its commit on the database thread. A stop halts the HSM process after the chunk
        in its hands; every chunk claimed and not committed is given back."""
        db = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="prep-db")
            if self.overlap
            else None
        )
        rows: list[Row] = []  # claimed, not sent yet
        sent: deque[tuple[list[Row], list[_Made]]] = deque()  # at the HSM process, in order
        back: list[Row] = []  # skipped by the HSM process after a stop
        state = {"halted": False, "exhausted": False}
        # claims sized by piped_claim: the batch's count once, then what this worker claimed
        left = self.left
        if left is None:
            left = remaining(self.factory, self.batch_id, self.output)
        plan = {"claims": 0, "left": left}
        # in house, :meth:`_perso_ready` (the HSM process wraps its file KEKs under the perso
        # key) on a thread of its own while the first chunk is claimed and its records made;
        # waited for before the first chunk goes to the HSM process
        keygen = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="prep-key")
            if self.output == IN_HOUSE
            else None
        )
        perso: list[Future[None]] = []
        if keygen is not None:
            perso.append(keygen.submit(self._perso_ready))

        def claim() -> list[Row]:  # on the database thread, in order with the commits
            limit = piped_claim(self.chunk, plan["claims"], plan["left"])
            if db is None:
                got = self._claim_timed(stages, limit)
            else:
                got = db.submit(self._claim_timed, stages, limit).result()
            plan["claims"] += 1
            plan["left"] -= len(got)
            return got

        def fill() -> None:
            """Chunks claimed, their records made and sent until :data:`HSM_QUEUE` are at the
            HSM process (none after a stop)."""
            nonlocal rows
            if not state["halted"] and self._stopped():
                hsm.halt()
                state["halted"] = True
            while not state["halted"] and len(sent) < HSM_QUEUE:
                if not rows:
                    rows = [] if state["exhausted"] else claim()
                    if not rows:
                        state["exhausted"] = True
                        # no chunk follows: the HSM process ends after those it has (its end
                        # overlaps the last chunks' lines and commits)
                        hsm.end_input()
                        return
                t0, c0 = time.perf_counter(), time.thread_time()
                made = self._records(rows)
                # the cards' derivation data made here: the HSM process gets them ready
                region = hsm.region_code
                cards = [(card.row.algorithm, ref, prep_data(ref, region, prof.emv_slot))
                         for prof, card, ref, _ in made]  # fmt: skip
                self.stats.records_cpu += time.thread_time() - c0
                self.stats.cards_s += time.perf_counter() - t0
                if made:  # (every card refused: leased until the end of the run, as here)
                    if perso:  # the perso key made (its error raised here)
                        perso.pop().result()
                    hsm.send(cards)
                    sent.append((rows, made))
                rows = []

        try:
            with db or contextlib.nullcontext():
                pending: tuple[Callable[[], int], int] | None = None
                fill()
                while sent:
                    got = hsm.receive()  # the oldest chunk's (an error in it raised here)
                    chunk, made = sent.popleft()
                    fill()  # the HSM process's queue first, then this chunk's lines
                    if got is None:  # skipped after a stop
                        back.extend(chunk)
                        continue
                    kek, label, keys, cpu = got
                    self.stats.hsm_cpu += cpu
                    out = self._lines(chunk[0].item_id, made, keys, kek, label)
                    if not out:
                        continue
                    if db is None:
                        self._settle(partial(self._commit_timed, out), len(out))
                        continue
                    pending = self._queue_commit(db, out, pending)
                if pending is not None:
                    self._settle(*pending)
                if perso:  # no chunk was sent (nothing to prepare): the key's error raised
                    perso.pop().result()
        finally:
            # a stop, or an error (the chunk whose HSM work failed among them): the chunks
            # claimed and not committed are given back now, those queued at the HSM process too
            hsm.halt()
            if keygen is not None:  # (an error before the first chunk: the key made or not)
                keygen.shutdown(wait=True)
            self._give_back_rows(rows + back + [r for chunk, _ in sent for r in chunk])

    def _queue_commit(
        self,
        db: ThreadPoolExecutor,
        out: list[Prepared],
        pending: tuple[Callable[[], int], int] | None,
    ) -> tuple[Callable[[], int], int] | None:
        """Chunk ``out``'s commit queued on the database thread behind the previous chunk's
        (``pending``), which is then settled (:meth:`_settle`); returns this one's, to settle
        after the next (None: nothing to commit)."""
        commit = (db.submit(self._commit_timed, out).result, len(out)) if out else None
        if pending is not None:
            self._settle(*pending)
        return commit

    def _give_back_rows(self, rows: list[Row]) -> None:
        if rows:
            try:
                self._give_back([r.item_id for r in rows])
            except Exception:  # the lease ends anyway; the first error is the one raised
                log.exception("data preparation: could not give back a claimed chunk")

    def _claim_timed(self, stages: Sequence[BatchStage], limit: int | None = None) -> list[Row]:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return cast(list[Row], self._txn(lambda s: self._claim(s, stages, limit)))
        finally:
            self.stats.claim_s += time.perf_counter() - t0
            self.stats.db_cpu += time.thread_time() - c0

    def _commit_timed(self, out: list[Prepared]) -> int:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            self._txn(lambda s: self._commit(s, out))
        finally:
            self.stats.commit_s += time.perf_counter() - t0
            self.stats.db_cpu += time.thread_time() - c0
        self.stats.prepared += sum(1 for c in out if c.row.stage == S.SELECTED)
        if self.output == BUREAU:
            self.stats.exported += len(out)
        return len(out)

    def _settle(self, commit: Callable[[], int], cards: int) -> None:
        """The outcome of a chunk's commit (``commit()``: its result, or its error raised; a
        lost lease only costs the chunk: another worker has it): counted and reported."""
        try:
            done = commit()
        except bi.LeaseLost as exc:
            self._lost(cards, exc)
            return
        self.stats.chunks += 1
        if self.on_chunk is not None:
            self.on_chunk(done)

    def _lost(self, cards: int, exc: Exception) -> None:
        self.stats.leases_lost += cards
        log.warning("data preparation: %s; chunk left to the other worker", exc)

    def _give_back(self, item_ids: list[int]) -> None:
        """Give back this worker's lease of items it will not prepare (now)."""

        def go(s: Session) -> None:
            s.execute(sa.update(_ITEMS)
                      .where(_ITEMS.c.id.in_(item_ids), _ITEMS.c.lease_owner == self.owner)
                      .values(lease_owner=None, lease_expires_at=None))  # fmt: skip

        self._txn(go)

    def _claim(
        self, s: Session, stages: Sequence[BatchStage], limit: int | None = None
    ) -> list[Row]:
        """Up to ``limit`` (the chunk size) items of ``stages`` leased to this worker, read."""
        ids_ = bi.claim_ids(s, self.batch_id, self.owner, stages=stages, limit=limit or self.chunk,
                            lease_seconds=self.lease_seconds,
                            not_in_file=self.bureau_file_id)  # fmt: skip
        return read_rows(s, ids_) if ids_ else []

    def _chunk(self, ops: hsm_prep.PrepOps, rows: list[Row]) -> list[Prepared]:
        """Step 2 of a chunk in this process: the cards made, their segment written (or lines
        sent to the bureau sink); what step 3 commits. Three passes (each loop stays in its
        own code: the HSM's calls run faster back to back than between Python record work):
        the cards' chips and records (a card refused here costs no HSM work), their HSM work
        (:meth:`_hsm_pass`; in the HSM process when the worker has one, :class:`_HsmProcess`),
        their lines (:meth:`_lines`)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        made = self._records(rows)
        c1 = time.thread_time()
        with ops.chunk() as kek:
            keys = self._hsm_pass(ops, [(prof, ref, None) for prof, _, ref, _ in made])
        self.stats.records_cpu += c1 - c0
        self.stats.hsm_cpu += time.thread_time() - c1
        self.stats.cards_s += time.perf_counter() - t0
        return self._lines(rows[0].item_id, made, keys, kek, ops.envelope.label)

    def _records(self, rows: list[Row]) -> list[_Made]:
        """Pass 1 of a chunk: each card's chip, key reference and records; a card whose data
        cannot go on a chip is refused here (:meth:`_refuse`)."""
        today = date.today()  # the holders' birth dates are checked against it
        issue = self.today or today
        versions: dict[str, int] = {}
        made: list[_Made] = []
        for row in rows:
            prof = self._profile(row.algorithm)
            try:
                card, ref, bank = self._card(prof, row, issue, versions)
                made.append((prof, card, ref, self._perso(prof, card, bank, today)))
            except (InvalidIdentifier, EncodingError, NoBankData) as exc:
                self._refuse(row, exc)
        return made

    def _hsm_pass(
        self,
        ops: hsm_prep.PrepOps,
        cards: Sequence[tuple[_Profile, CardKeyRef, PrepData | None]],
    ) -> list[Any]:
        """Pass 2 of a chunk (inside ``ops.chunk()``): every card's HSM work, in house
        (:class:`hsm.prep.InHouseCard`) or for the bureau (:class:`BureauExport`, the initial
        PIN); a card refused by its PIN policy is a :class:`_Refused`. The one implementation,
        in this process or in the HSM process (there with each card's derivation data made
        by the worker, ``hsm.chain.prep_data``; None: made here)."""
        out: list[Any] = []
        in_house = self.output == IN_HOUSE
        for prof, ref, data in cards:
            try:
                if in_house:
                    out.append(ops.in_house(ref, prof.slots, prof.pins, data))
                else:
                    out.append(ops.bureau_and_pin(ref, prof.slots, prof.pins, data))
            except (InvalidIdentifier, EncodingError) as exc:
                out.append(_Refused(str(exc)))
        return out

    def _lines(
        self, first_item_id: int, made: list[_Made], keys: list[Any], kek: FileKek, label: str
    ) -> list[Prepared]:
        """Pass 3 of a chunk: the cards' lines from their records and HSM outputs (``keys``,
        in the order of ``made``), the segment written and signed (or the lines sent to the
        bureau sink); the cards step 3 commits."""
        t0, c0 = time.perf_counter(), time.thread_time()
        out: list[Prepared] = []
        writer: persofile.SegmentWriter | None = None
        entries: list[tuple[int, int, str, bytes]] = []
        if self.output == IN_HOUSE:
            writer = persofile.SegmentWriter(
                self.settings.data_dir, self.batch_id, first_item_id, label, kek, self._signer
            )
        n = 0
        for (prof, card, ref, plan), got in zip(made, keys, strict=True):
            if isinstance(got, _Refused):
                self._refuse(card.row, got.reason)
                continue
            if writer is not None:
                self._check(prof, card, got.pin, plan, n == 0)
                line = self._in_house_line(prof, card, ref, writer.count + 1, plan, got, n == 0)
                card.perso_file, card.perso_offset = writer.name, writer.add(line)
            else:
                export, pin = got
                self._check(prof, card, pin, plan, n == 0)
                entries.append(self._bureau_entry(prof, card, ref, plan, export, n == 0))
            out.append(card)
            n += 1
        t1 = time.perf_counter()
        self.stats.cards_s += t1 - t0
        if writer is not None and writer.count:
            writer.finish(self.key_service.sign(writer.statement()))
        elif self.sink is not None and entries:
            self.sink.put(kek, entries)
        self.stats.file_s += time.perf_counter() - t1
        self.stats.lines_cpu += time.thread_time() - c0
        return out

    def _refuse(self, row: Row, exc: Exception | str) -> None:
        """A card whose data cannot go on a chip (the whole card refused, with the reason:
        nothing written for it). It stays selected, leased to this worker until the run ends
        (so no worker takes it again meanwhile), then released: fix the data, prepare again."""
        self._refused.append(row.item_id)
        message = f"card {row.card.card_number}: {exc}"
        self.stats.errors.append(message)
        log.warning("data preparation refused %s", message)

    def _release_refused(self) -> None:
        if self._refused:
            self._give_back(list(self._refused))
            self._refused.clear()

    def _card(
        self, prof: _Profile, row: Row, issue: date, versions: dict[str, int]
    ) -> tuple[Prepared, CardKeyRef, CardBankData | None]:
        """One card of the chunk: its chip (a new one, or the one recorded), key reference and
        bank data (:meth:`_bank`)."""
        if row.stage == S.SELECTED:
            version = versions.get(row.algorithm)
            if version is None:
                version = versions[row.algorithm] = self.key_service.current_key_version(
                    prof.profile.algorithm
                )
            serial = self.new_serial()
            card = Prepared(row, serial.hex().upper(), self._new_cic(row.region_code, serial),
                            issue, version, prof.profile.name)  # fmt: skip
        else:  # already prepared (bureau export): its chip and data as recorded
            if row.chip_serial is None or row.card_identification_code is None:
                raise ConflictError(f"batch item {row.item_id} has no chip assigned")
            card = Prepared(row, row.chip_serial, row.card_identification_code,
                            row.issue_date or issue, row.key_version,
                            prof.profile.name)  # fmt: skip
        bank = self._bank(row)
        ref = dataprep.key_ref_of(card.cic, card.key_version, prof.profile.algorithm, bank)
        return card, ref, bank

    def _bank(self, row: Row) -> CardBankData | None:
        """The card's bank data (its bank's key domain from ``[banks.<code>]``); None when the
        bank has not answered (the card waits: :func:`dataprep.perso_values` refuses it)."""
        b = row.bank
        conf = None if b is None else self.settings.banks.get(b.bank_code)
        if b is None or conf is None:
            return None
        return CardBankData(b.pan, b.psn, b.expiry, b.service_code, conf.key_domain,
                            b.key_version)  # fmt: skip

    def _new_cic(self, region_code: str, serial: bytes) -> str:
        """:func:`cardspec.ids.make_card_identification_code` (each region validated once)."""
        if region_code not in self._regions or len(serial) != 8:
            cic = ids.make_card_identification_code(region_code, serial)
            self._regions.add(region_code)
            return cic
        return region_code + ids.CARD_ID_MARKER + serial.hex().upper()

    def _perso(
        self, prof: _Profile, card: Prepared, bank: CardBankData | None, today: date
    ) -> dict[str, list[bytes]]:
        """The card's records (refused with :class:`InvalidIdentifier` or
        :class:`EncodingError` as :meth:`cardspec.perso.CardPersoData.validate` and the
        encoders do; the holder's birth date checked against ``today``)."""
        row = card.row
        if row.stage != S.SELECTED:  # a new chip's code is well formed by construction
            ids.validate_card_identification_code(card.cic)
        ids.validate_card_number(row.card.card_number)
        ids.check_citizen_id(row.person.citizen_id, today=today)
        values = dataprep.perso_values(
            self.settings, row.card, row.person, row.application, card.cic, card.issue_date,
            prof.profile, bank=bank,
        )  # fmt: skip
        return prof.planner.plan_values(values)

    def _check(
        self, prof: _Profile, card: Prepared, pin: str, plan: dict[str, list[bytes]], check: bool
    ) -> None:
        """``check`` (the first card of a chunk): a guard (the proof is the Hypothesis test of
        test_batch_dataprep_paths.py): the card's :class:`~cardspec.perso.CardPersoData`
        (:func:`dataprep.perso_data`) gives the same records (:func:`cardspec.perso.
        plan_records`)."""
        if not check:
            return
        row = card.row
        data = dataprep.perso_data(
            self.settings, row.card, row.person, row.application, card.cic, card.issue_date,
            pin, prof.profile, bank=self._bank(row),
        )  # fmt: skip
        data.validate()
        if perso.plan_records(data, prof.profile) != plan:
            raise IntegrityError(f"records differ from plan_records ({prof.profile.name})")

    def _in_house_line(
        self, prof: _Profile, card: Prepared, ref: CardKeyRef, seq: int,
        plan: dict[str, list[bytes]], keys: hsm_prep.InHouseCard, check: bool,
    ) -> bytes:  # fmt: skip
        row = card.row
        write = keys.write_keys
        line = prof.template(tuple(plan), tuple(write)).line(
            seq, item_id=row.item_id, card_id=row.card.id, chip_serial=card.chip_serial,
            cic=card.cic, card_number=row.card.card_number, key_version=card.key_version,
            records=plan.values(), kmc_wrapped=keys.kmc_wrapped,
            key_payloads=write.values(), pin_payloads=keys.pin_payloads,
        )  # fmt: skip
        if check and line != persofile.card_line(
            seq, item_id=row.item_id, card_id=row.card.id,
            chip_serial=card.chip_serial, cic=card.cic, card_number=row.card.card_number,
            profile=prof.profile.name, algorithm=ref.algorithm.value,
            key_version=card.key_version,
            files=[(prof.ef_paths[name][0], name, prof.ef_paths[name][1], records)
                   for name, records in plan.items()],
            kmc_wrapped=keys.kmc_wrapped,
            keys=[(slot.value, prof.key_ids[slot], payload) for slot, payload in write.items()],
            pins=[(spec.name, df, spec.ref, payload)
                  for (df, spec), payload in zip(prof.pins.specs, keys.pin_payloads, strict=True)],
        ):  # fmt: skip
            raise IntegrityError(f"card line template differs from card_line ({prof.profile.name})")
        return line

    def _bureau_entry(
        self, prof: _Profile, card: Prepared, ref: CardKeyRef, plan: dict[str, list[bytes]],
        export: BureauExport, check: bool,
    ) -> tuple[int, int, str, bytes]:  # fmt: skip
        """The card's bureau line body: the profile's :class:`CardBodyTemplate`; ``check`` (the
        first card of a chunk): a guard (the proof is the Hypothesis test of
        test_batch_dataprep_paths.py) that it is :func:`card_body`'s."""
        row = card.row
        body = prof.body_template(tuple(plan), tuple(export.wrapped)).body(
            card_id=row.card.id, chip_serial=card.chip_serial, cic=card.cic,
            card_number=row.card.card_number, ref=ref, records=list(plan.values()),
            export=export,
        )  # fmt: skip
        if check and body != card_body(
            card_id=row.card.id, chip_serial=card.chip_serial, cic=card.cic,
            card_number=row.card.card_number, profile=prof.profile, ref=ref,
            plan=plan, export=export,
        ):  # fmt: skip
            raise IntegrityError(f"card body template differs from card_body ({prof.profile.name})")
        return row.item_id, row.card.id, card.chip_serial, body

    # step 3 --------------------------------------------------------------------------------
    def _commit(self, s: Session, cards: list[Prepared]) -> None:
        now = utcnow()
        new = [c for c in cards if c.row.stage == S.SELECTED]
        old = [c for c in cards if c.row.stage != S.SELECTED]
        # a bureau export marks its cards with the file while it is written (still prepared:
        # ``at_bureau`` once the file is complete, see bureau.mark_exported)
        in_file = {"bureau_file_id": self.bureau_file_id} if self.output == BUREAU else {}
        if old:  # bureau: prepared before, only the lease to give back
            done = s.execute(
                sa.update(_ITEMS)
                .where(_ITEMS.c.id.in_([c.row.item_id for c in old]),
                       _ITEMS.c.lease_owner == self.owner, _ITEMS.c.stage == str(S.PREPARED))
                .values(lease_owner=None, lease_expires_at=None, **in_file)
            )  # fmt: skip
            if _rowcount(done) != len(old):
                raise bi.LeaseLost(f"{len(old) - _rowcount(done)} item(s) of the chunk were "
                                   "taken over")  # fmt: skip
        if not new:
            return
        to, frm = BatchStage(_PREPARE.to_state), str(_PREPARE.from_state)
        issue = {c.issue_date for c in new}
        assert len(issue) == 1, "one issue date per chunk"
        conn = s.connection()
        pg = copies(conn)
        at = bind_value(conn, sa.DateTime(), now)
        # the items moved and their chip serial set, in one guarded statement
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        cols = ["stage", "stage_changed_at", "prepared_at", "issue_date"]
        head: list[Any] = [str(to), at, at, bind_value(conn, sa.Date(), issue.pop())]
        if in_file:
            cols.append("bureau_file_id")
            head.append(self.bureau_file_id)
        sets = ", ".join(f"{col} = {mark}" for col in cols) + (
            ", station = NULL, lease_owner = NULL, lease_expires_at = NULL"
        )
        if pg:
            # the items found by their ids (the primary key), each one's serial found in the
            # array by a binary search: over ids in ascending order (sorted here), an id's
            # ``width_bucket`` is its place. No join for the planner to get wrong (a join with
            # ``unnest`` was planned as a nested loop over a scan of the table, every item of
            # the chunk compared with every id: 85 ms a chunk of 500 on a 12,000-item table,
            # measured); ``array_position``'s linear search cost 0.65 ms more a chunk of 500.
            # The serials go in binary (``%b``: a quarter of the text form's client CPU); the
            # ids as text, typed bigint[] by the server (a binary int4[] would be coerced to
            # bigint[] for every row in a generic plan: 0.7 ms more a chunk, measured)
            pairs = sorted((c.row.item_id, c.chip_serial) for c in new)
            ids_up = [i for i, _ in pairs]
            done = conn.exec_driver_sql(
                f"UPDATE batch_items SET {sets}, "
                "chip_serial = (%b::varchar[])[width_bucket(id::bigint, %s::bigint[])] "
                "WHERE id = ANY(%s::bigint[]) AND lease_owner = %s AND stage = %s",
                (*head, [serial for _, serial in pairs], ids_up, ids_up, self.owner, frm),
            )  # fmt: skip
        else:  # SQLite: one executemany in process (its rowcount is the sum)
            done = conn.exec_driver_sql(
                f"UPDATE batch_items SET {sets}, chip_serial = ? "
                "WHERE id = ? AND lease_owner = ? AND stage = ?",
                [(*head, c.chip_serial, c.row.item_id, self.owner, frm)
                 for c in new],
            )  # fmt: skip
        moved = _rowcount(done)
        if moved != len(new):
            raise bi.LeaseLost(f"{len(new) - moved} item(s) of the chunk were taken "
                               "over by another worker")  # fmt: skip
        insert_rows(conn, _CHIPS, (
            "chip_serial", "batch_id", "item_id", "card_id", "status", "created_at", "perso_file",
            "perso_offset",
        ), [(c.chip_serial, self.batch_id, c.row.item_id, c.row.card.id, str(ChipStatus.ASSIGNED),
             at, c.perso_file, c.perso_offset) for c in new], copy=pg)  # fmt: skip
        # the card identification code (as on the chip and in the perso line) and key version
        if pg:
            # the cards found by their ids (``c.id = ANY``: an index scan of the chunk's
            # cards; with the join alone the planner hashed a scan of the whole table while
            # it was small: 2-3 ms a chunk of 500 on bench.dataprep's 12,000 cards); the
            # arrays in binary (each coerced once a statement), the ids sent once
            card_ids = [c.row.card.id for c in new]
            conn.exec_driver_sql(
                "UPDATE cards AS c SET card_identification_code = v.cic, key_version = v.kv, "
                "version = c.version + 1 FROM unnest(%(ids)b::bigint[], %(cics)b::varchar[], "
                "%(kvs)b::int[]) AS v(id, cic, kv) WHERE c.id = v.id "
                "AND c.id = ANY(%(ids)b::bigint[])",
                {"ids": card_ids, "cics": [c.cic for c in new],
                 "kvs": [c.key_version for c in new]},
            )  # fmt: skip
        else:
            conn.exec_driver_sql(
                "UPDATE cards SET card_identification_code = ?, key_version = ?, "
                "version = version + 1 WHERE id = ?",
                [(c.cic, c.key_version, c.row.card.id) for c in new],
            )
        insert_rows(conn, _EVENTS, audit.EVENT_COLUMNS, self._event_rows(new, to, at), copy=pg)

    def _event_rows(self, new: list[Prepared], to: BatchStage, at: Any) -> list[tuple[Any, ...]]:
        """One ``batch_item.prepare`` audit event per item, made by :func:`issuance.audit.
        event_values` once per chunk (:class:`issuance.audit.EventTemplate`)."""
        tmpl = audit.EventTemplate(
            self.actor,
            _PREPARE.audit_event,
            "batch_item",
            before=str(_PREPARE.from_state),
            after=str(to),
            occurred_at=at,
            details={"batch_id": self.batch_id, "output": self.output},
            varying=("card_id", "chip_serial", "profile", "perso_file"),
        )
        row = tmpl.row
        return [
            row(c.row.item_id, c.row.card.id, c.chip_serial, c.profile_name, c.perso_file)
            for c in new
        ]


def _random_serial() -> bytes:
    return os.urandom(8)


def _rowcount(result: Any) -> int:
    return int(cast(sa.CursorResult[Any], result).rowcount)


# --- the HSM process ----------------------------------------------------------------------------

#: Chunks kept at a worker's HSM process: the one in its hands and the next, queued, so that
#: it never waits for the worker's claims, records, lines and commits.
HSM_QUEUE = 2
#: How long an ending worker waits for its HSM process to finish the chunk in its hands.
HSM_STOP_SECONDS = 60.0

_SLOTS = {slot.value: slot for slot in KeySlot}


def _ref_wire(ref: CardKeyRef) -> tuple[Any, ...]:
    """A card's key reference as a plain tuple (its fields in order: ``CardKeyRef(*wire)``)."""
    return tuple(getattr(ref, f.name) for f in _REF_FIELDS)


_REF_FIELDS = fields(CardKeyRef)


def _keys_wire(keys: Any) -> Any:
    """A card's output of :meth:`Preparer._hsm_pass` as plain tuples, bytes and strings (what
    crosses the pipe; :func:`_keys_of` makes it again): the refusal's reason, or the
    :class:`hsm.prep.InHouseCard`'s fields, or the :class:`BureauExport`'s and the PIN."""
    if isinstance(keys, _Refused):
        return keys.reason
    # no Python frame per key (this runs in the HSM process): the slots' names one tuple per
    # profile (:func:`_names`), the KCVs in the order of the wrapped keys through ``map``
    if isinstance(keys, hsm_prep.InHouseCard):
        write = keys.write_keys
        return (keys.kek_id, keys.kmc_wrapped, _names(write), tuple(write.values()),
                keys.pin_payloads, keys.pin)  # fmt: skip
    export, pin = keys
    wrapped = export.wrapped
    return (export.kek_id, _names(wrapped), tuple(wrapped.values()),
            tuple(map(export.kcvs.__getitem__, wrapped)), export.encrypted, export.klk_wrapped,
            export.klk_kcv, pin)  # fmt: skip


_NAMES: dict[tuple[KeySlot, ...], tuple[str, ...]] = {}


def _names(slots: Iterable[KeySlot]) -> tuple[str, ...]:
    """The slots' values, the same tuple for the same slots (one per profile: a chunk's pickle
    holds it once, its other cards refer to it)."""
    key = tuple(slots)
    names = _NAMES.get(key)
    if names is None:
        names = _NAMES[key] = tuple(slot.value for slot in key)
    return names


def _keys_of(wire: Any, in_house: bool) -> Any:
    """:func:`_keys_wire` undone."""
    if isinstance(wire, str):
        return _Refused(wire)
    slots = _SLOTS
    if in_house:
        kek_id, kmc, names, write, payloads, pin = wire
        write_keys = dict(zip(map(slots.__getitem__, names), write, strict=True))
        return hsm_prep.InHouseCard(kek_id, kmc, write_keys, payloads, pin)
    kek_id, names, wrapped, kcvs, encrypted, klk_wrapped, klk_kcv, pin = wire
    keys = tuple(map(slots.__getitem__, names))
    return BureauExport(dict(zip(keys, wrapped, strict=True)), dict(zip(keys, kcvs, strict=True)),
                        encrypted,
                        kek_id=kek_id, klk_wrapped=klk_wrapped, klk_kcv=klk_kcv), pin  # fmt: skip


class _HsmProcess:
    """A preparing worker's HSM pass in a companion process (``docs/design/batches.md``,
    "The HSM pass in its own process"): forked from the worker before its database thread
    starts (under the PKCS#11 lock), its PKCS#11 module initialised again after the fork
    (:mod:`hsm.pkcs11` does so in a new process) and its own :class:`hsm.prep.PrepOps`; it
    touches nothing else of the worker's and logs nothing; it dies with the worker
    (:func:`_die_with_parent`). The chunks' inputs (each card's profile by its algorithm and
    its key reference) go one way, their HSM outputs (wrapped keys, PIN payloads, the
    initial PINs: secrets) come back the other, each chunk with its file KEK, through two
    local pipes between the worker's own two processes, never through a file or a log. A
    thread here writes the inputs, so that neither process waits for the other to read."""

    def __init__(self, preparer: Preparer) -> None:
        self._in_house = preparer.output == IN_HOUSE
        inputs_r, self._inputs = multiprocessing.Pipe(duplex=False)
        self._results, results_w = multiprocessing.Pipe(duplex=False)
        self._halt = mmap.mmap(-1, 1)  # shared with the child: 1 = skip the chunks queued
        self.pipe_cpu = 0.0
        self.derived = 0
        self.waited = 0.0
        parent = os.getpid()
        hsm_keys = preparer.key_service.hsm_keys
        #: The key service's region code (the province-level factor, ``hsm.chain.prep_data``).
        self.region_code = hsm_keys.region_code if hsm_keys else ""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        # no PKCS#11 call of this process's other threads in flight while it forks (the lock
        # alone: this process need not have opened its session yet, the HSM process opens its
        # own)
        with hsm_pkcs11.LOCK:
            pid = os.fork()
        if pid == 0:  # the HSM process: never returns to the caller's stack
            code = 1
            try:
                self._inputs.close()
                self._results.close()
                code = _hsm_serve(preparer, inputs_r, results_w, self._halt, parent)
            finally:
                os._exit(code)
        self.pid = pid
        inputs_r.close()
        results_w.close()
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send, name="prep-hsm-send", daemon=True)
        self._sender.start()
        self._closed = False
        self._input_ended = False

    def _send(self) -> None:
        try:
            while (data := self._queue.get()) is not None:
                self._inputs.send_bytes(data)
        except OSError:  # the HSM process is gone: :meth:`receive` says so
            pass
        finally:
            self._inputs.close()  # the HSM process's end of input: it says goodbye and exits

    def send(self, cards: list[tuple[str, CardKeyRef, PrepData]]) -> None:
        """A chunk's cards (each its profile's algorithm, its key reference and its derivation
        data, ``hsm.chain.prep_data``) to the queue."""
        c0 = time.thread_time()
        wire = [(alg, _ref_wire(ref), data) for alg, ref, data in cards]
        self._queue.put(pickle.dumps(wire, protocol=pickle.HIGHEST_PROTOCOL))
        self.pipe_cpu += time.thread_time() - c0

    def receive(self) -> tuple[FileKek, str, list[Any], float] | None:
        """The oldest chunk's HSM outputs: (file KEK, its envelope's label, each card's output
        of :meth:`Preparer._hsm_pass`, the HSM process's CPU seconds in the pass); None for a
        chunk skipped after :meth:`halt`. An error in the HSM process, or its death, raises
        :class:`IssuanceError`."""
        msg = self._next()
        c0 = time.thread_time()
        kind = msg[0]
        if kind == "error":
            raise IssuanceError(f"data preparation's HSM process failed: {msg[1]}")
        if kind == "skipped":
            return None
        if kind != "chunk":
            raise IssuanceError(f"data preparation's HSM process answered {kind!r}")
        _, (kek_id, wrapped, kcv), label, wire, cpu, derived = msg
        self.derived = derived
        in_house = self._in_house
        keys = [_keys_of(w, in_house) for w in wire]
        self.pipe_cpu += time.thread_time() - c0
        return FileKek(kek_id, wrapped, kcv), label, keys, cpu

    def _next(self, timeout: float | None = None) -> tuple[Any, ...]:
        try:
            if timeout is not None and not self._results.poll(timeout):
                raise TimeoutError
            data = self._results.recv_bytes()
        except (EOFError, OSError):
            raise IssuanceError(
                f"data preparation's HSM process (pid {self.pid}) ended without its results"
            ) from None
        c0 = time.thread_time()
        msg = pickle.loads(data)
        self.pipe_cpu += time.thread_time() - c0
        return cast(tuple[Any, ...], msg)

    def end_input(self) -> None:
        """No chunk follows those sent: the HSM process ends once it has done them (its
        ``bye`` follows their outputs)."""
        if not self._input_ended:
            self._input_ended = True
            self._queue.put(None)

    def halt(self) -> None:
        """The chunks queued at the HSM process are skipped (their :meth:`receive` is None);
        the one in its hands is finished."""
        self._halt[0] = 1

    def close(self) -> None:
        """End the HSM process and wait for it (its CPU then counts in this process's
        children's): its input closed, what it still sends read (and dropped), killed if it
        has not ended after :data:`HSM_STOP_SECONDS`."""
        if self._closed:
            return
        self._closed = True
        self.end_input()
        deadline = time.monotonic() + HSM_STOP_SECONDS
        try:
            while True:
                msg = self._next(max(0.0, deadline - time.monotonic()))
                if msg[0] == "bye":
                    self.pipe_cpu += msg[1]
                    self.derived = msg[2]
                    self.waited = msg[3]
                    break
        except (IssuanceError, TimeoutError):  # ended (after an error), or stuck: killed
            with contextlib.suppress(ProcessLookupError):
                if time.monotonic() >= deadline:
                    os.kill(self.pid, signal.SIGKILL)
        finally:
            self._sender.join(timeout=HSM_STOP_SECONDS)
            os.waitpid(self.pid, 0)
            self._results.close()
            self._halt.close()


def _hsm_serve(preparer: Preparer, inputs: Any, results: Any, halt: mmap.mmap, parent: int) -> int:
    """The HSM process (:class:`_HsmProcess`): each chunk's HSM pass (the one implementation,
    :meth:`Preparer._hsm_pass`) under its own :class:`hsm.prep.PrepOps`, until its input
    ends; then its count of pipe CPU, derived keys and seconds waited (``bye``). An error is
    sent back as its type and message (``error``; the worker fails the run) and ends it."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker stops us between chunks
    pipe = waited = 0.0
    first = True
    try:
        service = preparer.key_service.hsm_keys
        if service is None:
            raise IssuanceError("bulk data preparation needs a PKCS#11 key service (hsm.prep)")
        with service.token.use("opening the HSM process's session"):
            pass  # the module initialised and logged in now, before the first chunk comes
        # the wrapping key is looked up with the first chunk (KekEnvelope.handle): in house the
        # worker may still be making the batch's perso key (Preparer._run_piped), and sends
        # the first chunk once it is made; a bureau's transport key was checked (Preparer._run)
        ops = hsm_prep.PrepOps(service, service.fast, preparer.wrapping)
        profile, ref_of, keys_wire = preparer._profile, CardKeyRef, _keys_wire
        skipped = pickle.dumps(("skipped",))
        # the cyclic collector between chunks, not during them: a chunk's cards and outputs
        # live until its reply is sent (each card's a dozen containers), and a collection in
        # the pass would walk them again and again; once they are dropped, one collection of
        # the young generations finds what they left (no cycle is expected: it costs little)
        gc.disable()
        with ops:
            while True:
                t0 = time.perf_counter()
                try:
                    data = inputs.recv_bytes()
                except EOFError:
                    break
                if not first:  # (the first chunk: its claim and records made after the fork)
                    waited += time.perf_counter() - t0
                first = False
                c0 = time.thread_time()
                if halt[0]:
                    results.send_bytes(skipped)
                    continue
                cards = [(profile(alg), ref_of(*ref), card_data)
                         for alg, ref, card_data in pickle.loads(data)]  # fmt: skip
                c1 = time.thread_time()
                with ops.chunk() as kek:
                    c2 = time.thread_time()
                    keys = preparer._hsm_pass(ops, cards)
                    c3 = time.thread_time()
                reply = pickle.dumps(
                    ("chunk", (kek.kek_id, kek.wrapped, kek.kcv), ops.envelope.label,
                     [keys_wire(k) for k in keys], c3 - c2, ops.derived),
                    protocol=pickle.HIGHEST_PROTOCOL,
                )  # fmt: skip
                del keys, cards
                c4 = time.thread_time()
                t0 = time.perf_counter()
                results.send_bytes(reply)  # (returns once the worker has read what a pipe holds)
                waited += time.perf_counter() - t0
                c5 = time.thread_time()
                del reply
                gc.collect(1)
                pipe += (c1 - c0) + (c4 - c3) + (time.thread_time() - c5)
        results.send_bytes(pickle.dumps(("bye", pipe, ops.derived, waited)))
        return 0
    except BaseException as exc:  # reported to the worker, which fails the run and says why
        # (not logged here: a lock another thread of the worker held at the fork, a progress
        # display's, say, stays taken in this process)
        with contextlib.suppress(Exception):
            results.send_bytes(pickle.dumps(("error", f"{type(exc).__name__}: {exc}")))
        return 1


# --- perso key, workers -------------------------------------------------------------------------


def ensure_batch_perso_key(factory: sessionmaker[Session], key_service: KeyService,
                           batch_id: int) -> None:  # fmt: skip
    """The batch's perso key exists in the HSM (created under a lock on the batch row, so
    concurrent workers create it once)."""
    hsm_keys = key_service.hsm_keys
    if hsm_keys is None:
        return
    label = hsm_prep.perso_key_label(batch_id)

    def go(s: Session) -> None:
        # a write first: the row lock on PostgreSQL, the writer lock on SQLite
        s.execute(sa.update(Batch).where(Batch.id == batch_id)
                  .values(started_at=sa.func.coalesce(Batch.started_at, utcnow())))  # fmt: skip
        if hsm_prep.ensure_perso_key(hsm_keys, label):
            log.info("created the perso key %s", label)

    with transaction(factory) as s:
        go(s)


@dataclass
class PrepRequest:
    """One data preparation run (what ``ykt batch prepare`` / ``ykt bureau export`` ask)."""

    batch_id: int
    actor: Actor
    output: str = IN_HOUSE
    workers: int = 1
    chunk: int | None = None
    lease_seconds: int = bi.DEFAULT_LEASE_SECONDS
    today: date | None = None
    transport: str | None = None
    #: The bureau file being written (set by :func:`export_to_bureau`).
    bureau_file_id: str | None = None


def remaining(factory: sessionmaker[Session], batch_id: int, output: str) -> int:
    stages = (S.SELECTED,) if output == IN_HOUSE else (S.SELECTED, S.PREPARED)
    with transaction(factory) as s:
        counts = bi.stage_counts(s, batch_id)
    return sum(counts[st] for st in stages)


def _die_with_parent(parent: int) -> None:
    """PR_SET_PDEATHSIG(SIGKILL) (Linux): the kernel kills this process when its parent dies."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the lease expiry frees the chunk
        return
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


def _worker(
    settings: IssuanceConfig, adapters: BatchAdapters, req: PrepRequest, chunk: int, left: int,
    results: Any, stop: Any, parent: int,
) -> None:  # fmt: skip
    """A forked worker: its own engine and HSM session (the module is loaded here). It dies
    with its parent (a kill -9 of ``ykt batch prepare`` takes the workers with it: their
    chunks in flight are void, their leases voided by the next run)."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us between chunks
    engine: Engine | None = None
    try:
        engine = make_engine(settings)
        factory = make_sessionmaker(engine)
        keys = adapters.key_service()
        stock = adapters.stock(keys)
        sink = _QueueSink(results) if req.output == BUREAU else None
        preparer = Preparer(
            settings, factory, keys, req.batch_id, req.actor, output=req.output, chunk=chunk,
            lease_seconds=req.lease_seconds, today=req.today, transport=req.transport,
            bureau_file_id=req.bureau_file_id, sink=sink,
            on_chunk=lambda n: results.put(("progress", n)), stop=stop,
            new_serial=stock.new_serial, overlap=database_thread(req.workers),
            hsm_process=database_thread(req.workers), left=left,
        )  # fmt: skip
        results.put(("done", preparer.run()))
    except BaseException as exc:  # reported to the parent, which fails the run
        log.exception("data preparation worker %s failed", os.getpid())
        results.put(("error", f"worker {os.getpid()}: {type(exc).__name__}: {exc}"))
    finally:
        if engine is not None:
            engine.dispose()


class _QueueSink(BureauSink):
    def __init__(self, results: Any) -> None:
        self.results = results

    def put(self, kek: FileKek, entries: list[tuple[int, int, str, bytes]]) -> None:
        self.results.put(("lines", (kek.kek_id, kek.wrapped, kek.kcv), entries))


def run_workers(
    settings: IssuanceConfig,
    req: PrepRequest,
    *,
    adapters: BatchAdapters,
    on_progress: Callable[[int], None],
    on_lines: Callable[[FileKek, list[tuple[int, int, str, bytes]]], None] | None = None,
    stop: threading.Event | None = None,
    factory: sessionmaker[Session] | None = None,
) -> PrepStats:
    """Run ``req.workers`` forked worker processes to the end of the batch (or until
    ``stop``); returns their summed stats. A worker's error stops the others after their
    chunk and is raised here (:class:`IssuanceError`)."""
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    halt = ctx.Event()
    own = factory is None
    eng = make_engine(settings) if own else None
    fac = factory or make_sessionmaker(cast(Engine, eng))
    try:
        left = remaining(fac, req.batch_id, req.output)
    finally:
        if eng is not None:
            eng.dispose()
    chunk = chunk_size(left, req.workers, req.chunk)
    procs = [ctx.Process(target=_worker,
                         args=(settings, adapters, req, chunk, left, results, halt, os.getpid()),
                         name=f"prepare-{i + 1}", daemon=True)
             for i in range(req.workers)]  # fmt: skip
    for p in procs:
        p.start()
    total = PrepStats()
    finished = 0
    errors: list[str] = []
    try:
        while finished < len(procs):
            try:
                kind, *payload = results.get(timeout=0.5)
            except queue.Empty:
                if stop is not None and stop.is_set():
                    halt.set()
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and finished + len(dead) >= len(procs) and results.empty():
                    errors.extend(f"{p.name} died (exit code {p.exitcode})" for p in dead)
                    break
                continue
            if kind == "progress":
                on_progress(int(payload[0]))
            elif kind == "lines":
                if on_lines is None:
                    raise IssuanceError("a worker sent bureau lines to an in-house run")
                kek_id, wrapped, kcv = payload[0]
                on_lines(FileKek(kek_id, wrapped, kcv), payload[1])
            elif kind == "done":
                total.add(payload[0])
                finished += 1
            else:
                errors.append(str(payload[0]))
                finished += 1
                halt.set()
    except KeyboardInterrupt:
        halt.set()
        raise
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise IssuanceError("data preparation failed: " + "; ".join(errors))
    return total


# --- bureau export ------------------------------------------------------------------------------


class _WriterSink(BureauSink):
    """Lines straight into this process's bureau file writer."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def put(self, kek: FileKek, entries: list[tuple[int, int, str, bytes]]) -> None:
        self.writer.add_chunk(kek, entries)


def export_to_bureau(
    settings: IssuanceConfig,
    factory: sessionmaker[Session],
    key_service: KeyService,
    req: PrepRequest,
    output: Path,
    batch_name: str,
    *,
    adapters: BatchAdapters,
    on_progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> tuple[Any, PrepStats, int]:
    """Data preparation into a signed bureau file: every selected card prepared (chip
    assigned) and every prepared card not in a station, streamed into ``output``, then every
    card of the file moved ``prepared → at_bureau`` (:func:`issuance.batches.bureau.
    mark_exported`). Returns (:class:`~issuance.batches.bureau.BureauFileInfo`, stats, cards
    moved ``at_bureau``)."""
    if req.transport is None:
        raise ValueError("a bureau export needs its transport key")
    progress = on_progress or (lambda n: None)
    with BureauFileWriter(output, key_service, req.transport, batch=batch_name) as writer:
        req = dataclasses.replace(req, bureau_file_id=writer.file_id)
        if req.workers > 1:
            stats = run_workers(settings, req, adapters=adapters, on_progress=progress,
                                on_lines=writer.add_chunk, stop=stop, factory=factory)  # fmt: skip
        else:
            left = remaining(factory, req.batch_id, BUREAU)
            stats = Preparer(
                settings, factory, key_service, req.batch_id, req.actor, output=BUREAU,
                chunk=chunk_size(left, 1, req.chunk), left=left,
                lease_seconds=req.lease_seconds, today=req.today,
                transport=req.transport, bureau_file_id=writer.file_id, sink=_WriterSink(writer),
                on_chunk=progress, stop=stop,
            ).run()  # fmt: skip
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        if writer.count == 0:
            raise ValidationError(f"batch {batch_name} has no card to export")
        info = writer.finish()
    with transaction(factory) as s:
        moved = mark_exported(s, info, req.actor, pairs=writer.pairs())
    return info, stats, moved


def prepare_in_house(
    settings: IssuanceConfig,
    factory: sessionmaker[Session],
    key_service: KeyService,
    req: PrepRequest,
    *,
    adapters: BatchAdapters,
    on_progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    new_serial: Callable[[], bytes] | None = None,
) -> PrepStats:
    """In-house data preparation of every selected card of the batch (in this process, or
    in ``req.workers`` forked processes). ``new_serial``: the blank stock's (this process;
    workers open their own key service and stock through ``adapters``)."""
    progress = on_progress or (lambda n: None)
    if req.workers > 1:
        return run_workers(
            settings, req, adapters=adapters, on_progress=progress, stop=stop, factory=factory
        )
    left = remaining(factory, req.batch_id, IN_HOUSE)
    return Preparer(
        settings, factory, key_service, req.batch_id, req.actor, output=IN_HOUSE,
        chunk=chunk_size(left, 1, req.chunk), lease_seconds=req.lease_seconds, today=req.today,
        on_chunk=progress, stop=stop, new_serial=new_serial or _random_serial, left=left,
    ).run()  # fmt: skip


__all__ = [
    "BUREAU",
    "CHUNK",
    "IN_HOUSE",
    "PrepRequest",
    "PrepStats",
    "Preparer",
    "chunk_size",
    "export_to_bureau",
    "piped_claim",
    "prepare_in_house",
    "read_rows",
    "run_workers",
]
