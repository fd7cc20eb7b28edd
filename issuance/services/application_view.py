"""The checker sees what they approve: an application's every field and its processed photo.

Who may see it (:data:`APPLICATION_VIEWERS`): the staff who take part in an application's
steps (receive, process, review, approve, reject) and auditors; never an agency's machine
credential. Every view is audited (``application.viewed``, with whether the photo was taken).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy.orm import Session

from issuance import audit
from issuance.audit import Actor
from issuance.errors import PermissionDenied
from issuance.models import Card, CollectiveApplicant, Staff, StaffRole
from issuance.services.applications import (
    APPROVERS,
    PROCESSORS,
    RECEIVERS,
    REVIEWERS,
    get_application,
)

#: Roles that may see an application's fields and photo.
APPLICATION_VIEWERS = frozenset(
    RECEIVERS | PROCESSORS | REVIEWERS | APPROVERS | {StaffRole.AUDITOR}
)


@dataclass(frozen=True)
class ApplicationView:
    """Every field of one application and of the person it is for (``citizen_id`` in full:
    the presentation masks it for viewers who may not see it)."""

    application_id: int
    status: str
    channel: str
    collective: str | None
    received_at: datetime
    decided_at: datetime | None
    reject_reason: str | None
    received_by: str | None
    processed_by: str | None
    reviewed_by: str | None
    approved_by: str | None
    fee_fen: int
    import_ref: str | None
    card_number: str | None
    person_id: int
    citizen_id: str
    name: str
    sex: str
    birth_date: date
    ethnicity: str | None
    region_code: str
    phone: str | None
    address: str | None
    photo_sha256: str | None
    photo_exempt: bool
    #: The processed card photo (JPEG), only when asked for.
    photo_jpeg: bytes | None


def check_may_view(actor: Actor) -> None:
    if actor.staff_id is None:
        raise PermissionDenied("only staff users see applications in full")
    if actor.role not in APPLICATION_VIEWERS:
        raise PermissionDenied(f"role {actor.role} may not see applications")


def view_application(
    session: Session, app_id: int, actor: Actor, *, with_photo: bool = False
) -> ApplicationView:
    """One application in full (the photo too with ``with_photo``); audited."""
    check_may_view(actor)
    app = get_application(session, app_id)
    person = app.person

    def username(staff_id: int | None) -> str | None:
        staff = session.get(Staff, staff_id) if staff_id is not None else None
        return staff.username if staff is not None else None

    collective = session.get(CollectiveApplicant, app.collective_id) if app.collective_id else None
    card = session.get(Card, app.card_id) if app.card_id else None
    view = ApplicationView(
        app.id, str(app.status), str(app.channel),
        collective.name if collective is not None else None,
        app.received_at, app.decided_at, app.reject_reason,
        username(app.received_by_id), username(app.processed_by_id),
        username(app.reviewed_by_id), username(app.approved_by_id),
        app.fee_fen, app.import_ref, card.card_number if card is not None else None,
        person.id, person.citizen_id, person.name, person.sex, person.birth_date,
        person.ethnicity, person.region_code, app.phone or person.phone, person.address,
        app.photo_sha256, app.photo_exempt,
        app.photo_jpeg if with_photo else None,
    )  # fmt: skip
    audit.record(
        session, actor, "application.viewed", "application", app.id,
        details={"photo": with_photo and app.photo_jpeg is not None},
    )  # fmt: skip
    return view
