"""Tamper-evident audit log.

Design notes: ``docs/design/issuance.md`` (section ``issuance.audit``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance.errors import IntegrityError
from issuance.models import (
    AuditChainHead,
    AuditCheckpoint,
    AuditEvent,
    Channel,
    StaffRole,
    utcnow,
)

GENESIS_HASH = "0" * 64
CHECKPOINT_DOMAIN = b"yikatong-audit-checkpoint/1\n"
#: A citizen ID number standing alone: not part of a longer run of letters and digits (a
#: hexadecimal challenge or card identification code that happens to hold 18 digits in a row
#: is an identifier of the system, not a person's number, and is kept as it is).
_CITIZEN_ID_RE = re.compile(
    r"(?<![0-9A-Za-z])([1-9][0-9]{5})([0-9]{8}[0-9]{3})([0-9Xx])(?![0-9A-Za-z])"
)


@dataclass(frozen=True)
class Actor:
    """Who acts: a staff user with a role, or the system (workers, feeds), through a channel."""

    username: str
    role: StaffRole
    channel: Channel = Channel.COUNTER
    staff_id: int | None = None

    def via(self, channel: Channel) -> Actor:
        return Actor(self.username, self.role, channel, self.staff_id)


SYSTEM_ACTOR = Actor("system", StaffRole.SYSTEM, Channel.SYSTEM)


class Signer(Protocol):
    """Signs checkpoints (implemented by the HSM adapter; see :class:`SoftwareSigner`)."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key_pem(self) -> bytes | str: ...


_PLAIN = frozenset({bool, int, float, type(None)})


def _mask(m: re.Match[str]) -> str:
    return m.group(0)[:4] + "*" * 10 + m.group(0)[-4:]


def scrub(value: Any) -> Any:
    """Mask citizen-ID-looking numbers anywhere in a JSON-able value."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, str):
        if len(value) < 18:  # a citizen ID number is 18 characters
            return value
        return _CITIZEN_ID_RE.sub(_mask, value)
    if isinstance(value, dict):
        return {str(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


#: The one writer of canonical JSON (sorted keys, no spaces, UTF-8 text, anything else as its
#: ``str``): what ``json.dumps(value, sort_keys=True, separators=(",", ":"),
#: ensure_ascii=False, default=str)`` writes, its encoder built once instead of per call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)


def canonical_json(value: Any) -> str:
    """The canonical JSON of ``value``: the audit chain hashes it, byte for byte."""
    return _CANONICAL.encode(value)


def details_json(details: dict[str, Any] | None) -> str:
    """The ``details`` column of an audit event: the canonical JSON of the scrubbed details."""
    return canonical_json(scrub(details or {}))


def record(
    session: Session,
    actor: Actor,
    action: str,
    entity_type: str,
    entity_id: object,
    *,
    before: str | None = None,
    after: str | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one audit event to the current transaction (a plain insert, flushed with the rest)."""
    event = AuditEvent(
        **event_row(
            actor, action, entity_type, entity_id,
            before=before, after=after, reason=reason, details=details,
        )
    )  # fmt: skip
    session.add(event)
    return event


#: The columns an audit event is written with (the chain columns stay NULL until sealed).
EVENT_COLUMNS = (
    "occurred_at", "actor_staff_id", "actor_name", "actor_role", "channel", "action",
    "entity_type", "entity_id", "before", "after", "reason", "details",
)  # fmt: skip


#: Filters of :func:`search` by another name (the console's form says ``actor``).
SEARCH_KEYS = {"actor": "actor_name"}
#: The columns :func:`search` filters on (exact match).
SEARCH_COLUMNS = ("entity_type", "entity_id", "action", "actor_name", "channel")


def search(
    session: Session, filters: dict[str, Any], *, after_id: int = 0, limit: int = 100
) -> list[AuditEvent]:
    """Audit events in id order after ``after_id``, each filter an exact match on its column
    (:data:`SEARCH_COLUMNS`; None skipped): the API's and the console's audit search."""
    stmt = sa.select(AuditEvent).where(AuditEvent.id > after_id)
    for col, value in filters.items():
        if col not in SEARCH_COLUMNS:
            raise ValueError(f"no audit filter {col!r}")
        if value is not None:
            stmt = stmt.where(getattr(AuditEvent, col) == value)
    return list(session.scalars(stmt.order_by(AuditEvent.id).limit(limit)))


