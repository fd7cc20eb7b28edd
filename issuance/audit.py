"""Tamper-evident audit log.

Hot path: :func:`record` is a plain INSERT in the business transaction (no lock, no chain
computation), so audited work stays parallel.

Sealing: :func:`seal` (run by a worker, ``ykt audit seal``, and before verification) takes the
chain head row under a lock, then gives unsealed events older than a short delay, in id order, a
gapless ``chain_seq`` and ``hash = SHA-256(prev_hash || canonical JSON of the event)``. Every
``checkpoint_every`` events (and at the end of each run) it writes a checkpoint of (seq, hash),
signed by a :class:`Signer` (the HSM's signing key in production) when one is given.

Verification: :func:`verify_chain` recomputes the chain and raises :class:`IntegrityError`
naming the first bad event when a sealed event was edited, deleted or reordered, or a checkpoint
does not match or its signature is wrong.

Personal data: details must never contain a full citizen ID number or a photo; :func:`record`
masks anything that looks like one (defence in depth; callers pass masked values).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

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
_CITIZEN_ID_RE = re.compile(r"(?<![0-9])([1-9][0-9]{5})([0-9]{8}[0-9]{3})([0-9Xx])(?![0-9])")


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


def scrub(value: Any) -> Any:
    """Mask citizen-ID-looking numbers anywhere in a JSON-able value."""
    if isinstance(value, str):
        return _CITIZEN_ID_RE.sub(lambda m: m.group(0)[:4] + "*" * 10 + m.group(0)[-4:], value)
    if isinstance(value, dict):
        return {str(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


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
        occurred_at=utcnow(),
        actor_staff_id=actor.staff_id,
        actor_name=actor.username,
        actor_role=str(actor.role),
        channel=str(actor.channel),
        action=action,
        entity_type=entity_type,
        entity_id=str(entity_id),
        before=None if before is None else str(before),
        after=None if after is None else str(after),
        reason=scrub(reason) if reason else None,
        details=canonical_json(scrub(details or {})),
    )
    session.add(event)
    return event


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
    if head is None:  # migrated databases have it; be lenient for hand-made ones
        head = AuditChainHead(id=1, last_seq=0, last_hash=GENESIS_HASH)
        session.add(head)
        session.flush()
    return head


def seal(
    session: Session,
    signer: Signer | None = None,
    *,
    delay: timedelta = timedelta(seconds=2),
    checkpoint_every: int = 1000,
    limit: int = 50_000,
    now: datetime | None = None,
) -> SealResult:
    """Chain unsealed events older than ``delay`` (id order); write checkpoints.

    The head row lock serialises sealers; business transactions never wait on it.
    """
    head = _head(session)
    cutoff = (now or utcnow()) - delay
    events = session.scalars(
        sa.select(AuditEvent)
        .where(AuditEvent.chain_seq.is_(None), AuditEvent.occurred_at <= cutoff)
        .order_by(AuditEvent.id)
        .limit(limit)
    ).all()
    result = SealResult(last_seq=head.last_seq)
    seq, prev = head.last_seq, head.last_hash
    pem = _pem_text(signer)
    for ev in events:
        seq += 1
        ev.chain_seq = seq
        ev.prev_hash = prev
        ev.hash = prev = chain_hash(prev, ev)
        if seq % checkpoint_every == 0:
            _checkpoint(session, seq, prev, signer, pem)
            result.checkpoints.append(seq)
    if events:
        if not result.checkpoints or result.checkpoints[-1] != seq:
            _checkpoint(session, seq, prev, signer, pem)
            result.checkpoints.append(seq)
        head.last_seq, head.last_hash, head.sealed_at = seq, prev, utcnow()
    session.flush()
    result.sealed, result.last_seq = len(events), seq
    return result


def _pem_text(signer: Signer | None) -> str | None:
    if signer is None:
        return None
    pem = signer.public_key_pem()
    return pem.decode("ascii") if isinstance(pem, bytes) else pem


def _checkpoint(
    session: Session, seq: int, hash_hex: str, signer: Signer | None, pem: str | None
) -> None:
    sig = signer.sign(checkpoint_message(seq, hash_hex)) if signer is not None else None
    session.add(AuditCheckpoint(chain_seq=seq, hash=hash_hex, signature=sig, public_key_pem=pem))


def verify_signature(public_key_pem: bytes | str, signature: bytes, data: bytes) -> None:
    """Verify an ECDSA (DER or raw r||s), RSA PKCS#1 v1.5 or Ed25519 signature; raise."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    pem = public_key_pem.encode("ascii") if isinstance(public_key_pem, str) else public_key_pem
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


def verify_chain(
    session: Session, public_key_pem: bytes | str | None = None, *, batch: int = 5000
) -> VerifyReport:
    """Recompute the whole chain; raise :class:`IntegrityError` at the first bad entry.

    With ``public_key_pem`` every checkpoint must carry a signature by that key; without it,
    signatures are checked against the key stored with the checkpoint (consistency only).
    """
    head = session.get(AuditChainHead, 1)
    expected_seq, prev = 1, GENESIS_HASH
    count = 0
    last_id = -1
    by_seq: dict[int, str] = {}
    cps = session.scalars(sa.select(AuditCheckpoint).order_by(AuditCheckpoint.chain_seq)).all()
    wanted = {cp.chain_seq for cp in cps}
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
    if head is not None and (head.last_seq != last_seq or head.last_hash != prev):
        raise IntegrityError(
            f"audit chain broken: the head says sequence {head.last_seq} but the log ends at "
            f"{last_seq} (events at the end were deleted or the head was edited)",
            chain_seq=last_seq + 1, event_id=last_id,
        )  # fmt: skip
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
                verify_signature(key, cp.signature, checkpoint_message(cp.chain_seq, cp.hash))
            except IntegrityError as exc:
                raise IntegrityError(
                    f"audit checkpoint at sequence {cp.chain_seq}: {exc.message}",
                    chain_seq=cp.chain_seq,
                ) from exc
            signed += 1
    unsealed = session.scalar(
        sa.select(sa.func.count()).select_from(AuditEvent).where(AuditEvent.chain_seq.is_(None))
    )
    return VerifyReport(count, last_seq, len(cps), signed, int(unsealed or 0))
