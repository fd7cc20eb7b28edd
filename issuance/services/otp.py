"""One-time codes that prove a resident: sent to the phone on file, typed back on a web page
or read out to a hotline. The one rule of one-time codes (issue 13): every code of the project
is made, sent, limited and checked here.

A resident states their ID number and name and a purpose (:class:`Purpose`);
:func:`start_challenge` sends a random code to the phone on file through the outbox (topic
``resident.code``, the notification gateway of ``[notify]``) and answers with a
:class:`ChallengeStarted`; :func:`confirm` checks the code typed back and answers with a
:class:`ProvenResident` (the person, for that purpose only) or a :class:`CodeRefused`.

The code: 6 random digits (``secrets``), valid ``[resident] code_ttl_seconds``, for
``[resident] code_tries`` tries, used once, bound to the person and the purpose; stored only as
its SHA-256 salted with the challenge's random handle.

**Card-bound purposes** (:data:`CARD_PURPOSES`: the hotline's loss code,
``POST /v1/cards/{n}/loss-codes``): an authenticated agency's system asks for a code by card
number (:func:`send_card_code`); the holder reads the code from their phone to the hotline,
which quotes it with the card number (:func:`confirm_card_code`: the newest code sent for that
card and purpose). The same code, hash, tries, single use and per-person limit; bound to the
card as well as its holder; valid ``[resident] hotline_code_ttl_seconds``; sent under the topic
``loss.code`` with the card number. No per-address limit: the caller is an agency's system
behind the API's own limits, asking for many people.

**It reveals nothing** to someone who does not already hold the person's details and phone:
an unknown ID number, a wrong name, a person with no phone on file and a person whose phone
already had ``[resident] codes_per_person_per_hour`` codes this hour all get the same
:class:`ChallengeStarted` as a match, from the same work (a challenge row with a code
nobody is sent, tried, locked and expiring exactly like a real one); only the outbox message
is not written. The answer never shows the phone number, not even masked (its tail would tell
a stranger that the details matched, and part of the number).

**Rate limits, in the database** (so they hold across every worker and node): codes sent per
person (``codes_per_person_per_hour``: counted on the stated ID number's hash, silent: the
answer does not change) and requests per source address (``requests_per_address_per_hour``:
refused with :class:`RateLimited`, which tells the requester about themselves only; an IPv6
address counts by its /64, :func:`source_key`). On
PostgreSQL each count is taken under a transaction-scoped advisory lock of its key, so two
nodes counting at once cannot both pass the last free slot.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.errors import InvalidIdentifier
from cardspec.ids import mask_citizen_id, validate_citizen_id
from issuance import audit
from issuance.audit import Actor
from issuance.db import flush
from issuance.errors import FieldProblem, IssuanceError, ValidationError
from issuance.models import Card, Channel, Person, ResidentChallenge, StaffRole, utcnow
from issuance.services.outbox import enqueue
from issuance.settings import IssuanceConfig

log = logging.getLogger("issuance.otp")

#: The outbox topic of a code's message.
TOPIC = "resident.code"
CODE_DIGITS = 6
WINDOW = timedelta(hours=1)


class Purpose(enum.StrEnum):
    """What a code proves the resident for (a code of one purpose proves nothing else)."""

    REPORT_LOSS = "report_loss"
    WITHDRAW_LOSS = "withdraw_loss"
    CARD_PROGRESS = "card_progress"
    #: issue 21: an e-card for the holder of an active card
    ECARD = "ecard"
    #: a hotline (an agency's system) proves the holder of one card, to report it lost or to
    #: withdraw the report (``POST /v1/cards/{n}/loss-codes``; the holder reads the code out)
    LOSS_HOTLINE = "loss_hotline"


#: Purposes bound to one card as well as its holder: asked for by card number
#: (:func:`send_card_code`), confirmed by card number and code (:func:`confirm_card_code`). The
#: others are asked for by a resident stating their details (:func:`start_challenge`,
#: :func:`confirm`); neither door opens the other's purposes.
CARD_PURPOSES = frozenset({Purpose.LOSS_HOTLINE})

#: The outbox topic of a code's message, where it is not :data:`TOPIC` (the hotline's code
#: keeps the topic it always had: gateways may route on it).
TOPIC_OF = {Purpose.LOSS_HOTLINE: "loss.code"}


#: What the message to the phone says the code is for (Chinese: the SMS the resident gets).
PURPOSE_TEXT = {
    Purpose.REPORT_LOSS: "社保卡网上挂失",
    Purpose.WITHDRAW_LOSS: "撤销社保卡挂失",
    Purpose.CARD_PROGRESS: "查询新卡进度",
    Purpose.ECARD: "申领电子社保卡",
    Purpose.LOSS_HOTLINE: "社保卡电话挂失或撤销挂失",
}

#: The SMS's last words: never tell the code to anyone, except, for the hotline's code, to the
#: hotline the holder called themselves.
_WARNING = "如非本人操作，请勿将验证码告诉任何人。"
_WARNING_OF = {
    Purpose.LOSS_HOTLINE: "请只告诉您本人拨打的社保卡服务热线；如非本人操作，请勿告诉任何人。",
}

#: Who acts before a resident is proven (the audit of a request for a code).
ANONYMOUS_RESIDENT = Actor("resident", StaffRole.SYSTEM, Channel.WEB)


def resident_actor(person_id: int) -> Actor:
    """A proven resident acting for themselves: channel ``web``, named by their person id.
    (Role ``system``: the transition tables let systems act through the remote channels; no
    staff user stands behind it.)"""
    return Actor(f"resident:{person_id}", StaffRole.SYSTEM, Channel.WEB)


class RateLimited(IssuanceError):
    """Too many requests for codes from one source address (it says nothing of a person)."""

    code = "rate_limited"

    def __init__(self, retry_at: datetime) -> None:
        super().__init__("too many requests for one-time codes from this address; try later",
                         retry_at=retry_at.isoformat())  # fmt: skip
        self.retry_at = retry_at


@dataclass(frozen=True)
class ChallengeStarted:
    """The answer to a request for a code: the same whether a code was sent or not."""

    challenge_id: str
    purpose: Purpose
    expires_at: datetime


@dataclass(frozen=True)
class ProvenResident:
    """A resident who typed back the code sent to their phone: good for ``purpose`` only."""

    person_id: int
    purpose: Purpose
    challenge_id: str
    proven_at: datetime
    actor: Actor


@dataclass(frozen=True)
class CodeRefused:
    """``wrong`` (``tries_left`` more), ``locked`` (no tries left) or ``expired`` (used, out of
    time, of another purpose, or unknown): a new code must be asked for unless ``wrong``."""

    reason: str
    tries_left: int = 0


def normalise_citizen_id(value: str) -> str:
    return value.strip().replace(" ", "").upper()


def check_details(citizen_id: str, name: str) -> tuple[str, str]:
    """The stated ID number (its check character verified: arithmetic, nothing looked up)
    and name, or a ValidationError naming each problem."""
    cid, nm = normalise_citizen_id(citizen_id or ""), (name or "").strip()
    problems: list[FieldProblem] = []
    try:
        validate_citizen_id(cid)
    except InvalidIdentifier as exc:
        problems.append(FieldProblem("citizen_id", exc.reason))
    if not nm or len(nm) > 60:
        problems.append(FieldProblem("name", "the name as on the ID card (1 to 60 characters)"))
    if problems:
        raise ValidationError("cannot send a code", problems)
    return cid, nm


def _subject(citizen_id: str) -> str:
    return hashlib.sha256(f"ykt-resident-subject/1:{citizen_id}".encode()).hexdigest()


def _code_hash(handle: str, code: str) -> str:
    return hashlib.sha256(f"ykt-resident-code/1:{handle}:{code}".encode()).hexdigest()


def _serialise(session: Session, key: str) -> None:
    """Hold ``key`` until the transaction ends (PostgreSQL: an advisory lock; SQLite has one
    writer at a time already)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})


