"""Cancellation on death from an external feed (police / civil affairs): a CSV of citizen ID
numbers and dates of death. Each line is validated on its own; re-running a file is harmless.

File format (UTF-8, BOM allowed): one ``citizen_id,death_date`` per line, the date as
``YYYY-MM-DD`` or ``YYYYMMDD``; an optional header line; empty lines and lines starting with
``#`` are skipped; further columns are ignored. The run is recorded as done by the operator who
ran it (their actor through the ``feed`` channel), or by the system for an automatic feed."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.errors import InvalidIdentifier
from cardspec.ids import validate_citizen_id
from issuance import audit, lifecycle
from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.errors import FieldProblem, IssuanceError
from issuance.lifecycle import ApplicationEvent
from issuance.models import (
    LIVE_APPLICATION_STATUSES,
    Application,
    Card,
    CardStatus,
    Channel,
    Person,
)
from issuance.services.applications import release_import_ref
from issuance.services.card_steps import cancel

FEED_ACTOR = SYSTEM_ACTOR.via(Channel.FEED)


@dataclass
class LineResult:
    line: int
    problems: list[FieldProblem]


@dataclass
class DeathFeedReport:
    persons_recorded: int = 0
    cards_cancelled: int = 0
    already_done: int = 0
    rejected: list[LineResult] = field(default_factory=list)


def _parse_date(text: str) -> date:
    text = text.strip()
    if len(text) == 8 and text.isdigit():
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    return date.fromisoformat(text)


def cancel_deaths(
    session: Session,
    source: Path | str,
    actor: Actor = FEED_ACTOR,
    *,
    today: date | None = None,
) -> DeathFeedReport:
    """Process a deaths file (``citizen_id,death_date`` per line, header optional).

    ``actor``: who runs the feed (``ykt cards cancel-deaths --as USER``: the operator, through
    the ``feed`` channel); every cancellation and death record is audited under that actor."""
    today = today or date.today()
    text = source.read_text(encoding="utf-8-sig") if isinstance(source, Path) else source
    report = DeathFeedReport()
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip() or row[0].strip().startswith("#"):
            continue
        if lineno == 1 and not row[0].strip()[:1].isdigit():
            continue  # header
        problems: list[FieldProblem] = []
        cid = None
        try:
            cid = validate_citizen_id(row[0].strip(), today=today)
        except InvalidIdentifier as exc:
            problems.append(FieldProblem("citizen_id", exc.reason))
        died: date | None = None
        if len(row) < 2 or not row[1].strip():
            problems.append(FieldProblem("death_date", "missing"))
        else:
            try:
                died = _parse_date(row[1])
                if died > today:
                    problems.append(FieldProblem("death_date", "is in the future"))
                elif cid is not None and died < cid.birth_date:
                    problems.append(FieldProblem("death_date", "is before the birth date"))
            except ValueError:
                problems.append(FieldProblem("death_date", "is not a date (YYYY-MM-DD)"))
        person = None
        if cid is not None:
            person = session.scalars(
                sa.select(Person).where(Person.citizen_id == cid.value)
            ).one_or_none()
            if person is None:
                problems.append(FieldProblem("citizen_id", "no such person"))
        if problems or person is None or died is None or cid is None:
            report.rejected.append(LineResult(lineno, problems))
            continue
        try:
            with session.begin_nested():
                cancelled = _apply_death(session, person, died, actor, cid.masked())
        except IssuanceError as exc:
            report.rejected.append(LineResult(lineno, [FieldProblem("card", exc.message)]))
            continue
        if cancelled is None:
            report.already_done += 1
        else:
            report.persons_recorded += 1
            report.cards_cancelled += cancelled
    session.flush()
    return report


def _apply_death(
    session: Session, person: Person, died: date, actor: Actor, masked: str
) -> int | None:
    cards = session.scalars(
        sa.select(Card).where(
            Card.person_id == person.id,
            Card.status.not_in([CardStatus.REPLACED, CardStatus.EXPIRED, CardStatus.CANCELLED]),
        )
    ).all()
    apps = session.scalars(
        sa.select(Application).where(
            Application.person_id == person.id, Application.status.in_(LIVE_APPLICATION_STATUSES)
        )
    ).all()
    if person.death_date is not None and not cards and not apps:
        return None
    if person.death_date is None:
        person.death_date = died
        audit.record(
            session,
            actor,
            "person.deceased",
            "person",
            person.id,
            details={"citizen_id": masked, "death_date": died.isoformat()},
        )
    for app in apps:
        lifecycle.apply_application_event(
            session,
            app,
            ApplicationEvent.WITHDRAW,
            actor,
            reason="holder deceased",
            details=release_import_ref(app),
        )
    for card in cards:
        cancel(session, card, actor, "holder deceased (death record)")
    session.flush()
    return len(cards)
