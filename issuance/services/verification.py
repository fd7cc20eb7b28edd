"""Card verification: single-use challenges and the verdict on a card's INTERNAL AUTHENTICATE.

The flow a hospital or bank terminal runs on every visit:

1. :func:`create_challenge` stores a fresh 16-byte challenge (8-byte process factor || 8-byte
   random) with a short expiry, bound to the calling credential. It lives in the database, so
   any API node can consume a challenge another node issued.
2. The terminal sends ``00 88 00 00 10 factor||random`` to the card and posts the answer.
3. :func:`verify_card` consumes the challenge with one atomic ``UPDATE ... WHERE used_at IS NULL
   RETURNING`` (a replay or a second node racing for it finds nothing), reads the card and the
   requested chip application in one indexed query, has the HSM check the cryptogram with the
   card's key derived inside it, and records one audit event - all in the caller's transaction.

The verdict is data (valid, or invalid with a reason); a broken HSM or database raises.
A temporary card carries the medical application only, so it verifies for ``medical`` only.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
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


def _refusal(row: Any, today: date) -> Reason | None:
    status = CardStatus(row.status)
    if status != CardStatus.ACTIVE:
        return CARD_STATUS_REASONS[status]
    if row.expiry_date is not None and row.expiry_date < today:
        return Reason.EXPIRED
    if row.app_status is None:
        return Reason.WRONG_APPLICATION
    return APP_STATUS_REASONS.get(ChipAppStatus(row.app_status))


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
        details={"valid": verdict.valid, "reason": verdict.reason and str(verdict.reason),
                 "application": str(application), "card_number": number,
                 "challenge": challenge_id, "holder_shown": verdict.holder is not None,
                 "photo_shown": verdict.photo_jpeg is not None},
    )  # fmt: skip
    return verdict


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
    row = session.execute(_card_query(cic, application)).one_or_none()
    if row is None:
        return Verdict(False, Reason.UNKNOWN_CARD, application, number, cic)
    if row.status == CardStatus.LOST_PROVISIONAL and _lapse(session, row.id, now):
        row = session.execute(_card_query(cic, application)).one()
    reason: Reason | None = None
    if row.card_number != number:
        reason = Reason.NOT_GENUINE  # EF05 says another card number than the chip's record
    else:
        ref = CardKeyRef(cic, key_version=row.key_version, algorithm=Algorithm(str(row.algorithm)))
        try:
            check(ref, consumed[:8], consumed[8:], response)
        except CryptogramMismatch:
            reason = Reason.NOT_GENUINE
    if reason is Reason.NOT_GENUINE:  # say nothing about the record a forgery points at
        return Verdict(False, reason, application, number, cic)
    if reason is None:
        reason = _refusal(row, now.date())
    holder = photo = None
    if reason is None and with_holder:
        cid = row.citizen_id if full_citizen_id else mask_citizen_id(row.citizen_id)
        holder = HolderView(row.name, cid, row.sex, row.birth_date)
    if reason is None and with_photo:
        photo = session.execute(
            sa.select(Application.photo_jpeg)
            .where(Application.person_id == row.person_id, Application.photo_jpeg.is_not(None))
            .order_by(Application.id.desc())
            .limit(1)
        ).scalar_one_or_none()
    return Verdict(
        reason is None, reason, application, row.card_number, cic, str(row.kind),
        str(row.status), None if row.app_status is None else str(row.app_status),
        row.expiry_date, holder, photo,
    )  # fmt: skip


def _lapse(session: Session, card_id: int, now: datetime) -> bool:
    from issuance.services.loss import lapse_if_due

    card = session.get(Card, card_id)
    return card is not None and lapse_if_due(session, card, now)