def _count(session: Session, *where: sa.ColumnElement[bool]) -> int:
    n = session.scalar(sa.select(sa.func.count()).select_from(ResidentChallenge).where(*where))
    return int(n or 0)


def code_ttl(settings: IssuanceConfig, purpose: Purpose) -> timedelta:
    """How long a code of ``purpose`` is valid: ``[resident] code_ttl_seconds``, or for the
    hotline's code (read out over the phone) ``[resident] hotline_code_ttl_seconds``."""
    conf = settings.resident
    seconds = conf.hotline_code_ttl_seconds if purpose in CARD_PURPOSES else conf.code_ttl_seconds
    return timedelta(seconds=seconds)


def _issue(
    session: Session,
    settings: IssuanceConfig,
    purpose: Purpose,
    subject: str,
    source: str,
    now: datetime,
    *,
    person_id: int | None,
    phone: str | None,
    card: tuple[int, str] | None = None,
) -> tuple[ResidentChallenge, bool]:
    """The one way a code is made: a challenge row (the code's salted hash, its expiry, bound
    to ``purpose``, the person and the card), and the message to ``phone`` unless the person's
    codes this hour are used up (counted on ``subject``, whatever the purpose) or there is no
    person or phone. Returns the row and whether a code was sent."""
    conf = settings.resident
    _serialise(session, f"resident-subject:{subject}")
    sent_before = _count(session, ResidentChallenge.subject == subject,
                         ResidentChallenge.sent.is_(True),
                         ResidentChallenge.created_at > now - WINDOW)  # fmt: skip
    send = person_id is not None and bool(phone) and sent_before < conf.codes_per_person_per_hour
    handle = secrets.token_urlsafe(24)
    code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    ttl = code_ttl(settings, purpose)
    challenge = ResidentChallenge(
        handle=handle, purpose=str(purpose), subject=subject, person_id=person_id,
        card_id=card[0] if card else None, sent=send, code_hash=_code_hash(handle, code),
        source=source, created_at=now, expires_at=now + ttl, attempts=0,
    )  # fmt: skip
    session.add(challenge)
    if send:
        minutes = max(1, int(ttl.total_seconds()) // 60)
        payload: dict[str, object] = {
            "code": code, "purpose": str(purpose), "minutes": minutes,
            "text": f"【{settings.issuer.name}】验证码 {code}，用于{PURPOSE_TEXT[purpose]}，"
                    f"{minutes} 分钟内有效。{_WARNING_OF.get(purpose, _WARNING)}",
        }  # fmt: skip
        if card is not None:
            payload["card_number"] = card[1]
        enqueue(session, TOPIC_OF.get(purpose, TOPIC), person_id=person_id, recipient=phone,
                payload=payload)  # fmt: skip
    flush(session)
    return challenge, send


def _try(
    session: Session,
    settings: IssuanceConfig,
    row: ResidentChallenge | None,
    code: str,
    purpose: Purpose,
    now: datetime,
    caller: Actor | None,
) -> ProvenResident | CodeRefused:
    """The one way a code is checked: live (not used, not expired, of ``purpose``), tries left;
    every try counted; the right code proves the person once. ``caller``: the system acting
    for the resident (a hotline), or None for the resident themselves."""
    tries = settings.resident.code_tries
    if row is None or row.purpose != purpose or row.used_at is not None or row.expires_at <= now:
        return CodeRefused("expired")
    if row.attempts >= tries:
        return CodeRefused("locked")
    row.attempts += 1
    given = "".join((code or "").split())[: CODE_DIGITS * 2]
    right = hmac.compare_digest(row.code_hash, _code_hash(row.handle, given))
    where = {"card_id": row.card_id} if row.card_id is not None else {}
    if not right or row.person_id is None:
        left = tries - row.attempts
        flush(session)
        audit.record(session, caller or ANONYMOUS_RESIDENT, "resident.code_refused",
                     "resident_challenge", row.id, reason="wrong code",
                     details={"purpose": str(purpose), "tries_left": left, **where})  # fmt: skip
        return CodeRefused("wrong" if left > 0 else "locked", left)
    row.used_at = now
    flush(session)
    actor = caller or resident_actor(row.person_id)
    audit.record(session, actor, "resident.code_confirmed", "person", row.person_id,
                 details={"purpose": str(purpose), "challenge": row.id, **where})  # fmt: skip
    return ProvenResident(row.person_id, purpose, row.handle, now, actor)


def source_key(source: str) -> str:
    """The address a request is counted against: an IPv4 address as it is, an IPv6 address by
    its /64 network (one subscriber's whole range: a phone rotating through its addresses is
    still one address here), anything else (a test client's name) as it is."""
    import ipaddress

    try:
        addr = ipaddress.ip_address((source or "").strip())
    except ValueError:
        return (source or "unknown")[:64]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else addr)


