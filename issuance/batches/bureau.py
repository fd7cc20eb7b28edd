"""The card-bureau path of data preparation: the bureau file out, the bureau's result back.

Design notes: ``docs/design/batches.md`` (section ``issuance.batches.bureau``).
"""

from __future__ import annotations

import array
import base64
import hashlib
import hmac
import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from cardspec import keyscheme, perso
from cardspec.ids import parse_card_number
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import CardProfile, get_profile
from hsm.ceremony import transport_label
from hsm.errors import SignatureInvalid
from hsm.export import BureauExport, FileKek
from hsm.service import BureauExporter, CardKeyRef, KeyService, verify_signature
from issuance import audit, lifecycle
from issuance.batches.persofile import BureauFileInvalid, RecordFile, bureau_personalise, json_str
from issuance.db import bind_value, copies, insert_rows, one_of
from issuance.errors import ConflictError, IntegrityError, NotFound, ValidationError
from issuance.models import AuditEvent, BatchItem, BatchStage, utcnow
from printers.prepared import PreparedCard

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from issuance.audit import Actor

FORMAT = "ykt-bureau-perso/2"
KEY_WRAP = "AES-KWP RFC 5649: card keys under the file KEK, the KEK under the transport key"
PIN_ENCRYPTION = "ECB(card KMC, LD||block||80..)"
_BUFFER = 1 << 20


# --- errors -----------------------------------------------------------------------------------


class BureauKeyCheckFailed(IntegrityError):
    """An unwrapped card key does not match the KCV the issuer put beside it."""

    code = "bureau_key_check_failed"


# --- file model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BureauFileInfo:
    """What :func:`write_bureau_file` wrote / :func:`verify_bureau_file` verified."""

    path: Path
    file_id: str
    batch: str
    transport_key: str
    count: int
    sha256: str
    signer: str


@dataclass(frozen=True)
class BureauKey:
    slot: KeySlot
    df: str
    key_id: int
    wrapped: bytes = field(repr=False)
    kcv: bytes


@dataclass(frozen=True)
class BureauPin:
    name: str
    df: str
    ref: int
    under: KeySlot
    encrypted: bytes = field(repr=False)


@dataclass(frozen=True)
class BureauKek:
    """A file KEK line: the KEK wrapped under the bureau transport key, and its KCV."""

    kek_id: int
    wrapped: bytes = field(repr=False)
    kcv: bytes


@dataclass(frozen=True)
class BureauKlk:
    """The chip's key-loading key, wrapped under the card line's KEK, and its KCV."""

    wrapped: bytes = field(repr=False)
    kcv: bytes


@dataclass(frozen=True)
class BureauCard:
    """One card line of a bureau file, as the bureau reads it (with the KEK its keys are
    wrapped under)."""

    seq: int
    kek: BureauKek
    card_id: int
    chip_serial: str
    card_identification_code: str
    card_number: str
    profile_name: str
    algorithm: Algorithm
    key_version: int
    files: tuple[RecordFile, ...] = field(repr=False)
    keys: tuple[BureauKey, ...] = field(repr=False)
    pins: tuple[BureauPin, ...] = field(repr=False)
    klk: BureauKlk = field(repr=False, default=BureauKlk(b"", b""))

    def key(self, slot: KeySlot) -> BureauKey:
        for k in self.keys:
            if k.slot is slot:
                return k
        raise BureauFileInvalid(f"card {self.card_id}: no {slot.value} key in the file")


def signer_fingerprint(public_pem: bytes) -> str:
    """SHA-256 (hex) of the SubjectPublicKeyInfo DER of a PEM public key."""
    key = serialization.load_pem_public_key(public_pem)
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _statement(file_id: str, count: int, digest: str) -> bytes:
    return f"{FORMAT}|{file_id}|{count}|{digest}".encode("ascii")


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# --- writer (issuer side) ---------------------------------------------------------------------


