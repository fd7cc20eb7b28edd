"""The branch desk's activation requests: the teller starts the financial activation on the
branch page (:func:`request_activation`, everything checked first, no PIN), the desk station
of the reader named (``ykt branch desk --reader NAME`` on the reader's host) claims it
(:func:`claim_next`), has the holder type the PIN on its own pad, runs the one activation
path (:func:`issuance.services.financial.activate_financial`, as ``ykt cards
activate-financial`` does) and records how it ended (:func:`finish`). The page follows the
request (:func:`request_view`).

A request is *waiting* until claimed, *at the desk* once claimed, and *finished* with an
outcome (``active`` or ``refused`` with the refusal's message and problems). A request no
station claimed within :data:`CLAIM_WITHIN` is *expired* (never claimed later: the holder has
left the desk or the station is not running). One open request per card. Every step is
audited (``desk.activation_requested``, ``desk.activation_claimed``,
``desk.activation_finished``); no PIN is ever stored, audited or logged here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance import audit
from issuance.audit import Actor
from issuance.db import flush
from issuance.errors import FieldProblem, NotFound, ValidationError
from issuance.models import Card, DeskRequest, utcnow
from issuance.services.financial import check_can_activate

#: How long a request waits for its desk station to claim it.
CLAIM_WITHIN = timedelta(minutes=10)
#: A reader's name (the station's ``--reader``): what an operator types.
READER_MAX = 64
ACTIVE, REFUSED = "active", "refused"


def reader_name(name: str) -> str:
    """``name`` as a desk reader's name (stripped), or ValidationError."""
    reader = name.strip()
    if not reader or len(reader) > READER_MAX or not reader.isprintable():
        raise ValidationError(
            "bad desk reader",
            [
                FieldProblem(
                    "reader",
                    f"the desk reader's name: 1-{READER_MAX} printable characters "
                    "(the desk station's --reader)",
                )
            ],
        )
    return reader


def _open(session: Session, card_id: int, now: datetime) -> DeskRequest | None:
    """The card's request still open: claimed and not finished, or waiting and not expired."""
    return session.scalars(
        sa.select(DeskRequest)
        .where(
            DeskRequest.card_id == card_id,
            DeskRequest.finished_at.is_(None),
            sa.or_(
                DeskRequest.claimed_at.is_not(None), DeskRequest.requested_at > now - CLAIM_WITHIN
            ),
        )
        .order_by(DeskRequest.id.desc())
        .limit(1)
    ).first()


def request_activation(
    session: Session,
    card_id: int,
    actor: Actor,
    *,
    reader: str,
    identity_checked: bool,
    now: datetime | None = None,
) -> DeskRequest:
    """The teller asks the desk station of ``reader`` to activate the card's financial
    function: everything that must hold before the holder types a PIN is checked first
    (:func:`check_can_activate`, every reason); one open request per card."""
    now = now or utcnow()
    problems: list[FieldProblem] = []
    try:
        name = reader_name(reader)
    except ValidationError as exc:
        problems += exc.problems
    try:
        card = check_can_activate(session, card_id, actor, identity_checked=identity_checked)
    except ValidationError as exc:
        problems = exc.problems + problems
    if problems:
        raise ValidationError("cannot activate the financial function", problems)
    pending = _open(session, card.id, now)
    if pending is not None:
        raise ValidationError(
            "an activation is already under way",
            [
                FieldProblem(
                    "card",
                    f"card {card.card_number} already waits at desk reader {pending.reader}; "
                    "let it finish or expire",
                )
            ],
        )
    req = DeskRequest(
        card_id=card.id,
        reader=name,
        identity_checked=identity_checked,
        requested_by_staff_id=actor.staff_id,
        requested_by=actor.username,
        requested_at=now,
    )
    session.add(req)
    flush(session)
    audit.record(
        session,
        actor,
        "desk.activation_requested",
        "card",
        card.id,
        details={"request_id": req.id, "reader": name, "identity_checked": identity_checked},
    )
    return req


def claim_next(
    session: Session, reader: str, actor: Actor, station: str, *, now: datetime | None = None
) -> DeskRequest | None:
    """The oldest waiting request for ``reader``, claimed for ``station`` (atomic: two
    stations never claim the same request); None when there is none."""
    now = now or utcnow()
    name = reader_name(reader)
    candidates = session.scalars(
        sa.select(DeskRequest.id)
        .where(
            DeskRequest.reader == name,
            DeskRequest.claimed_at.is_(None),
            DeskRequest.finished_at.is_(None),
            DeskRequest.requested_at > now - CLAIM_WITHIN,
        )
        .order_by(DeskRequest.id)
        .limit(5)
    ).all()
    for rid in candidates:
        done = session.execute(
            sa.update(DeskRequest)
            .where(DeskRequest.id == rid, DeskRequest.claimed_at.is_(None))
            .values(claimed_at=now, claimed_by=station[:120])
            .execution_options(synchronize_session=False)
        )
        if done.rowcount == 1:  # type: ignore[attr-defined]
            req = session.get(DeskRequest, rid, populate_existing=True)
            assert req is not None
            audit.record(
                session,
                actor,
                "desk.activation_claimed",
                "card",
                req.card_id,
                details={"request_id": req.id, "reader": name, "station": station[:120]},
            )
            return req
    return None


def finish(
    session: Session,
    request_id: int,
    actor: Actor,
    *,
    outcome: str,
    message: str | None = None,
    problems: list[FieldProblem] | None = None,
) -> DeskRequest:
    """Record how a claimed request ended: ``active`` or ``refused`` (the refusal's message
    and problems, as the service said them: they never carry a PIN)."""
    if outcome not in (ACTIVE, REFUSED):
        raise ValueError(f"outcome {outcome!r}")
    req = session.get(DeskRequest, request_id)
    if req is None:
        raise NotFound(f"no desk request {request_id}")
    if req.claimed_at is None or req.finished_at is not None:
        raise ValidationError(
            "not at the desk",
            [
                FieldProblem(
                    "request", f"desk request {request_id} is not claimed or already finished"
                )
            ],
        )
    req.finished_at, req.outcome = utcnow(), outcome
    req.message = (message or "")[:500] or None
    req.problems = json.dumps([[p.field, p.reason] for p in problems or []], ensure_ascii=False)
    audit.record(
        session,
        actor,
        "desk.activation_finished",
        "card",
        req.card_id,
        details={
            "request_id": req.id,
            "outcome": outcome,
            "problems": [p.field for p in problems or []],
        },
    )
    flush(session)
    return req


@dataclass(frozen=True)
class RequestView:
    """What the branch page shows of a request."""

    id: int
    card_number: str
    reader: str
    state: str
    """``waiting``, ``at_desk``, ``active``, ``refused`` or ``expired``"""
    message: str | None
    problems: list[tuple[str, str]]
    requested_at: datetime


def request_view(session: Session, request_id: int, now: datetime | None = None) -> RequestView:
    now = now or utcnow()
    req = session.get(DeskRequest, request_id)
    if req is None:
        raise NotFound(f"no desk request {request_id}")
    card = session.get(Card, req.card_id)
    assert card is not None
    if req.finished_at is not None:
        state = req.outcome or REFUSED
    elif req.claimed_at is not None:
        state = "at_desk"
    elif req.requested_at <= now - CLAIM_WITHIN:
        state = "expired"
    else:
        state = "waiting"
    problems = [(str(f), str(r)) for f, r in json.loads(req.problems or "[]")]
    return RequestView(
        req.id, card.card_number, req.reader, state, req.message, problems, req.requested_at
    )
