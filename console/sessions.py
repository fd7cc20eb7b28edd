"""Console sessions: sign-in with the staff user's own password (the check the ``ykt`` CLI
makes, :func:`issuance.services.staff.authenticate_staff`), a server-side session in the
database, CSRF tokens, the idle timeout, sign-out, and the sign-in backoff.

The backoff counts failures per user name *and* source address: after
``[console] sign_in_free_failures`` failures each further attempt from that address waits
twice as long as the last (30 s, 60 s, ... up to ``sign_in_max_wait_seconds``); the password is
not even checked while it waits. It is never a permanent lock, a success clears it, and an
attacker elsewhere cannot lock the user out of their own counter.

A console session is not an API token: its token only works in the console's cookie, and the
API never accepts it (``api.auth`` reads bearer tokens of ``api_tokens`` only).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from console.config import ConsoleSettings
from issuance import audit
from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.db import flush
from issuance.errors import PermissionDenied
from issuance.models import (
    Channel,
    ConsoleSession,
    ConsoleSignInFailure,
    Staff,
    utcnow,
)
from issuance.services.staff import actor_for, authenticate_staff

#: The first wait after the free failures (doubling after each further failure).
FIRST_WAIT_SECONDS = 30
#: Failures older than this are forgotten.
FORGET_AFTER = timedelta(days=1)
#: Who is acting before anyone signed in (the audit of refused sign-ins).
ANONYMOUS = SYSTEM_ACTOR.via(Channel.CONSOLE)


@dataclass(frozen=True)
class SignedIn:
    """The staff user of a live console session."""

    session_id: int
    actor: Actor
    display_name: str
    csrf_token: str


@dataclass(frozen=True)
class SignInRefused:
    """Wrong user name or password (one answer for both), a disabled user, or a wait."""

    reason: str
    wait_until: datetime | None = None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _source(source: str) -> str:
    return source[:64] or "unknown"


def sign_in(
    session: Session,
    conf: ConsoleSettings,
    username: str,
    password: str,
    source: str,
    now: datetime | None = None,
) -> tuple[str, SignedIn] | SignInRefused:
    """Check the password (after any wait this user has from this address); on success a new
    session and its cookie token, else the refusal (returned, not raised: the caller commits
    the failure count and its audit event). Audited either way."""
    now = now or utcnow()
    source = _source(source)
    username = username.strip()[:64]
    row = session.get(ConsoleSignInFailure, (username, source))
    if row is not None and now - row.last_failure_at > FORGET_AFTER:
        session.delete(row)
        flush(session)
        row = None
    if row is not None and row.wait_until is not None and row.wait_until > now:
        audit.record(session, ANONYMOUS, "console.sign_in_refused", "staff", username,
                     reason="waiting after failed sign-ins",
                     details={"source": source, "failures": row.failures})  # fmt: skip
        return SignInRefused("wait", row.wait_until)
    try:
        actor = authenticate_staff(session, username, password, Channel.CONSOLE)
    except PermissionDenied as exc:
        # forget old failures of every user (names tried once must not pile up)
        session.execute(sa.delete(ConsoleSignInFailure).where(
            ConsoleSignInFailure.last_failure_at < now - FORGET_AFTER))  # fmt: skip
        row = _failure_row(session, username, source, now)
        row.failures += 1
        row.last_failure_at = now
        over = row.failures - conf.sign_in_free_failures
        if over >= 0:
            wait = min(FIRST_WAIT_SECONDS * 2**over, conf.sign_in_max_wait_seconds)
            row.wait_until = now + timedelta(seconds=wait)
        flush(session)
        audit.record(session, ANONYMOUS, "console.sign_in_refused", "staff", username,
                     reason=exc.message,
                     details={"source": source, "failures": row.failures})  # fmt: skip
        return SignInRefused("disabled" if "disabled" in exc.message else "password",
                             row.wait_until)  # fmt: skip
    if row is not None:
        session.delete(row)
    token = secrets.token_urlsafe(32)
    staff = session.get(Staff, actor.staff_id)
    assert staff is not None
    live = ConsoleSession(
        token_sha256=_digest(token), staff_id=staff.id, csrf_token=secrets.token_urlsafe(32),
        source=source, created_at=now, last_seen_at=now,
    )  # fmt: skip
    session.add(live)
    flush(session)
    audit.record(session, actor, "console.signed_in", "staff", staff.id,
                 details={"source": source, "session": live.id})  # fmt: skip
    return token, SignedIn(live.id, actor, staff.display_name, live.csrf_token)


def _failure_row(
    session: Session, username: str, source: str, now: datetime
) -> ConsoleSignInFailure:
    """The failure count of (user, source), created if need be, locked for the update (two
    failures at once, on two workers, both count)."""
    key = (username, source)
    if session.get(ConsoleSignInFailure, key) is None:
        try:
            with session.begin_nested():
                session.add(ConsoleSignInFailure(username=username, source=source, failures=0,
                                                 last_failure_at=now))  # fmt: skip
        except sa.exc.IntegrityError:
            pass  # another worker made it first
    row = session.get(ConsoleSignInFailure, key, with_for_update=True, populate_existing=True)
    assert row is not None
    return row


def resume(
    session: Session,
    conf: ConsoleSettings,
    token: str | None,
    now: datetime | None = None,
    *,
    touch: bool = True,
) -> SignedIn | None:
    """The live session of a cookie token, its idle clock restarted (not by ``touch=False``:
    a page's own polling is not the user at work); None (and the session ended) when it is
    unknown, ended, idle too long, or its user was disabled."""
    if not token or len(token) > 100:
        return None
    now = now or utcnow()
    live = session.scalars(
        sa.select(ConsoleSession).where(ConsoleSession.token_sha256 == _digest(token))
    ).one_or_none()
    if live is None or live.ended_at is not None:
        return None
    staff = session.get(Staff, live.staff_id)
    assert staff is not None
    if now - live.last_seen_at > timedelta(minutes=conf.idle_minutes):
        _end(session, live, "idle", now)
        return None
    try:
        actor = actor_for(session, staff.username, Channel.CONSOLE)
    except PermissionDenied:
        _end(session, live, "disabled", now)
        return None
    if touch:
        live.last_seen_at = now
        flush(session)
    return SignedIn(live.id, actor, staff.display_name, live.csrf_token)


def _end(session: Session, live: ConsoleSession, reason: str, now: datetime) -> None:
    live.ended_at, live.end_reason = now, reason
    flush(session)
    staff = session.get(Staff, live.staff_id)
    assert staff is not None
    actor = Actor(staff.username, staff.role, Channel.CONSOLE, staff.id)
    action = "console.signed_out" if reason == "signed_out" else "console.session_ended"
    audit.record(session, actor, action, "staff", staff.id,
                 reason=reason, details={"session": live.id})  # fmt: skip


def sign_out(session: Session, signed_in: SignedIn, now: datetime | None = None) -> None:
    live = session.get(ConsoleSession, signed_in.session_id)
    if live is not None and live.ended_at is None:
        _end(session, live, "signed_out", now or utcnow())


def csrf_ok(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a form's CSRF token with the session's."""
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())
