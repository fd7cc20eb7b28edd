"""Card verification: single-use challenges and the verdict on a card's INTERNAL AUTHENTICATE.

The flow a hospital or bank terminal runs on every visit:

1. :func:`create_challenge` stores a fresh 16-byte challenge (8-byte process factor || 8-byte
   random) with a short expiry, bound to the calling credential. It lives in the database, so
   any API node can consume a challenge another node issued.
2. The terminal sends ``00 88 00 00 10 factor||random`` to the card and posts the answer.
3. :func:`verify_card` consumes the challenge with one atomic ``UPDATE ... WHERE used_at IS NULL``
   (a replay or a second node racing for it finds nothing), reads the card, its holder and the
   requested chip application in one indexed query, has the HSM check the cryptogram with the
   card's key derived inside it, and records one audit event - the consumption and the audit
   event in one transaction.

Two implementations of the same decisions (the helpers below are shared): :func:`verify_card`
and :func:`create_challenge` on a SQLAlchemy Session (SQLite, and every caller that already
holds a transaction), and :func:`verify_card_async` / :func:`create_challenge_async` for the
API on PostgreSQL - asyncio, core SQL through :class:`issuance.db_async.AsyncPgPool`, three
statements per verification flow (see the comment above :func:`create_challenge_async`).

The verdict is data (valid, or invalid with a reason); a broken HSM or database raises.
A temporary card carries the medical application only, so it verifies for ``medical`` only.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.ids import mask_citizen_id
from cardspec.keyscheme import Algorithm
from hsm.errors import CryptogramMismatch
from hsm.service import CardKeyRef
from issuance import audit
from issuance.audit import Actor
from issuance.db_async import AsyncPgPool
from issuance.models import (
    Application,
    Card,
    CardStatus,
    ChipAppKind,
    ChipApplication,
    ChipAppStatus,
    Person,
    VerificationChallenge,
    utcnow,
)


class Reason(StrEnum):
    """Why a card is refused (stable codes, part of the API)."""

    LOST = "lost"
    SUSPENDED = "suspended"
    CANCELLED = "cancelled"
    REPLACED = "replaced"
    EXPIRED = "expired"
    DAMAGED = "damaged"
    NOT_ACTIVATED = "not_activated"
    NOT_ISSUED = "not_issued"
    BLOCKED = "blocked"
    NOT_GENUINE = "not_genuine"
    WRONG_APPLICATION = "wrong_application"
    UNKNOWN_CARD = "unknown_card"
    CHALLENGE_EXPIRED = "challenge_expired"
    CHALLENGE_REUSED = "challenge_reused"
    CHALLENGE_UNKNOWN = "challenge_unknown"


#: Card statuses that make every verification fail, with their reason.
CARD_STATUS_REASONS: dict[CardStatus, Reason] = {
    CardStatus.NUMBER_ALLOCATED: Reason.NOT_ISSUED,
    CardStatus.IN_PRODUCTION: Reason.NOT_ISSUED,
    CardStatus.PERSONALISED: Reason.NOT_ISSUED,
    CardStatus.SHIPPED: Reason.NOT_ISSUED,
    CardStatus.ISSUED: Reason.NOT_ACTIVATED,
    CardStatus.SUSPENDED: Reason.SUSPENDED,
    CardStatus.LOST_PROVISIONAL: Reason.LOST,
    CardStatus.LOST_FORMAL: Reason.LOST,
    CardStatus.DAMAGED: Reason.DAMAGED,
    CardStatus.REPLACED: Reason.REPLACED,
    CardStatus.EXPIRED: Reason.EXPIRED,
    CardStatus.CANCELLED: Reason.CANCELLED,
}

APP_STATUS_REASONS: dict[ChipAppStatus, Reason] = {
    ChipAppStatus.SEALED: Reason.NOT_ACTIVATED,
    ChipAppStatus.SUSPENDED: Reason.SUSPENDED,
    ChipAppStatus.BLOCKED: Reason.BLOCKED,
    ChipAppStatus.CANCELLED: Reason.CANCELLED,
}

#: ``check(ref, factor, random, response)``: raise CryptogramMismatch unless genuine (the HSM).
CryptogramCheck = Callable[[CardKeyRef, bytes, bytes, bytes], None]


@dataclass(frozen=True)
class Challenge:
    id: str
    challenge: bytes
    expires_at: datetime

    @property
    def factor(self) -> bytes:
        return self.challenge[:8]

    @property
    def random(self) -> bytes:
        return self.challenge[8:]


def create_challenge(
    session: Session, credential_id: int, ttl_seconds: int, now: datetime | None = None
) -> Challenge:
    """A fresh single-use challenge for this caller (one INSERT)."""
    now = now or utcnow()
    ch = Challenge(
        secrets.token_hex(16), secrets.token_bytes(16), now + timedelta(seconds=ttl_seconds)
    )
    session.execute(
        sa.insert(VerificationChallenge),
        [{"id": ch.id, "credential_id": credential_id, "challenge": ch.challenge,
          "created_at": now, "expires_at": ch.expires_at}],
    )  # fmt: skip
    return ch


def purge_challenges(session: Session, older_than: timedelta = timedelta(hours=1)) -> int:
    """Delete challenges expired for longer than ``older_than`` (housekeeping)."""
    result = session.execute(
        sa.delete(VerificationChallenge).where(
            VerificationChallenge.expires_at < utcnow() - older_than
        )
    )
    return int(cast(Any, result).rowcount or 0)


_VC = cast(sa.Table, VerificationChallenge.__table__)


def consume_challenge(
    session: Session, challenge_id: str, credential_id: int, now: datetime | None = None
) -> bytes | Reason:
    """Mark the challenge used (atomically) and return it, or the reason it cannot be used."""
    now = now or utcnow()
    got = session.execute(
        sa.update(_VC)
        .where(
            _VC.c.id == challenge_id,
            _VC.c.credential_id == credential_id,
            _VC.c.used_at.is_(None),
            _VC.c.expires_at > now,
        )
        .values(used_at=now)
        .returning(_VC.c.challenge)
    ).scalar_one_or_none()
    if got is not None:
        return bytes(got)
    row = session.execute(
        sa.select(_VC.c.credential_id, _VC.c.used_at).where(_VC.c.id == challenge_id)
    ).one_or_none()
    if row is None or row.credential_id != credential_id:
        return Reason.CHALLENGE_UNKNOWN
    return Reason.CHALLENGE_REUSED if row.used_at is not None else Reason.CHALLENGE_EXPIRED


@dataclass(frozen=True)
class HolderView:
    name: str
    citizen_id: str  # masked unless the caller may see the full number
    sex: str
    birth_date: date


@dataclass(frozen=True)
class Verdict:
    valid: bool
    reason: Reason | None
    application: ChipAppKind
    card_number: str | None = None
    card_identification_code: str | None = None
    card_kind: str | None = None
    card_status: str | None = None
    application_status: str | None = None
    expiry_date: date | None = None
    holder: HolderView | None = None
    photo_jpeg: bytes | None = None


_CARD_COLUMNS = (
    "id", "card_number", "kind", "status", "key_version", "algorithm", "expiry_date",
    "person_id", "name", "citizen_id", "sex", "birth_date", "app_status",
)  # fmt: skip


@dataclass(frozen=True)
class CardRow:
    """What a verification needs to know about the card, its holder and the application."""

    id: int
    card_number: str
    kind: str
    status: str
    key_version: int
    algorithm: str
    expiry_date: date | None
    person_id: int
    name: str
    citizen_id: str
    sex: str
    birth_date: date
    app_status: str | None


def _card_query(cic: str, kind: ChipAppKind) -> sa.Select[Any]:
    return (
        sa.select(
            Card.id, Card.card_number, Card.kind, Card.status, Card.key_version, Card.algorithm,
            Card.expiry_date, Person.id.label("person_id"), Person.name, Person.citizen_id,
            Person.sex, Person.birth_date, ChipApplication.status.label("app_status"),
        )
        .join(Person, Person.id == Card.person_id)
        .outerjoin(
            ChipApplication,
            sa.and_(ChipApplication.card_id == Card.id, ChipApplication.kind == kind),
        )
        .where(Card.card_identification_code == cic)
    )  # fmt: skip


def _card_row(row: Any) -> CardRow:
    return CardRow(*(getattr(row, c) for c in _CARD_COLUMNS))


def _refusal(row: CardRow, today: date) -> Reason | None:
    status = CardStatus(row.status)
    if status != CardStatus.ACTIVE:
        return CARD_STATUS_REASONS[status]
    if row.expiry_date is not None and row.expiry_date < today:
        return Reason.EXPIRED
    if row.app_status is None:
        return Reason.WRONG_APPLICATION
    return APP_STATUS_REASONS.get(ChipAppStatus(row.app_status))


def _key_ref(cic: str, row: CardRow) -> CardKeyRef:
    return CardKeyRef(cic, key_version=row.key_version, algorithm=Algorithm(str(row.algorithm)))


def _verdict(
    row: CardRow,
    reason: Reason | None,
    application: ChipAppKind,
    cic: str,
    with_holder: bool,
    full_citizen_id: bool,
    photo: bytes | None,
) -> Verdict:
    holder = None
    if reason is None and with_holder:
        cid = row.citizen_id if full_citizen_id else mask_citizen_id(row.citizen_id)
        holder = HolderView(row.name, cid, row.sex, row.birth_date)
    return Verdict(
        reason is None, reason, application, row.card_number, cic, str(row.kind),
        str(row.status), None if row.app_status is None else str(row.app_status),
        row.expiry_date, holder, photo if reason is None else None,
    )  # fmt: skip


def _audit_details(
    verdict: Verdict, application: ChipAppKind, number: str, challenge_id: str
) -> dict[str, Any]:
    return {
        "valid": verdict.valid,
        "reason": verdict.reason and str(verdict.reason),
        "application": str(application),
        "card_number": number,
        "challenge": challenge_id,
        "holder_shown": verdict.holder is not None,
        "photo_shown": verdict.photo_jpeg is not None,
    }


def _audit_row(
    actor: Actor,
    cic: str,
    verdict: Verdict,
    application: ChipAppKind,
    number: str,
    challenge_id: str,
    now: datetime,
) -> dict[str, Any]:
    return audit.event_row(
        actor, "card.verified", "card", cic,
        after="valid" if verdict.valid else "invalid",
        details=_audit_details(verdict, application, number, challenge_id),
        occurred_at=now,
    )  # fmt: skip


def verify_card(
    session: Session,
    *,
    challenge_id: str,
    credential_id: int,
    card_identification_code: str,
    card_number: str,
    response: bytes,
    application: ChipAppKind,
    check: CryptogramCheck,
    actor: Actor,
    with_holder: bool = False,
    full_citizen_id: bool = False,
    with_photo: bool = False,
    now: datetime | None = None,
) -> Verdict:
    """Consume the challenge, check the card's cryptogram and status; audit the verdict."""
    now = now or utcnow()
    cic, number = card_identification_code.upper(), card_number.upper()
    verdict = _verify(
        session, challenge_id, credential_id, cic, number, response, application, check,
        with_holder, full_citizen_id, with_photo, now,
    )  # fmt: skip
    audit.record(
        session, actor, "card.verified", "card", cic,
        after="valid" if verdict.valid else "invalid",
        details=_audit_details(verdict, application, number, challenge_id),
    )  # fmt: skip
    return verdict


