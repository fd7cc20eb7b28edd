"""Files handed in by staff (over the API or the CLI): an employer's or a collective
applicant's bulk application file with its photo archive, and the replacement of the photo of
an application still in progress.

* :func:`import_upload` checks what :mod:`issuance.intake` cannot (the caller's role before any
  record, the photo archive as a whole: a damaged, encrypted or oversized zip is refused before
  any record is touched), finds or creates the collective applicant and imports the file:
  every record is accepted or rejected with all its reasons; importing the same file again
  creates nothing (each record's ``import_ref``).
* :func:`replace_application_photo` processes a new photo (face check included) for an
  application that was not reviewed yet: once a reviewer has seen the photo, changing it would
  bypass the review (maker-checker), so a reviewed application must be rejected and re-applied.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

from sqlalchemy.orm import Session

from issuance import audit, intake
from issuance.audit import Actor
from issuance.db import flush
from issuance.errors import FieldProblem, PermissionDenied, TransitionError, ValidationError
from issuance.models import Application, ApplicationStatus, CollectiveKind
from issuance.services.applications import (
    PROCESSORS,
    RECEIVERS,
    PhotoProcessor,
    get_application,
)
from issuance.services.staff import get_or_create_collective
from issuance.settings import IssuanceConfig

#: Statuses in which an application's photo may still be replaced (before review).
PHOTO_REPLACEABLE = (ApplicationStatus.RECEIVED, ApplicationStatus.PROCESSED)
#: At most this many files in a photo archive (a collective's file is a few thousand people).
MAX_ARCHIVE_MEMBERS = 100_000
_XLSX_MAGIC = b"PK\x03\x04"


def import_suffix(filename: str | None, head: bytes) -> str:
    """The suffix :func:`issuance.intake.read_rows` reads a file by: the uploaded name's
    (``.csv``, ``.xlsx``, ``.xlsm``), else by content (a zip container is a workbook)."""
    suffix = Path(filename or "").suffix.lower()
    if suffix in (".csv", ".xlsx", ".xlsm"):
        return suffix
    return ".xlsx" if head.startswith(_XLSX_MAGIC) else ".csv"


def check_photo_archive(path: Path) -> None:
    """Refuse a photo archive that is not a readable zip of reasonably sized files."""

    def bad(reason: str) -> ValidationError:
        return ValidationError("unreadable photo archive", [FieldProblem("photos", reason)])

    if not zipfile.is_zipfile(path):
        raise bad("not a zip archive")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ARCHIVE_MEMBERS:
                raise bad(f"more than {MAX_ARCHIVE_MEMBERS} files")
            big = [i.filename for i in infos if i.file_size > intake.MAX_PHOTO_BYTES]
            if big:
                raise bad(f"{big[0]!r} is larger than 5 MB")
            if any(i.flag_bits & 0x1 for i in infos):
                raise bad("encrypted archives are not accepted")
            broken = zf.testzip()  # reads every member: CRC and compression errors
            if broken is not None:
                raise bad(f"{broken!r} is damaged (CRC error)")
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise bad(f"damaged zip archive ({type(exc).__name__})") from exc


def import_upload(
    session: Session,
    settings: IssuanceConfig,
    file: Path,
    actor: Actor,
    *,
    collective: str,
    kind: CollectiveKind,
    photos: Path | None = None,
    org_code: str | None = None,
    photo_processor: PhotoProcessor | None = None,
) -> tuple[intake.ImportReport, int]:
    """Import ``file`` (CSV/XLSX, see :mod:`issuance.intake`) for the collective applicant
    named ``collective``; ``photos`` a zip archive the file's photo column refers to.
    Returns the report and the collective applicant's id."""
    if actor.role not in RECEIVERS:
        raise PermissionDenied(f"role {actor.role} may not receive applications", role=actor.role)
    name = collective.strip()
    problems = []
    if not name or len(name) > 200:
        problems.append(FieldProblem("collective", "1 to 200 characters"))
    if org_code is not None and not (1 <= len(org_code) <= 18 and org_code.isalnum()):
        problems.append(FieldProblem("org_code", "1 to 18 letters or digits"))
    if problems:
        raise ValidationError("cannot import", problems)
    if photos is not None:
        check_photo_archive(photos)
    coll = get_or_create_collective(
        session, name, kind=kind, region_code=settings.issuer.region_code, org_code=org_code,
        actor=actor,
    )  # fmt: skip
    if coll.kind != kind:
        raise ValidationError(
            "cannot import",
            [FieldProblem("kind", f"{name!r} is registered as a {coll.kind}, not a {kind}")],
        )
    report = intake.import_file(
        session, settings, file, coll, actor, photos=photos, photo_processor=photo_processor
    )
    audit.record(
        session, actor, "applications.imported", "collective", coll.id,
        details={"file": report.file, "accepted": len(report.accepted),
                 "rejected": len(report.rejected), "duplicates": len(report.duplicates)},
    )  # fmt: skip
    return report, coll.id


def replace_application_photo(
    session: Session,
    settings: IssuanceConfig,
    app_id: int,
    photo: bytes,
    actor: Actor,
    *,
    photo_processor: PhotoProcessor | None = None,
) -> Application:
    """Process ``photo`` into the card photo of application ``app_id`` (before review)."""
    app = get_application(session, app_id)
    if actor.role not in RECEIVERS | PROCESSORS:
        raise PermissionDenied(f"role {actor.role} may not change applications", role=actor.role)
    if app.status not in PHOTO_REPLACEABLE:
        raise TransitionError(
            f"application {app.id} is {app.status}: its photo can only be replaced before "
            "review (reject it and apply again)",
            from_state=str(app.status), event="replace_photo",
        )  # fmt: skip
    if not photo:
        raise ValidationError("photo rejected", [FieldProblem("photo", "the file is empty")])
    if photo_processor is None:
        from issuance.photos import process_photo

        photo_processor = process_photo
    processed = photo_processor(photo, settings.photos)  # raises PhotoRejected with reasons
    before = app.photo_sha256
    app.photo_jpeg, app.photo_sha256, app.photo_exempt = processed.jpeg, processed.sha256, False
    flush(session)
    audit.record(
        session, actor, "application.photo_replaced", "application", app.id,
        details={"before_sha256": before, "after_sha256": processed.sha256,
                 **({"photo_notes": list(processed.notes)} if processed.notes else {})},
    )  # fmt: skip
    return app
