"""Deliveries of blank chips from a chip supplier: the delivery file, its import into
``stock_chips`` (``ykt stock import``) and the stock's state (``ykt stock status``).

Design notes: ``docs/design/batches.md`` (section ``issuance.batches.deliveries``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec import ids
from cardspec.keyscheme import Algorithm, KeySlot
from hsm.errors import HsmError, KeyNotFound
from hsm.service import CardKeyRef, KeyService
from issuance import audit
from issuance.audit import Actor
from issuance.batches.selection import BATCH_STAFF
from issuance.errors import ConfigError, FieldProblem, PermissionDenied, ValidationError
from issuance.models import (
    CardAlgorithm,
    StockChip,
    StockChipStatus,
    StockRefusal,
    StockRejection,
    utcnow,
)

_SERIAL = re.compile(r"^[0-9A-F]{16}$")
_KCV = re.compile(r"^[0-9A-F]{6}$")
_SUPPLIER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
#: Problems listed in full before "... and N more".
MAX_PROBLEMS = 25
#: Delivery files larger than this are refused (a million chips is ~40 MB of CSV).
MAX_FILE_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class DeliveredChip:
    serial: str
    lot: str
    kmc_kcv: str | None = None
    klk_kcv: str | None = None
    where: str = ""
    """Where in the file (``line 12``, ``chips[3]``), for problems."""


@dataclass
class Delivery:
    supplier: str
    algorithm: Algorithm
    key_version: int
    chips: list[DeliveredChip]
    source: str = ""
    sha256: str = ""

    @property
    def lots(self) -> list[str]:
        return sorted({c.lot for c in self.chips})


@dataclass
class ImportResult:
    supplier: str
    lots: list[str]
    algorithm: Algorithm
    key_version: int
    chips: int
    kcvs_checked: int
    written: bool


@dataclass
class LotStatus:
    supplier: str
    lot: str
    algorithm: str
    key_version: int
    counts: dict[StockChipStatus, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class StockStatus:
    lots: list[LotStatus]
    refused: dict[StockRefusal, int]
    recent_refusals: list[StockRejection]

    def total(self, status: StockChipStatus) -> int:
        return sum(lot.counts.get(status, 0) for lot in self.lots)


class _Problems:
    def __init__(self) -> None:
        self.items: list[FieldProblem] = []
        self.count = 0

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(FieldProblem(where, reason))

    def raise_if_any(self, message: str) -> None:
        if not self.count:
            return
        items = list(self.items)
        if self.count > len(items):
            items.append(FieldProblem("...", f"and {self.count - len(items)} more"))
        raise ValidationError(message, items)


def _agree(what: str, from_file: Any, option: Any, problems: _Problems) -> Any:
    if from_file is not None and option is not None and str(from_file) != str(option):
        problems.add(what, f"the file says {from_file!r}, the command line {option!r}")
    return from_file if from_file is not None else option


def _norm(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text.upper() if text else None


def parse_delivery(
    path: Path,
    supplier: str,
    *,
    lot: str | None = None,
    algorithm: Algorithm | str | None = None,
    key_version: int | None = None,
) -> Delivery:
    """Read and check a delivery file (see the module docstring); raise
    :class:`ValidationError` listing every problem."""
    problems = _Problems()
    if not _SUPPLIER.match(supplier):
        raise ValidationError(
            "invalid supplier",
            [FieldProblem("supplier", "1-40 lower-case letters, digits, '-' or '_'")],
        )
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ValidationError(
                f"delivery file {path} is too large",
                [FieldProblem("file", f"{size} bytes, at most {MAX_FILE_BYTES}")],
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise ValidationError(
            f"cannot read delivery file {path}", [FieldProblem("file", str(exc))]
        ) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError(
            f"delivery file {path} is not UTF-8",
            [FieldProblem("file", f"byte {exc.start}: not UTF-8")],
        ) from exc
    if path.suffix.lower() == ".json":
        header, rows = _json_rows(text, problems)
    elif path.suffix.lower() == ".csv":
        header, rows = _csv_rows(text, problems)
    else:
        raise ValidationError(
            f"delivery file {path}", [FieldProblem("file", "name must end in .json or .csv")]
        )
    file_supplier = header.get("supplier")
    if file_supplier is not None and str(file_supplier).strip() != supplier:
        problems.add("supplier", f"the file is from {file_supplier!r}, not {supplier!r}")
    alg_value = _agree("algorithm", header.get("algorithm"), algorithm, problems) or "3des"
    try:
        alg = Algorithm(str(alg_value).lower())
    except ValueError:
        problems.add("algorithm", f"{alg_value!r} is not 3des, aes or sm4")
        alg = Algorithm.DES3
    version_value = _agree("key_version", header.get("key_version"), key_version, problems)
    try:
        version = int(version_value) if version_value is not None else 1
        if version < 1:
            raise ValueError
    except (TypeError, ValueError):
        problems.add("key_version", f"{version_value!r} is not a key set version (1, 2, ...)")
        version = 1
    file_lot = header.get("lot")
    chips: list[DeliveredChip] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        serial = _norm(row.get("serial"))
        row_lot = _agree(f"{where}: lot", row.get("lot") or file_lot, lot, problems)
        row_lot = str(row_lot).strip() if row_lot is not None else ""
        if file_supplier is None and row.get("supplier") not in (None, "", supplier):
            problems.add(where, f"supplier {row.get('supplier')!r} is not {supplier!r}")
        if serial is None or not _SERIAL.match(serial):
            problems.add(where, f"chip serial {row.get('serial')!r} is not 16 hex characters")
            continue
        if serial in seen:
            problems.add(where, f"chip serial {serial} also at {seen[serial]}")
            continue
        seen[serial] = where
        if not row_lot or len(row_lot) > 64:
            problems.add(where, "a lot of 1-64 characters is needed (column, file or --lot)")
        kcvs = {}
        for name in ("kmc_kcv", "klk_kcv"):
            kcv = _norm(row.get(name))
            if kcv is not None and not _KCV.match(kcv):
                problems.add(where, f"{name} {row.get(name)!r} is not 6 hex characters")
            kcvs[name] = kcv
        chips.append(DeliveredChip(serial, row_lot, kcvs["kmc_kcv"], kcvs["klk_kcv"], where))
    if not chips and not problems.count:
        problems.add("chips", "the delivery lists no chips")
    problems.raise_if_any(f"delivery file {path} refused, nothing imported")
    return Delivery(supplier, alg, version, chips, str(path), hashlib.sha256(raw).hexdigest())


def _json_rows(
    text: str, problems: _Problems
) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            "delivery file is not JSON",
            [FieldProblem(f"line {exc.lineno} column {exc.colno}", exc.msg)],
        ) from exc
    if not isinstance(doc, dict):
        raise ValidationError("delivery file", [FieldProblem("file", "not a JSON object")])
    unknown = set(doc) - {"supplier", "lot", "algorithm", "key_version", "chips", "serials"}
    for key in sorted(unknown):
        problems.add(key, "unknown field")
    rows: list[tuple[str, dict[str, Any]]] = []
    if "chips" in doc and "serials" in doc:
        problems.add("chips", "give chips or serials, not both")
    if isinstance(doc.get("serials"), list):
        rows = [(f"serials[{i}]", {"serial": s}) for i, s in enumerate(doc["serials"])]
    elif isinstance(doc.get("chips"), list):
        for i, chip in enumerate(doc["chips"]):
            if not isinstance(chip, dict):
                problems.add(f"chips[{i}]", "not an object")
                continue
            for key in sorted(set(chip) - {"serial", "lot", "kmc_kcv", "klk_kcv"}):
                problems.add(f"chips[{i}].{key}", "unknown field")
            rows.append((f"chips[{i}]", chip))
    else:
        problems.add("chips", "a list of chips (or serials) is needed")
    header = {k: doc.get(k) for k in ("supplier", "lot", "algorithm", "key_version")}
    return header, rows


def _csv_rows(
    text: str, problems: _Problems
) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    if "serial" not in columns:
        raise ValidationError(
            "delivery file", [FieldProblem("line 1", "a header line with a serial column")]
        )
    for col in columns:
        if col not in ("serial", "lot", "supplier", "kmc_kcv", "klk_kcv"):
            problems.add(f"line 1: {col}", "unknown column")
    reader.fieldnames = columns
    rows = []
    for record in reader:
        if not any((v or "").strip() for v in record.values() if isinstance(v, str)):
            continue
        if None in record:  # more fields than the header
            problems.add(f"line {reader.line_num}", "more fields than the header")
        rows.append((f"line {reader.line_num}", {k: v for k, v in record.items() if k}))
    return {}, rows


def _chunks(values: list[str], size: int = 500) -> Iterable[list[str]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def chip_key_ref(
    region_code: str, serial: str, algorithm: Algorithm, maker: tuple[str, int]
) -> CardKeyRef:
    """The key reference of a delivered blank chip (only its KMC and KLK are used)."""
    code = ids.make_card_identification_code(region_code, bytes.fromhex(serial))
    return CardKeyRef(code, 1, algorithm, chip_maker=maker)


def chip_kcvs(
    key_service: KeyService, region_code: str, chip: DeliveredChip, delivery: Delivery
) -> tuple[str, str]:
    """(KMC KCV, KLK KCV) of a delivered chip, derived in the HSM from the supplier's key set."""
    ref = chip_key_ref(region_code, chip.serial, delivery.algorithm,
                       (delivery.supplier, delivery.key_version))  # fmt: skip
    with key_service.card_crypto(ref) as crypto:
        kmc = crypto.kcv(KeySlot.KMC)
        klk_kcv = getattr(crypto, "klk_kcv", None)
        if klk_kcv is None:
            raise ConfigError("this key service cannot check key-loading keys")
        klk = klk_kcv()
    return kmc.hex().upper(), bytes(klk).hex().upper()


