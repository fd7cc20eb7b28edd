"""Card verification: single-use challenges and the verdict on a card's INTERNAL AUTHENTICATE.

Design notes: ``docs/design/issuance.md`` (section ``issuance.services.verification``).
"""

from __future__ import annotations

import functools
import hmac
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.ids import mask_citizen_id
from cardspec.keyscheme import Algorithm
from hsm.errors import CryptogramMismatch
from hsm.service import CardKeyRef
from issuance import audit
from issuance.audit import Actor
from issuance.db_async import AsyncPgPool, Coalescer, DatabaseUnavailable, RowsInsert
from issuance.errors import IssuanceError
from issuance.models import (
    Application,
    AuditEvent,
    Card,
    CardStatus,
    ChipAppKind,
    ChipApplication,
    ChipAppStatus,
    Person,
    UsedChallenge,
    utcnow,
)
from issuance.services.card_steps import lapse_if_due
from issuance.services.credentials import epoch_holds_sql


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
#: ``await check(ref, factor, random, response)``: raise CryptogramMismatch unless genuine.
AsyncCryptogramCheck = Callable[[CardKeyRef, bytes, bytes, bytes], Awaitable[None]]
_N_EVENT = len(audit.EVENT_COLUMNS)
_AFTER, _DETAILS = audit.EVENT_COLUMNS.index("after"), audit.EVENT_COLUMNS.index("details")


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


#: Single-use challenges stay recorded this long after they expired: a bound on how far the API
#: nodes' clocks may lag the worker's (keep them NTP-synchronised).
USED_CHALLENGE_MARGIN = timedelta(minutes=10)
_ID_LABEL = b"ykt-challenge-id/1"
_CHALLENGE_LABEL = b"ykt-challenge/1"
_TAG_LEN = 6
#: naive UTC (what :func:`utcnow` gives) of Unix time 0
_UNIX_EPOCH = datetime(1970, 1, 1)


class ChallengeCodec:
    """Stateless single-use challenges under one 32-byte key (see the module docstring)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the challenge key must be at least 16 bytes")
        self._key = key

    def _mac(self, label: bytes, credential_id: int, data: bytes) -> bytes:
        msg = label + credential_id.to_bytes(8, "big", signed=True) + data
        return hmac.digest(self._key, msg, "sha256")  # one-shot: OpenSSL's HMAC in one call

    def issue(self, credential_id: int, ttl_seconds: int, now: datetime | None = None) -> Challenge:
        """A fresh challenge for this caller, valid ``ttl_seconds`` (nothing is stored)."""
        # the clock :func:`utcnow` reads, in Unix seconds (no datetime made and converted back)
        seconds = time.time() if now is None else now.replace(tzinfo=UTC).timestamp()
        expiry = int(seconds) + ttl_seconds
        head = expiry.to_bytes(4, "big") + os.urandom(6)  # what secrets.token_bytes reads
        cid = head + self._mac(_ID_LABEL, credential_id, head)[:_TAG_LEN]
        challenge = self._mac(_CHALLENGE_LABEL, credential_id, cid)[:16]
        return Challenge(cid.hex(), challenge, _UNIX_EPOCH + timedelta(seconds=expiry))

    def open(
        self, challenge_id: str, credential_id: int, now: datetime | None = None
    ) -> bytes | Reason:
        """The challenge bytes of ``challenge_id`` if it is this caller's and unexpired, else
        the reason (``challenge_unknown``, ``challenge_expired``). Whether it was used
        already is the database's to say (:data:`used_challenges`)."""
        try:
            cid = bytes.fromhex(challenge_id)
        except ValueError:
            return Reason.CHALLENGE_UNKNOWN
        if len(cid) != 16:
            return Reason.CHALLENGE_UNKNOWN
        tag = self._mac(_ID_LABEL, credential_id, cid[:10])[:_TAG_LEN]
        if not hmac.compare_digest(tag, cid[10:]):
            return Reason.CHALLENGE_UNKNOWN
        now = now or utcnow()
        if int.from_bytes(cid[:4], "big") <= now.replace(tzinfo=UTC).timestamp():
            return Reason.CHALLENGE_EXPIRED
        return self._mac(_CHALLENGE_LABEL, credential_id, cid)[:16]


