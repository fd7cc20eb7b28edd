"""The signed status feed: which cards an offline terminal must refuse.

Design notes: ``docs/design/issuance.md`` (section ``issuance.services.status_feed``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from hsm.errors import SignatureInvalid
from hsm.service import verify_signature
from issuance.audit import canonical_json
from issuance.errors import IntegrityError
from issuance.models import Card, CardStatus, CardStatusChange, utcnow
from issuance.services.verification import CARD_STATUS_REASONS, Reason

FORMAT = "yikatong-status-feed/1"
SIGNATURE_DOMAIN = b"yikatong-status-feed/1\n"
SETTLE = timedelta(seconds=2)

#: Statuses a terminal must refuse. Cards before issue (no chip in anyone's hands) are absent.
REFUSED: dict[CardStatus, Reason] = {
    s: r
    for s, r in CARD_STATUS_REASONS.items()
    if r not in (Reason.NOT_ISSUED, Reason.NOT_ACTIVATED)
}


def _line(obj: dict[str, Any]) -> bytes:
    """One feed line: the canonical JSON (:func:`issuance.audit.canonical_json`)."""
    return canonical_json(obj).encode("utf-8") + b"\n"


def signed_message(count: int, sequence: int, sha256_hex: str) -> bytes:
    return SIGNATURE_DOMAIN + f"{count}:{sequence}:{sha256_hex}".encode("ascii")


def high_water(session: Session, now: datetime | None = None) -> int:
    """Highest settled change sequence (0 when there is none)."""
    cutoff = (now or utcnow()) - SETTLE
    seq = session.scalar(
        sa.select(sa.func.max(CardStatusChange.seq)).where(CardStatusChange.changed_at <= cutoff)
    )
    return int(seq or 0)


def _entry(cic: str, number: str, status: str, seq: int | None = None) -> dict[str, Any]:
    st = CardStatus(status)
    reason = REFUSED.get(st)
    out: dict[str, Any] = {
        "type": "entry",
        "card_identification_code": cic,
        "card_number": number,
        "status": str(st),
        "refused": reason is not None,
        "reason": None if reason is None else str(reason),
    }
    if seq is not None:
        out["seq"] = seq
    return out


def iter_full(session: Session, batch: int = 5000) -> Iterator[dict[str, Any]]:
    """Every refused card with a chip, streamed (server-side cursor on PostgreSQL)."""
    stmt = (
        sa.select(Card.card_identification_code, Card.card_number, Card.status)
        .where(Card.status.in_(list(REFUSED)), Card.card_identification_code.is_not(None))
        .order_by(Card.id)
    )
    result = session.execute(stmt, execution_options={"stream_results": True, "yield_per": batch})
    for cic, number, status in result:
        yield _entry(cic, number, status)


def iter_delta(
    session: Session, since: int, until: int, batch: int = 5000
) -> Iterator[dict[str, Any]]:
    """Every status change with ``since < seq <= until`` of a card with a chip."""
    stmt = (
        sa.select(
            CardStatusChange.seq,
            Card.card_identification_code,
            Card.card_number,
            CardStatusChange.status,
        )
        .join(Card, Card.id == CardStatusChange.card_id)
        .where(
            CardStatusChange.seq > since,
            CardStatusChange.seq <= until,
            Card.card_identification_code.is_not(None),
        )
        .order_by(CardStatusChange.seq)
    )
    result = session.execute(stmt, execution_options={"stream_results": True, "yield_per": batch})
    for seq, cic, number, status in result:
        yield _entry(cic, number, status, int(seq))


@dataclass
class FeedWriter:
    """Serialises a feed and computes what the trailer signs, chunk by chunk."""

    kind: str
    since: int | None
    sequence: int
    count: int = 0
    _hash: Any = field(default_factory=hashlib.sha256)

    def header(self) -> bytes:
        data = _line(
            {
                "type": "header", "format": FORMAT, "kind": self.kind, "since": self.since,
                "sequence": self.sequence,
                "generated_at": utcnow().isoformat(timespec="seconds") + "Z",
            }
        )  # fmt: skip
        self._hash.update(data)
        return data

    def entries(self, items: Iterable[dict[str, Any]]) -> bytes:
        data = b"".join(_line(e) for e in items)
        self.count += data.count(b"\n")
        self._hash.update(data)
        return data

    def message(self) -> bytes:
        return signed_message(self.count, self.sequence, self._hash.hexdigest())

    def trailer(self, signature: bytes) -> bytes:
        return _line(
            {
                "type": "trailer", "count": self.count, "sequence": self.sequence,
                "sha256": self._hash.hexdigest(),
                "signature": base64.b64encode(signature).decode("ascii"),
            }
        )  # fmt: skip


def chunks(entries: Iterator[dict[str, Any]], size: int = 2000) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for e in entries:
        chunk.append(e)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class FeedSummary:
    kind: str
    since: int | None
    sequence: int
    count: int
    refused: int


def _check_fresh(header: dict[str, Any], max_age: timedelta, now: datetime) -> None:
    try:
        at = datetime.fromisoformat(str(header["generated_at"]).removesuffix("Z"))
    except (KeyError, ValueError) as exc:
        raise IntegrityError("status feed: the header has no valid generated_at") from exc
    if now - at > max_age:
        raise IntegrityError(
            f"status feed: stale (generated {at.isoformat()}Z, older than {max_age})"
        )
    if at - now > timedelta(minutes=5):
        raise IntegrityError("status feed: generated in the future (check the clocks)")


def verify_feed(
    lines: Iterable[bytes],
    public_key_pem: bytes,
    on_entry: Callable[[dict[str, Any]], None] | None = None,
    *,
    max_age: timedelta | None = None,
    now: datetime | None = None,
) -> FeedSummary:
    """Check a feed's hash and HSM signature while reading it line by line; raise
    :class:`IntegrityError`. ``on_entry`` sees each entry (after the check it is trustworthy
    only if this function returns).

    Strict: each line is one JSON object ending in exactly ``\n`` (no ``\r``, no blank line),
    nothing follows the trailer, and with ``max_age`` the header's signed ``generated_at`` must
    be at most that old (a replayed old feed would hide cards refused since)."""
    h = hashlib.sha256()
    header: dict[str, Any] | None = None
    count = refused = 0
    it = iter(lines)
    for line in it:
        if not line.endswith(b"\n") or b"\r" in line or b"\n" in line[:-1] or not line.strip():
            raise IntegrityError("status feed: a line is not one JSON object ending in LF")
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise IntegrityError("status feed: a line is not JSON") from exc
        if not isinstance(obj, dict):
            raise IntegrityError("status feed: a line is not a JSON object")
        kind = obj.get("type")
        if kind == "trailer":
            if header is None:
                raise IntegrityError("status feed: no header")
            if obj.get("count") != count or obj.get("sha256") != h.hexdigest():
                raise IntegrityError("status feed: content does not match its trailer")
            if obj.get("sequence") != header.get("sequence"):
                raise IntegrityError("status feed: trailer and header disagree")
            try:
                sig = base64.b64decode(obj["signature"], validate=True)
                verify_signature(
                    public_key_pem, signed_message(count, obj["sequence"], h.hexdigest()), sig
                )
            except (KeyError, ValueError, SignatureInvalid) as exc:
                raise IntegrityError("status feed: signature does not verify") from exc
            if any(extra for extra in it):
                raise IntegrityError("status feed: bytes after the trailer")
            if max_age is not None:
                _check_fresh(header, max_age, now or utcnow())
            return FeedSummary(header["kind"], header["since"], obj["sequence"], count, refused)
        h.update(line)
        if kind == "header":
            if header is not None or obj.get("format") != FORMAT:
                raise IntegrityError("status feed: bad or repeated header")
            header = obj
        elif kind == "entry":
            if header is None:
                raise IntegrityError("status feed: no header")
            count += 1
            refused += bool(obj.get("refused"))
            if on_entry is not None:
                on_entry(obj)
        else:
            raise IntegrityError(f"status feed: unknown line type {kind!r}")
    raise IntegrityError("status feed: truncated (no trailer)")
