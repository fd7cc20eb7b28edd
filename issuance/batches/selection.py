"""Batch selection: staff pick approved applications into a production batch.

Design notes: ``docs/design/batches.md`` (section ``issuance.batches.selection``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from issuance import audit, lifecycle
from issuance.audit import Actor
from issuance.db import flush
from issuance.errors import ConflictError, FieldProblem, NotFound, PermissionDenied, ValidationError
from issuance.lifecycle import CardEvent
from issuance.models import (
    Application,
    ApplicationStatus,
    Batch,
    BatchItem,
    Card,
    CardKind,
    CardStatus,
    CollectiveApplicant,
    Person,
    StaffRole,
    utcnow,
)

BATCH_STAFF = {StaffRole.CLERK, StaffRole.SUPERVISOR, StaffRole.ADMIN, StaffRole.SYSTEM}


@dataclass(frozen=True)
class BatchFilter:
    region_code: str | None = None
    collective: str | int | None = None
    approved_from: date | None = None
    approved_to: date | None = None
    limit: int | None = None


def _collective_id(session: Session, collective: str | int | None) -> int | None:
    if collective is None:
        return None
    if isinstance(collective, int) or str(collective).isdigit():
        found = session.get(CollectiveApplicant, int(collective))
    else:
        found = session.scalars(
            sa.select(CollectiveApplicant).where(CollectiveApplicant.name == collective)
        ).one_or_none()
    if found is None:
        raise NotFound(f"no collective applicant {collective!r}")
    return found.id


def candidates(session: Session, flt: BatchFilter) -> sa.Select[tuple[Card, Application]]:
    """Cards waiting for production that match the filter (oldest approval first)."""
    problems = []
    if flt.region_code is not None and not (
        flt.region_code.isdigit() and 2 <= len(flt.region_code) <= 6
    ):
        problems.append(FieldProblem("region_code", "2-6 digits (a GB/T 2260 code or prefix)"))
    if flt.approved_from and flt.approved_to and flt.approved_from > flt.approved_to:
        problems.append(FieldProblem("approved_to", "before approved_from"))
    if flt.limit is not None and flt.limit < 1:
        problems.append(FieldProblem("limit", "must be at least 1"))
    if problems:
        raise ValidationError("invalid batch selection", problems)
    replaced = aliased(Card)
    is_replacement = sa.exists().where(replaced.replaced_by_id == Card.id)
    stmt = (
        sa.select(Card, Application)
        .outerjoin(Application, Application.id == Card.application_id)
        .join(Person, Person.id == Card.person_id)
        .where(
            Card.status == CardStatus.NUMBER_ALLOCATED,
            Card.kind == CardKind.FORMAL,
            Card.batch_id.is_(None),
            # an approved application's card, or a replacement card (it keeps the original
            # card's application, if any: its photo is printed again)
            sa.or_(Application.status == ApplicationStatus.APPROVED, is_replacement),
        )
        .order_by(Application.decided_at.is_(None), Application.decided_at, Card.id)
    )
    if flt.region_code:
        stmt = stmt.where(Person.region_code.startswith(flt.region_code))
    cid = _collective_id(session, flt.collective)
    if cid is not None:
        stmt = stmt.where(Application.collective_id == cid)
    if flt.approved_from:
        stmt = stmt.where(Application.decided_at >= datetime.combine(flt.approved_from, time()))
    if flt.approved_to:
        end = datetime.combine(flt.approved_to + timedelta(days=1), time())
        stmt = stmt.where(Application.decided_at < end)
    if flt.limit:
        stmt = stmt.limit(flt.limit)
    return stmt


def create_batch(
    session: Session,
    actor: Actor,
    name: str,
    flt: BatchFilter | None = None,
    *,
    profile_name: str | None = None,
) -> Batch:
    """Create a batch of every matching card; raise ValidationError if none matches."""
    flt = flt or BatchFilter()
    if actor.role not in BATCH_STAFF:
        raise PermissionDenied(f"role {actor.role} may not create production batches")
    if not name or len(name) > 100:
        raise ValidationError("invalid batch", [FieldProblem("name", "1-100 characters")])
    if session.scalars(sa.select(Batch.id).where(Batch.name == name)).first() is not None:
        raise ConflictError(f"a batch named {name!r} exists")
    stmt = candidates(session, flt)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(of=Card, skip_locked=True)
    rows = session.execute(stmt).all()
    if not rows:
        raise ValidationError(
            "no approved application matches", [FieldProblem("filter", "nothing to produce")]
        )
    batch = Batch(
        name=name, status=str(lifecycle.BATCH_INITIAL), region_code=flt.region_code,
        collective_id=_collective_id(session, flt.collective), approved_from=flt.approved_from,
        approved_to=flt.approved_to, created_by_id=actor.staff_id, profile_name=profile_name,
        card_count=len(rows),
    )  # fmt: skip
    session.add(batch)
    flush(session)
    for card, app in rows:
        card.batch_id = batch.id
        lifecycle.apply_card_event(
            session, card, CardEvent.START_PRODUCTION, actor, reason=f"batch {batch.name}"
        )
        session.add(
            BatchItem(
                batch_id=batch.id, card_id=card.id,
                application_id=app.id if app is not None else None,
                stage=lifecycle.ITEM_INITIAL, attempts=0, stage_changed_at=utcnow(),
            )
        )  # fmt: skip
    flush(session)
    audit.record(
        session, actor, "batch.created", "batch", batch.id, after=batch.status,
        details={"name": name, "cards": len(rows), "region_code": flt.region_code,
                 "collective_id": batch.collective_id,
                 "approved_from": flt.approved_from, "approved_to": flt.approved_to,
                 "card_numbers": [c.card_number for c, _ in rows][:1000]},
    )  # fmt: skip
    return batch


def get_batch(session: Session, ref: str | int) -> Batch:
    """A batch by id or name."""
    batch: Batch | None = None
    if isinstance(ref, int) or str(ref).isdigit():
        batch = session.get(Batch, int(ref))
    if batch is None:
        batch = session.scalars(sa.select(Batch).where(Batch.name == str(ref))).one_or_none()
    if batch is None:
        raise NotFound(f"no batch {ref!r}")
    return batch
