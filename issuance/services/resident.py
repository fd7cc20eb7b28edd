"""Resident self-service: what a resident proven by a one-time code (:mod:`issuance.services.otp`)
may do for themselves, through a short session of that one purpose.

* :func:`open_session` turns a :class:`~issuance.services.otp.ProvenResident` into a resident
  session: a random token for the browser's cookie (the database keeps its SHA-256), a CSRF
  token for its forms, ``[resident] session_minutes`` long, for the code's purpose only, ended
  by its first action. It is no staff session: no staff user, no role, its cookie is another.
* :func:`report_loss` and :func:`withdraw_loss`: the holder's live formal card reported lost
  provisionally, or the provisional report withdrawn, by the loss services themselves
  (:mod:`issuance.services.loss`) with the resident as the actor on channel ``web`` and the
  identity proven by the code; the transition tables decide what the channel may do (a formal
  report is withdrawn at a counter only).
* :func:`open_ecard` and :func:`authorise_ecard` (issue 21): the holder's e-card, issued as
  their e-card session opens if they have none (proof ``resident_otp``), and their
  authorisation of it during a provisional loss; that session lasts
  ``[ecard] session_minutes`` (:func:`session_minutes`) and is not ended by its actions.
* :func:`progress`: where the person's new card is (applied, in review, approved, in
  production, at which collection point ready for pick-up, collected).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.ids import mask_citizen_id
from issuance import audit, lifecycle
from issuance.audit import Actor
from issuance.db import flush
from issuance.errors import NotFound, TransitionError, ValidationError
from issuance.lifecycle import CARD_TRANSITIONS, CardEvent
from issuance.models import (
    TERMINAL_CARD_STATUSES,
    Agency,
    Application,
    ApplicationStatus,
    BatchItem,
    Card,
    CardKind,
    CardStatus,
    Ecard,
    LossReport,
    Person,
    ResidentSession,
    utcnow,
)
from issuance.services import ecard, loss
from issuance.services.otp import ProvenResident, Purpose, resident_actor
from issuance.settings import IssuanceConfig


@dataclass(frozen=True)
class ResidentSignedIn:
    """The resident of a live resident session, for its one purpose."""

    session_id: int
    person_id: int
    purpose: Purpose
    csrf_token: str
    expires_at: datetime
    actor: Actor


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(
    session: Session,
    settings: IssuanceConfig,
    proven: ProvenResident,
    source: str,
    now: datetime | None = None,
) -> tuple[str, ResidentSignedIn]:
    """A resident session for the proven resident's purpose; its cookie token (shown once)."""
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    live = ResidentSession(
        token_sha256=_digest(token), person_id=proven.person_id, purpose=str(proven.purpose),
        csrf_token=secrets.token_urlsafe(32), source=(source or "unknown")[:64], created_at=now,
        expires_at=now + timedelta(minutes=session_minutes(settings, proven.purpose)),
    )  # fmt: skip
    session.add(live)
    flush(session)
    return token, _signed_in(live)


def session_minutes(settings: IssuanceConfig, purpose: Purpose | str) -> int:
    """How long a resident session of ``purpose`` lasts: the e-card's shows codes for its
    whole life (``[ecard] session_minutes``); the others end at their one action anyway
    (``[resident] session_minutes``)."""
    if Purpose(purpose) == Purpose.ECARD:
        return settings.ecard.session_minutes
    return settings.resident.session_minutes


def _signed_in(live: ResidentSession) -> ResidentSignedIn:
    return ResidentSignedIn(live.id, live.person_id, Purpose(live.purpose), live.csrf_token,
                            live.expires_at, resident_actor(live.person_id))  # fmt: skip


def resume_session(
    session: Session, token: str | None, purpose: Purpose | str, now: datetime | None = None
) -> ResidentSignedIn | None:
    """The live session of a cookie token for ``purpose``; None when unknown, ended, out of
    time or of another purpose."""
    if not token or len(token) > 100:
        return None
    now = now or utcnow()
    live = session.scalars(
        sa.select(ResidentSession).where(ResidentSession.token_sha256 == _digest(token))
    ).one_or_none()
    if live is None or live.ended_at is not None or live.expires_at <= now:
        return None
    if live.purpose != str(Purpose(purpose)):
        return None
    return _signed_in(live)


def end_session(session: Session, rs: ResidentSignedIn, now: datetime | None = None) -> None:
    live = session.get(ResidentSession, rs.session_id)
    if live is not None and live.ended_at is None:
        live.ended_at = now or utcnow()
        flush(session)