def used_key(challenge_id: str) -> bytes:
    """The ``used_challenges`` primary key of an (opened, hence well-formed) challenge id."""
    return bytes.fromhex(challenge_id)


def prune_used_challenges(
    session: Session, now: datetime | None = None, margin: timedelta = USED_CHALLENGE_MARGIN
) -> int:
    """Forget used challenges expired for longer than ``margin`` (``ykt worker``): they are
    refused as expired anyway. A range of the primary key (the expiry leads the id)."""
    cutoff = (now or utcnow()) - margin
    limit = max(0, int(cutoff.replace(tzinfo=UTC).timestamp())).to_bytes(4, "big")
    result = session.execute(sa.delete(UsedChallenge).where(UsedChallenge.id < limit))
    return int(cast(Any, result).rowcount or 0)


def mark_used(session: Session, challenge_id: str) -> bool:
    """Record the challenge as used; False if it was already (single use). Commits with the
    caller's transaction; a concurrent first use makes this wait for it, then answer False."""
    return _insert_used(session, used_key(challenge_id))


def _insert_used(session: Session, key: bytes) -> bool:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(UsedChallenge).on_conflict_do_nothing()
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(UsedChallenge).on_conflict_do_nothing()
    else:  # pragma: no cover - the project runs on SQLite and PostgreSQL
        raise NotImplementedError(dialect)
    got = session.execute(stmt.values(id=key).returning(UsedChallenge.id))
    return got.scalar_one_or_none() is not None


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


def _audit_values(
    actor: Actor,
    cic: str,
    verdict: Verdict,
    application: ChipAppKind,
    number: str,
    challenge_id: str,
    now: datetime,
) -> tuple[Any, ...]:
    """The ``card.verified`` event's column values (:data:`audit.EVENT_COLUMNS` order), made
    by :func:`audit.event_values` like every audit event."""
    return audit.event_values(
        actor,
        "card.verified",
        "card",
        cic,
        after="valid" if verdict.valid else "invalid",
        details=_audit_details(verdict, application, number, challenge_id),
        occurred_at=now,
    )


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
    codec: ChallengeCodec,
    with_holder: bool = False,
    full_citizen_id: bool = False,
    with_photo: bool = False,
    now: datetime | None = None,
) -> Verdict:
    """Open and use up the challenge, check the card's cryptogram and status; audit the
    verdict (in the caller's transaction, with the challenge's use): :func:`_verify` on the
    session (:class:`SessionStore`)."""

    async def check_now(ref: CardKeyRef, factor: bytes, rnd: bytes, resp: bytes) -> None:
        check(ref, factor, rnd, resp)

    steps = _verify(
        SessionStore(session, challenge_id),
        challenge_id,
        credential_id,
        card_identification_code,
        card_number,
        response,
        application,
        check_now,
        actor,
        codec,
        with_holder,
        full_citizen_id,
        with_photo,
        now,
    )
    try:  # nothing of a SessionStore waits: the first step runs the verification to its end
        steps.send(None)
    except StopIteration as done:
        return cast(Verdict, done.value)
    steps.close()
    raise RuntimeError("a SessionStore verification waited for something")


def _photo_query(person_id: int) -> sa.Select[Any]:
    return (
        sa.select(Application.photo_jpeg)
        .where(Application.person_id == person_id, Application.photo_jpeg.is_not(None))
        .order_by(Application.id.desc())
        .limit(1)
    )


class _NeedsSession(IssuanceError):
    """The verification needs the ORM (a provisionally lost card whose report may lapse);
    caught by :func:`verify_card_async`, never leaves this module."""


class StaleEpoch(IssuanceError):
    """The caller's token was resolved at an authentication epoch that is no longer the
    current one (a principal was disabled, revoked or held since): raised by a verification
    given that ``epoch`` (:func:`verify_card_async`) before anything was written; the caller
    resolves the token again and decides (:mod:`api.hotpath`)."""

    code = "stale_authentication"


