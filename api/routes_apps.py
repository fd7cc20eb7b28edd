"""Routes: applications (intake with photo, process, review, approve, reject)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy.orm import Session

from api.auth import ctx_of, need
from api.calls import domain
from api.errors import ApiError, responses
from api.schemas import ApplicationIn, ApplicationOut, ApprovalOut, RejectIn
from issuance import services
from issuance.models import Application, ApplicationStatus
from issuance.services.applications import get_application
from issuance.services.credentials import Principal

router = APIRouter(prefix="/v1/applications", tags=["applications"])
AppId = Annotated[int, Path(ge=1, le=2**31 - 1)]
_ERR = responses(401, 403, 404, 409, 422, 429)


def app_out(a: Application) -> ApplicationOut:
    return ApplicationOut(
        id=a.id, person_id=a.person_id, status=a.status, channel=str(a.channel),
        received_at=a.received_at, decided_at=a.decided_at, reject_reason=a.reject_reason,
        photo_sha256=a.photo_sha256, photo_exempt=a.photo_exempt, card_id=a.card_id,
    )  # fmt: skip


@router.post("", response_model=ApplicationOut, status_code=201, responses=_ERR)
async def submit(
    body: ApplicationIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("applications:write"))],
) -> ApplicationOut:
    """Receive an application (one-veto validation: every problem is listed, by field). The
    photo is processed into the card photo (face check included)."""
    photo: bytes | None = None
    if body.photo_base64:
        try:
            photo = base64.b64decode(body.photo_base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(
                422, "validation_error", "photo_base64 is not base64", field="photo_base64"
            ) from exc
    settings = ctx_of(request).settings
    data = services.ApplicationInput(
        citizen_id=body.citizen_id, name=body.name, phone=body.phone, sex=body.sex,
        birth_date=body.birth_date, region_code=body.region_code, ethnicity=body.ethnicity,
        address=body.address, photo=photo,
    )  # fmt: skip
    photo_processor = ctx_of(request).extra.get("photo_processor")

    def fn(s: Session) -> ApplicationOut:
        return app_out(
            services.submit_application(
                s, settings, data, principal.actor, photo_processor=photo_processor
            )
        )

    return await domain(request, principal, fn)


@router.get("", response_model=list[ApplicationOut], responses=_ERR)
async def list_apps(
    request: Request,
    principal: Annotated[Principal, Depends(need("applications:read"))],
    status: ApplicationStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ApplicationOut]:
    """Latest applications, optionally by status."""
    return await domain(
        request,
        principal,
        lambda s: [app_out(a) for a in services.list_applications(s, status, limit)],
    )


@router.get("/{app_id}", response_model=ApplicationOut, responses=_ERR)
async def get_app(
    app_id: AppId,
    request: Request,
    principal: Annotated[Principal, Depends(need("applications:read"))],
) -> ApplicationOut:
    return await domain(request, principal, lambda s: app_out(get_application(s, app_id)))


@router.post("/{app_id}/process", response_model=ApplicationOut, responses=_ERR)
async def process(
    app_id: AppId,
    request: Request,
    principal: Annotated[Principal, Depends(need("applications:write"))],
) -> ApplicationOut:
    """Processing step (clerk)."""
    return await domain(
        request,
        principal,
        lambda s: app_out(services.process_application(s, app_id, principal.actor)),
    )


@router.post("/{app_id}/review", response_model=ApplicationOut, responses=_ERR)
async def review(
    app_id: AppId,
    request: Request,
    principal: Annotated[Principal, Depends(need("applications:write"))],
) -> ApplicationOut:
    """Review (not by the clerk who received it: maker-checker)."""
    return await domain(
        request,
        principal,
        lambda s: app_out(services.review_application(s, app_id, principal.actor)),
    )


@router.post("/{app_id}/approve", response_model=ApprovalOut, responses=_ERR)
async def approve(
    app_id: AppId,
    request: Request,
    principal: Annotated[Principal, Depends(need("applications:write"))],
) -> ApprovalOut:
    """Approve (maker-checker); the card record is created with its card number."""
    settings = ctx_of(request).settings

    def fn(s: Session) -> ApprovalOut:
        card = services.approve_application(s, settings, app_id, principal.actor)
        return ApprovalOut(
            application=app_out(get_application(s, app_id)),
            card_number=card.card_number,
            card_id=card.id,
        )

    return await domain(request, principal, fn)


@router.post("/{app_id}/reject", response_model=ApplicationOut, responses=_ERR)
async def reject(
    app_id: AppId,
    body: RejectIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("applications:write"))],
) -> ApplicationOut:
    return await domain(
        request,
        principal,
        lambda s: app_out(services.reject_application(s, app_id, principal.actor, body.reason)),
    )
