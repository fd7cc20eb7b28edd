"""The lifecycles as data: explicit transition tables for cards, chip applications,
applications, production batches and the cards of a batch (batch items).

Design notes: ``docs/design/issuance.md`` (section ``issuance.lifecycle``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session

from issuance import audit
from issuance.audit import Actor
from issuance.db import flush
from issuance.errors import PermissionDenied, TransitionError
from issuance.models import (
    LIVE_APPLICATION_STATUSES,
    Application,
    ApplicationStatus,
    Batch,
    BatchItem,
    BatchStage,
    BatchStatus,
    Card,
    CardStatus,
    Channel,
    ChipAppKind,
    ChipApplication,
    ChipAppStatus,
    StaffRole,
    utcnow,
)

R = StaffRole
C = Channel
S = CardStatus
A = ChipAppStatus


class CardEvent:
    """Names of card events (strings, stored in the audit log as ``card.<event>``)."""

    START_PRODUCTION = "start_production"
    PERSONALISE = "personalise"
    SHIP = "ship"
    COLLECT = "collect"
    ACTIVATE = "activate"
    SUSPEND = "suspend"
    LIFT = "lift"
    REPORT_LOSS_PROVISIONAL = "report_loss_provisional"
    REPORT_LOSS_FORMAL = "report_loss_formal"
    FORMALISE_LOSS = "formalise_loss"
    LAPSE = "lapse"
    UNREPORT = "unreport"
    #: lapse / un-report of a card lost before it was ever activated: back to ``issued``
    LAPSE_TO_ISSUED = "lapse_to_issued"
    UNREPORT_TO_ISSUED = "unreport_to_issued"
    #: lapse / un-report of a card that was suspended when reported lost: back to
    #: ``suspended`` (a loss report never lifts a fund supervisor's suspension)
    LAPSE_TO_SUSPENDED = "lapse_to_suspended"
    UNREPORT_TO_SUSPENDED = "unreport_to_suspended"
    REPORT_DAMAGED = "report_damaged"
    REPLACE = "replace"
    EXPIRE = "expire"
    CANCEL = "cancel"
    HAND_BACK = "hand_back"  # a temporary card returned when the formal card is collected


class ChipEvent:
    ACTIVATE = "activate"
    SUSPEND = "suspend"
    LIFT = "lift"
    BLOCK = "block"
    UNBLOCK = "unblock"
    CANCEL = "cancel"


@dataclass(frozen=True)
class Transition:
    from_state: str
    event: str
    to_state: str
    roles: frozenset[StaffRole]
    channels: frozenset[Channel] | None = None  # None = any channel
    kinds: frozenset[ChipAppKind] | None = None  # chip applications only; None = any kind
    #: the audit event written (``action`` column), e.g. ``card.suspend``
    audit_event: str = ""


def _t(
    frm: Iterable[str] | str,
    event: str,
    to: str,
    roles: Iterable[StaffRole],
    channels: Iterable[Channel] | None = None,
    kinds: Iterable[ChipAppKind] | None = None,
    *,
    audit_event: str = "",
) -> list[Transition]:
    froms = [frm] if isinstance(frm, str) else list(frm)
    return [
        Transition(
            f, event, to, frozenset(roles),
            None if channels is None else frozenset(channels),
            None if kinds is None else frozenset(kinds),
            audit_event,
        )
        for f in froms
    ]  # fmt: skip


def _audited(prefix: str, table: Iterable[Transition]) -> tuple[Transition, ...]:
    """The table with each transition's audit event named ``<prefix>.<event>`` where the
    table does not name it."""
    return tuple(
        t if t.audit_event else replace(t, audit_event=f"{prefix}.{t.event}") for t in table
    )


_PRODUCTION = {R.CLERK, R.SUPERVISOR, R.ADMIN, R.SYSTEM}
_COUNTER_STAFF = {R.CLERK, R.SUPERVISOR, R.ADMIN}
_HANDOUT = {R.CLERK, R.BANK_TELLER, R.SUPERVISOR, R.ADMIN}
_REMOTE = {C.PHONE, C.WEB, C.APP, C.WECHAT, C.SMS}
#: The web console: a signed-in clerk takes a holder's call (provisional) or the holder in
#: person (formal), and un-reports with the identity check (issuance.services.loss); replaces
#: or renews a card, records a damaged card, cancels a card and takes a temporary card back at
#: the counter's console (console/pages/cdesk.py).
_CONSOLE = {C.CONSOLE}
_NOT_TERMINAL = [s for s in S if s not in (S.REPLACED, S.EXPIRED, S.CANCELLED)]

#: The card transition table.
CARD_TRANSITIONS: tuple[Transition, ...] = _audited("card",
    _t(S.NUMBER_ALLOCATED, CardEvent.START_PRODUCTION, S.IN_PRODUCTION, _PRODUCTION)
    + _t(S.IN_PRODUCTION, CardEvent.PERSONALISE, S.PERSONALISED, _PRODUCTION | {R.BANK_TELLER})
    + _t(S.PERSONALISED, CardEvent.SHIP, S.SHIPPED, _PRODUCTION)
    # collection at the centre / a branch; from PERSONALISED for instant issuance at a branch
    # (the console: a signed-in clerk or teller at the counter or the branch desk)
    + _t([S.SHIPPED, S.PERSONALISED], CardEvent.COLLECT, S.ISSUED, _HANDOUT,
         {C.COUNTER, C.BANK} | _CONSOLE)
    + _t(S.ISSUED, CardEvent.ACTIVATE, S.ACTIVE, _HANDOUT | {R.SYSTEM},
         {C.COUNTER, C.BANK, C.KIOSK, C.WEB, C.APP} | _CONSOLE)
    + _t(S.ACTIVE, CardEvent.SUSPEND, S.SUSPENDED, {R.FUND_SUPERVISOR})
    + _t(S.SUSPENDED, CardEvent.LIFT, S.ACTIVE, {R.FUND_SUPERVISOR})
    # Loss. Reportable from every state in which the holder physically has the card and it
    # is not blocked already: ISSUED (collected, not yet activated) and ACTIVE. Before
    # collection (number allocated ... shipped) the card is in the centre's hands: there is
    # nothing to report. SUSPENDED too (issue 16: a suspended card that is lost must be
    # known lost; where a city forbids it, ``[lifecycle] loss_of_suspended_card = false`` and
    # the services refuse it): its social functions stay suspended, and the loss report never
    # becomes a way around the fund supervisor's suspension: a lapse or an un-report puts it
    # back to SUSPENDED, and it is not replaced while suspended (the fund supervisor lifts or
    # cancels first; issuance.services.loss). DAMAGED goes to replacement.
    # A lapse or an un-report puts the card back where it was: ACTIVE, ISSUED when it was
    # never activated (its social security function is still sealed), or SUSPENDED; the
    # services choose the event from that (issuance.services.loss.restore_event).
    + _t([S.ACTIVE, S.ISSUED, S.SUSPENDED], CardEvent.REPORT_LOSS_PROVISIONAL,
         S.LOST_PROVISIONAL, _COUNTER_STAFF | {R.SYSTEM}, _REMOTE | _CONSOLE)
    + _t([S.ACTIVE, S.ISSUED, S.SUSPENDED], CardEvent.REPORT_LOSS_FORMAL, S.LOST_FORMAL,
         _COUNTER_STAFF, {C.COUNTER} | _CONSOLE)
    + _t(S.LOST_PROVISIONAL, CardEvent.LAPSE_TO_SUSPENDED, S.SUSPENDED, {R.SYSTEM})
    + _t(S.LOST_PROVISIONAL, CardEvent.UNREPORT_TO_SUSPENDED, S.SUSPENDED,
         _COUNTER_STAFF | {R.SYSTEM}, _REMOTE | {C.COUNTER} | _CONSOLE)
    + _t(S.LOST_FORMAL, CardEvent.UNREPORT_TO_SUSPENDED, S.SUSPENDED, _COUNTER_STAFF,
         {C.COUNTER} | _CONSOLE)
    + _t(S.LOST_PROVISIONAL, CardEvent.FORMALISE_LOSS, S.LOST_FORMAL, _COUNTER_STAFF,
         {C.COUNTER} | _CONSOLE)
    + _t(S.LOST_PROVISIONAL, CardEvent.LAPSE, S.ACTIVE, {R.SYSTEM})
    + _t(S.LOST_PROVISIONAL, CardEvent.LAPSE_TO_ISSUED, S.ISSUED, {R.SYSTEM})
    + _t(S.LOST_PROVISIONAL, CardEvent.UNREPORT, S.ACTIVE, _COUNTER_STAFF | {R.SYSTEM},
         _REMOTE | {C.COUNTER} | _CONSOLE)
    + _t(S.LOST_PROVISIONAL, CardEvent.UNREPORT_TO_ISSUED, S.ISSUED,
         _COUNTER_STAFF | {R.SYSTEM}, _REMOTE | {C.COUNTER} | _CONSOLE)
    + _t(S.LOST_FORMAL, CardEvent.UNREPORT, S.ACTIVE, _COUNTER_STAFF, {C.COUNTER} | _CONSOLE)
    + _t(S.LOST_FORMAL, CardEvent.UNREPORT_TO_ISSUED, S.ISSUED, _COUNTER_STAFF,
         {C.COUNTER} | _CONSOLE)
    + _t([S.ACTIVE, S.ISSUED], CardEvent.REPORT_DAMAGED, S.DAMAGED,
         _COUNTER_STAFF | {R.BANK_TELLER}, {C.COUNTER, C.BANK} | _CONSOLE)
    # replacement of a lost or damaged card, or renewal of a working one
    # (ACTIVE: renewal, only inside the renewal window; EXPIRED: renewal after expiry)
    + _t([S.LOST_FORMAL, S.DAMAGED, S.ACTIVE, S.EXPIRED], CardEvent.REPLACE, S.REPLACED,
         _COUNTER_STAFF, {C.COUNTER} | _CONSOLE)
    + _t([s for s in _NOT_TERMINAL if s not in (S.NUMBER_ALLOCATED, S.IN_PRODUCTION)],
         CardEvent.EXPIRE, S.EXPIRED, {R.SYSTEM})
    # cancellation: death feed, counter, or (LOST_FORMAL) the system when a city turns a
    # formal loss older than settings.lifecycle.formal_loss_cancel_days into cancellation
    + _t(_NOT_TERMINAL, CardEvent.CANCEL, S.CANCELLED,
         {R.SUPERVISOR, R.ADMIN, R.SYSTEM, R.CLERK}, {C.COUNTER, C.FEED, C.SYSTEM} | _CONSOLE)
    + _t(S.ACTIVE, CardEvent.HAND_BACK, S.CANCELLED, _HANDOUT | {R.SYSTEM},
         {C.COUNTER, C.BANK, C.SYSTEM} | _CONSOLE)
)  # fmt: skip

_SOCIAL = {ChipAppKind.SOCIAL_SECURITY, ChipAppKind.MEDICAL, ChipAppKind.PENSION}
_FIN = {ChipAppKind.FINANCIAL}

#: The chip application transition table (each application has its own status).
CHIP_TRANSITIONS: tuple[Transition, ...] = _audited("chip",
    _t(A.SEALED, ChipEvent.ACTIVATE, A.ACTIVE, _HANDOUT | {R.SYSTEM}, kinds=_SOCIAL)
    + _t(A.SEALED, ChipEvent.ACTIVATE, A.ACTIVE, {R.BANK_TELLER}, {C.BANK}, kinds=_FIN)
    + _t(A.ACTIVE, ChipEvent.SUSPEND, A.SUSPENDED, {R.FUND_SUPERVISOR}, kinds=_SOCIAL)
    + _t(A.SUSPENDED, ChipEvent.LIFT, A.ACTIVE, {R.FUND_SUPERVISOR}, kinds=_SOCIAL)
    + _t(A.ACTIVE, ChipEvent.SUSPEND, A.SUSPENDED, {R.BANK_TELLER}, {C.BANK}, kinds=_FIN)
    + _t(A.SUSPENDED, ChipEvent.LIFT, A.ACTIVE, {R.BANK_TELLER}, {C.BANK}, kinds=_FIN)
    + _t(A.ACTIVE, ChipEvent.BLOCK, A.BLOCKED, _COUNTER_STAFF | {R.SYSTEM}, kinds=_SOCIAL)
    + _t(A.BLOCKED, ChipEvent.UNBLOCK, A.ACTIVE, _COUNTER_STAFF | {R.SYSTEM}, kinds=_SOCIAL)
    + _t(A.ACTIVE, ChipEvent.BLOCK, A.BLOCKED, {R.BANK_TELLER, R.SYSTEM}, kinds=_FIN)
    + _t(A.BLOCKED, ChipEvent.UNBLOCK, A.ACTIVE, {R.BANK_TELLER}, {C.BANK}, kinds=_FIN)
    + _t([A.SEALED, A.ACTIVE, A.SUSPENDED, A.BLOCKED], ChipEvent.CANCEL, A.CANCELLED,
         {R.SUPERVISOR, R.ADMIN, R.SYSTEM, R.CLERK, R.BANK_TELLER})
)  # fmt: skip

_CARD_INDEX: dict[tuple[str, str], Transition] = {
    (t.from_state, t.event): t for t in CARD_TRANSITIONS
}

#: Card status -> the province's status code (DOMAIN.md: 0 number allocated, 1 normal,
#: A not yet activated, B provisionally lost, 2 reported lost, 3 cancelled after loss,
#: 4 cancelled). CHOICE: the province list has no code for "suspended" or "damaged": both
#: map to A (not usable until a counter acts), "replaced" to 3, "expired" to 4.
PROVINCE_STATUS_CODES: dict[CardStatus, str] = {
    S.NUMBER_ALLOCATED: "0",
    S.IN_PRODUCTION: "0",
    S.PERSONALISED: "0",
    S.SHIPPED: "0",
    S.ISSUED: "A",
    S.ACTIVE: "1",
    S.SUSPENDED: "A",
    S.DAMAGED: "A",
    S.LOST_PROVISIONAL: "B",
    S.LOST_FORMAL: "2",
    S.REPLACED: "3",
    S.EXPIRED: "4",
    S.CANCELLED: "4",
}


def province_status_code(status: CardStatus | str) -> str:
    return PROVINCE_STATUS_CODES[CardStatus(status)]


def events_for(table: Iterable[Transition], state: str, actor: Actor) -> frozenset[str]:
    """The events ``actor`` may ask for from ``state`` in ``table``: what a page offers (the
    services check again, with everything else, when one is asked for)."""
    return frozenset(
        t.event for t in table
        if t.from_state == str(state) and actor.role in t.roles
        and (t.channels is None or actor.channel in t.channels)
    )  # fmt: skip


def card_transition(from_state: str, event: str) -> Transition:
    """The declared transition for ``event`` in ``from_state``; raise TransitionError."""
    t = _CARD_INDEX.get((str(from_state), event))
    if t is None:
        raise TransitionError(
            f"a card in state {from_state!s} cannot {event.replace('_', ' ')}",
            from_state=str(from_state), event=event,
        )  # fmt: skip
    return t


def chip_transition(kind: ChipAppKind | str, from_state: str, event: str) -> Transition:
    for t in CHIP_TRANSITIONS:
        if t.from_state == from_state and t.event == event and (t.kinds is None or kind in t.kinds):
            return t
    raise TransitionError(
        f"the {kind} application in state {from_state} cannot {event}",
        from_state=str(from_state), event=event, kind=str(kind),
    )  # fmt: skip


def _authorise(t: Transition, actor: Actor, what: str) -> None:
    if actor.role not in t.roles:
        raise PermissionDenied(
            f"role {actor.role} may not {t.event.replace('_', ' ')} {what}",
            role=str(actor.role), event=t.event,
        )  # fmt: skip
    if t.channels is not None and actor.channel not in t.channels:
        raise PermissionDenied(
            f"{t.event.replace('_', ' ')} of {what} is not possible through {actor.channel}",
            channel=str(actor.channel), event=t.event,
        )  # fmt: skip


def apply_card_event(
    session: Session,
    card: Card,
    event: str,
    actor: Actor,
    *,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> Transition:
    """Move ``card`` by ``event`` if the table allows it for this actor; audit it."""
    t = card_transition(card.status, event)
    _authorise(t, actor, f"card {card.card_number}")
    before = str(card.status)
    card.status = CardStatus(t.to_state)
    card.status_changed_at = utcnow()
    audit.record(
        session, actor, t.audit_event, "card", card.id if card.id is not None else "new",
        before=before, after=t.to_state, reason=reason,
        details={"card_number": card.card_number, **(details or {})},
    )  # fmt: skip
    return t


def check_chip_event(app: ChipApplication, event: str, actor: Actor) -> Transition:
    """The transition ``event`` would take ``app`` through, if ``actor`` may ask for it
    (raise TransitionError / PermissionDenied); changes nothing."""
    t = chip_transition(app.kind, app.status, event)
    _authorise(t, actor, f"the {app.kind} application")
    return t


def apply_chip_event(
    session: Session,
    app: ChipApplication,
    event: str,
    actor: Actor,
    *,
    reason: str | None = None,
    cascade: bool = False,
) -> Transition:
    """Move one chip application. ``cascade``: the move follows a card transition already
    authorised (the roles of the chip table are not checked again)."""
    t = chip_transition(app.kind, app.status, event)
    if not cascade:
        _authorise(t, actor, f"the {app.kind} application")
    before = str(app.status)
    app.status = ChipAppStatus(t.to_state)
    app.status_changed_at = utcnow()
    audit.record(
        session, actor, t.audit_event, "chip_application", app.id,
        before=before, after=t.to_state, reason=reason,
        details={"card_id": app.card_id, "kind": str(app.kind), "cascade": cascade},
    )  # fmt: skip
    return t


def cascade_chips(
    session: Session,
    card: Card,
    event: str,
    actor: Actor,
    *,
    kinds: Iterable[ChipAppKind] | None = None,
    reason: str | None = None,
) -> int:
    """Apply ``event`` to the card's chip applications (of ``kinds``) where it is declared;
    the others keep their status (e.g. a sealed bank function stays sealed on loss)."""
    wanted = set(kinds) if kinds is not None else None
    moved = 0
    for app in card.chip_apps:
        if wanted is not None and app.kind not in wanted:
            continue
        try:
            chip_transition(app.kind, app.status, event)
        except TransitionError:
            continue
        apply_chip_event(session, app, event, actor, reason=reason, cascade=True)
        moved += 1
    return moved


SOCIAL_KINDS = frozenset(_SOCIAL)


def is_declared(table: Iterable[Transition], from_state: str, event: str) -> bool:
    """True when ``table`` declares ``event`` from ``from_state`` (whoever asks)."""
    return any(t.from_state == str(from_state) and t.event == event for t in table)


def _index(table: tuple[Transition, ...]) -> dict[tuple[str, str], Transition]:
    index = {(t.from_state, t.event): t for t in table}
    assert len(index) == len(table), "a (from state, event) pair declared twice"
    return index


# --- applications -----------------------------------------------------------------------------


class ApplicationEvent:
    """Names of application events (an application is created ``received``: ``application.
    received``; the audit event of each transition names the state it reaches)."""

    PROCESS = "process"
    REVIEW = "review"
    APPROVE = "approve"
    REJECT = "reject"
    WITHDRAW = "withdraw"  # the holder died (death feed)


P = ApplicationStatus
AE = ApplicationEvent

#: The state an application is created in (``application.received``).
APPLICATION_INITIAL = P.RECEIVED
_LIVE_APPLICATION = list(LIVE_APPLICATION_STATUSES)  # received, processed, reviewed

#: The application transition table. Maker-checker (who did an earlier step may not do a
#: later one) is checked by :mod:`issuance.services.applications` around the transition.
APPLICATION_TRANSITIONS: tuple[Transition, ...] = tuple(
    _t(P.RECEIVED, AE.PROCESS, P.PROCESSED, {R.CLERK, R.SUPERVISOR},
       audit_event="application.processed")
    + _t(P.PROCESSED, AE.REVIEW, P.REVIEWED, {R.REVIEWER, R.SUPERVISOR},
         audit_event="application.reviewed")
    + _t(P.REVIEWED, AE.APPROVE, P.APPROVED, {R.APPROVER, R.SUPERVISOR},
         audit_event="application.approved")
    + _t(_LIVE_APPLICATION, AE.REJECT, P.REJECTED, {R.REVIEWER, R.APPROVER, R.SUPERVISOR},
         audit_event="application.rejected")
    # a death record withdraws the holder's live application (as it cancels their cards)
    + _t(_LIVE_APPLICATION, AE.WITHDRAW, P.WITHDRAWN,
         {R.SUPERVISOR, R.ADMIN, R.SYSTEM, R.CLERK}, {C.FEED},
         audit_event="application.withdrawn")
)  # fmt: skip

_APPLICATION_INDEX = _index(APPLICATION_TRANSITIONS)


def _one_per_event(table: tuple[Transition, ...]) -> dict[str, Transition]:
    """One transition of each event, the roles and channels of every transition of that event
    being the same (so who may ask is known before the state is looked at)."""
    out: dict[str, Transition] = {}
    for t in table:
        first = out.setdefault(t.event, t)
        assert (first.roles, first.channels, first.to_state) == (t.roles, t.channels, t.to_state)
    return out


_APPLICATION_BY_EVENT = _one_per_event(APPLICATION_TRANSITIONS)


def application_roles(event: str) -> frozenset[StaffRole]:
    """The roles that may ask for application ``event``."""
    return _APPLICATION_BY_EVENT[event].roles


def check_application_role(event: str, actor: Actor) -> None:
    """Raise PermissionDenied unless ``actor`` may ask for application ``event`` (in any
    state): the services check this first, before maker-checker and the state."""
    _authorise(_APPLICATION_BY_EVENT[event], actor, "applications")


def application_transition(app: Application, event: str) -> Transition:
    """The declared transition ``event`` takes ``app`` through; raise TransitionError."""
    t = _APPLICATION_INDEX.get((str(app.status), event))
    if t is None:
        like = _APPLICATION_BY_EVENT[event]
        froms = sorted(x.from_state for x in APPLICATION_TRANSITIONS if x.event == event)
        if len(froms) == 1:
            text = f"application {app.id} is {app.status}, it must be {froms[0]} to become "
            text += like.to_state
        else:
            text = f"application {app.id} is {app.status}; it cannot be {like.to_state}"
        raise TransitionError(text, from_state=str(app.status), event=event)
    return t


def apply_application_event(
    session: Session,
    app: Application,
    event: str,
    actor: Actor,
    *,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> Transition:
    """Move ``app`` by ``event`` if the table allows it for this actor; audit it."""
    t = application_transition(app, event)
    _authorise(t, actor, "applications")
    before = str(app.status)
    app.status = ApplicationStatus(t.to_state)
    flush(session)
    audit.record(
        session, actor, t.audit_event, "application", app.id,
        before=before, after=t.to_state, reason=reason, details=details,
    )  # fmt: skip
    return t


# --- production batches -----------------------------------------------------------------------


class BatchEvent:
    START = "start"  # a production run starts (``ykt batch run`` / ``resume``)
    PRODUCE = "produce"  # no card is left to make: good, failed or withdrawn


BS = BatchStatus
#: A batch is made by its operator or by the system; who may create one is checked at
#: selection (:data:`issuance.batches.selection.BATCH_STAFF`), who may run it by the CLI/API.
_ANYONE = set(StaffRole)

#: The state a batch is created in (``batch.created``).
BATCH_INITIAL = BS.OPEN

#: The batch status table.
BATCH_TRANSITIONS: tuple[Transition, ...] = tuple(
    _t(BS.OPEN, BatchEvent.START, BS.IN_PRODUCTION, _ANYONE, audit_event="batch.started")
    + _t([BS.OPEN, BS.IN_PRODUCTION], BatchEvent.PRODUCE, BS.PRODUCED, _ANYONE,
         audit_event="batch.produced")
)  # fmt: skip

_BATCH_INDEX = _index(BATCH_TRANSITIONS)


def batch_transition(from_state: str, event: str) -> Transition:
    t = _BATCH_INDEX.get((str(from_state), event))
    if t is None:
        raise TransitionError(
            f"a batch that is {from_state} cannot {event}", from_state=str(from_state),
            event=event,
        )  # fmt: skip
    return t


def apply_batch_event(
    session: Session,
    batch: Batch,
    event: str,
    actor: Actor,
    *,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> Transition:
    """Move ``batch`` by ``event`` if the table allows it; audit it."""
    t = batch_transition(batch.status, event)
    _authorise(t, actor, f"batch {batch.name}")
    before = str(batch.status)
    batch.status = str(BatchStatus(t.to_state))
    if t.to_state == BS.PRODUCED:
        batch.completed_at = utcnow()
    audit.record(
        session, actor, t.audit_event, "batch", batch.id, before=before, after=t.to_state,
        reason=reason, details={"name": batch.name, **(details or {})},
    )  # fmt: skip
    return t


# --- batch items (the cards of a batch) -----------------------------------------------------


class ItemEvent:
    """Names of batch item events (audit event ``batch_item.<event>``)."""

    PREPARE = "prepare"
    ENCODE = "encode"
    PERSONALISED = "personalised"
    PRINT = "print"
    CHECK = "check"
    SHIP = "ship"
    ISSUE = "issue"
    EXPORT = "export"  # written to a bureau file
    BUREAU_MADE = "bureau_made"  # the bureau's result file says it made (and checked) the card
    SPOIL = "spoil"  # the chip is spoiled: back to the queue for a fresh blank ...
    FAIL = "fail"  # ... unless it was spoiled too often
    RETRY = "retry"  # a supervisor sends a failed card back to production
    WITHDRAW = "withdraw"  # ... or takes it out of production (the card is cancelled)


B = BatchStage
IE = ItemEvent

#: The state a batch item is created in (at selection, with the batch).
ITEM_INITIAL = B.SELECTED
#: Stages in which the chip is physically in a station: an interrupted card there is spoiled.
ITEM_IN_STATION = (B.ENCODING, B.PERSONALISED, B.PRINTED)
_CHIPPED = (B.PREPARED, *ITEM_IN_STATION, B.AT_BUREAU)

#: The batch item (stage) table. Roles are not checked per item: the stations act as the
#: run's actor; the CLI and API check who may run, retry or withdraw.
ITEM_TRANSITIONS: tuple[Transition, ...] = _audited("batch_item",
    _t(B.SELECTED, IE.PREPARE, B.PREPARED, _ANYONE)
    + _t(B.PREPARED, IE.ENCODE, B.ENCODING, _ANYONE)
    + _t(B.ENCODING, IE.PERSONALISED, B.PERSONALISED, _ANYONE)
    + _t(B.PERSONALISED, IE.PRINT, B.PRINTED, _ANYONE)
    + _t(B.PRINTED, IE.CHECK, B.CHECKED, _ANYONE)
    + _t(B.CHECKED, IE.SHIP, B.SHIPPED, _ANYONE)
    + _t(B.SHIPPED, IE.ISSUE, B.ISSUED, _ANYONE)
    # the bureau path: exported in a bureau file, made (and checked) by the bureau
    + _t(B.PREPARED, IE.EXPORT, B.AT_BUREAU, _ANYONE)
    + _t(B.AT_BUREAU, IE.BUREAU_MADE, B.CHECKED, _ANYONE)
    + _t(_CHIPPED, IE.SPOIL, B.SELECTED, _ANYONE)
    + _t(_CHIPPED, IE.FAIL, B.FAILED, _ANYONE)
    + _t(B.FAILED, IE.RETRY, B.SELECTED, _ANYONE)
    + _t(B.FAILED, IE.WITHDRAW, B.WITHDRAWN, _ANYONE)
)  # fmt: skip

_ITEM_INDEX = _index(ITEM_TRANSITIONS)

#: Timestamp column set when an item enters a stage (for the time-per-stage report).
ITEM_STAGE_TIMES: dict[BatchStage, str] = {
    B.PREPARED: "prepared_at",
    B.PERSONALISED: "personalised_at",
    B.PRINTED: "printed_at",
    B.CHECKED: "checked_at",
    B.SHIPPED: "shipped_at",
    B.ISSUED: "issued_at",
}


def item_transition(from_stage: str, event: str) -> Transition:
    """The declared transition for ``event`` in ``from_stage``; raise TransitionError. The
    bulk statements take their stages and audit event from this."""
    t = _ITEM_INDEX.get((str(from_stage), event))
    if t is None:
        raise TransitionError(
            f"a batch item in stage {from_stage} cannot {event}", from_state=str(from_stage),
            event=event,
        )  # fmt: skip
    return t


def apply_item_event(
    session: Session,
    item: BatchItem,
    event: str,
    actor: Actor,
    *,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> BatchStage:
    """Move ``item`` by ``event`` if the table allows it; audit it. Returns the new stage."""
    frm = BatchStage(item.stage)
    t = _ITEM_INDEX.get((str(frm), event))
    if t is None:
        raise TransitionError(
            f"batch item {item.id} in stage {frm} cannot {event}", from_state=str(frm), event=event
        )
    _authorise(t, actor, f"batch item {item.id}")
    to = BatchStage(t.to_state)
    now = utcnow()
    item.stage = to
    item.stage_changed_at = now
    column = ITEM_STAGE_TIMES.get(to)
    if column is not None:
        setattr(item, column, now)
    flush(session)
    audit.record(
        session, actor, t.audit_event, "batch_item", item.id, before=str(frm),
        after=str(to), reason=reason,
        details={"batch_id": item.batch_id, "card_id": item.card_id,
                 "chip_serial": item.chip_serial, **(details or {})},
    )  # fmt: skip
    return to