class Store(Protocol):
    """Where a verification reads and writes: :class:`SessionStore` (a Session, the caller's
    transaction) or :class:`VerificationStore` (the asyncio pool, PostgreSQL)."""

    async def lookup(self, cic: str, kind: ChipAppKind) -> CardRow | None:
        """The card, its holder and the chip application ``kind`` (None: no such card)."""
        ...

    async def lapse(self, card: CardRow, kind: ChipAppKind, now: datetime) -> CardRow | None:
        """A provisionally lost card, read again after its report lapsed if due (the
        lifecycle transition, audited)."""
        ...

    async def photo(self, person_id: int) -> bytes | None: ...

    async def use_and_audit(self, args: Sequence[Any]) -> bool:
        """``args``: the challenge's primary key, the event's columns, then ``after`` and
        ``details`` of the ``challenge_reused`` verdict. Records the challenge as used and the
        event (True), or, if it was used already, the ``challenge_reused`` event (False)."""
        ...

    async def audit_only(self, row: Sequence[Any]) -> None: ...


async def _verify(
    store: Store,
    challenge_id: str,
    credential_id: int,
    card_identification_code: str,
    card_number: str,
    response: bytes,
    application: ChipAppKind,
    check: AsyncCryptogramCheck,
    actor: Actor,
    codec: ChallengeCodec,
    with_holder: bool,
    full_citizen_id: bool,
    with_photo: bool,
    now: datetime | None,
) -> Verdict:
    """The one implementation of a verification's decisions and of its audit event, whatever
    the store (see the module docstring and the comment above :func:`verify_card_async`)."""
    now = now or utcnow()
    cic, number = card_identification_code.upper(), card_number.upper()
    opened = codec.open(challenge_id, credential_id, now)
    if isinstance(opened, Reason):
        verdict = Verdict(False, opened, application)
        row = _audit_values(actor, cic, verdict, application, number, challenge_id, now)
        await store.audit_only(row)
        return verdict
    card = await store.lookup(cic, application)
    if card is not None and card.status == CardStatus.LOST_PROVISIONAL:
        card = await store.lapse(card, application, now)
    if card is None:
        verdict = Verdict(False, Reason.UNKNOWN_CARD, application, number, cic)
    elif card.card_number != number:
        # EF05 says another card number than the chip's record; say nothing about the record
        # a forgery points at
        verdict = Verdict(False, Reason.NOT_GENUINE, application, number, cic)
    else:
        try:
            await check(_key_ref(cic, card), opened[:8], opened[8:], response)
            reason = _refusal(card, now.date())
        except CryptogramMismatch:
            reason = Reason.NOT_GENUINE
        if reason is Reason.NOT_GENUINE:
            verdict = Verdict(False, reason, application, number, cic)
        else:
            photo = None
            if reason is None and with_photo:
                photo = await store.photo(card.person_id)
            verdict = _verdict(card, reason, application, cic, with_holder, full_citizen_id, photo)
    lost = Verdict(False, Reason.CHALLENGE_REUSED, application)
    row = _audit_values(actor, cic, verdict, application, number, challenge_id, now)
    lost_details = audit.details_json(_audit_details(lost, application, number, challenge_id))
    args = [used_key(challenge_id), *row, "invalid", lost_details]
    return verdict if await store.use_and_audit(args) else lost


class SessionStore:
    """:class:`Store` in a SQLAlchemy Session, the caller's transaction (SQLite, and every
    caller that already holds a transaction), for one challenge. Nothing here waits:
    :func:`verify_card` runs :func:`_verify` to its end in one step.

    The challenge is recorded as used by the transaction's first statement (before the card is
    read): on SQLite a transaction that reads first and writes later fails when another one
    wrote meanwhile, so concurrent uses of one challenge queue for the writer lock instead;
    :meth:`use_and_audit` then writes the event that use calls for."""

    def __init__(self, session: Session, challenge_id: str) -> None:
        self.session = session
        self._challenge_id = challenge_id
        self._fresh: bool | None = None

    async def lookup(self, cic: str, kind: ChipAppKind) -> CardRow | None:
        if self._fresh is None:
            self._fresh = _insert_used(self.session, used_key(self._challenge_id))
        got = self.session.execute(_card_query(cic, kind)).one_or_none()
        return None if got is None else _card_row(got)

    async def lapse(self, card: CardRow, kind: ChipAppKind, now: datetime) -> CardRow | None:
        obj = self.session.get(Card, card.id)
        if obj is None or obj.card_identification_code is None:
            return card
        if not lapse_if_due(self.session, obj, now):
            return card
        return await self.lookup(obj.card_identification_code, kind)

    async def photo(self, person_id: int) -> bytes | None:
        return self.session.execute(_photo_query(person_id)).scalar_one_or_none()

    async def use_and_audit(self, args: Sequence[Any]) -> bool:
        if self._fresh is None or args[0] != used_key(self._challenge_id):
            raise RuntimeError("SessionStore: the challenge was not recorded by lookup")
        fresh = self._fresh
        row = list(args[1 : 1 + _N_EVENT])
        if not fresh:  # what SQL_USE_AND_AUDIT_MANY records then
            row[_AFTER], row[_DETAILS] = args[1 + _N_EVENT], args[2 + _N_EVENT]
        self._add(row)
        return fresh

    async def audit_only(self, row: Sequence[Any]) -> None:
        self._add(row)

    def _add(self, row: Sequence[Any]) -> None:
        self.session.add(AuditEvent(**dict(zip(audit.EVENT_COLUMNS, row, strict=True))))