def _photo_query(person_id: int) -> sa.Select[Any]:
    return (
        sa.select(Application.photo_jpeg)
        .where(Application.person_id == person_id, Application.photo_jpeg.is_not(None))
        .order_by(Application.id.desc())
        .limit(1)
    )


def _verify(
    session: Session,
    challenge_id: str,
    credential_id: int,
    cic: str,
    number: str,
    response: bytes,
    application: ChipAppKind,
    check: CryptogramCheck,
    with_holder: bool,
    full_citizen_id: bool,
    with_photo: bool,
    now: datetime,
) -> Verdict:
    consumed = consume_challenge(session, challenge_id, credential_id, now)
    if isinstance(consumed, Reason):
        return Verdict(False, consumed, application)
    got = session.execute(_card_query(cic, application)).one_or_none()
    if got is None:
        return Verdict(False, Reason.UNKNOWN_CARD, application, number, cic)
    row = _card_row(got)
    if row.status == CardStatus.LOST_PROVISIONAL and _lapse(session, row.id, now):
        row = _card_row(session.execute(_card_query(cic, application)).one())
    if row.card_number != number:
        # EF05 says another card number than the chip's record; say nothing about the record
        # a forgery points at
        return Verdict(False, Reason.NOT_GENUINE, application, number, cic)
    try:
        check(_key_ref(cic, row), consumed[:8], consumed[8:], response)
    except CryptogramMismatch:
        return Verdict(False, Reason.NOT_GENUINE, application, number, cic)
    reason = _refusal(row, now.date())
    photo = None
    if reason is None and with_photo:
        photo = session.execute(_photo_query(row.person_id)).scalar_one_or_none()
    return _verdict(row, reason, application, cic, with_holder, full_citizen_id, photo)