def event_values(
    actor: Actor,
    action: str,
    entity_type: str,
    entity_id: object,
    *,
    before: str | None = None,
    after: str | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
    occurred_at: Any = None,
) -> tuple[Any, ...]:
    """The column values of one audit event, in :data:`EVENT_COLUMNS` order: the one builder
    of an audit event, whatever writes it (:func:`record`, core-SQL inserts, the bulk paths
    through :class:`EventTemplate`). ``occurred_at``: now if not given (a datetime, or the
    value the database driver takes for it)."""
    return (
        occurred_at or utcnow(),
        actor.staff_id,
        actor.username,
        str(actor.role),
        str(actor.channel),
        action,
        entity_type,
        str(entity_id),
        None if before is None else str(before),
        None if after is None else str(after),
        scrub(reason) if reason else None,
        details_json(details),
    )


def event_row(
    actor: Actor,
    action: str,
    entity_type: str,
    entity_id: object,
    *,
    before: str | None = None,
    after: str | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """:func:`event_values` by column name."""
    return dict(
        zip(
            EVENT_COLUMNS,
            event_values(
                actor,
                action,
                entity_type,
                entity_id,
                before=before,
                after=after,
                reason=reason,
                details=details,
                occurred_at=occurred_at,
            ),
            strict=True,
        )
    )


class EventTemplate:
    """Many audit events of one kind that differ only in their entity id and some detail
    values (a chunk of a bulk path): :func:`event_values` made once with a placeholder for each
    varying value, then per event only the varying parts filled in, each written by
    :func:`canonical_json` of its scrubbed value. The rows are those :func:`event_values` gives
    for the full details (a Hypothesis test holds them equal byte for byte): the keys of a
    canonical JSON object are sorted by name, so where each value goes does not depend on the
    values."""

    _MEMO = 4096  # encoded values remembered per slot (repeated profiles, files, outputs)

    def __init__(
        self,
        actor: Actor,
        action: str,
        entity_type: str,
        *,
        varying: tuple[str, ...],
        before: str | None = None,
        after: str | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        occurred_at: Any = None,
    ) -> None:
        fixed = dict(details or {})
        marks = [f"\x1eykt-slot-{i}\x1e" for i in range(len(varying))]
        if set(varying) & set(fixed) or len(set(varying)) != len(varying):
            raise ValueError("a varying detail is also fixed, or named twice")
        values = event_values(
            actor,
            action,
            entity_type,
            "",
            before=before,
            after=after,
            reason=reason,
            details={**fixed, **dict(zip(varying, marks, strict=True))},
            occurred_at=occurred_at,
        )
        text = values[-1]
        if any(text.count(canonical_json(m)) != 1 for m in marks):
            raise ValueError("a fixed detail holds a placeholder of a varying one")
        where = sorted((text.index(canonical_json(m)), i) for i, m in enumerate(marks))
        self.parts: list[str] = []
        self.order: list[int] = []
        at = 0
        for pos, i in where:
            self.parts.append(text[at:pos])
            self.order.append(i)
            at = pos + len(canonical_json(marks[i]))
        self.tail = text[at:]
        self.head = values[:7]
        self.middle = values[8:11]
        memos: list[dict[str, str]] = [{} for _ in varying]
        self._steps = [(part, i, memos[i]) for part, i in zip(self.parts, self.order, strict=True)]

    def row(self, entity_id: object, *values: Any) -> tuple[Any, ...]:
        """The event of ``entity_id`` with the varying details ``values`` (in ``varying``
        order)."""
        out: list[str] = []
        append = out.append
        for part, i, memo in self._steps:
            append(part)
            value = values[i]
            if type(value) is str:  # text repeats (profiles, files): its JSON remembered
                text = memo.get(value)
                if text is None:
                    text = canonical_json(scrub(value))
                    if len(memo) < self._MEMO:
                        memo[value] = text
            else:
                text = canonical_json(scrub(value))
            append(text)
        append(self.tail)
        return (*self.head, str(entity_id), *self.middle, "".join(out))


def event_payload(ev: Any) -> dict[str, Any]:
    """The fields covered by the hash (an AuditEvent or a row of its table)."""
    return {
        "seq": ev.chain_seq,
        "id": ev.id,
        "at": ev.occurred_at.isoformat(timespec="microseconds"),
        "staff": ev.actor_staff_id,
        "actor": ev.actor_name,
        "role": ev.actor_role,
        "channel": ev.channel,
        "action": ev.action,
        "entity": [ev.entity_type, ev.entity_id],
        "before": ev.before,
        "after": ev.after,
        "reason": ev.reason,
        "details": ev.details,
    }


def chain_hash(prev_hash: str, ev: Any) -> str:
    h = hashlib.sha256(bytes.fromhex(prev_hash))
    h.update(canonical_json(event_payload(ev)).encode("utf-8"))
    return h.hexdigest()


def checkpoint_message(seq: int, hash_hex: str) -> bytes:
    return CHECKPOINT_DOMAIN + f"{seq}:{hash_hex}".encode("ascii")


@dataclass
class SealResult:
    sealed: int = 0
    last_seq: int = 0
    checkpoints: list[int] = field(default_factory=list)


def _head(session: Session) -> AuditChainHead:
    head = session.scalars(
        sa.select(AuditChainHead).where(AuditChainHead.id == 1).with_for_update()
    ).one_or_none()
    if head is None:
        if session.scalar(sa.select(sa.func.count()).select_from(AuditCheckpoint)):
            # the chain was sealed before: a missing head is tampering, never a fresh start
            raise IntegrityError("audit chain head is missing (the audit_chain_head row)")
        head = AuditChainHead(id=1, last_seq=0, last_hash=GENESIS_HASH)
        session.add(head)
        session.flush()
    return head


_EV = cast(sa.Table, AuditEvent.__table__)
_SEAL_COLUMNS = [_EV.c[n] for n in ("id", *EVENT_COLUMNS)]


def seal(
    session: Session,
    signer: Signer | None = None,
    *,
    delay: timedelta = timedelta(seconds=2),
    checkpoint_every: int = 10_000,
    limit: int | None = None,
    batch: int = 5_000,
    now: datetime | None = None,
) -> SealResult:
    """Chain the unsealed events older than ``delay`` (id order), ``batch`` at a time, up to
    ``limit`` (None: all); write a checkpoint every ``checkpoint_every`` events and one at the
    end, so the last checkpoint always covers the head.

    The head row lock serialises sealers; business transactions never wait on it (they only
    insert). Core SQL: the events are read as rows and updated in one executemany per batch.
    """
    head = _head(session)
    cutoff = (now or utcnow()) - delay
    result = SealResult(last_seq=head.last_seq)
    seq, prev = head.last_seq, head.last_hash
    pem = _pem_text(signer)
    sealed = 0
    while limit is None or sealed < limit:
        take = batch if limit is None else min(batch, limit - sealed)
        rows = session.execute(
            sa.select(*_SEAL_COLUMNS)
            .where(_EV.c.chain_seq.is_(None), _EV.c.occurred_at <= cutoff)
            .order_by(_EV.c.id)
            .limit(take)
        ).all()
        if not rows:
            break
        updates = []
        for row in rows:
            seq += 1
            ev = _SealedRow(row, seq)
            h = chain_hash(prev, ev)
            updates.append({"b_id": row.id, "b_seq": seq, "b_prev": prev, "b_hash": h})
            prev = h
            if seq % checkpoint_every == 0:
                result.checkpoints.append(seq)
                _checkpoint(session, seq, prev, signer, pem, flush=False)
        session.execute(
            sa.update(_EV)
            .where(_EV.c.id == sa.bindparam("b_id"))
            .values(
                chain_seq=sa.bindparam("b_seq"),
                prev_hash=sa.bindparam("b_prev"),
                hash=sa.bindparam("b_hash"),
            ),
            updates,
            execution_options={"synchronize_session": False},
        )
        sealed += len(rows)
        _mirror_sealed(session, updates)
        if len(rows) < take:
            break
    if sealed:
        if not result.checkpoints or result.checkpoints[-1] != seq:
            _checkpoint(session, seq, prev, signer, pem, flush=False)
            result.checkpoints.append(seq)
        head.last_seq, head.last_hash, head.sealed_at = seq, prev, utcnow()
    session.flush()
    result.sealed, result.last_seq = sealed, seq
    return result


def _mirror_sealed(session: Session, updates: list[dict[str, Any]]) -> None:
    """Events of this session just sealed by core SQL: give their objects the new chain
    values (as loaded, not as changes to flush)."""
    from sqlalchemy.orm.attributes import set_committed_value

    loaded = {
        obj.id: obj for obj in list(session.identity_map.values()) if isinstance(obj, AuditEvent)
    }
    if not loaded:
        return
    for u in updates:
        obj = loaded.get(u["b_id"])
        if obj is not None:
            set_committed_value(obj, "chain_seq", u["b_seq"])
            set_committed_value(obj, "prev_hash", u["b_prev"])
            set_committed_value(obj, "hash", u["b_hash"])


class _SealedRow:
    """An event row as it will be once sealed (what :func:`event_payload` reads)."""

    __slots__ = ("_row", "chain_seq")

    def __init__(self, row: Any, chain_seq: int) -> None:
        self._row = row
        self.chain_seq = chain_seq

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)