# --- the PostgreSQL hot path (asyncio, core SQL, no ORM) ------------------------------------
#
# :func:`_verify` on :class:`VerificationStore`: two statements per verification, each its
# own transaction (autocommit; one statement = one atomic unit); the challenge call writes
# nothing:
#
# * the challenge id is opened in the process (MAC, expiry): a refusal is audited alone;
# * statement 1 (read only): the card, its holder and the requested chip application, in one
#   indexed query;
# * the cryptogram check in the HSM (nothing is locked meanwhile);
# * statement 2: one data-modifying CTE that records the challenge as used (``INSERT ... ON
#   CONFLICT DO NOTHING``: the primary key makes it single-use) and inserts the audit event of
#   the verdict, so the use and its audit record commit together or not at all. Two requests
#   racing with the same challenge both get this far; the second INSERT waits for the first
#   to commit, then inserts nothing: its audit event and its answer say ``challenge_reused``.
#
# Both statements are grouped (:class:`VerificationStore`): the verifications in flight on a
# node at the same moment share one card read and one write (arrays through ``unnest``), so
# under load a round trip and a commit serve several verifications (measured on the benchmark's
# 2-core machine: PostgreSQL CPU per verification -27 %, the API's -20 %). Each answer still
# waits for the commit that carries its own challenge use and audit event, and one group never
# holds the same challenge twice: the later one waits for the next group, whose INSERT finds
# the challenge used. The API's call-log rows (those of the challenge calls) ride the same
# grouped write (:meth:`VerificationStore.carry`): one commit per round for both, instead of
# a statement and a commit of the call log's own. Each statement is planned once per
# connection (:data:`issuance.db_async.SERVER_SETTINGS`).
#
# The API's cached tokens are checked by these statements too, instead of a read of their
# own: a verification given the authentication epoch its caller's token was resolved at
# (``verify_card_async(epoch=...)``) has its card read (:data:`SQL_LOOKUP_HELD_MANY`), or a
# refused challenge's audit event, check that it is still the epoch
# (:func:`issuance.services.credentials.epoch_holds_sql`) and stops with :class:`StaleEpoch`
# before anything is written if not; a rider held for an epoch (the challenge call's record) is
# written only while it holds, and its caller learns whether it was.
#
# A provisionally lost card whose report may have lapsed goes through the ORM path (the lapse is
# a lifecycle transition with its own audit event), run by the caller's ``slow_path``. On a
# Session the same steps run in the caller's transaction (the challenge's use, the event and
# a lapse commit together).

#: $1 card identification code, $2 chip application kind
SQL_LOOKUP = (
    "SELECT c.id, c.card_number, c.kind, c.status, c.key_version, c.algorithm, c.expiry_date,"
    " p.id, p.name, p.citizen_id, p.sex, p.birth_date, a.status"
    " FROM cards AS c JOIN persons AS p ON p.id = c.person_id"
    " LEFT JOIN chip_applications AS a ON a.card_id = c.id AND a.kind = $2"
    " WHERE c.card_identification_code = $1"
)

_EVENT_COLUMNS = ", ".join(f'"{c}"' for c in audit.EVENT_COLUMNS)

