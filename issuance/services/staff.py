"""Staff users, agencies and collective applicants; acting under one's own identity."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.errors import InvalidIdentifier
from cardspec.ids import validate_region_code
from issuance import audit
from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.db import flush
from issuance.errors import ConflictError, FieldProblem, NotFound, PermissionDenied, ValidationError
from issuance.models import (
    Agency,
    AgencyKind,
    Channel,
    CollectiveApplicant,
    CollectiveKind,
    Staff,
    StaffRole,
)


def create_staff(
    session: Session,
    username: str,
    role: StaffRole | str,
    *,
    display_name: str | None = None,
    agency_id: int | None = None,
    actor: Actor = SYSTEM_ACTOR,
) -> Staff:
    role = StaffRole(role)
    if role == StaffRole.SYSTEM:
        raise ValidationError("invalid staff", [FieldProblem("role", "system is not a staff role")])
    if session.scalars(sa.select(Staff).where(Staff.username == username)).first():
        raise ConflictError(f"staff user {username!r} already exists")
    staff = Staff(
        username=username, role=role, display_name=display_name or username, agency_id=agency_id
    )
    session.add(staff)
    flush(session)
    audit.record(
        session,
        actor,
        "staff.created",
        "staff",
        staff.id,
        details={"username": username, "role": str(role)},
    )
    return staff


def actor_for(session: Session, username: str, channel: Channel | str = Channel.COUNTER) -> Actor:
    """The :class:`Actor` of an active staff user acting through ``channel``."""
    staff = session.scalars(sa.select(Staff).where(Staff.username == username)).one_or_none()
    if staff is None:
        raise NotFound(f"no staff user {username!r}")
    if not staff.active:
        raise PermissionDenied(f"staff user {username!r} is disabled")
    return Actor(staff.username, staff.role, Channel(channel), staff.id)


def create_agency(
    session: Session,
    code: str,
    name: str,
    kind: AgencyKind | str,
    region_code: str,
    *,
    actor: Actor = SYSTEM_ACTOR,
) -> Agency:
    try:
        validate_region_code(region_code)
    except InvalidIdentifier as exc:
        raise ValidationError("invalid agency", [FieldProblem("region_code", exc.reason)]) from exc
    agency = Agency(code=code, name=name, kind=AgencyKind(kind), region_code=region_code)
    session.add(agency)
    flush(session)
    audit.record(
        session,
        actor,
        "agency.created",
        "agency",
        agency.id,
        details={"code": code, "kind": str(kind)},
    )
    return agency


def get_or_create_collective(
    session: Session,
    name: str,
    *,
    kind: CollectiveKind | str = CollectiveKind.EMPLOYER,
    region_code: str = "330100",
    org_code: str | None = None,
    actor: Actor = SYSTEM_ACTOR,
) -> CollectiveApplicant:
    """An employer, school or community by name (created on first use)."""
    found = session.scalars(
        sa.select(CollectiveApplicant).where(CollectiveApplicant.name == name)
    ).one_or_none()
    if found is not None:
        return found
    coll = CollectiveApplicant(
        name=name, kind=CollectiveKind(kind), region_code=region_code, org_code=org_code
    )
    session.add(coll)
    flush(session)
    audit.record(
        session,
        actor,
        "collective.created",
        "collective",
        coll.id,
        details={"name": name, "kind": str(kind)},
    )
    return coll