def _pem_text(signer: Signer | None) -> str | None:
    if signer is None:
        return None
    pem = signer.public_key_pem()
    return pem.decode("ascii") if isinstance(pem, bytes) else pem


def _checkpoint(
    session: Session,
    seq: int,
    hash_hex: str,
    signer: Signer | None,
    pem: str | None,
    *,
    flush: bool = True,
) -> None:
    sig = signer.sign(checkpoint_message(seq, hash_hex)) if signer is not None else None
    session.add(AuditCheckpoint(chain_seq=seq, hash=hash_hex, signature=sig, public_key_pem=pem))
    if flush:
        session.flush()


def verify_checkpoint_signature(public_key_pem: bytes | str, data: bytes, signature: bytes) -> None:
    """Verify a checkpoint's ECDSA (DER or raw r||s), SM2/SM3 (r||s), RSA PKCS#1 v1.5 or Ed25519
    signature of ``data``; raise :class:`IntegrityError`. (Arguments in the order of
    :func:`hsm.ports.verify_signature`, which checks the HSM's own signatures.)"""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from cardspec import sm2

    pem = public_key_pem.encode("ascii") if isinstance(public_key_pem, str) else public_key_pem
    sm2_key = sm2.public_from_pem(pem)
    if sm2_key is not None:  # [hsm] signing = "sm2": SM2 with SM3, r || s
        if not sm2.verify(sm2_key, data, signature):
            raise IntegrityError("checkpoint signature is invalid")
        return
    key = serialization.load_pem_public_key(pem)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            size = (key.curve.key_size + 7) // 8
            if len(signature) == 2 * size and signature[0] != 0x30:
                r = int.from_bytes(signature[:size], "big")
                s = int.from_bytes(signature[size:], "big")
                signature = encode_dss_signature(r, s)
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            raise IntegrityError("unsupported checkpoint key type")
    except (InvalidSignature, ValueError) as exc:
        raise IntegrityError("checkpoint signature is invalid") from exc