def start_challenge(
    session: Session,
    settings: IssuanceConfig,
    citizen_id: str,
    name: str,
    purpose: Purpose | str,
    source: str,
    now: datetime | None = None,
) -> ChallengeStarted:
    """Ask for a code for ``purpose``: sent to the phone on file when ``citizen_id`` and
    ``name`` match a person who has one (and their phone had fewer than the hour's codes);
    the answer is the same otherwise (see the module). Raises :class:`ValidationError` for a
    malformed ID number or name and :class:`RateLimited` past the address's limit."""
    conf = settings.resident
    now = now or utcnow()
    purpose = Purpose(purpose)
    if purpose in CARD_PURPOSES:
        raise ValueError(f"a {purpose} code is asked for by card (send_card_code)")
    source = source_key(source)
    cid, nm = check_details(citizen_id, name)
    _serialise(session, f"resident-source:{source}")
    since = now - WINDOW
    asked = _count(session, ResidentChallenge.source == source,
                   ResidentChallenge.created_at > since)  # fmt: skip
    if asked >= conf.requests_per_address_per_hour:
        first = session.scalar(
            sa.select(sa.func.min(ResidentChallenge.created_at)).where(
                ResidentChallenge.source == source, ResidentChallenge.created_at > since)
        )  # fmt: skip
        log.warning("resident codes: address limit reached (%s requests in an hour)", asked)
        raise RateLimited((first or now) + WINDOW)
    row = session.execute(
        sa.select(Person.id, Person.name, Person.phone).where(Person.citizen_id == cid)
    ).one_or_none()
    person_id, stored_name, phone = row if row is not None else (None, "", None)
    name_ok = hmac.compare_digest(nm.encode(), (stored_name or "").strip().encode())
    matched = person_id is not None and name_ok
    challenge, send = _issue(session, settings, purpose, _subject(cid), source, now,
                             person_id=person_id if matched else None, phone=phone)  # fmt: skip
    audit.record(session, ANONYMOUS_RESIDENT, "resident.code_requested", "resident_challenge",
                 challenge.id, details={
                     "purpose": str(purpose), "source": source,
                     "citizen_id": mask_citizen_id(cid), "person_id": person_id,
                     "matched": matched, "sent": send,
                 })  # fmt: skip
    return ChallengeStarted(challenge.handle, purpose, challenge.expires_at)


