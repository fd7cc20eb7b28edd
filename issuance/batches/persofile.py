"""The in-house perso file: data preparation's output for this card centre's own stations.

Design notes: ``docs/design/batches.md`` (section ``issuance.batches.persofile``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cardspec import perso
from cardspec.crypto import CardCrypto
from cardspec.ids import parse_card_number
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.reader import Reader
from cardspec.script import PersoScript, ScriptMismatch, run_script
from hsm.errors import SignatureInvalid
from hsm.export import FileKek
from hsm.prep import RecordCrypto
from hsm.service import verify_signature
from issuance.errors import IntegrityError
from readers.pcsc import PcscReader

FORMAT = "ykt-perso/1"
_SEGMENTS = 4  # verified segments kept in memory per process (a station reads one at a time)


class BureauFileInvalid(IntegrityError):
    """A bureau file failed verification (format, sequence, count, digest or signature);
    ``line`` is the 1-based line number where it was detected (0: the file as a whole)."""

    code = "bureau_file_invalid"

    def __init__(self, message: str, *, line: int = 0) -> None:
        super().__init__(message if not line else f"line {line}: {message}", line=line)
        self.line = line


class PersoRecordInvalid(IntegrityError):
    """A perso file segment or record failed a check (missing, altered, not this chip's)."""

    code = "perso_record_invalid"


def perso_dir(data_dir: Path) -> Path:
    return data_dir / "perso"


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _statement(segment: str, batch_id: int, count: int, digest: str) -> bytes:
    return f"{FORMAT}|{segment}|{batch_id}|{count}|{digest}".encode("ascii")


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordFile:
    """One EF's records, as a perso record and a bureau file card carry them."""

    df: str
    ef: str
    sfi: int
    records: tuple[bytes, ...] = field(repr=False)


@dataclass(frozen=True)
class RecordKey:
    slot: KeySlot
    key_id: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class RecordPin:
    name: str
    df: str
    ref: int
    encrypted: bytes = field(repr=False)


@dataclass(frozen=True)
class PersoRecord:
    """One card's perso script (a card line of a segment). Shaped like
    :class:`issuance.batches.bureau.BureauCard` so the same APDU sequence runs both."""

    segment: str
    seq: int
    item_id: int
    card_id: int
    chip_serial: str
    card_identification_code: str
    card_number: str
    profile_name: str
    algorithm: Algorithm
    key_version: int
    perso_key: str
    kek: FileKek = field(repr=False)
    kmc_wrapped: bytes = field(repr=False)
    files: tuple[RecordFile, ...] = field(repr=False)
    keys: tuple[RecordKey, ...] = field(repr=False)
    pins: tuple[RecordPin, ...] = field(repr=False)

    def write_keys(self) -> dict[KeySlot, bytes]:
        return {k.slot: k.payload for k in self.keys}


_QUOTED: dict[str, str] = {}


def json_str(value: str) -> str:
    """``json.dumps(value, ensure_ascii=False)``, without its per-call cost for the plain
    ASCII identifiers a card line is made of."""
    quoted = _QUOTED.get(value)
    if quoted is None:
        if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
            quoted = f'"{value}"'
        else:
            quoted = json.dumps(value, ensure_ascii=False)
        if len(_QUOTED) < 4096 and len(value) <= 12:  # profile names, slots, DF/EF names
            _QUOTED[value] = quoted
    return quoted


def card_line(
    seq: int,
    *,
    item_id: int,
    card_id: int,
    chip_serial: str,
    cic: str,
    card_number: str,
    profile: str,
    algorithm: str,
    key_version: int,
    files: Sequence[tuple[str, str, int, Sequence[bytes]]],
    kmc_wrapped: bytes,
    keys: Sequence[tuple[str, int, bytes]],
    pins: Sequence[tuple[str, str, int, bytes]],
) -> bytes:
    """One card line (see the module docstring), built directly as text: the same JSON as
    ``json.dumps`` of the object, a few times faster (a line per card, millions per batch)."""
    f = ",".join(
        f'{{"df":{json_str(df)},"ef":{json_str(ef)},"sfi":{sfi:d},"records":['
        + ",".join(f'"{r.hex()}"' for r in recs)
        + "]}"
        for df, ef, sfi, recs in files
    )
    k = ",".join(
        f'{{"slot":{json_str(slot)},"key_id":{key_id:d},"payload":"{payload.hex()}"}}'
        for slot, key_id, payload in keys
    )
    p = ",".join(
        f'{{"name":{json_str(name)},"df":{json_str(df)},"ref":{ref:d},"payload":"{payload.hex()}"}}'
        for name, df, ref, payload in pins
    )
    return (
        f'{{"type":"card","seq":{seq:d},"item_id":{item_id:d},"card_id":{card_id:d},'
        f'"chip_serial":{json_str(chip_serial)},"cic":{json_str(cic)},'
        f'"card_number":{json_str(card_number)},"profile":{json_str(profile)},'
        f'"algorithm":{json_str(algorithm)},"key_version":{key_version:d},"files":[{f}],'
        f'"kmc":"{kmc_wrapped.hex()}","keys":[{k}],"pins":[{p}]}}\n'
    ).encode()


class CardLineTemplate:
    """:func:`card_line` for cards of one shape (profile, algorithm, the files, key slots and
    PINs in their order): the constant JSON around the per-card values made once. The same
    bytes as :func:`card_line` (tested)."""

    def __init__(
        self,
        profile: str,
        algorithm: str,
        files: Sequence[tuple[str, str, int]],
        keys: Sequence[tuple[str, int]],
        pins: Sequence[tuple[str, str, int]],
    ) -> None:
        self._files = tuple(
            f'{{"df":{json_str(df)},"ef":{json_str(ef)},"sfi":{sfi:d},"records":['
            for df, ef, sfi in files
        )
        self._keys = tuple(
            f'{{"slot":{json_str(slot)},"key_id":{key_id:d},"payload":"' for slot, key_id in keys
        )
        self._pins = tuple(
            f'{{"name":{json_str(name)},"df":{json_str(df)},"ref":{ref:d},"payload":"'
            for name, df, ref in pins
        )
        self._profile = (
            f'"profile":{json_str(profile)},"algorithm":{json_str(algorithm)},"key_version":'
        )
        # the same heads with the comma before every one but the first: the line is one join
        self._file_heads = tuple(("," if i else "") + h for i, h in enumerate(self._files))
        self._key_heads = tuple(("," if i else "") + h for i, h in enumerate(self._keys))
        self._pin_heads = tuple(("," if i else "") + h for i, h in enumerate(self._pins))

    def line(
        self,
        seq: int,
        *,
        item_id: int,
        card_id: int,
        chip_serial: str,
        cic: str,
        card_number: str,
        key_version: int,
        records: Collection[Sequence[bytes]],
        kmc_wrapped: bytes,
        key_payloads: Collection[bytes],
        pin_payloads: Collection[bytes],
    ) -> bytes:
        """The card line: ``records`` of each file, ``key_payloads`` of each slot,
        ``pin_payloads`` of each PIN, in the template's order."""
        if not (len(records) == len(self._files) and len(key_payloads) == len(self._keys)
                and len(pin_payloads) == len(self._pins)):  # fmt: skip
            raise ValueError("card line values do not match the template")
        parts = [
            f'{{"type":"card","seq":{seq:d},"item_id":{item_id:d},"card_id":{card_id:d},'
            f'"chip_serial":{json_str(chip_serial)},"cic":{json_str(cic)},'
            f'"card_number":{json_str(card_number)},{self._profile}{key_version:d},"files":['
        ]
        add = parts.append
        for head, recs in zip(self._file_heads, records, strict=True):
            add(head)
            add('"' + '","'.join([r.hex() for r in recs]) + '"]}' if recs else "]}")
        add('],"kmc":"' + kmc_wrapped.hex() + '","keys":[')
        for head, payload in zip(self._key_heads, key_payloads, strict=True):
            add(head + payload.hex() + '"}')
        add('],"pins":[')
        for head, payload in zip(self._pin_heads, pin_payloads, strict=True):
            add(head + payload.hex() + '"}')
        add("]}\n")
        return "".join(parts).encode()


# --- writer -----------------------------------------------------------------------------------


class SegmentWriter:
    """One segment: card lines collected in memory (a chunk), then :meth:`finish` writes,
    signs, fsyncs and renames it into place. :attr:`offsets` gives each line's byte offset."""

    def __init__(
        self, data_dir: Path, batch_id: int, first_item_id: int, perso_key: str, kek: FileKek,
        signer_fp: str,
    ) -> None:  # fmt: skip
        self.batch_id = batch_id
        self.name = f"{batch_id}/{first_item_id:010d}-{uuid.uuid4().hex[:12]}.jsonl"
        self.path = perso_dir(data_dir) / self.name
        header = _dumps(
            {
                "type": "header", "format": FORMAT, "segment": self.name, "batch_id": batch_id,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "perso_key": perso_key,
                "kek": {"kek": kek.kek_id, "wrapped": kek.wrapped.hex(), "kcv": kek.kcv.hex()},
                "signer": signer_fp,
            }
        )  # fmt: skip
        self._parts: list[bytes] = [header]
        self._size = len(header)
        self._digest = hashlib.sha256(header)
        self.count = 0

    def add(self, line: bytes) -> int:
        """Append a card line; returns its offset in the segment."""
        offset = self._size
        self._parts.append(line)
        self._digest.update(line)
        self._size += len(line)
        self.count += 1
        return offset

    def statement(self) -> bytes:
        return _statement(self.name, self.batch_id, self.count, self._digest.hexdigest())

    def finish(self, signature: bytes) -> Path:
        trailer = _dumps(
            {
                "type": "trailer", "count": self.count, "sha256": self._digest.hexdigest(),
                "signature": base64.b64encode(signature).decode("ascii"),
            }
        )  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        part = self.path.with_name(self.path.name + ".part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(b"".join(self._parts))
                out.write(trailer)
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        self._parts = []
        return self.path


# --- reader (station) -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    data: bytes
    header: dict[str, Any]
    stamp: tuple[int, int]


_CACHE: OrderedDict[str, _Segment] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersoRecordInvalid(f"{what}: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise PersoRecordInvalid(f"{what}: not a JSON object")
    return obj


def _verified(path: Path, name: str, batch_id: int, public_pem: bytes) -> _Segment:
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError as exc:
        raise PersoRecordInvalid(f"perso segment {name} is missing ({exc.strerror})") from None
    with _CACHE_LOCK:
        seg = _CACHE.get(name)
        if seg is not None and seg.stamp == stamp:
            _CACHE.move_to_end(name)
    if seg is not None and seg.stamp == stamp:
        if seg.header.get("batch_id") != batch_id:
            raise PersoRecordInvalid(f"{name}: the header names another segment or batch")
        return seg
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PersoRecordInvalid(f"perso segment {name} unreadable ({exc.strerror})") from None
    if not data.endswith(b"\n"):
        raise PersoRecordInvalid(f"perso segment {name} is truncated")
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1
    header = _object(data[: data.index(b"\n") + 1], f"{name} header")
    trailer = _object(data[cut:], f"{name} trailer")
    if header.get("format") != FORMAT or header.get("type") != "header":
        raise PersoRecordInvalid(f"{name}: not a {FORMAT} segment")
    if header.get("segment") != name or header.get("batch_id") != batch_id:
        raise PersoRecordInvalid(f"{name}: the header names another segment or batch")
    if trailer.get("type") != "trailer":
        raise PersoRecordInvalid(f"{name}: no trailer (incomplete segment)")
    digest = hashlib.sha256(data[:cut]).hexdigest()
    if not hmac.compare_digest(str(trailer.get("sha256", "")), digest):
        raise PersoRecordInvalid(f"{name}: digest does not match the content (altered)")
    count = data.count(b"\n", 0, cut) - 1
    if trailer.get("count") != count:
        raise PersoRecordInvalid(
            f"{name}: trailer says {trailer.get('count')!r} cards, has {count}"
        )
    try:
        signature = base64.b64decode(str(trailer.get("signature", "")), validate=True)
        verify_signature(public_pem, _statement(name, batch_id, count, digest), signature)
    except (ValueError, SignatureInvalid) as exc:
        raise PersoRecordInvalid(f"{name}: signature does not verify ({exc})") from exc
    seg = _Segment(data, header, stamp)
    with _CACHE_LOCK:
        _CACHE[name] = seg
        while len(_CACHE) > _SEGMENTS:
            _CACHE.popitem(last=False)
    return seg


def load_record(
    data_dir: Path,
    segment: str,
    offset: int,
    public_pem: bytes,
    *,
    batch_id: int,
    item_id: int,
    card_id: int,
    chip_serial: str,
) -> PersoRecord:
    """The perso record at ``offset`` of ``segment``, after checking the segment (digest,
    signature) and that the record is the one of this item, card and chip. Raises
    :class:`PersoRecordInvalid`."""
    if ".." in Path(segment).parts or Path(segment).is_absolute():
        raise PersoRecordInvalid(f"perso segment name {segment!r} leaves the perso directory")
    seg = _verified(perso_dir(data_dir) / segment, segment, batch_id, public_pem)
    data = seg.data
    if not 0 < offset < len(data) or data[offset - 1 : offset] != b"\n":
        raise PersoRecordInvalid(f"{segment}: no record at offset {offset}")
    end = data.index(b"\n", offset) + 1
    obj = _object(data[offset:end], f"{segment}@{offset}")
    if obj.get("type") != "card":
        raise PersoRecordInvalid(f"{segment}: no record at offset {offset}")
    if (obj.get("item_id"), obj.get("card_id"), str(obj.get("chip_serial", "")).upper()) != (
        item_id, card_id, chip_serial.upper()
    ):  # fmt: skip
        raise PersoRecordInvalid(f"{segment}@{offset} is the record of another card or chip")
    kek = seg.header.get("kek") or {}
    try:
        return PersoRecord(
            segment=segment,
            seq=int(obj["seq"]),
            item_id=item_id,
            card_id=card_id,
            chip_serial=chip_serial.upper(),
            card_identification_code=str(obj["cic"]),
            card_number=parse_card_number(str(obj["card_number"])),
            profile_name=str(obj["profile"]),
            algorithm=Algorithm(obj["algorithm"]),
            key_version=int(obj["key_version"]),
            perso_key=str(seg.header["perso_key"]),
            kek=FileKek(int(kek["kek"]), bytes.fromhex(kek["wrapped"]), bytes.fromhex(kek["kcv"])),
            kmc_wrapped=bytes.fromhex(obj["kmc"]),
            files=tuple(
                RecordFile(
                    str(f["df"]),
                    str(f["ef"]),
                    int(f["sfi"]),
                    tuple(bytes.fromhex(r) for r in f["records"]),
                )
                for f in obj["files"]
            ),
            keys=tuple(
                RecordKey(KeySlot(k["slot"]), int(k["key_id"]), bytes.fromhex(k["payload"]))
                for k in obj["keys"]
            ),
            pins=tuple(
                RecordPin(str(p["name"]), str(p["df"]), int(p["ref"]), bytes.fromhex(p["payload"]))
                for p in obj["pins"]
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PersoRecordInvalid(f"{segment}@{offset}: malformed record ({exc!r})") from None


def bureau_personalise(
    reader: Reader, card: PersoScript, crypto: CardCrypto, *, connect: bool = True
) -> perso.PersoResult:
    """Run a bureau file line or a perso record (:func:`cardspec.script.run_script`);
    :class:`BureauFileInvalid` when its algorithm is not its profile's."""
    try:
        return run_script(reader, card, crypto, connect=connect)
    except ScriptMismatch as exc:
        raise BureauFileInvalid(str(exc)) from exc


def personalise(reader: PcscReader, record: PersoRecord, crypto: RecordCrypto) -> perso.PersoResult:
    """Run ``record``'s script on the blank chip in a station's PC/SC ``reader`` (one PC/SC
    transaction), ``crypto`` the card's :class:`hsm.prep.RecordCrypto`: the same lean APDU
    sequence as :func:`cardspec.perso.personalise` (:func:`bureau_personalise` runs it)."""
    reader.connect()
    try:
        with reader.transaction(), crypto:
            return bureau_personalise(reader, record, crypto, connect=False)
    finally:
        reader.disconnect()


def personalise_in_process(
    reader: Reader, record: PersoRecord, crypto: RecordCrypto
) -> perso.PersoResult:
    """The same on a reader without PC/SC transactions (an in-process emulated chip)."""
    with crypto:
        return bureau_personalise(reader, record, crypto)


def remove_batch_files(data_dir: Path, batch_id: int) -> int:
    """Delete a batch's perso segments (after the batch is produced); returns how many."""
    directory = perso_dir(data_dir) / str(batch_id)
    n = 0
    if directory.is_dir():
        for f in directory.iterdir():
            f.unlink(missing_ok=True)
            n += 1
        directory.rmdir()
    return n
