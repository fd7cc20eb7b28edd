"""Listing staff users (``ykt db list-staff``): who they are, their role, their collection
point, whether they are active and have a CLI password. Administrators, supervisors and
auditors see it; nothing secret is shown (never a password hash)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance.audit import Actor
from issuance.errors import PermissionDenied
from issuance.models import Agency, Staff, StaffRole
from issuance.services.staff import STAFF_ADMINS

#: Roles that may list staff users.
STAFF_LISTERS = frozenset(STAFF_ADMINS | {StaffRole.AUDITOR})


@dataclass(frozen=True)
class StaffView:
    username: str
    display_name: str
    role: str
    agency: str | None
    active: bool
    has_password: bool
    created_at: datetime


def list_staff(session: Session, actor: Actor, *, role: StaffRole | None = None) -> list[StaffView]:
    if actor.role not in STAFF_LISTERS:
        raise PermissionDenied(f"role {actor.role} may not list staff users")
    stmt = (
        sa.select(Staff, Agency.code)
        .outerjoin(Agency, Agency.id == Staff.agency_id)
        .order_by(Staff.username)
    )
    if role is not None:
        stmt = stmt.where(Staff.role == role)
    return [
        StaffView(
            st.username,
            st.display_name,
            str(st.role),
            code,
            st.active,
            st.password_hash is not None,
            st.created_at,
        )
        for st, code in session.execute(stmt)
    ]