def _lapse(session: Session, card_id: int, now: datetime) -> bool:
    from issuance.services.loss import lapse_if_due

    card = session.get(Card, card_id)
    return card is not None and lapse_if_due(session, card, now)


# --- the PostgreSQL hot path (asyncio, core SQL, no ORM) ------------------------------------
#
# Same decisions as above (the shared helpers), in three statements per verification flow,
# each its own transaction (autocommit; one statement = one atomic unit):
#
# * challenge: one INSERT;
# * verify, statement 1 (read only): the challenge, the card, its holder and the requested
#   chip application, in one indexed query;
# * the cryptogram check in the HSM (nothing is locked meanwhile);
# * verify, statement 2: one data-modifying CTE that consumes the challenge with
#   ``UPDATE ... WHERE used_at IS NULL`` and inserts the audit event of the verdict, so the
#   consumption and its audit record commit together or not at all. Two requests racing with
#   the same challenge both pass statement 1; the row lock makes the second UPDATE wait and
#   then find ``used_at`` set: its audit event and its answer say ``challenge_reused``.
#
# A provisionally lost card whose report may have lapsed goes through the ORM path (the lapse is
# a lifecycle transition with its own audit event), run by the caller's ``slow_path``.

#: ``await check(ref, factor, random, response)``: raise CryptogramMismatch unless genuine.
AsyncCryptogramCheck = Callable[[CardKeyRef, bytes, bytes, bytes], Awaitable[None]]