#: the event's columns $1..$12 (audit.EVENT_COLUMNS order)
_SQL_AUDIT_ONLY = (
    f"INSERT INTO audit_events ({_EVENT_COLUMNS}) VALUES "
    f"({', '.join(f'${i}' for i in range(1, _N_EVENT + 1))})"
)


#: :data:`SQL_LOOKUP` for many verifications at once: $1 the card identification codes, $2
#: the chip application kinds (arrays, same length); each row starts with its item's position
#: (1-based); an unknown card has no row. Each item is looked up by index (a LATERAL subquery
#: behind ``OFFSET 0``, which the planner cannot flatten into a hash join): the plan is the same
#: whatever the batch's size and the tables' sizes, so the pool's generic plan
#: (:data:`issuance.db_async.SERVER_SETTINGS`) is also the best one - planned once per
#: connection instead of once per call (measured: planning was 84 us of PostgreSQL CPU per
#: verification, a third of it).
_LOOKUP_ONE = (
    " (SELECT c.id, c.card_number, c.kind, c.status, c.key_version,"
    " c.algorithm, c.expiry_date, p.id AS person_id, p.name, p.citizen_id, p.sex,"
    " p.birth_date, a.status AS app_status"
    " FROM cards AS c JOIN persons AS p ON p.id = c.person_id"
    " LEFT JOIN chip_applications AS a ON a.card_id = c.id AND a.kind = q.kind"
    " WHERE c.card_identification_code = q.cic OFFSET 0) AS x"
)
SQL_LOOKUP_MANY = (
    "SELECT q.n, x.* FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q (cic, kind, n)"
    " CROSS JOIN LATERAL" + _LOOKUP_ONE
)
#: :data:`SQL_LOOKUP_MANY` for items that hold for an authentication epoch (the API's cached
#: tokens, not checked yet): $3 their epochs (NULL: none). Every item has a row (an unknown
#: card: its card columns NULL), whose last column says whether its epoch is still the current
#: one (:func:`issuance.services.credentials.epoch_holds_sql`, read by this statement).
SQL_LOOKUP_HELD_MANY = (
    f"SELECT q.n, x.*, {epoch_holds_sql('q.held')} FROM unnest($1::text[], $2::text[],"
    " $3::bigint[]) WITH ORDINALITY AS q (cic, kind, held, n) LEFT JOIN LATERAL"
    + _LOOKUP_ONE
    + " ON true"
)

#: PostgreSQL array types of the audit event's columns (audit.EVENT_COLUMNS order)
_EVENT_TYPES = ("timestamp", "integer", "text", "text", "text", "text", "text", "text",
                "text", "text", "text", "text")  # fmt: skip

#: :data:`_SQL_AUDIT_ONLY` only if $13 is still the authentication epoch (a cached token's)
_SQL_AUDIT_ONLY_HELD = (
    f"INSERT INTO audit_events ({_EVENT_COLUMNS}) SELECT "
    + ", ".join(f"${i}::{t}" for i, t in enumerate(_EVENT_TYPES, start=1))
    + f" WHERE {epoch_holds_sql(f'${_N_EVENT + 1}::bigint')}"
)


def _use_and_audit_many_ctes() -> str:
    """The common table expressions of :data:`SQL_USE_AND_AUDIT_MANY`."""
    names = ["id", *audit.EVENT_COLUMNS, "lost_after", "lost_details"]
    types = ["bytea", *_EVENT_TYPES, "text", "text"]
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start=1))
    values = []
    for column in audit.EVENT_COLUMNS:
        lost = {"after": "lost_after", "details": "lost_details"}.get(column)
        values.append(
            f'q."{column}"' if lost is None
            else f'CASE WHEN u.id IS NULL THEN q.{lost} ELSE q."{column}" END'
        )  # fmt: skip
    return (
        f"q AS (SELECT * FROM unnest({arrays}) WITH ORDINALITY AS q"
        f" ({', '.join(f'{chr(34)}{n}{chr(34)}' for n in names)}, n)),"
        " u AS (INSERT INTO used_challenges (id) SELECT q.id FROM q ON CONFLICT DO NOTHING"
        " RETURNING id),"
        f" ev AS (INSERT INTO audit_events ({_EVENT_COLUMNS}) SELECT {', '.join(values)}"
        " FROM q LEFT JOIN u ON u.id = q.id ORDER BY q.n)"
    )


