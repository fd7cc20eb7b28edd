"""Routes: applications (intake with photo, photo replacement, process, review, approve,
reject) and the bulk import of an employer's or a collective applicant's file."""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
from pathlib import Path as FilePath
from typing import IO, Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import ctx_of, need
from api.calls import domain
from api.errors import ApiError, responses
from api.schemas import (
    ApplicationDetailOut,
    ApplicationIn,
    ApplicationOut,
    ApprovalOut,
    FieldProblemOut,
    ImportLineOut,
    ImportOut,
    RejectIn,
)
from cardspec.ids import mask_citizen_id
from issuance import services, uploads
from issuance.errors import FieldProblem, ValidationError
from issuance.intake import LineOutcome
from issuance.models import Application, ApplicationStatus, CollectiveKind
from issuance.services.application_view import view_application
from issuance.services.applications import get_application
from issuance.services.credentials import Principal

router = APIRouter(prefix="/v1", tags=["applications"])
AppId = Annotated[int, Path(ge=1, le=2**31 - 1)]
_ERR = responses(400, 401, 403, 404, 409, 422, 429)
MAX_IMPORT_BYTES = 50 * 1024 * 1024
MAX_PHOTO_ARCHIVE_BYTES = 500 * 1024 * 1024
MAX_PHOTO_BYTES = 20 * 1024 * 1024


def app_out(a: Application) -> ApplicationOut:
    return ApplicationOut(
        id=a.id, person_id=a.person_id, status=a.status, channel=str(a.channel),
        received_at=a.received_at, decided_at=a.decided_at, reject_reason=a.reject_reason,
        photo_sha256=a.photo_sha256, photo_exempt=a.photo_exempt, card_id=a.card_id,
    )  # fmt: skip


@router.post("/applications", response_model=ApplicationOut, status_code=201, responses=_ERR)
async def submit(
    body: ApplicationIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("applications:write"))],
) -> ApplicationOut:
    """Receive an application (one-veto validation: every problem is listed, by field). The
    photo is processed into the card photo (face check included)."""
    photo: bytes | None = None
    unreadable: FieldProblem | None = None
    if body.photo_base64:
        try:
            photo = base64.b64decode(body.photo_base64, validate=True)
        except (binascii.Error, ValueError):
            # refused with every other problem of the record (one veto, every reason)
            unreadable = FieldProblem("photo_base64", "is not base64", code="not_base64")
    settings = ctx_of(request).settings
    data = services.ApplicationInput(
        citizen_id=body.citizen_id, name=body.name, phone=body.phone, sex=body.sex,
        birth_date=body.birth_date, region_code=body.region_code, ethnicity=body.ethnicity,
        address=body.address, photo=photo, photo_problem=unreadable,
    )  # fmt: skip
    photo_processor = ctx_of(request).extra.get("photo_processor")

    def fn(s: Session) -> ApplicationOut:
        return app_out(
            services.submit_application(
                s, settings, data, principal.actor, photo_processor=photo_processor
            )
        )

    return await domain(request, principal, fn)


@router.get("/applications", response_model=list[ApplicationOut], responses=_ERR)
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


@router.get("/applications/{app_id}", response_model=ApplicationDetailOut, responses=_ERR)
async def get_app(
    app_id: AppId,
    request: Request,
    principal: Annotated[Principal, Depends(need("applications:read"))],
    photo: Annotated[bool, Query(description="include the processed photo (base64 JPEG)")] = False,
) -> ApplicationDetailOut:
    """One application in full, for the staff who decide it: every field, the person's
    identity, who did each step, and the processed photo on request. Audited
    ``application.viewed``."""
    full_id = "applications:write" in principal.scopes or "holder:full_id" in principal.scopes

    def fn(s: Session) -> ApplicationDetailOut:
        v = view_application(s, app_id, principal.actor, with_photo=photo)
        base = app_out(get_application(s, app_id))
        return ApplicationDetailOut(
            **base.model_dump(),
            citizen_id=v.citizen_id if full_id else mask_citizen_id(v.citizen_id),
            name=v.name, sex=v.sex, birth_date=v.birth_date, ethnicity=v.ethnicity,
            region_code=v.region_code, phone=v.phone, address=v.address,
            collective=v.collective, received_by=v.received_by, processed_by=v.processed_by,
            reviewed_by=v.reviewed_by, approved_by=v.approved_by, fee_fen=v.fee_fen,
            card_number=v.card_number,
            photo_base64=base64.b64encode(v.photo_jpeg).decode() if v.photo_jpeg else None,
        )  # fmt: skip

    return await domain(request, principal, fn)


@router.post("/applications/{app_id}/process", response_model=ApplicationOut, responses=_ERR)
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