_SQL_NEW_CHALLENGE = (
    "INSERT INTO verification_challenges (id, credential_id, challenge, created_at, expires_at)"
    " VALUES ($1, $2, $3, $4, $5)"
)

#: $1 challenge id, $2 card identification code, $3 chip application kind
_SQL_LOOKUP = (
    "SELECT v.challenge, v.credential_id, v.used_at, v.expires_at,"
    " c.id, c.card_number, c.kind, c.status, c.key_version, c.algorithm, c.expiry_date,"
    " p.id, p.name, p.citizen_id, p.sex, p.birth_date, a.status"
    " FROM (VALUES (1)) AS one (x)"
    " LEFT JOIN verification_challenges AS v ON v.id = $1"
    " LEFT JOIN cards AS c ON c.card_identification_code = $2"
    " LEFT JOIN persons AS p ON p.id = c.person_id"
    " LEFT JOIN chip_applications AS a ON a.card_id = c.id AND a.kind = $3"
)

_EVENT_COLUMNS = ", ".join(f'"{c}"' for c in audit.EVENT_COLUMNS)
_N_EVENT = len(audit.EVENT_COLUMNS)

#: the event's columns $1..$12 (audit.EVENT_COLUMNS order)
_SQL_AUDIT_ONLY = (
    f"INSERT INTO audit_events ({_EVENT_COLUMNS}) VALUES "
    f"({', '.join(f'${i}' for i in range(1, _N_EVENT + 1))})"
)


def _consume_and_audit_sql() -> str:
    """Consume the challenge and audit the verdict in one statement: $1 challenge id, $2
    credential, $3.. the event's columns (occurred_at first: the consumption time), then
    ``after`` and ``details`` of the ``challenge_reused`` verdict a race loser records."""
    lost_after, lost_details = _N_EVENT + 3, _N_EVENT + 4
    values = []
    for i, column in enumerate(audit.EVENT_COLUMNS, start=3):
        lost = {"after": lost_after, "details": lost_details}.get(column)
        values.append(
            f"${i}" if lost is None else f"CASE WHEN ch.id IS NULL THEN ${lost} ELSE ${i} END"
        )
    return (
        "WITH ch AS (UPDATE verification_challenges SET used_at = $3"
        " WHERE id = $1 AND credential_id = $2 AND used_at IS NULL AND expires_at > $3"
        " RETURNING id),"
        f" ev AS (INSERT INTO audit_events ({_EVENT_COLUMNS}) SELECT {', '.join(values)}"
        " FROM (VALUES (1)) AS one (x) LEFT JOIN ch ON true)"
        " SELECT count(*) FROM ch"
    )