_USE_AND_AUDIT_MANY_CTES = _use_and_audit_many_ctes()
#: the number of arrays :data:`SQL_USE_AND_AUDIT_MANY` takes
_USE_ARRAYS = 1 + _N_EVENT + 2

#: Each challenge recorded as used and each verdict audited, for many verifications at once
#: (one statement, one commit; a challenge used already gets its ``challenge_reused`` event): $1
#: the challenges' primary keys, $2.. the events' columns, then the ``after`` and ``details``
#: of each ``challenge_reused`` verdict - all arrays of the same length, no challenge twice
#: (:class:`issuance.db_async.Coalescer` keys them). Returns the primary keys that were not
#: used before.
SQL_USE_AND_AUDIT_MANY = f"WITH {_USE_AND_AUDIT_MANY_CTES} SELECT id FROM u"


@functools.lru_cache(maxsize=32)
def _grouped_write_sql(uses: bool, riders: tuple[RowsInsert, ...]) -> str:
    """One round's statement of :class:`VerificationStore`: :data:`SQL_USE_AND_AUDIT_MANY`
    (if ``uses``) and the inserts of ``riders`` after it, in one statement: one commit. Each
    kind of rider rows takes its arrays (numbered on) and one more, the authentication epoch
    each row holds for (NULL: none): a row whose epoch is not the current one
    (:func:`issuance.services.credentials.epoch_holds_sql`) is not written. Returns the keys
    of the challenges that were not used before (first column), and for each rider row not
    written a row (NULL, its kind's index in ``riders``, its 1-based position in its kind).
    Made once per combination (a round's statement is one of a few)."""
    if not riders:
        return SQL_USE_AND_AUDIT_MANY
    first = _USE_ARRAYS + 1 if uses else 1
    ctes = [_USE_AND_AUDIT_MANY_CTES] if uses else []
    answers = ["SELECT id, NULL::integer, NULL::bigint FROM u"] if uses else []
    for k, rows in enumerate(riders):
        columns = ", ".join(f'"{c}"' for c in rows.columns)
        ctes.append(
            f"g{k} AS (SELECT *, {epoch_holds_sql('g.held')} AS ok"
            f" FROM {rows.unnest(first, 'bigint')} WITH ORDINALITY AS g ({columns}, held, n)),"
            f" r{k} AS (INSERT INTO {rows.table} ({columns}) SELECT {columns} FROM g{k}"
            " WHERE ok)"
        )
        answers.append(f"SELECT NULL::bytea, {k}, n FROM g{k} WHERE NOT ok")
        first += len(rows.types) + 1
    return f"WITH {', '.join(ctes)} {' UNION ALL '.join(answers)}"


#: Seconds the grouped durable write waits for more items under load (see
#: :class:`VerificationStore`). Measured on the benchmark's 2-core machine (32 connections):
#: 1 ms cut the durable writes per verification from 0.34 to 0.18 and raised the rate ~15 %
#: (``docs/design/capacity.md``, "The write lingers under load").
WRITE_LINGER = 0.001


@dataclass(frozen=True)
class _Rider:
    """A row of another table written with the next grouped write
    (:meth:`VerificationStore.carry`), if ``epoch`` is None or still the authentication
    epoch."""

    rows: RowsInsert
    row: tuple[Any, ...]
    epoch: int | None = None


def _use_key(item: list[Any] | _Rider) -> bytes | None:
    return None if isinstance(item, _Rider) else cast(bytes, item[0])