def csrf_ok(rs: ResidentSignedIn, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(rs.csrf_token.encode(), (given or "").encode())


#: Requests for codes and resident sessions are forgotten this long after they ended (the
#: per-person and per-address limits look back one hour; the audit log keeps the events).
KEEP = timedelta(days=1)


def prune(session: Session, now: datetime | None = None) -> int:
    """Forget code requests and resident sessions older than :data:`KEEP` (the worker's
    ``prune_resident`` job). Returns how many rows went."""
    from issuance.models import ResidentChallenge

    before = (now or utcnow()) - KEEP
    gone = 0
    for stmt in (
        sa.delete(ResidentChallenge).where(ResidentChallenge.expires_at < before),
        sa.delete(ResidentSession).where(ResidentSession.expires_at < before),
    ):
        gone += int(cast(Any, session.execute(stmt)).rowcount or 0)
    return gone


# --- the holder's card ------------------------------------------------------------------------


def live_formal_card(session: Session, person_id: int) -> Card | None:
    """The person's one live formal card (the database allows one), if any."""
    return session.scalars(
        sa.select(Card).where(Card.person_id == person_id, Card.kind == CardKind.FORMAL,
                              Card.status.not_in(TERMINAL_CARD_STATUSES))
    ).one_or_none()  # fmt: skip


@dataclass(frozen=True)
class HolderCard:
    """The card a loss page shows its proven holder."""

    card_number: str
    status: str
    status_changed_at: datetime
    open_report: str | None  # kind of the open loss report
    lapses_at: datetime | None
    #: what the transition tables let the resident ask for now (the buttons a page offers)
    can_report: bool
    can_withdraw: bool


def holder_card(session: Session, rs: ResidentSignedIn) -> HolderCard | None:
    card = live_formal_card(session, rs.person_id)
    if card is None:
        return None
    from issuance.services.cards import card_status

    status = card_status(session, card_id=card.id).status  # a due lapse applied first
    report = session.scalars(
        sa.select(LossReport).where(LossReport.card_id == card.id, LossReport.closed_at.is_(None))
        .order_by(LossReport.id.desc()).limit(1)
    ).one_or_none()  # fmt: skip
    offered = lifecycle.events_for(CARD_TRANSITIONS, status, rs.actor)
    return HolderCard(card.card_number, str(status), card.status_changed_at,
                      str(report.kind) if report else None,
                      report.lapses_at if report else None,
                      CardEvent.REPORT_LOSS_PROVISIONAL in offered,
                      bool(offered & {CardEvent.UNREPORT, CardEvent.UNREPORT_TO_ISSUED,
                                      CardEvent.UNREPORT_TO_SUSPENDED}))  # fmt: skip


NOTE = "by the holder online, proven by a one-time code sent to the phone on file"


def _card_or_refuse(session: Session, rs: ResidentSignedIn) -> Card:
    card = live_formal_card(session, rs.person_id)
    if card is None:
        raise NotFound("no card of yours can be reported lost or found here")
    return card


def report_loss(session: Session, settings: IssuanceConfig, rs: ResidentSignedIn) -> HolderCard:
    """Report the holder's card lost, provisionally (channel ``web``); the session ends."""
    if rs.purpose != Purpose.REPORT_LOSS:
        raise NotFound("this session is not for a loss report")
    card = _card_or_refuse(session, rs)
    loss.report_loss(session, settings, card.id, rs.actor, identity_checked=True,
                     note=f"reported {NOTE}")  # fmt: skip
    end_session(session, rs)
    out = holder_card(session, rs)
    assert out is not None
    return out


def withdraw_loss(session: Session, settings: IssuanceConfig, rs: ResidentSignedIn) -> HolderCard:
    """Withdraw the provisional report of the holder's card (channel ``web``); the session
    ends. A formal report is withdrawn at a counter (the transition tables refuse it here)."""
    if rs.purpose != Purpose.WITHDRAW_LOSS:
        raise NotFound("this session is not for withdrawing a loss report")
    card = _card_or_refuse(session, rs)
    loss.unreport_loss(session, card.id, rs.actor, identity_checked=True,
                       note=f"withdrawn {NOTE}")  # fmt: skip
    end_session(session, rs)
    out = holder_card(session, rs)
    assert out is not None
    return out


# --- the holder's e-card (issue 21) -------------------------------------------------------------


def _ecard_session(rs: ResidentSignedIn) -> None:
    if rs.purpose != Purpose.ECARD:
        raise NotFound("this session is not for the electronic card")


def own_ecard(session: Session, rs: ResidentSignedIn) -> Ecard | None:
    """The holder's live e-card (after the rule that it follows its card), if any."""
    _ecard_session(rs)
    public_id = session.scalar(
        sa.select(Ecard.public_id).where(Ecard.person_id == rs.person_id,
                                         Ecard.ended_at.is_(None))
    )  # fmt: skip
    if public_id is None:
        return None
    live = ecard.find_ecard(session, public_id)
    return live if live.ended_at is None else None


def open_ecard(session: Session, settings: IssuanceConfig, rs: ResidentSignedIn) -> Ecard | None:
    """The holder's e-card as their e-card session opens: the live one, or a new one bound to
    their active card (:func:`issuance.services.ecard.issue_ecard`, proof ``resident_otp``,
    the resident as the actor). None when there is none and none can be issued (no card, or
    not active: the e-card service says which cards qualify)."""
    live = own_ecard(session, rs)
    if live is not None:
        return live
    card = live_formal_card(session, rs.person_id)
    if card is None:
        return None
    try:
        return ecard.issue_ecard(session, settings, card.id, rs.actor, "resident_otp")
    except (TransitionError, ValidationError):
        return None


def authorise_ecard(session: Session, rs: ResidentSignedIn, *, withdraw: bool = False) -> Ecard:
    """The holder authorises their e-card during their card's provisional loss (or takes the
    authorisation back): :func:`issuance.services.ecard.authorise_during_loss`, proof
    ``resident_otp``, audited there. The session goes on (it shows the codes)."""
    live = own_ecard(session, rs)
    if live is None:
        raise NotFound("you have no electronic card")
    return ecard.authorise_during_loss(session, live.public_id, rs.actor, "resident_otp",
                                       withdraw=withdraw)  # fmt: skip


# --- where the new card is -------------------------------------------------------------------

#: The steps a new card goes through, as the resident sees them.
STEPS = ("applied", "in_review", "approved", "in_production", "ready", "collected")

_APPLICATION_STEP = {
    ApplicationStatus.RECEIVED: "applied",
    ApplicationStatus.PROCESSED: "in_review",
    ApplicationStatus.REVIEWED: "in_review",
}
_CARD_STEP = {
    CardStatus.NUMBER_ALLOCATED: "approved",
    CardStatus.IN_PRODUCTION: "in_production",
    CardStatus.PERSONALISED: "in_production",
    CardStatus.SHIPPED: "ready",
}


@dataclass(frozen=True)
class Progress:
    """Where the person's newest card (or application) is."""

    name: str
    citizen_id_masked: str
    step: str | None  # one of STEPS; None: nothing in the making
    since: datetime | None
    card_number: str | None
    card_status: str | None
    collection_point: str | None
    application_status: str | None  # the newest application's, when no card came of it
    reject_reason_given: bool


def progress(session: Session, rs: ResidentSignedIn) -> Progress:
    """The person's newest formal card and application, as steps; audited as read."""
    person = session.get(Person, rs.person_id)
    assert person is not None
    card = session.scalars(
        sa.select(Card).where(Card.person_id == person.id, Card.kind == CardKind.FORMAL)
        .order_by(Card.id.desc()).limit(1)
    ).one_or_none()  # fmt: skip
    app = session.scalars(
        sa.select(Application).where(Application.person_id == person.id)
        .order_by(Application.id.desc()).limit(1)
    ).one_or_none()  # fmt: skip
    step: str | None = None
    since: datetime | None = None
    point: str | None = None
    app_status: str | None = None
    newer_application = app is not None and (card is None or app.card_id != card.id)
    if newer_application and app is not None and app.status != ApplicationStatus.APPROVED:
        app_status = str(app.status)
        step = _APPLICATION_STEP.get(app.status)
        since = app.decided_at or app.received_at
        card = None
    elif card is not None:
        step = _CARD_STEP.get(card.status, "collected")
        if card.status in TERMINAL_CARD_STATUSES:
            step = None
        since = card.status_changed_at
        if card.status == CardStatus.SHIPPED:
            point = session.scalar(
                sa.select(Agency.name).join(BatchItem, BatchItem.collection_point_id == Agency.id)
                .where(BatchItem.card_id == card.id)
            )  # fmt: skip
    audit.record(session, rs.actor, "resident.progress_viewed", "person", person.id,
                 details={"step": step})  # fmt: skip
    return Progress(
        person.name, mask_citizen_id(person.citizen_id), step, since,
        card.card_number if card else None, str(card.status) if card else None, point,
        app_status, bool(app is not None and app.status == ApplicationStatus.REJECTED),
    )  # fmt: skip