@router.post("/applications/{app_id}/review", response_model=ApplicationOut, responses=_ERR)
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


@router.post("/applications/{app_id}/approve", response_model=ApprovalOut, responses=_ERR)
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


@router.post("/applications/{app_id}/reject", response_model=ApplicationOut, responses=_ERR)
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


def _copy(src: IO[bytes], dest: FilePath, limit: int, field: str) -> bytes:
    """Copy an upload to ``dest`` (at most ``limit`` bytes); return its first bytes."""
    with dest.open("wb") as out:
        head = src.read(1 << 16)
        out.write(head)
        total = len(head)
        while chunk := src.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise ValidationError(
                    "file too large", [FieldProblem(field, f"larger than {limit // 2**20} MB")]
                )
            out.write(chunk)
    if total == 0:
        raise ValidationError("empty file", [FieldProblem(field, "the file is empty")])
    return head


def _lines(outcomes: list[LineOutcome]) -> list[ImportLineOut]:
    return [
        ImportLineOut(
            line=o.line,
            citizen_id_masked=o.citizen_id_masked,
            application_id=o.application_id,
            problems=[
                FieldProblemOut(field=p.field, reason=p.reason, code=p.code) for p in o.problems
            ],
        )
        for o in outcomes
    ]


@router.post("/imports", response_model=ImportOut, tags=["applications"], responses=_ERR)
async def import_applications(
    request: Request,
    principal: Annotated[Principal, Depends(need("applications:write"))],
    file: Annotated[UploadFile, File(description="CSV (UTF-8 or GB18030) or XLSX file")],
    collective: Annotated[
        str, Form(min_length=1, max_length=200, description="employer, school or community")
    ],
    kind: Annotated[CollectiveKind, Form()] = CollectiveKind.EMPLOYER,
    org_code: Annotated[str | None, Form(max_length=18, pattern=r"^[0-9A-Za-z]+$")] = None,
    photos: Annotated[
        UploadFile | None, File(description="zip of the photos the file's photo column names")
    ] = None,
) -> ImportOut:
    """Bulk intake for an employer or a collective applicant (school, community): every record
    is validated as a whole and accepted or rejected with all its reasons ("one veto"); the
    good records of the file go through. Importing the same file (or record) again changes
    nothing: those records come back as ``duplicates``. Columns: see ``issuance.intake``."""
    ctx = ctx_of(request)
    settings = ctx.settings
    photo_processor = ctx.extra.get("photo_processor")
    tmp = FilePath(await run_in_threadpool(tempfile.mkdtemp, "", "ykt-import-"))
    try:
        head = await run_in_threadpool(_copy, file.file, tmp / "upload", MAX_IMPORT_BYTES, "file")
        path = tmp / f"records{uploads.import_suffix(file.filename, head)}"
        (tmp / "upload").rename(path)
        archive: FilePath | None = None
        if photos is not None and (photos.filename or photos.size):
            archive = tmp / "photos.zip"
            await run_in_threadpool(_copy, photos.file, archive, MAX_PHOTO_ARCHIVE_BYTES, "photos")

        def fn(s: Session) -> ImportOut:
            report, collective_id = uploads.import_upload(
                s, settings, path, principal.actor, collective=collective, kind=kind,
                photos=archive, org_code=org_code, photo_processor=photo_processor,
            )  # fmt: skip
            return ImportOut(
                file=file.filename or path.name, collective_id=collective_id,
                accepted=_lines(report.accepted), rejected=_lines(report.rejected),
                duplicates=_lines(report.duplicates),
            )  # fmt: skip

        return await domain(request, principal, fn)
    finally:
        await run_in_threadpool(shutil.rmtree, tmp, True)


@router.put("/applications/{app_id}/photo", response_model=ApplicationOut, responses=_ERR)
async def replace_photo(
    app_id: AppId,
    request: Request,
    principal: Annotated[Principal, Depends(need("applications:write"))],
    photo: Annotated[UploadFile, File(description="the new photo (JPEG or PNG)")],
) -> ApplicationOut:
    """Upload or replace the photo of an application not yet reviewed (it is processed into
    the card photo, face check included; a reviewed application must be rejected and
    re-applied: its reviewer saw the old photo)."""
    ctx = ctx_of(request)
    settings = ctx.settings
    photo_processor = ctx.extra.get("photo_processor")
    data = await photo.read(MAX_PHOTO_BYTES + 1)
    if len(data) > MAX_PHOTO_BYTES:
        raise ApiError(422, "validation_error", "the photo is larger than 20 MB", field="photo")

    def fn(s: Session) -> ApplicationOut:
        app = uploads.replace_application_photo(
            s, settings, app_id, data, principal.actor, photo_processor=photo_processor
        )
        return app_out(app)

    return await domain(request, principal, fn)
