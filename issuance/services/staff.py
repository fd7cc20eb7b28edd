"""Staff users, agencies and collective applicants; acting under one's own identity.

Identity in the ``ykt`` CLI (:func:`authenticate_staff`): a staff user acts with their user name
*and their password*; only the password's scrypt hash is stored (``staff.password_hash``). The
API authenticates staff by bearer tokens (:mod:`issuance.services.credentials`).
"""

from __future__ import annotations

import functools
import secrets

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
from issuance.services.credentials import check_secret, hash_secret


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


#: Least length of a staff password (generated ones are 20 characters).
MIN_PASSWORD_LENGTH = 10
#: Roles that may create staff users and set other users' passwords.
STAFF_ADMINS = {StaffRole.ADMIN, StaffRole.SUPERVISOR}


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def set_password(session: Session, username: str, password: str, actor: Actor) -> Staff:
    """Set a staff user's CLI password (an administrator, or the user themself)."""
    staff = _staff(session, username)
    if (
        actor.role not in STAFF_ADMINS
        and actor.role != StaffRole.SYSTEM
        and (actor.staff_id != staff.id)
    ):
        raise PermissionDenied(f"role {actor.role} may not set another user's password")
    if len(password) < MIN_PASSWORD_LENGTH or password.strip() != password:
        raise ValidationError("password refused", [FieldProblem(
            "password", f"at least {MIN_PASSWORD_LENGTH} characters, no leading/trailing spaces"
        )])  # fmt: skip
    staff.password_hash = hash_secret(password)
    flush(session)
    audit.record(session, actor, "staff.password_set", "staff", staff.id,
                 details={"username": staff.username})  # fmt: skip
    return staff


def _staff(session: Session, username: str) -> Staff:
    staff = session.scalars(sa.select(Staff).where(Staff.username == username)).one_or_none()
    if staff is None:
        raise NotFound(f"no staff user {username!r}")
    return staff


def authenticate_staff(
    session: Session, username: str, password: str, channel: Channel | str = Channel.COUNTER
) -> Actor:
    """The :class:`Actor` of a staff user who proved who they are with their password
    (constant-time scrypt check); PermissionDenied otherwise, with the same message for an
    unknown user and a wrong password."""
    staff = session.scalars(sa.select(Staff).where(Staff.username == username)).one_or_none()
    stored = staff.password_hash if staff is not None else None
    # an unknown user costs the same scrypt as a known one
    good = check_secret(password, stored or _dummy_hash()) and stored is not None
    if staff is None or not good:
        raise PermissionDenied(f"staff user {username!r}: unknown user or wrong password")
    if not staff.active:
        raise PermissionDenied(f"staff user {username!r} is disabled")
    return Actor(staff.username, staff.role, Channel(channel), staff.id)


@functools.cache
def _dummy_hash() -> str:
    return hash_secret(secrets.token_urlsafe(15))


def can_bootstrap(session: Session) -> bool:
    """True while no staff user has a CLI password (a new database, or one migrated from
    before passwords, or made by ``ykt demo``): the system may then create a user or set a
    password, so that a first administrator can be given one."""
    has = sa.select(Staff.id).where(Staff.password_hash.is_not(None)).limit(1)
    return session.scalar(has) is None


def actor_for(session: Session, username: str, channel: Channel | str = Channel.COUNTER) -> Actor:
    """The :class:`Actor` of an active staff user acting through ``channel`` (no password: for
    callers that authenticated the user themselves, e.g. the API's tokens, the demo)."""
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