def card_body(
    *,
    card_id: int,
    chip_serial: str,
    cic: str,
    card_number: str,
    profile: CardProfile,
    ref: CardKeyRef,
    plan: Mapping[str, Sequence[bytes]],
    export: BureauExport,
) -> bytes:
    """A card line without its ``type``, ``seq`` and ``kek`` (the writer adds them), from the
    card's records and its keys as the HSM exported them."""
    key_specs = {spec.slot: (df, spec) for df, spec in profile.key_specs()}
    ef_paths = {ef.name: (df, ef.sfi) for df, ef in profile.files()}
    pin_specs = list(profile.pin_specs())
    slots = [KeySlot.KMC, *(s for s in export.wrapped if s is not KeySlot.KMC)]
    return _dumps(
        {
            "card_id": card_id,
            "chip_serial": chip_serial.upper(),
            "cic": cic,
            "card_number": card_number,
            "profile": profile.name,
            "algorithm": ref.algorithm.value,
            "key_version": ref.key_version,
            "files": [
                {"df": ef_paths[name][0], "ef": name, "sfi": ef_paths[name][1],
                 "records": [r.hex() for r in records]}
                for name, records in plan.items()
            ],
            "keys": [
                {"slot": slot.value, "df": key_specs[slot][0], "key_id": key_specs[slot][1].key_id,
                 "wrapped": export.wrapped[slot].hex(), "kcv": export.kcvs[slot].hex()}
                for slot in slots
            ],
            "klk": {"wrapped": export.klk_wrapped.hex(), "kcv": export.klk_kcv.hex()},
            "pins": [
                {"name": spec.name, "df": df, "ref": spec.ref, "under": KeySlot.KMC.value,
                 "encrypted": enc.hex()}
                for (df, spec), enc in zip(pin_specs, export.encrypted, strict=True)
            ],
        }
    )  # fmt: skip


def _fragment(obj: Mapping[str, Any]) -> str:
    """``_dumps(obj)`` as text without its closing ``}`` and newline: the start of an object
    whose further members a template appends."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))[:-1]


class CardBodyTemplate:
    """:func:`card_body` for the cards of one shape (profile, the files in their order, the
    exported key slots in theirs): the profile looked up once and the JSON around the
    per-card values made once (the key specs, file paths and PIN specs are the same for every
    card of a batch). The same bytes as :func:`card_body` (a Hypothesis test, and data
    preparation checks the first card of each chunk)."""

    def __init__(
        self, profile: CardProfile, files: Sequence[str], slots: Sequence[KeySlot]
    ) -> None:
        key_specs = {spec.slot: (df, spec) for df, spec in profile.key_specs()}
        ef_paths = {ef.name: (df, ef.sfi) for df, ef in profile.files()}
        self.files = tuple(files)
        #: the exported slots as :func:`card_body` orders them: KMC first
        self.export_slots = tuple(slots)
        self.slots = (KeySlot.KMC, *(s for s in self.export_slots if s is not KeySlot.KMC))
        self._profile = _fragment({"profile": profile.name})[1:]
        self._files = tuple(
            _fragment({"df": ef_paths[name][0], "ef": name, "sfi": ef_paths[name][1]})
            + ',"records":['
            for name in self.files
        )
        self._keys = tuple(
            _fragment({"slot": slot.value, "df": key_specs[slot][0],
                       "key_id": key_specs[slot][1].key_id}) + ',"wrapped":"'
            for slot in self.slots
        )  # fmt: skip
        self._pins = tuple(
            _fragment({"name": spec.name, "df": df, "ref": spec.ref,
                       "under": KeySlot.KMC.value}) + ',"encrypted":"'
            for df, spec in profile.pin_specs()
        )  # fmt: skip

    def body(
        self,
        *,
        card_id: int,
        chip_serial: str,
        cic: str,
        card_number: str,
        ref: CardKeyRef,
        records: Sequence[Sequence[bytes]],
        export: BureauExport,
    ) -> bytes:
        """The card body of :func:`card_body`: ``records`` of each of the template's files in
        its order, ``export`` with the template's slots (in their order)."""
        if len(records) != len(self._files) or tuple(export.wrapped) != self.export_slots:
            raise ValueError("card body values do not match the template")
        wrapped, kcvs = export.wrapped, export.kcvs
        f = ",".join(
            [head + ('"' + '","'.join([r.hex() for r in recs]) + '"]}' if recs else "]}")
             for head, recs in zip(self._files, records, strict=True)]
        )  # fmt: skip
        k = ",".join(
            [head + wrapped[slot].hex() + '","kcv":"' + kcvs[slot].hex() + '"}'
             for head, slot in zip(self._keys, self.slots, strict=True)]
        )  # fmt: skip
        p = ",".join(
            [
                head + enc.hex() + '"}'
                for head, enc in zip(self._pins, export.encrypted, strict=True)
            ]
        )
        return (
            f'{{"card_id":{card_id:d},"chip_serial":{json_str(chip_serial.upper())},'
            f'"cic":{json_str(cic)},"card_number":{json_str(card_number)},{self._profile},'
            f'"algorithm":{json_str(ref.algorithm.value)},"key_version":{ref.key_version:d},'
            f'"files":[{f}],"keys":[{k}],"klk":{{"wrapped":"{export.klk_wrapped.hex()}",'
            f'"kcv":"{export.klk_kcv.hex()}"}},"pins":[{p}]}}\n'
        ).encode()