def confirm(
    session: Session,
    settings: IssuanceConfig,
    challenge_id: str,
    code: str,
    purpose: Purpose | str,
    now: datetime | None = None,
) -> ProvenResident | CodeRefused:
    """Check a code typed back for ``purpose``. Every try counts (returned, never raised: the
    caller commits the count whatever the answer); the right code proves the person once."""
    now = now or utcnow()
    purpose = Purpose(purpose)
    row = None
    if challenge_id and len(challenge_id) <= 43 and purpose not in CARD_PURPOSES:
        row = session.scalars(
            sa.select(ResidentChallenge).where(ResidentChallenge.handle == challenge_id)
            .with_for_update()
        ).one_or_none()  # fmt: skip
    return _try(session, settings, row, code, purpose, now, None)


def send_card_code(
    session: Session,
    settings: IssuanceConfig,
    card_id: int,
    purpose: Purpose | str,
    caller: Actor,
    now: datetime | None = None,
) -> bool:
    """Send a code for a card-bound ``purpose`` (:data:`CARD_PURPOSES`) to the phone on file
    of the card's holder, asked for by ``caller`` (an agency's system). False when none was
    sent (no phone on file, or the person's codes this hour are used up): the caller's answer
    must not tell which."""
    now = now or utcnow()
    purpose = Purpose(purpose)
    if purpose not in CARD_PURPOSES:
        raise ValueError(f"a {purpose} code is asked for by the resident (start_challenge)")
    card_number, person_id, citizen_id, phone = session.execute(
        sa.select(Card.card_number, Person.id, Person.citizen_id, Person.phone)
        .join(Person, Person.id == Card.person_id).where(Card.id == card_id)
    ).one()  # fmt: skip
    source = f"api:{caller.username}"[:64]
    challenge, send = _issue(
        session, settings, purpose, _subject(citizen_id), source, now,
        person_id=person_id, phone=phone, card=(card_id, card_number),
    )  # fmt: skip
    audit.record(session, caller, "resident.code_requested", "resident_challenge", challenge.id,
                 details={"purpose": str(purpose), "source": source, "card_id": card_id,
                          "person_id": person_id, "matched": True, "sent": send})  # fmt: skip
    return send


def confirm_card_code(
    session: Session,
    settings: IssuanceConfig,
    card_id: int,
    code: str,
    purpose: Purpose | str,
    caller: Actor,
    now: datetime | None = None,
) -> ProvenResident | CodeRefused:
    """Check a code quoted by ``caller`` with a card number, for a card-bound ``purpose``:
    against the newest code sent for that card and purpose (a newer code replaces an older
    one). Every try counts (returned, never raised: the caller commits whatever the answer)."""
    now = now or utcnow()
    purpose = Purpose(purpose)
    row = None
    if purpose in CARD_PURPOSES:
        row = session.scalars(
            sa.select(ResidentChallenge)
            .where(ResidentChallenge.card_id == card_id, ResidentChallenge.purpose == purpose,
                   ResidentChallenge.sent.is_(True))
            .order_by(ResidentChallenge.id.desc()).limit(1).with_for_update()
        ).one_or_none()  # fmt: skip
    return _try(session, settings, row, code, purpose, now, caller)
