"""Find the person, then see everything about them: the counter starts from the resident.

A resident walks up with an ID card and a problem, or calls the hotline with a name. Staff find
the person by one of these (each an index lookup, migration 0011, fast at ten million cards):

* the full citizen ID number (its check character validated first; ``persons.citizen_id``
  unique index);
* a card number (its check character validated first; ``cards.card_number`` unique index);
* a phone number (``ix_persons_phone``);
* the name with the birth date (``ix_persons_name_birth_date``) or with the region
  (``ix_persons_name_region``; a code ending in ``00`` covers its prefecture or province, a
  range on the index's second column).

A name alone is refused (too many 王伟). Only staff users search (agencies never list people,
whatever scopes they hold: the rule is here, the API's ``people:read`` scope is only the
gate), and only the roles of :data:`PEOPLE_ROLES`; every search and every view is audited
(``person.searched``, ``person.viewed``: what was searched by, never the value, and what was
found).

:func:`person_record` is the person view: identity, every card with its status and each chip
application's status (its PIN as a reader last reported it: tries left, blocked), deposits
and fees, loss reports, temporary cards, applications, and the audit timeline of the person, their
applications and their cards. An overdue provisional loss lapses and a card past its expiry
expires first, as :func:`issuance.services.cards.card_status` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.errors import InvalidIdentifier
from cardspec.ids import mask_citizen_id, validate_card_number, validate_citizen_id
from issuance import audit
from issuance.audit import Actor
from issuance.errors import FieldProblem, NotFound, PermissionDenied, ValidationError
from issuance.models import (
    TERMINAL_CARD_STATUSES,
    Application,
    AuditEvent,
    Card,
    CardKind,
    CardStatus,
    ChipAppKind,
    ChipApplication,
    Deposit,
    LossReport,
    Person,
    StaffRole,
)
from issuance.services.pins import APP_PIN, SS_PIN, PinStateView, pin_states

#: Roles that may search people and see a person's record (counter, hotline, bank branch,
#: fund supervision, audit). Reviewers and approvers see the application they decide
#: (``app show``), not the register.
PEOPLE_ROLES = frozenset(
    {
        StaffRole.CLERK,
        StaffRole.SUPERVISOR,
        StaffRole.ADMIN,
        StaffRole.FUND_SUPERVISOR,
        StaffRole.BANK_TELLER,
        StaffRole.AUDITOR,
    }
)
#: At most this many people are listed for one search (the hotline narrows it down).
MAX_MATCHES = 50
#: Audit events of looking a person up (or their card, application or receipt, in the web
#: console): in the audit log, not in the person's timeline.
_LOOKUPS = (
    "person.searched",
    "person.viewed",
    "application.viewed",
    "console.card_read",
    "console.application_read",
    "console.receipt_shown",
)
#: The timeline shows at most this many audit events (the newest).
TIMELINE_LIMIT = 200

_PHONE_RE = re.compile(r"\+?[0-9]{5,20}")
_REGION_RE = re.compile(r"[1-9][0-9]{5}")


@dataclass(frozen=True)
class PersonQuery:
    """One search: exactly one of citizen_id, card_number, phone, or name with birth_date
    and/or region_code."""

    citizen_id: str | None = None
    card_number: str | None = None
    phone: str | None = None
    name: str | None = None
    birth_date: date | None = None
    region_code: str | None = None

    @property
    def by(self) -> str:
        """What the search is by (recorded in the audit event instead of the value)."""
        if self.citizen_id:
            return "citizen_id"
        if self.card_number:
            return "card_number"
        if self.phone:
            return "phone"
        return "+".join(
            k for k in ("name", "birth_date", "region_code") if getattr(self, k) is not None
        )


@dataclass(frozen=True)
class PersonMatch:
    """One person found (the ID number masked; the live card, if any)."""

    person_id: int
    name: str
    citizen_id_masked: str
    birth_date: date
    region_code: str
    card_number: str | None
    card_status: str | None


@dataclass(frozen=True)
class ChipAppEntry:
    kind: str
    status: str
    changed_at: datetime
    #: PIN state where this system records it: the bank PIN was set at a branch (True/False);
    #: None where nothing is recorded (the social security PIN lives on the chip only).
    pin_set: bool | None
    #: the PIN guarding this function is blocked, as a reader last reported (card_pins)
    pin_blocked: bool
    #: its tries left as a reader last reported them; None: never seen at a reader
    pin_tries_left: int | None = None


@dataclass(frozen=True)
class CardEntry:
    card_id: int
    card_number: str
    kind: str
    status: str
    status_changed_at: datetime
    issue_date: date | None
    expiry_date: date | None
    fee_fen: int
    replaced_by: str | None
    chip_apps: list[ChipAppEntry]


@dataclass(frozen=True)
class DepositEntry:
    card_number: str
    amount_fen: int
    taken_at: datetime
    returned_at: datetime | None
    refunded_at: datetime | None

    @property
    def held(self) -> bool:
        return self.refunded_at is None


@dataclass(frozen=True)
class FeeEntry:
    what: str  # "card <number>" or "application <id>"
    amount_fen: int
    at: datetime


@dataclass(frozen=True)
class LossEntry:
    card_number: str
    kind: str
    status: str
    channel: str
    identity_checked: bool
    reported_at: datetime
    lapses_at: datetime | None
    closed_at: datetime | None


@dataclass(frozen=True)
class ApplicationEntry:
    application_id: int
    status: str
    channel: str
    received_at: datetime
    decided_at: datetime | None
    reject_reason: str | None
    card_number: str | None


@dataclass(frozen=True)
class TimelineEntry:
    occurred_at: datetime
    action: str
    entity_type: str
    entity_id: str
    actor: str
    channel: str
    before: str | None
    after: str | None
    reason: str | None


@dataclass
class PersonRecord:
    """Everything the counter sees of one person (``citizen_id`` is the full number: the
    presentation masks it unless the viewer may see it)."""

    person_id: int
    citizen_id: str
    name: str
    sex: str
    birth_date: date
    ethnicity: str | None
    region_code: str
    phone: str | None
    address: str | None
    death_date: date | None
    #: The name as the chip holds it when ``name`` has characters outside GBK (the recorded
    #: substitution, ``issuance.cardname``); None: the chip holds ``name``.
    card_name: str | None = None
    cards: list[CardEntry] = field(default_factory=list)
    deposits: list[DepositEntry] = field(default_factory=list)
    fees: list[FeeEntry] = field(default_factory=list)
    losses: list[LossEntry] = field(default_factory=list)
    applications: list[ApplicationEntry] = field(default_factory=list)
    timeline: list[TimelineEntry] = field(default_factory=list)

    @property
    def citizen_id_masked(self) -> str:
        return mask_citizen_id(self.citizen_id)

    @property
    def temporary_cards(self) -> list[CardEntry]:
        return [c for c in self.cards if c.kind == CardKind.TEMPORARY]

    @property
    def deposits_held_fen(self) -> int:
        return sum(d.amount_fen for d in self.deposits if d.held)

    @property
    def fees_fen(self) -> int:
        return sum(f.amount_fen for f in self.fees)


def check_may_search(actor: Actor) -> None:
    """Only staff users of :data:`PEOPLE_ROLES` (never an agency's machine credential)."""
    if actor.staff_id is None:
        raise PermissionDenied("only staff users search people (agencies never list people)")
    if actor.role not in PEOPLE_ROLES:
        raise PermissionDenied(f"role {actor.role} may not search people")


def _normalise(query: PersonQuery) -> PersonQuery:
    """Validate the query (every problem listed) and return it normalised."""
    problems: list[FieldProblem] = []
    keys = [bool(query.citizen_id), bool(query.card_number), bool(query.phone), bool(query.name)]
    if sum(keys) != 1:
        raise ValidationError(
            "search by one thing",
            [
                FieldProblem(
                    "query",
                    "give one of: citizen ID, card number, phone, or name with "
                    "birth date or region",
                )
            ],
        )
    cid = card = phone = name = region = None
    if query.citizen_id:
        try:
            cid = validate_citizen_id(query.citizen_id.strip()).value
        except InvalidIdentifier as exc:
            problems.append(FieldProblem("citizen_id", exc.reason))
    if query.card_number:
        try:
            card = validate_card_number(query.card_number.strip().upper())
        except InvalidIdentifier as exc:
            problems.append(FieldProblem("card_number", exc.reason))
    if query.phone:
        phone = re.sub(r"[\s-]", "", query.phone)
        if not _PHONE_RE.fullmatch(phone):
            problems.append(FieldProblem("phone", "digits only (spaces and dashes allowed)"))
    if query.name:
        name = query.name.strip()
        if query.birth_date is None and not query.region_code:
            problems.append(
                FieldProblem("name", "a name alone is too broad: add the birth date or region")
            )
    elif query.birth_date is not None or query.region_code:
        problems.append(FieldProblem("name", "birth date and region narrow a name search"))
    if query.region_code:
        region = query.region_code.strip()
        if not _REGION_RE.fullmatch(region):
            problems.append(FieldProblem("region_code", "6 digits (GB/T 2260)"))
    if problems:
        raise ValidationError("cannot search", problems)
    return PersonQuery(cid, card, phone, name, query.birth_date, region)


def region_range(code: str) -> tuple[str, str]:
    """The codes a region covers: ``330106`` itself, ``330100`` its prefecture
    (330100-330199), ``330000`` its province (330000-339999)."""
    if code.endswith("0000"):
        return code, code[:2] + "9999"
    if code.endswith("00"):
        return code, code[:4] + "99"
    return code, code


def search_statement(query: PersonQuery) -> sa.Select[tuple[Person]]:
    """The SELECT of a (normalised) query: each one an index lookup (``bench/people.md``
    has the PostgreSQL plans)."""
    stmt = sa.select(Person)
    if query.citizen_id:
        return stmt.where(Person.citizen_id == query.citizen_id)
    if query.card_number:
        return stmt.join(Card, Card.person_id == Person.id).where(
            Card.card_number == query.card_number
        )
    if query.phone:
        return stmt.where(Person.phone == query.phone).order_by(Person.id).limit(MAX_MATCHES)
    stmt = stmt.where(Person.name == query.name)
    if query.birth_date is not None:
        stmt = stmt.where(Person.birth_date == query.birth_date)
    if query.region_code:
        low, high = region_range(query.region_code)
        stmt = stmt.where(Person.region_code.between(low, high))
    return stmt.order_by(Person.birth_date, Person.id).limit(MAX_MATCHES)


def _live_card(session: Session, person_ids: list[int]) -> dict[int, Card]:
    if not person_ids:
        return {}
    cards = session.scalars(
        sa.select(Card)
        .where(Card.person_id.in_(person_ids), Card.status.not_in(TERMINAL_CARD_STATUSES))
        .order_by(Card.id)
    )
    out: dict[int, Card] = {}
    for c in cards:  # a formal card wins over a temporary one
        if c.person_id not in out or c.kind == CardKind.FORMAL:
            out[c.person_id] = c
    return out


def find_people(session: Session, query: PersonQuery, actor: Actor) -> list[PersonMatch]:
    """The people matching ``query`` (at most :data:`MAX_MATCHES`); audited."""
    check_may_search(actor)
    q = _normalise(query)
    people = list(session.scalars(search_statement(q)).unique())
    live = _live_card(session, [p.id for p in people])
    matches = [
        PersonMatch(
            p.id,
            p.name,
            mask_citizen_id(p.citizen_id),
            p.birth_date,
            p.region_code,
            live[p.id].card_number if p.id in live else None,
            str(live[p.id].status) if p.id in live else None,
        )
        for p in people
    ]
    audit.record(
        session,
        actor,
        "person.searched",
        "person",
        matches[0].person_id if matches else "-",
        details={"by": q.by, "matches": [m.person_id for m in matches]},
    )
    return matches


def find_one(session: Session, query: PersonQuery, actor: Actor) -> int:
    """The one person ``query`` finds (NotFound for none; ValidationError listing how to
    narrow it for several)."""
    matches = find_people(session, query, actor)
    if not matches:
        raise NotFound(f"nobody found by {query.by}")
    if len(matches) > 1:
        raise ValidationError(
            f"{len(matches)} people found by {query.by}",
            [FieldProblem("query", "narrow it: citizen ID, card number, or add birth date")],
        )
    return matches[0].person_id


def _chip_entry(a: ChipApplication, states: dict[str, PinStateView]) -> ChipAppEntry:
    pin_set = a.pin_set if a.kind == ChipAppKind.FINANCIAL else None
    state = states.get(APP_PIN.get(str(a.kind), SS_PIN))
    return ChipAppEntry(
        str(a.kind),
        str(a.status),
        a.status_changed_at,
        pin_set,
        pin_blocked=state is not None and state.blocked,
        pin_tries_left=None if state is None else state.tries_left,
    )


def _refresh(session: Session, card: Card) -> None:
    """The lazy rules of the status view: an overdue provisional loss lapses, a card past its
    expiry date expires (the same functions ``card_status`` runs)."""
    from issuance.services.cards import expire_if_due
    from issuance.services.loss import lapse_if_due

    if card.status == CardStatus.LOST_PROVISIONAL:
        lapse_if_due(session, card)
    expire_if_due(session, card)


def person_record(
    session: Session, person_id: int, actor: Actor, *, timeline_limit: int = TIMELINE_LIMIT
) -> PersonRecord:
    """Everything about one person (see the module docstring); audited ``person.viewed``."""
    check_may_search(actor)
    person = session.get(Person, person_id)
    if person is None:
        raise NotFound(f"no person {person_id}")
    cards = list(
        session.scalars(sa.select(Card).where(Card.person_id == person.id).order_by(Card.id))
    )
    for c in cards:
        _refresh(session, c)
    numbers = {c.id: c.card_number for c in cards}
    rec = PersonRecord(
        person.id,
        person.citizen_id,
        person.name,
        person.sex,
        person.birth_date,
        person.ethnicity,
        person.region_code,
        person.phone,
        person.address,
        person.death_date,
        person.card_name,
    )
    for c in cards:
        rec.cards.append(
            CardEntry(
                c.id,
                c.card_number,
                str(c.kind),
                str(c.status),
                c.status_changed_at,
                c.issue_date,
                c.expiry_date,
                c.fee_fen,
                numbers.get(c.replaced_by_id) if c.replaced_by_id else None,
                [_chip_entry(a, pin_states(session, c.id)) for a in c.chip_apps],
            )
        )
        if c.fee_fen:
            rec.fees.append(FeeEntry(f"card {c.card_number}", c.fee_fen, c.created_at))
    card_ids = list(numbers)
    if card_ids:
        for d in session.scalars(
            sa.select(Deposit).where(Deposit.card_id.in_(card_ids)).order_by(Deposit.id)
        ):
            rec.deposits.append(
                DepositEntry(
                    numbers[d.card_id], d.amount_fen, d.taken_at, d.returned_at, d.refunded_at
                )
            )
        for r in session.scalars(
            sa.select(LossReport).where(LossReport.card_id.in_(card_ids)).order_by(LossReport.id)
        ):
            rec.losses.append(
                LossEntry(
                    numbers[r.card_id],
                    str(r.kind),
                    str(r.status),
                    str(r.channel),
                    r.identity_checked,
                    r.reported_at,
                    r.lapses_at,
                    r.closed_at,
                )
            )
    apps = list(
        session.scalars(
            sa.select(Application)
            .where(Application.person_id == person.id)
            .order_by(Application.id)
        )
    )
    for a in apps:
        rec.applications.append(
            ApplicationEntry(
                a.id,
                str(a.status),
                str(a.channel),
                a.received_at,
                a.decided_at,
                a.reject_reason,
                numbers.get(a.card_id) if a.card_id else None,
            )
        )
        if a.fee_fen:
            rec.fees.append(FeeEntry(f"application {a.id}", a.fee_fen, a.received_at))
    chip_ids = [a.id for c in cards for a in c.chip_apps]
    rec.timeline = _timeline(
        session, person.id, card_ids, [a.id for a in apps], chip_ids, timeline_limit
    )
    audit.record(session, actor, "person.viewed", "person", person.id)
    return rec


def _timeline(
    session: Session,
    person_id: int,
    card_ids: list[int],
    app_ids: list[int],
    chip_ids: list[int],
    limit: int,
) -> list[TimelineEntry]:
    """The newest ``limit`` audit events of the person and their cards, applications and chip
    applications, oldest first (each an ``ix_audit_events_entity`` lookup)."""
    keys: list[tuple[str, list[Any]]] = [
        ("person", [person_id]),
        ("card", card_ids),
        ("application", app_ids),
        ("chip_application", chip_ids),
    ]
    conds = [
        sa.and_(AuditEvent.entity_type == kind, AuditEvent.entity_id.in_([str(i) for i in ids]))
        for kind, ids in keys
        if ids
    ]
    rows = session.scalars(
        sa.select(AuditEvent)
        .where(sa.or_(*conds), AuditEvent.action.not_in(_LOOKUPS))
        .order_by(AuditEvent.id.desc())
        .limit(limit)
    ).all()
    return [
        TimelineEntry(
            e.occurred_at,
            e.action,
            e.entity_type,
            e.entity_id,
            e.actor_name,
            e.channel,
            e.before,
            e.after,
            e.reason,
        )
        for e in reversed(rows)
    ]