class _CardEncoder:
    """Per-profile checks of a :class:`PreparedCard` before its line is written."""

    def __init__(self, profile: CardProfile) -> None:
        self.profile = profile
        self.key_specs = {spec.slot: (df, spec) for df, spec in profile.key_specs()}
        if KeySlot.KMC not in self.key_specs:
            raise ValidationError(f"profile {profile.name} declares no transport key (kmc)")
        self.pin_specs = list(profile.pin_specs())

    def body(self, card: PreparedCard, exporter: BureauExporter) -> tuple[int, bytes]:
        data = card.perso
        ref = card.key_ref
        if ref.algorithm is not self.profile.algorithm:
            raise ValidationError(
                f"card {card.card_id}: key algorithm {ref.algorithm.value} differs from "
                f"profile {self.profile.name}"
            )
        if ref.card_identification_code != data.card_identification_code:
            raise ValidationError(f"card {card.card_id}: key reference is for another card")
        data.validate()
        plan = perso.plan_records(data, self.profile)
        slots = [KeySlot.KMC, *(s for s in card.key_slots if s is not KeySlot.KMC)]
        for slot in slots:
            if slot not in self.key_specs:
                raise ValidationError(
                    f"card {card.card_id}: profile {self.profile.name} has no key {slot.value}"
                )
        blocks = perso.initial_pin_blocks(data, self.profile)
        export = exporter.export(ref, slots, blocks, KeySlot.KMC)
        return export.kek_id, card_body(
            card_id=card.card_id, chip_serial=card.chip_serial,
            cic=data.card_identification_code, card_number=data.card_number,
            profile=self.profile, ref=ref, plan=plan, export=export,
        )  # fmt: skip