assert audit.EVENT_COLUMNS[0] == "occurred_at"
_SQL_CONSUME_AND_AUDIT = _consume_and_audit_sql()


def _event_args(row: dict[str, Any]) -> list[Any]:
    return [row[c] for c in audit.EVENT_COLUMNS]


async def create_challenge_async(
    pool: AsyncPgPool, credential_id: int, ttl_seconds: int, now: datetime | None = None
) -> Challenge:
    """:func:`create_challenge` on the asyncio pool (one INSERT, its own transaction)."""
    now = now or utcnow()
    ch = Challenge(
        secrets.token_hex(16), secrets.token_bytes(16), now + timedelta(seconds=ttl_seconds)
    )
    await pool.run(
        lambda conn: conn.execute(
            _SQL_NEW_CHALLENGE, ch.id, credential_id, ch.challenge, now, ch.expires_at
        )
    )
    return ch


def _challenge_refusal(got: Any, credential_id: int, now: datetime) -> Reason | None:
    challenge, owner, used_at, expires_at = got[0], got[1], got[2], got[3]
    if challenge is None or owner != credential_id:
        return Reason.CHALLENGE_UNKNOWN
    if used_at is not None:
        return Reason.CHALLENGE_REUSED
    if expires_at <= now:
        return Reason.CHALLENGE_EXPIRED
    return None


async def verify_card_async(
    pool: AsyncPgPool,
    *,
    challenge_id: str,
    credential_id: int,
    card_identification_code: str,
    card_number: str,
    response: bytes,
    application: ChipAppKind,
    check: AsyncCryptogramCheck,
    actor: Actor,
    slow_path: Callable[[], Awaitable[Verdict]],
    with_holder: bool = False,
    full_citizen_id: bool = False,
    with_photo: bool = False,
    now: datetime | None = None,
) -> Verdict:
    """:func:`verify_card` on the asyncio pool, same verdicts (see the comment above)."""
    now = now or utcnow()
    cic, number = card_identification_code.upper(), card_number.upper()
    got = await pool.run(
        lambda conn: conn.fetchrow(_SQL_LOOKUP, challenge_id, cic, str(application))
    )
    assert got is not None  # the VALUES row is always there
    refused = _challenge_refusal(got, credential_id, now)
    if refused is not None:
        verdict = Verdict(False, refused, application)
        row = _audit_row(actor, cic, verdict, application, number, challenge_id, now)
        await pool.run(lambda conn: conn.execute(_SQL_AUDIT_ONLY, *_event_args(row)))
        return verdict
    card = None if got[4] is None else CardRow(*got[4:])
    if card is not None and card.status == CardStatus.LOST_PROVISIONAL:
        return await slow_path()
    challenge = bytes(got[0])
    if card is None:
        verdict = Verdict(False, Reason.UNKNOWN_CARD, application, number, cic)
    elif card.card_number != number:
        verdict = Verdict(False, Reason.NOT_GENUINE, application, number, cic)
    else:
        try:
            await check(_key_ref(cic, card), challenge[:8], challenge[8:], response)
            reason = _refusal(card, now.date())
        except CryptogramMismatch:
            reason = Reason.NOT_GENUINE
        if reason is Reason.NOT_GENUINE:
            verdict = Verdict(False, reason, application, number, cic)
        else:
            photo = None
            if reason is None and with_photo:
                photo = await _photo_async(pool, card.person_id)
            verdict = _verdict(card, reason, application, cic, with_holder, full_citizen_id, photo)
    lost = Verdict(False, Reason.CHALLENGE_REUSED, application)
    row = _audit_row(actor, cic, verdict, application, number, challenge_id, now)
    lost_row = _audit_row(actor, cic, lost, application, number, challenge_id, now)
    args = [challenge_id, credential_id, *_event_args(row), lost_row["after"],
            lost_row["details"]]  # fmt: skip
    consumed = await pool.run(lambda conn: conn.fetchval(_SQL_CONSUME_AND_AUDIT, *args))
    return verdict if consumed == 1 else lost


async def _photo_async(pool: AsyncPgPool, person_id: int) -> bytes | None:
    got = await pool.run(
        lambda conn: conn.fetchval(
            "SELECT photo_jpeg FROM applications WHERE person_id = $1"
            " AND photo_jpeg IS NOT NULL ORDER BY id DESC LIMIT 1",
            person_id,
        )
    )
    return None if got is None else bytes(got)
