"""Bulk intake: an employer's or a collective applicant's file (CSV or XLSX).

Columns (first row = header; English or Chinese names, order free; unknown columns ignored):

=============  =========================  ==========================================
column         also accepted              content
=============  =========================  ==========================================
citizen_id     公民身份号码, 身份证号码      18 characters (format the XLSX column as text)
name           姓名                        as on the ID card
phone          联系电话, 手机号码            mobile (11 digits) or landline
sex            性别 (optional)              1/2 or 男/女; must match the ID number
birth_date     出生日期 (optional)          YYYY-MM-DD; must match the ID number
region_code    行政区划代码 (optional)       GB/T 2260 residence region; default the issuer's
ethnicity      民族代码 (optional)          GB 3304 two digits
address        地址 (optional)
photo          照片 (optional for under 6)  file name inside the photo zip or directory
=============  =========================  ==========================================

Each record is validated as a whole ("one veto"): a record with any invalid field is rejected
with every reason; the good records of the same file go through. Every accepted record gets an
``import_ref`` derived from the collective and the record's content, so importing the same file
(or the same record in another file) again creates no duplicate.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.ids import mask_citizen_id
from issuance.audit import Actor
from issuance.errors import FieldProblem, IssuanceError, ValidationError
from issuance.models import Application, ApplicationChannel, CollectiveApplicant, CollectiveKind
from issuance.services.applications import ApplicationInput, PhotoProcessor, submit_application
from issuance.settings import Settings

ALIASES: dict[str, tuple[str, ...]] = {
    "citizen_id": ("公民身份号码", "身份证号码", "身份证号", "id_number", "social_security_number"),
    "name": ("姓名",),
    "phone": ("联系电话", "手机号码", "手机", "mobile"),
    "sex": ("性别",),
    "birth_date": ("出生日期",),
    "region_code": ("行政区划代码", "区划代码"),
    "ethnicity": ("民族代码", "民族"),
    "address": ("地址", "住址"),
    "photo": ("照片", "photo_file"),
}
_LOOKUP = {alias: key for key, names in ALIASES.items() for alias in (key, *names)}
MAX_PHOTO_BYTES = 5 * 1024 * 1024


@dataclass
class LineOutcome:
    line: int
    citizen_id_masked: str
    application_id: int | None = None
    problems: list[FieldProblem] = field(default_factory=list)


@dataclass
class ImportReport:
    file: str
    accepted: list[LineOutcome] = field(default_factory=list)
    rejected: list[LineOutcome] = field(default_factory=list)
    duplicates: list[LineOutcome] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.file}: {len(self.accepted)} accepted, {len(self.rejected)} rejected, "
            f"{len(self.duplicates)} already imported"
        )


class PhotoSource:
    """Photos by file name from a directory or a zip archive (names are never paths)."""

    def __init__(self, location: Path | None) -> None:
        self.location = location
        self._zip = zipfile.ZipFile(location) if location and location.suffix == ".zip" else None
        self._names: dict[str, str] = {}
        if self._zip is not None:
            self._names = {Path(n).name: n for n in self._zip.namelist() if not n.endswith("/")}

    def get(self, name: str) -> bytes:
        base = Path(name.replace("\\", "/")).name
        if not base or self.location is None:
            raise KeyError(name)
        if self._zip is not None:
            info = self._zip.getinfo(self._names[base])
            if info.file_size > MAX_PHOTO_BYTES:
                raise ValueError("photo file larger than 5 MB")
            return self._zip.read(info)
        path = self.location / base
        if not path.is_file():
            raise KeyError(name)
        if path.stat().st_size > MAX_PHOTO_BYTES:
            raise ValueError("photo file larger than 5 MB")
        return path.read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, str | None]]]:
    """(line number, {column: text}) for every non-empty data row of a CSV or XLSX file."""
    rows: Iterator[list[Any]]
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        import openpyxl

        try:
            wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
            # read the whole sheet first: a damaged workbook is refused before any record
            rows = iter([list(r) for r in wb.worksheets[0].iter_rows(values_only=True)])
        except Exception as exc:  # zip, XML and openpyxl errors of a damaged workbook
            raise _unreadable(f"not a readable XLSX workbook ({type(exc).__name__})") from exc
    else:
        raw = path.read_bytes()
        try:  # UTF-8 (with or without BOM), else GB18030 (Excel's "CSV" on Chinese Windows)
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            try:
                text = raw.decode("gb18030")
            except UnicodeDecodeError as exc:
                raise _unreadable(
                    f"not UTF-8 or GB18030 text (undecodable byte at offset {exc.start})"
                ) from exc
        try:  # parse every line first: a malformed file is refused before any record
            rows = iter(list(csv.reader(io.StringIO(text))))
        except csv.Error as exc:
            raise _unreadable(f"malformed CSV: {exc}") from exc
    header = next(rows, None)
    if header is None:
        return
    keys = [_LOOKUP.get((_cell(h) or "").lower(), _LOOKUP.get(_cell(h) or "", "")) for h in header]
    if "citizen_id" not in keys or "name" not in keys:
        raise ValidationError(
            "unreadable file",
            [
                FieldProblem(
                    "header", "needs at least the columns citizen_id and name (see issuance.intake)"
                )
            ],
        )
    for lineno, row in enumerate(rows, start=2):
        values = {k: _cell(v) for k, v in zip(keys, row, strict=False) if k}
        if any(values.values()):
            yield lineno, values


def _unreadable(reason: str) -> ValidationError:
    return ValidationError("unreadable file", [FieldProblem("file", reason)])


def _record_ref(
    collective: CollectiveApplicant, values: dict[str, str | None], photo: bytes | None
) -> str:
    h = hashlib.sha256(f"collective:{collective.id}".encode())
    for key in sorted(ALIASES):
        h.update(f"|{key}={(values.get(key) or '').upper()}".encode())
    h.update(hashlib.sha256(photo or b"").digest())
    return f"c{collective.id}:{h.hexdigest()[:64]}"[:80]


def import_file(
    session: Session,
    settings: Settings,
    path: Path,
    collective: CollectiveApplicant,
    actor: Actor,
    *,
    photos: Path | None = None,
    photo_processor: PhotoProcessor | None = None,
    today: date | None = None,
) -> ImportReport:
    """Import one file of applications for ``collective``; see the module docstring."""
    report = ImportReport(path.name)
    channel = (
        ApplicationChannel.EMPLOYER
        if collective.kind == CollectiveKind.EMPLOYER
        else ApplicationChannel.COLLECTIVE
    )
    source = PhotoSource(photos)
    try:
        for lineno, values in read_rows(path):
            cid = (values.get("citizen_id") or "").upper()
            outcome = LineOutcome(lineno, mask_citizen_id(cid))
            photo: bytes | None = None
            pre: list[FieldProblem] = []
            if values.get("photo"):
                try:
                    photo = source.get(values["photo"] or "")
                except KeyError:
                    pre.append(FieldProblem("photo", "file not found in the photo archive"))
                except ValueError as exc:
                    pre.append(FieldProblem("photo", str(exc)))
            ref = _record_ref(collective, values, photo)
            if session.scalar(sa.select(Application.id).where(Application.import_ref == ref)):
                report.duplicates.append(outcome)
                continue
            birth: date | None = None
            if values.get("birth_date"):
                try:
                    birth = date.fromisoformat(values["birth_date"] or "")
                except ValueError:
                    pre.append(FieldProblem("birth_date", "is not a date (YYYY-MM-DD)"))
            data = ApplicationInput(
                citizen_id=cid, name=values.get("name") or "", phone=values.get("phone"),
                sex=values.get("sex"), birth_date=birth, region_code=values.get("region_code"),
                ethnicity=values.get("ethnicity"), address=values.get("address"), photo=photo,
            )  # fmt: skip
            try:
                with session.begin_nested():
                    if pre:  # still validate the rest so every reason is listed
                        try:
                            submit_application(
                                session,
                                settings,
                                data,
                                actor,
                                channel=channel,
                                collective=collective,
                                import_ref=ref,
                                photo_processor=photo_processor,
                                today=today,
                            )
                        except ValidationError as exc:
                            raise ValidationError(exc.message, pre + exc.problems) from exc
                        raise ValidationError("application rejected", pre)
                    app = submit_application(
                        session, settings, data, actor, channel=channel, collective=collective,
                        import_ref=ref, photo_processor=photo_processor, today=today,
                    )  # fmt: skip
                outcome.application_id = app.id
                report.accepted.append(outcome)
            except ValidationError as exc:
                outcome.problems = _dedupe(exc.problems)
                report.rejected.append(outcome)
            except IssuanceError as exc:
                outcome.problems = [FieldProblem("record", exc.message)]
                report.rejected.append(outcome)
    finally:
        source.close()
    session.flush()
    return report


def _dedupe(problems: list[FieldProblem]) -> list[FieldProblem]:
    seen: list[FieldProblem] = []
    for p in problems:
        if p not in seen and not (
            p.field == "photo"
            and p.reason.startswith("required")
            and any(q.field == "photo" for q in seen)
        ):
            seen.append(p)
    return seen