class BureauFileWriter:
    """A bureau file being written (see the module docstring): header at once, KEK and card
    lines as they come (:meth:`add_chunk`, or :meth:`add`), trailer and signature in
    :meth:`finish`. Streamed: memory holds one chunk, plus 16 bytes per card (card id and
    chip serial, for :meth:`pairs`). The file is ``<path>.part`` until :meth:`finish`
    renames it; leaving the ``with`` block on an error removes it."""

    def __init__(
        self,
        path: Path,
        keys: KeyService,
        transport_key: str,
        *,
        batch: str = "",
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.label = transport_label(transport_key)
        self.file_id = uuid.uuid4().hex
        self.batch = batch
        self._keys = keys
        self._progress = progress
        self.signer = signer_fingerprint(keys.public_key_pem())
        self._digest = hashlib.sha256()
        self._part = self.path.with_name(self.path.name + ".part")
        # personal data: readable by this user only, like the perso file
        fd = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._out: IO[bytes] | None = os.fdopen(fd, "wb", buffering=_BUFFER)
        self.count = 0
        self._kek_no = 0
        self._kek_wrapped: bytes | None = None
        self._card_ids = array.array("q")
        self._serials = bytearray()
        self._write(_dumps({
            "type": "header", "format": FORMAT, "file_id": self.file_id, "batch": batch,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "transport_key": self.label, "key_wrap": KEY_WRAP, "pin_encryption": PIN_ENCRYPTION,
            "signer": self.signer,
        }))  # fmt: skip

    def __enter__(self) -> BureauFileWriter:
        return self

    def __exit__(self, et: type[BaseException] | None, *exc: object) -> None:
        if et is not None or self._out is not None:
            self.abort()

    def _write(self, line: bytes) -> None:
        assert self._out is not None, "the bureau file is closed"
        self._digest.update(line)
        self._out.write(line)

    def _kek(self, kek: FileKek) -> int:
        if kek.wrapped != self._kek_wrapped:
            self._kek_no += 1
            self._kek_wrapped = kek.wrapped
            self._write(_dumps({"type": "kek", "kek": self._kek_no, "wrapped": kek.wrapped.hex(),
                                "kcv": kek.kcv.hex()}))  # fmt: skip
        return self._kek_no

    def _card(self, kek_no: int, card_id: int, chip_serial: str, body: bytes) -> None:
        self.count += 1
        self._write(b'{"type":"card","seq":%d,"kek":%d,' % (self.count, kek_no) + body[1:])
        self._card_ids.append(card_id)
        self._serials += bytes.fromhex(chip_serial)

    def add_chunk(self, kek: FileKek, entries: Sequence[tuple[int, int, str, bytes]]) -> None:
        """Card lines whose keys are wrapped under ``kek``: ``(item id, card id, chip serial,
        body)`` with ``body`` from :func:`card_body`."""
        kek_no = self._kek(kek)
        for _item, card_id, serial, body in entries:
            self._card(kek_no, card_id, serial, body)
        if self._progress is not None:
            self._progress(self.count)

    def add(self, kek: FileKek, card_id: int, chip_serial: str, body: bytes) -> None:
        self._card(self._kek(kek), card_id, chip_serial, body)
        if self._progress is not None:
            self._progress(self.count)

    def pairs(self) -> Iterator[tuple[int, str]]:
        """(card id, chip serial) of every card line, in file order."""
        for n, card_id in enumerate(self._card_ids):
            yield card_id, self._serials[8 * n : 8 * n + 8].hex().upper()

    def finish(self) -> BureauFileInfo:
        hexdigest = self._digest.hexdigest()
        signature = self._keys.sign(_statement(self.file_id, self.count, hexdigest))
        assert self._out is not None
        sig = base64.b64encode(signature).decode("ascii")
        self._out.write(_dumps({"type": "trailer", "count": self.count, "sha256": hexdigest,
                                "signature": sig}))  # fmt: skip
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        self._out = None
        os.replace(self._part, self.path)
        return BureauFileInfo(self.path, self.file_id, self.batch, self.label, self.count,
                              hexdigest, self.signer)  # fmt: skip

    def abort(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
            self._part.unlink(missing_ok=True)


def write_bureau_file(
    path: Path,
    cards: Iterable[PreparedCard],
    keys: KeyService,
    transport_key: str,
    *,
    batch: str = "",
    progress: Callable[[int], None] | None = None,
) -> BureauFileInfo:
    """Stream ``cards`` into a signed bureau file at ``path`` (see the module docstring), one
    :meth:`~hsm.export.BureauExporter.export` per card (the data preparation of a batch in the
    database goes through :func:`issuance.batches.bulkprep.export_to_bureau` instead).

    Memory stays bounded whatever the number of cards (``cards`` may be a generator).
    ``progress`` is called with the number of cards written so far after each card.
    """
    encoders: dict[str, _CardEncoder] = {}
    with BureauFileWriter(path, keys, transport_key, batch=batch, progress=progress) as writer:
        with keys.bureau_exporter(writer.label) as exporter:
            for card in cards:
                encoder = encoders.get(card.profile_name)
                if encoder is None:
                    encoder = encoders[card.profile_name] = _CardEncoder(
                        get_profile(card.profile_name)
                    )
                kek_id, body = encoder.body(card, exporter)
                writer.add(exporter.kek(kek_id), card.card_id, card.chip_serial, body)
        return writer.finish()


def iter_expected(path: Path) -> Iterator[tuple[int, str]]:
    """(card id, chip serial) of every card line of a bureau file, streamed."""
    with open(path, "rb", buffering=_BUFFER) as stream:
        for line_no, raw in enumerate(stream, start=1):
            if b'"type":"card"' not in raw[:40]:
                continue
            obj = _object(raw, line_no)
            yield int(obj["card_id"]), str(obj["chip_serial"]).upper()


def mark_exported(
    session: Session,
    info: BureauFileInfo,
    actor: Actor,
    *,
    pairs: Iterable[tuple[int, str]] | None = None,
    chunk: int = 1000,
) -> int:
    """Move the cards of a written bureau file ``prepared → at_bureau`` (stations skip them),
    recording the file on each, one audit event per card and one for the file, in bulk
    statements (caller's transaction). ``pairs``: (card id, chip serial) of the file's cards
    (default: read from the file). Idempotent: cards already marked with this file are
    skipped. Raises :class:`ConflictError` if a card changed meanwhile (export again)."""
    items = cast(sa.Table, BatchItem.__table__)
    events = cast(sa.Table, AuditEvent.__table__)
    # the declared transition the bulk statement makes: its stages and audit event
    export = lifecycle.item_transition(BatchStage.PREPARED, lifecycle.ItemEvent.EXPORT)
    frm, to = BatchStage(export.from_state), BatchStage(export.to_state)
    moved = 0
    todo = iter_expected(info.path) if pairs is None else iter(pairs)
    while batch := list(itertools.islice(todo, chunk)):
        expected = dict(batch)
        rows = session.execute(
            sa.select(items.c.id, items.c.card_id, items.c.batch_id, items.c.stage,
                      items.c.chip_serial, items.c.lease_owner, items.c.bureau_file_id)
            .where(one_of(session.connection(), items.c.card_id, list(expected)))
            .with_for_update()
        ).all()  # fmt: skip
        if len(rows) != len(expected):
            raise ConflictError("cards of the bureau file are not in any batch any more")
        now = utcnow()
        update = []
        for r in rows:
            if r.stage == str(to) and r.bureau_file_id == info.file_id:
                continue  # marked by an earlier run
            if (r.stage != str(frm) or r.lease_owner is not None
                    or r.chip_serial != expected[r.card_id]):  # fmt: skip
                raise ConflictError(
                    f"card {r.card_id} changed while the bureau file was written (now "
                    f"{r.stage}): export again"
                )
            update.append(r)
        if not update:
            continue
        # one statement for the items, the events copied in (PostgreSQL): per card no
        # statement of its own
        session.execute(
            sa.update(items).where(one_of(session.connection(), items.c.id, [r.id for r in update]))
            .values(stage=str(export.to_state), stage_changed_at=now,
                    bureau_file_id=info.file_id)
        )  # fmt: skip
        conn = session.connection()
        tmpl = audit.EventTemplate(
            actor, export.audit_event, "batch_item", before=str(frm), after=str(to),
            occurred_at=bind_value(conn, sa.DateTime(), now),
            details={"bureau_file": info.file_id, "transport_key": info.transport_key},
            varying=("batch_id", "card_id", "chip_serial"),
        )  # fmt: skip
        insert_rows(conn, events, audit.EVENT_COLUMNS,
                    [tmpl.row(r.id, r.batch_id, r.card_id, r.chip_serial) for r in update],
                    copy=copies(conn))  # fmt: skip
        moved += len(update)
    audit.record(session, actor, "batch.bureau_exported", "bureau_file", info.file_id,
                  details={"batch": info.batch, "cards": moved, "sha256": info.sha256,
                           "path": str(info.path)})  # fmt: skip
    session.flush()
    return moved


def bureau_dir(data_dir: Path) -> Path:
    """Where the service keeps the bureau files it writes itself (the console's exports)."""
    return data_dir / "bureau"


def exported_path(session: Session, file_id: str) -> Path:
    """Where the bureau file ``file_id`` was written, as its export recorded it (the audit
    event ``batch.bureau_exported``): :class:`NotFound` if no export wrote it or the file is
    not there (not on this machine, moved): its result is then imported with ``ykt bureau
    import RESULT --bureau-file FILE`` where the file is. The content is not checked here
    (:func:`verify_bureau_file`)."""
    event = session.scalars(
        sa.select(AuditEvent).where(
            AuditEvent.entity_type == "bureau_file", AuditEvent.entity_id == file_id[:40],
            AuditEvent.action == "batch.bureau_exported",
        ).order_by(AuditEvent.id.desc()).limit(1)
    ).first()  # fmt: skip
    if event is None:
        raise NotFound(f"no bureau file {file_id} was exported")
    path = Path(str(json.loads(event.details or "{}").get("path", "")))
    if not path.is_absolute() or not path.is_file():
        raise NotFound(
            f"bureau file {file_id} is not at {path} on this machine: import its result with "
            f"ykt bureau import RESULT --bureau-file FILE where the file is"
        )
    return path


# --- reader (bureau side) ---------------------------------------------------------------------


def _object(raw: bytes, line: int) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BureauFileInvalid(f"not JSON ({exc})", line=line) from None
    if not isinstance(obj, dict):
        raise BureauFileInvalid("not a JSON object", line=line)
    return obj


def _scan(path: Path, stream: IO[bytes], public_pem: bytes | None) -> BureauFileInfo:
    digest = hashlib.sha256()
    header: dict[str, Any] | None = None
    trailer: dict[str, Any] | None = None
    count = kek = 0
    line_no = 0
    for raw in stream:
        line_no += 1
        if trailer is not None:
            raise BureauFileInvalid("data after the trailer", line=line_no)
        if not raw.endswith(b"\n"):
            raise BureauFileInvalid("truncated line (no newline)", line=line_no)
        # parse only what the scan needs: the type and the sequence number
        obj = _object(raw, line_no)
        kind = obj.get("type")
        if line_no == 1:
            if kind != "header" or obj.get("format") != FORMAT:
                raise BureauFileInvalid(f"not a {FORMAT} header", line=1)
            header = obj
        elif kind == "kek":
            if obj.get("kek") != kek + 1:
                raise BureauFileInvalid(f"KEK {obj.get('kek')!r}, expected {kek + 1}", line=line_no)
            kek += 1
        elif kind == "card":
            count += 1
            if obj.get("seq") != count:
                raise BureauFileInvalid(
                    f"sequence {obj.get('seq')!r}, expected {count}", line=line_no
                )
            if obj.get("kek") != kek:
                raise BureauFileInvalid(f"card wrapped under unknown KEK {obj.get('kek')!r}",
                                        line=line_no)  # fmt: skip
        elif kind == "trailer":
            trailer = obj
            continue
        else:
            raise BureauFileInvalid(f"unexpected line type {kind!r}", line=line_no)
        digest.update(raw)
    if header is None:
        raise BureauFileInvalid("empty file")
    if trailer is None:
        raise BureauFileInvalid("no trailer: the file is incomplete")
    hexdigest = digest.hexdigest()
    if trailer.get("count") != count:
        raise BureauFileInvalid(f"trailer says {trailer.get('count')!r} cards, file has {count}")
    if not hmac.compare_digest(str(trailer.get("sha256", "")), hexdigest):
        raise BureauFileInvalid("digest does not match the content (file altered)")
    file_id = str(header.get("file_id", ""))
    if public_pem is not None:
        if header.get("signer") != signer_fingerprint(public_pem):
            raise BureauFileInvalid("signed by another key than the issuer's public key given")
        try:
            signature = base64.b64decode(str(trailer.get("signature", "")), validate=True)
            verify_signature(public_pem, _statement(file_id, count, hexdigest), signature)
        except (ValueError, SignatureInvalid) as exc:
            raise BureauFileInvalid(f"signature does not verify ({exc})") from exc
    return BureauFileInfo(
        path,
        file_id,
        str(header.get("batch", "")),
        str(header.get("transport_key", "")),
        count,
        hexdigest,
        str(header.get("signer", "")),
    )


def verify_bureau_file(path: Path, public_pem: bytes) -> BureauFileInfo:
    """What a bureau runs first: check format, sequence, count, digest and the issuer's
    signature (``public_pem``: the issuer's public key, obtained out of band). Raises
    :class:`BureauFileInvalid`; streams (bounded memory)."""
    with open(path, "rb", buffering=_BUFFER) as stream:
        return _scan(Path(path), stream, public_pem)


def _kek(obj: dict[str, Any], line: int) -> BureauKek:
    try:
        return BureauKek(int(obj["kek"]), bytes.fromhex(obj["wrapped"]), bytes.fromhex(obj["kcv"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise BureauFileInvalid(f"malformed KEK line ({exc!r})", line=line) from None


def _card(obj: dict[str, Any], line: int, keks: Mapping[int, BureauKek]) -> BureauCard:
    try:
        return BureauCard(
            seq=int(obj["seq"]),
            kek=keks[int(obj["kek"])],
            card_id=int(obj["card_id"]),
            chip_serial=str(obj["chip_serial"]),
            card_identification_code=str(obj["cic"]),
            card_number=parse_card_number(str(obj["card_number"])),
            profile_name=str(obj["profile"]),
            algorithm=Algorithm(obj["algorithm"]),
            key_version=int(obj["key_version"]),
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
                BureauKey(
                    KeySlot(k["slot"]),
                    str(k["df"]),
                    int(k["key_id"]),
                    bytes.fromhex(k["wrapped"]),
                    bytes.fromhex(k["kcv"]),
                )
                for k in obj["keys"]
            ),
            pins=tuple(
                BureauPin(
                    str(p["name"]),
                    str(p["df"]),
                    int(p["ref"]),
                    KeySlot(p["under"]),
                    bytes.fromhex(p["encrypted"]),
                )
                for p in obj["pins"]
            ),
            klk=BureauKlk(bytes.fromhex(obj["klk"]["wrapped"]), bytes.fromhex(obj["klk"]["kcv"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BureauFileInvalid(f"malformed card line ({exc!r})", line=line) from None


def read_bureau_file(path: Path, public_pem: bytes) -> Iterator[BureauCard]:
    """Verify the whole file (:func:`verify_bureau_file`), then yield its cards one by one.

    The second pass hashes again and raises :class:`BureauFileInvalid` at the end if the file
    changed between the passes (copy the file somewhere private first).
    """
    info = verify_bureau_file(path, public_pem)
    digest = hashlib.sha256()
    keks: dict[int, BureauKek] = {}
    with open(path, "rb", buffering=_BUFFER) as stream:
        for line_no, raw in enumerate(stream, start=1):
            if line_no == 1:
                digest.update(raw)
                continue
            obj = _object(raw, line_no)
            kind = obj.get("type")
            if kind == "trailer":
                break
            digest.update(raw)
            if kind == "kek":
                current = _kek(obj, line_no)
                keks = {current.kek_id: current}  # cards only use the latest (checked above)
            else:
                yield _card(obj, line_no, keks)
    if not hmac.compare_digest(digest.hexdigest(), info.sha256):
        raise BureauFileInvalid("file changed while it was being read")


def expected_cards(path: Path, public_pem: bytes | None = None) -> dict[int, str]:
    """``card_id -> chip serial`` of every card of a bureau file (to check its result file).
    Verifies the signature too when ``public_pem`` is given."""
    if public_pem is not None:
        verify_bureau_file(path, public_pem)
    out: dict[int, str] = {}
    with open(path, "rb", buffering=_BUFFER) as stream:
        for line_no, raw in enumerate(stream, start=1):
            obj = _object(raw, line_no)
            if obj.get("type") == "card":
                out[int(obj["card_id"])] = str(obj["chip_serial"]).upper()
    return out


def bureau_file_id(path: Path) -> str:
    """The ``file_id`` in a bureau file's header."""
    with open(path, "rb") as stream:
        obj = _object(stream.readline(), 1)
    if obj.get("type") != "header" or obj.get("format") != FORMAT:
        raise BureauFileInvalid(f"not a {FORMAT} header", line=1)
    return str(obj["file_id"])


# --- reference bureau: personalisation from a bureau file ----------------------------------


class BureauCardCrypto:
    """:class:`cardspec.crypto.CardCrypto` of one card at the bureau, from the keys of its
    bureau-file line. ``unwrap_kek`` is the bureau's HSM: the file KEK wrapped under the
    transport key -> the KEK (e.g. ``aes_key_unwrap_with_padding(transport_key, wrapped)``);
    the card keys and the chip's key-loading key are then unwrapped under the KEK. The KEK and
    every key are checked against their KCVs before use (:class:`BureauKeyCheckFailed`)."""

    def __init__(self, card: BureauCard, unwrap_kek: Callable[[bytes], bytes]) -> None:
        self.algorithm = card.algorithm
        self._keys: dict[KeySlot, bytes] = {}
        try:
            kek = unwrap_kek(card.kek.wrapped)
        except InvalidUnwrap as exc:
            raise BureauKeyCheckFailed(
                f"file KEK {card.kek.kek_id} does not unwrap: wrong transport key"
            ) from exc
        if not hmac.compare_digest(keyscheme.kcv(kek, Algorithm.AES), card.kek.kcv):
            raise BureauKeyCheckFailed(f"file KEK {card.kek.kek_id} does not match its KCV")
        for k in card.keys:
            self._keys[k.slot] = self._unwrap(
                kek, k.wrapped, k.kcv, self.algorithm, f"card {card.card_id}: {k.slot.value} key"
            )
        self._klk = self._unwrap(kek, card.klk.wrapped, card.klk.kcv, keyscheme.KLK_ALGORITHM,
                                 f"card {card.card_id}: key-loading key")  # fmt: skip

    @staticmethod
    def _unwrap(kek: bytes, wrapped: bytes, kcv: bytes, alg: Algorithm, what: str) -> bytes:
        try:
            clear = aes_key_unwrap_with_padding(kek, wrapped)
        except (InvalidUnwrap, ValueError) as exc:
            raise BureauKeyCheckFailed(f"{what} does not unwrap under its KEK") from exc
        if not hmac.compare_digest(keyscheme.kcv(clear, alg), kcv):
            raise BureauKeyCheckFailed(f"{what} does not match its KCV")
        return clear

    def external_auth(self, slot: KeySlot, challenge: bytes) -> bytes:
        return keyscheme.external_auth_cryptogram(self._keys[slot], challenge, self.algorithm)

    def mac_block(self, slot: KeySlot, data: bytes, iv: bytes) -> bytes:
        return keyscheme.sm_mac_block(self._keys[slot], data, iv, self.algorithm)

    def encrypt(self, slot: KeySlot, plaintext: bytes) -> bytes:
        return keyscheme.encrypt_sensitive(self._keys[slot], plaintext, self.algorithm)

    def wrapped_card_key(self, slot: KeySlot) -> bytes:
        return keyscheme.wrap_card_key(self._klk, self._keys[slot], self.algorithm)

    def internal_auth_response(self, factor: bytes, random: bytes) -> bytes:
        return keyscheme.internal_auth_response(
            self._keys[KeySlot.IRK], factor, random, self.algorithm
        )


__all__ = [
    "FORMAT",
    "BureauCard",
    "BureauCardCrypto",
    "BureauFileInfo",
    "BureauFileInvalid",
    "BureauKek",
    "BureauKeyCheckFailed",
    "BureauKlk",
    "bureau_file_id",
    "bureau_personalise",
    "expected_cards",
    "read_bureau_file",
    "verify_bureau_file",
    "write_bureau_file",
]
