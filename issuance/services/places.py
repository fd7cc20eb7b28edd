"""Collection points: the bank branches and community service centres where residents collect
their cards (``ykt places``). Each is an agency (``agencies`` table) of a collection-point kind
(:data:`COLLECTION_POINT_KINDS`); created by an administrator or a
supervisor (audited ``agency.created``), listed by any staff user."""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance.audit import Actor
from issuance.errors import ConflictError, FieldProblem, PermissionDenied, ValidationError
from issuance.models import Agency, AgencyKind, Staff
from issuance.services.staff import STAFF_ADMINS, create_agency

#: Agencies where residents collect cards (``other``: a street office made before the
#: ``community`` kind existed; new ones are ``bank`` or ``community``).
COLLECTION_POINT_KINDS = (AgencyKind.BANK, AgencyKind.COMMUNITY, AgencyKind.OTHER)

_CODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


@dataclass(frozen=True)
class PlaceView:
    code: str
    name: str
    kind: str
    region_code: str
    staff: int  # staff users attached to it


def add_collection_point(
    session: Session, code: str, name: str, kind: AgencyKind | str, region_code: str,
    actor: Actor,
) -> Agency:  # fmt: skip
    """A new collection point (admin or supervisor); every problem listed at once."""
    if actor.role not in STAFF_ADMINS:
        raise PermissionDenied(f"role {actor.role} may not create collection points")
    problems = []
    if not _CODE_RE.fullmatch(code):
        problems.append(FieldProblem("code", "1-32 letters, digits, '.', '_' or '-'"))
    if not name.strip() or len(name) > 200:
        problems.append(FieldProblem("name", "1-200 characters"))
    try:
        kind = AgencyKind(kind)
    except ValueError:
        kind = None  # type: ignore[assignment]
    if kind not in COLLECTION_POINT_KINDS or kind == AgencyKind.OTHER:
        problems.append(
            FieldProblem("kind", "bank (a bank branch) or community (a service centre)")
        )
    if problems:
        raise ValidationError("invalid collection point", problems)
    if session.scalar(sa.select(Agency.id).where(Agency.code == code)) is not None:
        raise ConflictError(f"an agency {code!r} already exists")
    return create_agency(session, code, name.strip(), kind, region_code, actor=actor)


def list_collection_points(session: Session) -> list[PlaceView]:
    staff = sa.select(sa.func.count(Staff.id)).where(Staff.agency_id == Agency.id).scalar_subquery()
    rows = session.execute(
        sa.select(Agency, staff)
        .where(Agency.kind.in_(COLLECTION_POINT_KINDS))
        .order_by(Agency.code)
    )
    return [PlaceView(a.code, a.name, str(a.kind), a.region_code, int(n)) for a, n in rows]