class VerificationStore:
    """The hot path's statements on the asyncio pool, *grouped*: the verifications in flight
    on a node share one card read and one durable write per round (see
    :class:`issuance.db_async.Coalescer`), instead of two statements and one commit each.
    Each verification still gets exactly its own rows and answers only after the write that
    carries its challenge's use and its audit event is committed; two verifications of the
    same challenge never share a write (the second one's write finds the challenge used).

    Under load the durable write lingers: a round whose previous round carried two items or
    more waits ``write_linger`` seconds (default :data:`WRITE_LINGER`, ``[api]
    write_linger_ms``) for more before it starts (:class:`issuance.db_async.Coalescer`), so
    more calls share each statement and commit; a lone call never waits."""

    def __init__(
        self, pool: AsyncPgPool, max_batch: int = 128, write_linger: float | None = None
    ) -> None:
        self.pool = pool
        self.lookups: Coalescer[tuple[str, str, int | None], CardRow | StaleEpoch | None] = (
            Coalescer(self._lookup_many, max_batch=max_batch)
        )
        #: the grouped durable write: verifications' uses and events, and riders (:meth:`carry`)
        self.uses: Coalescer[list[Any] | _Rider, bool | Exception] = Coalescer(
            self._write_many, max_batch=max_batch, key=_use_key,
            linger=WRITE_LINGER if write_linger is None else write_linger,
        )  # fmt: skip

    async def lookup(self, cic: str, kind: ChipAppKind, epoch: int | None = None) -> CardRow | None:
        """The card (:meth:`Store.lookup`); with ``epoch`` (a cached token's, not checked
        yet), read by the same statement: :class:`StaleEpoch` if that is no longer the
        authentication epoch."""
        got = await self.lookups((cic, str(kind), epoch))
        if isinstance(got, StaleEpoch):
            raise got
        return got

    async def use_and_audit(self, args: Sequence[Any]) -> bool:
        """``args``: the challenge's primary key, the event's columns, the lost verdict's
        ``after`` and ``details``. True if the challenge was unused (now it is)."""
        got = await self.uses(list(args))
        if isinstance(got, Exception):
            raise got
        return got

    async def carry(self, rows: RowsInsert, row: Sequence[Any], epoch: int | None = None) -> bool:
        """Insert ``row`` (``rows.columns`` order) with the next grouped write: returns once it
        is committed. For the other rows the hot path must have durable before it answers
        (the call log's, :mod:`api.calllog`): they share the verifications' statement and
        commit instead of a statement and a commit of their own. With ``epoch`` the row is
        written only if that is still the authentication epoch when the statement runs (a
        record of a call whose cached token is checked so): False if it was not (nothing
        written). If the shared statement is refused, its items are written again one by one:
        a faulty row loses no other row."""
        got = await self.uses(_Rider(rows, tuple(row), epoch))
        if isinstance(got, Exception):
            raise got
        return got

    async def audit_only(self, row: Sequence[Any], epoch: int | None = None) -> None:
        """Insert the event ``row``; with ``epoch``, only if that is still the authentication
        epoch (else :class:`StaleEpoch`, nothing written)."""
        if epoch is None:
            await self.pool.run(lambda conn: conn.execute(_SQL_AUDIT_ONLY, *row))
            return
        done = await self.pool.run(lambda conn: conn.execute(_SQL_AUDIT_ONLY_HELD, *row, epoch))
        if done.endswith(" 0"):  # "INSERT 0 0": nothing written
            raise StaleEpoch("the caller's token was resolved at an older epoch")

    async def lapse(self, card: CardRow, kind: ChipAppKind, now: datetime) -> CardRow | None:
        raise _NeedsSession("a lapse is a lifecycle transition: the ORM path")

    async def photo(self, person_id: int) -> bytes | None:
        got = await self.pool.run(
            lambda conn: conn.fetchval(
                "SELECT photo_jpeg FROM applications WHERE person_id = $1"
                " AND photo_jpeg IS NOT NULL ORDER BY id DESC LIMIT 1",
                person_id,
            )
        )
        return None if got is None else bytes(got)

    async def _lookup_many(
        self, items: list[tuple[str, str, int | None]]
    ) -> list[CardRow | StaleEpoch | None]:
        cics = [cic for cic, _, _ in items]
        kinds = [kind for _, kind, _ in items]
        epochs = [epoch for _, _, epoch in items]
        found: list[CardRow | StaleEpoch | None] = [None] * len(items)
        if all(epoch is None for epoch in epochs):
            rows = await self.pool.run(lambda conn: conn.fetch(SQL_LOOKUP_MANY, cics, kinds))
            for r in rows:
                found[r[0] - 1] = CardRow(*tuple(r)[1:])
            return found
        rows = await self.pool.run(
            lambda conn: conn.fetch(SQL_LOOKUP_HELD_MANY, cics, kinds, epochs)
        )
        for r in rows:
            values = tuple(r)
            if not values[-1]:
                found[r[0] - 1] = StaleEpoch("the caller's token was resolved at an older epoch")
            elif values[1] is not None:
                found[r[0] - 1] = CardRow(*values[1:-1])
        return found

    async def _write_many(self, items: list[list[Any] | _Rider]) -> list[bool | Exception]:
        try:
            return list(await self._write(items))
        except DatabaseUnavailable:
            raise  # no part can be written now
        except Exception:
            if len(items) == 1:
                raise
        # a row made the shared statement fail: each item alone, with its own outcome
        results: list[bool | Exception] = []
        for item in items:
            try:
                results += await self._write([item])
            except Exception as exc:  # handed to this item's caller
                results.append(exc)
        return results

    async def _write(self, items: list[list[Any] | _Rider]) -> list[bool]:
        """One statement for ``items`` (:func:`_grouped_write_sql`); for each item, a
        verification's: was its challenge unused before; a rider's: was it written."""
        uses: list[list[Any]] = []
        kinds: dict[RowsInsert, list[_Rider]] = {}
        for item in items:
            if isinstance(item, _Rider):
                kinds.setdefault(item.rows, []).append(item)
            else:
                uses.append(item)
        args: list[list[Any]] = [list(c) for c in zip(*uses, strict=True)] if uses else []
        for rows, riders in kinds.items():
            args += rows.arrays([rider.row for rider in riders])
            args.append([rider.epoch for rider in riders])
        sql = _grouped_write_sql(bool(uses), tuple(kinds))
        got = await self.pool.run(lambda conn: conn.fetch(sql, *args))
        unused = {bytes(r[0]) for r in got if r[0] is not None}
        unwritten = {(r[1], r[2]) for r in got if r[0] is None}
        index = {rows: k for k, rows in enumerate(kinds)}
        seen = [0] * len(kinds)
        out: list[bool] = []
        for item in items:
            if isinstance(item, _Rider):
                k = index[item.rows]
                seen[k] += 1
                out.append((k, seen[k]) not in unwritten)
            else:
                out.append(item[0] in unused)
        return out