class SoftwareSigner:
    """An in-process ECDSA P-256 signer (tests, development); the HSM adapter replaces it."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self._key = ec.generate_private_key(ec.SECP256R1())

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def public_key_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass(frozen=True)
class VerifyReport:
    events: int
    last_seq: int
    checkpoints: int
    signed_checkpoints: int
    unsealed: int
    pinned_seq: int | None = None


PIN_FORMAT = "yikatong-audit-checkpoint/1"


@dataclass(frozen=True)
class PinnedCheckpoint:
    """A checkpoint an auditor keeps outside the database (``ykt audit seal --export``), so
    that ``ykt audit verify --expect-checkpoint`` detects a chain cut short before it (a tail
    deleted together with its checkpoints and a head row rewound to match)."""

    chain_seq: int
    hash: str
    signature: bytes | None = None
    public_key_pem: str | None = None

    def to_json(self) -> str:
        import base64

        return json.dumps(
            {
                "format": PIN_FORMAT,
                "chain_seq": self.chain_seq,
                "hash": self.hash,
                "signature": None
                if self.signature is None
                else base64.b64encode(self.signature).decode("ascii"),
                "public_key_pem": self.public_key_pem,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> PinnedCheckpoint:
        import base64
        import binascii

        try:
            data = json.loads(text)
            if data.get("format") != PIN_FORMAT:
                raise ValueError(f"not a {PIN_FORMAT} file")
            seq, hash_hex = int(data["chain_seq"]), str(data["hash"])
            if seq < 1 or not re.fullmatch(r"[0-9a-f]{64}", hash_hex):
                raise ValueError("bad sequence or hash")
            sig = data.get("signature")
            return cls(
                seq,
                hash_hex,
                None if sig is None else base64.b64decode(sig, validate=True),
                data.get("public_key_pem"),
            )
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise IntegrityError(f"the pinned checkpoint file is unreadable: {exc}") from exc


def last_checkpoint(session: Session) -> PinnedCheckpoint | None:
    """The newest checkpoint, as an auditor pins it."""
    cp = session.scalars(
        sa.select(AuditCheckpoint).order_by(AuditCheckpoint.chain_seq.desc()).limit(1)
    ).one_or_none()
    if cp is None:
        return None
    return PinnedCheckpoint(cp.chain_seq, cp.hash, cp.signature, cp.public_key_pem)


def verify_chain(
    session: Session,
    public_key_pem: bytes | str | None = None,
    *,
    expect: PinnedCheckpoint | None = None,
    batch: int = 5000,
) -> VerifyReport:
    """Recompute the whole chain; raise :class:`IntegrityError` at the first bad entry.

    What must hold, beyond every hash: the head row exists once anything was sealed and names
    the last sealed event; the last checkpoint covers the head (``seal`` ends every run with
    one), so checkpoints deleted from some event on are noticed.

    With ``public_key_pem`` (a key the auditor trusts) every checkpoint must carry a valid
    signature by that key, and there must be at least one: rewriting events and recomputing
    the hashes is then detected at the first checkpoint after the edit. Without it, signatures
    are checked against the key stored with each checkpoint (consistency only: whoever can
    write the tables can also re-sign with a key of their own).

    With ``expect`` (a checkpoint pinned outside the database) the chain must reach it and
    agree with it: a tail cut off together with its checkpoints and the head is detected.
    """
    head = session.get(AuditChainHead, 1)
    expected_seq, prev = 1, GENESIS_HASH
    count = 0
    last_id = -1
    by_seq: dict[int, str] = {}
    cps = session.scalars(sa.select(AuditCheckpoint).order_by(AuditCheckpoint.chain_seq)).all()
    wanted = {cp.chain_seq for cp in cps}
    if expect is not None:
        wanted.add(expect.chain_seq)
    while True:
        rows = session.execute(
            sa.select(*AuditEvent.__table__.c)
            .where(AuditEvent.chain_seq.is_not(None), AuditEvent.chain_seq > expected_seq - 1)
            .order_by(AuditEvent.chain_seq)
            .limit(batch)
        ).all()
        if not rows:
            break
        for ev in rows:
            assert ev.chain_seq is not None
            if ev.chain_seq != expected_seq:
                raise IntegrityError(
                    f"audit chain broken: event with sequence {expected_seq} is missing "
                    f"(next present is {ev.chain_seq}, event id {ev.id})",
                    chain_seq=expected_seq, event_id=ev.id,
                )  # fmt: skip
            if ev.prev_hash != prev or ev.hash != chain_hash(prev, ev):
                raise IntegrityError(
                    f"audit chain broken at sequence {ev.chain_seq} (event id {ev.id}, "
                    f"{ev.action}): content does not match its hash",
                    chain_seq=ev.chain_seq, event_id=ev.id,
                )  # fmt: skip
            prev = ev.hash
            if ev.chain_seq in wanted:
                by_seq[ev.chain_seq] = prev
            expected_seq += 1
            count += 1
            last_id = ev.id
    last_seq = expected_seq - 1
    if head is None:
        if last_seq or cps:
            raise IntegrityError(
                "audit chain broken: the head row (audit_chain_head) is missing",
                chain_seq=last_seq,
            )
    elif head.last_seq != last_seq or head.last_hash != prev:
        raise IntegrityError(
            f"audit chain broken: the head says sequence {head.last_seq} but the log ends at "
            f"{last_seq} (events at the end were deleted or the head was edited)",
            chain_seq=last_seq + 1, event_id=last_id,
        )  # fmt: skip
    if expect is not None:
        _check_pin(expect, last_seq, by_seq.get(expect.chain_seq), public_key_pem)
    signed = 0
    for cp in cps:
        if cp.chain_seq > last_seq or by_seq.get(cp.chain_seq) != cp.hash:
            raise IntegrityError(
                f"audit checkpoint at sequence {cp.chain_seq} does not match the chain",
                chain_seq=cp.chain_seq,
            )
        if public_key_pem is not None and cp.signature is None:
            raise IntegrityError(
                f"audit checkpoint at sequence {cp.chain_seq} is not signed", chain_seq=cp.chain_seq
            )
        if cp.signature is not None:
            key = public_key_pem if public_key_pem is not None else cp.public_key_pem
            if key is None:
                raise IntegrityError(f"checkpoint {cp.chain_seq} has no key to verify with")
            try:
                verify_checkpoint_signature(
                    key, checkpoint_message(cp.chain_seq, cp.hash), cp.signature
                )
            except IntegrityError as exc:
                raise IntegrityError(
                    f"audit checkpoint at sequence {cp.chain_seq}: {exc.message}",
                    chain_seq=cp.chain_seq,
                ) from exc
            signed += 1
    if last_seq and (not cps or cps[-1].chain_seq != last_seq):
        newest = cps[-1].chain_seq if cps else "none"
        raise IntegrityError(
            f"audit chain broken: no checkpoint covers the head (sequence {last_seq}; the last "
            f"checkpoint is at {newest}): checkpoints were deleted or events appended",
            chain_seq=last_seq,
        )
    if public_key_pem is not None and last_seq and signed == 0:
        raise IntegrityError("audit chain has no signed checkpoint", chain_seq=last_seq)
    unsealed = session.scalar(
        sa.select(sa.func.count()).select_from(AuditEvent).where(AuditEvent.chain_seq.is_(None))
    )
    return VerifyReport(
        count, last_seq, len(cps), signed, int(unsealed or 0),
        None if expect is None else expect.chain_seq,
    )  # fmt: skip


def _check_pin(
    pin: PinnedCheckpoint,
    last_seq: int,
    found: str | None,
    public_key_pem: bytes | str | None,
) -> None:
    if pin.chain_seq > last_seq:
        raise IntegrityError(
            f"audit chain broken: it ends at sequence {last_seq} but the pinned checkpoint is "
            f"at {pin.chain_seq} (events at the end were deleted)",
            chain_seq=last_seq + 1,
        )
    if found != pin.hash:
        raise IntegrityError(
            f"audit chain broken: the hash at sequence {pin.chain_seq} differs from the pinned "
            "checkpoint (events up to it were rewritten)",
            chain_seq=pin.chain_seq,
        )
    if public_key_pem is not None and pin.signature is not None:
        try:
            verify_checkpoint_signature(
                public_key_pem, checkpoint_message(pin.chain_seq, pin.hash), pin.signature
            )
        except IntegrityError as exc:
            raise IntegrityError(
                f"the pinned checkpoint at sequence {pin.chain_seq}: {exc.message}",
                chain_seq=pin.chain_seq,
            ) from exc