def import_delivery(
    session: Session,
    key_service: KeyService,
    region_code: str,
    delivery: Delivery,
    actor: Actor,
    *,
    write: bool = True,
) -> ImportResult:
    """Check ``delivery`` against the stock and the HSM and (``write``) record its chips as
    available, with one audit event per lot, in the caller's transaction (see the module
    docstring). Raises :class:`ValidationError` listing every problem; nothing is written
    then."""
    if actor.role not in BATCH_STAFF:
        raise PermissionDenied(f"role {actor.role} may not import blank chip deliveries")
    problems = _Problems()
    where_of = {c.serial: c.where for c in delivery.chips}
    known: dict[str, tuple[str, str]] = {}
    for chunk in _chunks(list(where_of)):
        for serial, lot, supplier in session.execute(
            sa.select(StockChip.chip_serial, StockChip.lot, StockChip.supplier).where(
                StockChip.chip_serial.in_(chunk)
            )
        ):
            known[serial] = (lot, supplier)
    for chip in delivery.chips:  # in file order
        if chip.serial in known:
            lot, supplier = known[chip.serial]
            problems.add(
                chip.where, f"chip {chip.serial} is already in stock (lot {lot} of {supplier})"
            )
    problems.raise_if_any(f"delivery {delivery.source} refused, nothing imported")
    # the supplier's key set must be in the HSM; KCVs given by the supplier must match it
    checked = 0
    maker = f"{delivery.supplier} v{delivery.key_version}"
    for n, chip in enumerate(delivery.chips):
        if n and chip.kmc_kcv is None and chip.klk_kcv is None:
            continue
        try:
            kmc, klk = chip_kcvs(key_service, region_code, chip, delivery)
        except KeyNotFound as exc:
            raise ConfigError(
                f"the HSM has no delivery key set {maker} ({exc}): import it first with "
                f"`ykt hsm import kmc --supplier {delivery.supplier} --algorithm "
                f"{delivery.algorithm.value} --version {delivery.key_version}` and `ykt hsm "
                f"import klk --supplier {delivery.supplier} --algorithm {delivery.algorithm.value} "
                f"--version {delivery.key_version}`"
            ) from exc
        except HsmError as exc:
            raise ConfigError(f"cannot check the delivery in the HSM: {exc}") from exc
        for name, given, actual in (("KMC", chip.kmc_kcv, kmc), ("KLK", chip.klk_kcv, klk)):
            if given is None:
                continue
            checked += 1
            if given != actual:
                problems.add(chip.where, f"chip {chip.serial}: {name} KCV {given} does not "
                             f"match the key set {maker} in the HSM")  # fmt: skip
    problems.raise_if_any(f"delivery {delivery.source} refused, nothing imported")
    result = ImportResult(delivery.supplier, delivery.lots, delivery.algorithm,
                          delivery.key_version, len(delivery.chips), checked, write)  # fmt: skip
    if not write:
        return result
    now = utcnow()
    session.execute(
        sa.insert(StockChip),
        [
            {
                "chip_serial": c.serial, "lot": c.lot, "supplier": delivery.supplier,
                "key_version": delivery.key_version,
                "algorithm": CardAlgorithm(delivery.algorithm.value), "kmc_kcv": c.kmc_kcv,
                "status": StockChipStatus.AVAILABLE, "imported_at": now,
            }
            for c in delivery.chips
        ],
    )  # fmt: skip
    for lot in delivery.lots:
        audit.record(
            session, actor, "stock.delivery_imported", "stock_lot", lot,
            details={"supplier": delivery.supplier, "algorithm": delivery.algorithm.value,
                     "key_version": delivery.key_version,
                     "chips": sum(1 for c in delivery.chips if c.lot == lot),
                     "kcvs_checked": checked, "file_sha256": delivery.sha256},
        )  # fmt: skip
    return result