class _HeldStore:
    """:class:`VerificationStore` as one verification sees it whose caller's token holds for
    the authentication epoch ``epoch`` (cached, not checked yet): the statements that come
    before anything is written - the card read, or a refused challenge's audit event - check
    it (:class:`StaleEpoch` if it moved on)."""

    def __init__(self, store: VerificationStore, epoch: int) -> None:
        self.store = store
        self.epoch = epoch

    async def lookup(self, cic: str, kind: ChipAppKind) -> CardRow | None:
        return await self.store.lookup(cic, kind, self.epoch)

    async def audit_only(self, row: Sequence[Any]) -> None:
        await self.store.audit_only(row, self.epoch)

    async def lapse(self, card: CardRow, kind: ChipAppKind, now: datetime) -> CardRow | None:
        return await self.store.lapse(card, kind, now)

    async def photo(self, person_id: int) -> bytes | None:
        return await self.store.photo(person_id)

    async def use_and_audit(self, args: Sequence[Any]) -> bool:
        return await self.store.use_and_audit(args)


async def verify_card_async(
    store: VerificationStore,
    *,
    challenge_id: str,
    credential_id: int,
    card_identification_code: str,
    card_number: str,
    response: bytes,
    application: ChipAppKind,
    check: AsyncCryptogramCheck,
    actor: Actor,
    codec: ChallengeCodec,
    slow_path: Callable[[], Awaitable[Verdict]],
    with_holder: bool = False,
    full_citizen_id: bool = False,
    with_photo: bool = False,
    now: datetime | None = None,
    epoch: int | None = None,
) -> Verdict:
    """:func:`_verify` on the asyncio pool (see the comment above); a provisionally lost card
    goes to ``slow_path`` (:func:`verify_card` in a thread) before anything is written.

    ``epoch``: the authentication epoch the caller's token was resolved at, not checked yet
    (the API's cached tokens): the card read checks it, or a refused challenge's event;
    :class:`StaleEpoch` if it is no longer the epoch - nothing was written."""
    try:
        return await _verify(
            store if epoch is None else _HeldStore(store, epoch),
            challenge_id,
            credential_id,
            card_identification_code,
            card_number,
            response,
            application,
            check,
            actor,
            codec,
            with_holder,
            full_citizen_id,
            with_photo,
            now,
        )
    except _NeedsSession:
        return await slow_path()