def stock_status(session: Session, *, supplier: str | None = None, recent: int = 10) -> StockStatus:
    """Chips in stock by supplier and lot and status; refusals by reason, the latest ones."""
    where = [StockChip.supplier == supplier] if supplier else []
    lots: dict[tuple[str, str, str, int], LotStatus] = {}
    for sup, lot, alg, version, status, n in session.execute(
        sa.select(StockChip.supplier, StockChip.lot, StockChip.algorithm, StockChip.key_version,
                  StockChip.status, sa.func.count())
        .where(*where)
        .group_by(StockChip.supplier, StockChip.lot, StockChip.algorithm,
                  StockChip.key_version, StockChip.status)
    ):  # fmt: skip
        key = (sup, lot, str(alg), int(version))
        entry = lots.setdefault(key, LotStatus(sup, lot, str(alg), int(version)))
        entry.counts[StockChipStatus(status)] = int(n)
    refused = {
        StockRefusal(reason): int(n)
        for reason, n in session.execute(
            sa.select(StockRejection.reason, sa.func.count()).group_by(StockRejection.reason)
        )
    }
    latest = list(
        session.scalars(
            sa.select(StockRejection).order_by(StockRejection.id.desc()).limit(max(0, recent))
        )
    )
    return StockStatus([lots[k] for k in sorted(lots)], refused, latest)
