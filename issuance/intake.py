"""Bulk intake: an employer's or a collective applicant's file (CSV or XLSX).

Design notes: ``docs/design/issuance.md`` (section ``issuance.intake``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.ids import mask_citizen_id
from issuance.audit import Actor
from issuance.errors import FieldProblem, IssuanceError, ValidationError
from issuance.models import Application, ApplicationChannel, CollectiveApplicant, CollectiveKind
from issuance.services.applications import (
    ApplicationInput,
    PhotoProcessor,
    normalise,
    submit_application,
)
from issuance.settings import IssuanceConfig

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


#: Columns holding identifiers: a number-typed spreadsheet cell there may already have lost
#: digits (Excel keeps 15 significant digits) or leading zeros, so it is refused, never converted.
IDENTIFIER_COLUMNS = frozenset({"citizen_id", "phone", "region_code", "ethnicity"})


class CellProblem(StrEnum):
    """Why a spreadsheet cell cannot be read as the text it should hold (stable codes)."""

    NUMBER_CELL = "number_cell"
    FORMULA_WITHOUT_VALUE = "formula_without_value"
    ERROR_VALUE = "error_value"
    MERGED_CELL = "merged_cell"


@dataclass(frozen=True)
class RawCell:
    """One cell as the file holds it: a CSV field (text) or an XLSX cell (typed)."""

    value: Any
    ref: str
    #: "value", "formula" (a formula whose value was never stored) or "error" (#N/A ...).
    kind: str = "value"
    #: The merged range this cell is covered by (not its top-left cell), if any.
    merged: str | None = None


@dataclass
class Row:
    """A data row: its line (the header being line 1), text per column, cell problems."""

    line: int
    values: dict[str, str | None]
    problems: list[FieldProblem] = field(default_factory=list)


def cell_text(column: str, cell: RawCell) -> tuple[str | None, FieldProblem | None]:
    """The text of one cell for ``column``, or the reason it cannot be had without guessing."""
    value = cell.value
    if cell.merged is not None:
        return None, FieldProblem(
            column,
            f"cell {cell.ref} is covered by the merged cells {cell.merged}: unmerge them and "
            "fill every row",
            CellProblem.MERGED_CELL.value,
        )
    if cell.kind == "formula":
        return None, FieldProblem(
            column,
            f"cell {cell.ref} holds a formula whose value was never computed (the file was "
            "written by a program): open and save it in a spreadsheet, or type the value",
            CellProblem.FORMULA_WITHOUT_VALUE.value,
        )
    if cell.kind == "error":
        return None, FieldProblem(
            column, f"cell {cell.ref} shows the error {value}", CellProblem.ERROR_VALUE.value
        )
    if value is None:
        return None, None
    if isinstance(value, datetime):
        return value.date().isoformat(), None
    if isinstance(value, date):
        return value.isoformat(), None
    if isinstance(value, bool):
        return str(value).upper(), None
    if isinstance(value, int | float):
        if column in IDENTIFIER_COLUMNS:
            return None, FieldProblem(
                column,
                f"cell {cell.ref} is a number, not text: its digits may have been lost "
                "(spreadsheets keep 15 significant digits and drop leading zeros); format "
                "the column as text and type the value again",
                CellProblem.NUMBER_CELL.value,
            )
        if isinstance(value, float) and value.is_integer():
            value = int(value)
    text = str(value).strip()
    return text or None, None


def read_rows(path: Path) -> Iterator[Row]:
    """Every non-empty data row of a CSV or XLSX file, through one reader: the file's cells
    (:func:`_xlsx_cells` or :func:`_csv_cells`), the header mapped to columns, each cell made
    text by :func:`cell_text` with its problem if it cannot be."""
    xlsx = path.suffix.lower() in (".xlsx", ".xlsm")
    raw_rows = _xlsx_cells(path) if xlsx else _csv_cells(path)
    if not raw_rows:
        return
    header = [cell_text("header", c)[0] or "" for c in raw_rows[0]]
    keys = [_LOOKUP.get(h.lower(), _LOOKUP.get(h, "")) for h in header]
    if "citizen_id" not in keys or "name" not in keys:
        raise ValidationError(
            "unreadable file",
            [
                FieldProblem(
                    "header", "needs at least the columns citizen_id and name (see issuance.intake)"
                )
            ],
        )
    for lineno, cells in enumerate(raw_rows[1:], start=2):
        row = Row(lineno, {})
        for key, cell in zip(keys, cells, strict=False):
            if not key:
                continue
            text, problem = cell_text(key, cell)
            row.values[key] = text
            if problem is not None:
                row.problems.append(problem)
        if any(row.values.values()) or any(
            c.kind != "value" for k, c in zip(keys, cells, strict=False) if k
        ):
            yield row


def _column_letter(index: int) -> str:
    from openpyxl.utils import get_column_letter

    return str(get_column_letter(index))


def _csv_cells(path: Path) -> list[list[RawCell]]:
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
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise _unreadable(f"malformed CSV: {exc}") from exc
    return [
        [RawCell(v, f"{_column_letter(c)}{r}") for c, v in enumerate(row, start=1)]
        for r, row in enumerate(rows, start=1)
    ]


def _xlsx_cells(path: Path) -> list[list[RawCell]]:
    """The first sheet's cells with their types; the stored values and the formulas are read
    side by side (a formula cell without a stored value is marked, not read as empty)."""
    import openpyxl

    try:
        values = openpyxl.load_workbook(path, read_only=True, data_only=True)
        formulas = openpyxl.load_workbook(path, read_only=True, data_only=False)
        sheet = values.worksheets[0]
        merged = _merged_cells(path, str(getattr(sheet, "_worksheet_path", "")))
        out: list[list[RawCell]] = []
        # read the whole sheet first: a damaged workbook is refused before any record
        for r, (vrow, frow) in enumerate(
            zip(sheet.iter_rows(), formulas.worksheets[0].iter_rows(), strict=False), start=1
        ):
            cells = []
            for c, (vc, fc) in enumerate(zip(vrow, frow, strict=False), start=1):
                ref = f"{_column_letter(c)}{r}"
                kind = "value"
                if vc.value is None and getattr(fc, "data_type", None) == "f":
                    kind = "formula"
                elif getattr(vc, "data_type", None) == "e":
                    kind = "error"
                cells.append(RawCell(vc.value, ref, kind, merged.get(ref)))
            out.append(cells)
        values.close()
        formulas.close()
    except Exception as exc:  # zip, XML and openpyxl errors of a damaged workbook
        raise _unreadable(f"not a readable XLSX workbook ({type(exc).__name__})") from exc
    return out


def _merged_cells(path: Path, sheet_path: str) -> dict[str, str]:
    """Cell reference -> merged range, for every cell of a merged range but its top-left one
    (read-only openpyxl does not expose merges: the sheet's XML is scanned for them)."""
    from xml.etree.ElementTree import iterparse

    from openpyxl.utils.cell import range_boundaries

    out: dict[str, str] = {}
    if not sheet_path:
        return out
    with zipfile.ZipFile(path) as z, z.open(sheet_path.lstrip("/")) as xml:
        for _, elem in iterparse(xml):
            if elem.tag.endswith("}mergeCell"):
                ref = elem.get("ref", "")
                min_col, min_row, max_col, max_row = range_boundaries(ref)
                for row in range(min_row or 1, (max_row or 1) + 1):
                    for col in range(min_col or 1, (max_col or 1) + 1):
                        if (row, col) != (min_row, min_col):
                            out[f"{_column_letter(col)}{row}"] = ref
            elif elem.tag.endswith("}row"):
                elem.clear()  # keep memory flat on a large sheet
    return out


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
    settings: IssuanceConfig,
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
        for row in read_rows(path):
            lineno, values = row.line, row.values
            data = ApplicationInput(
                citizen_id=values.get("citizen_id") or "", name=values.get("name") or "",
                phone=values.get("phone"), sex=values.get("sex"),
                birth_date=values.get("birth_date"), region_code=values.get("region_code"),
                ethnicity=values.get("ethnicity"), address=values.get("address"),
            )  # fmt: skip
            outcome = LineOutcome(lineno, mask_citizen_id(normalise(data).citizen_id))
            photo: bytes | None = None
            pre: list[FieldProblem] = list(row.problems)
            if values.get("photo"):
                try:
                    photo = source.get(values["photo"] or "")
                except KeyError:
                    pre.append(FieldProblem("photo", "file not found in the photo archive"))
                except ValueError as exc:
                    pre.append(FieldProblem("photo", str(exc)))
            data.photo = photo
            ref = _record_ref(collective, values, photo)
            if session.scalar(sa.select(Application.id).where(Application.import_ref == ref)):
                report.duplicates.append(outcome)
                continue
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
                outcome.problems = _dedupe(exc.problems, row.problems)
                report.rejected.append(outcome)
            except IssuanceError as exc:
                outcome.problems = [FieldProblem("record", exc.message)]
                report.rejected.append(outcome)
    finally:
        source.close()
    session.flush()
    return report


def _dedupe(problems: list[FieldProblem], cells: list[FieldProblem]) -> list[FieldProblem]:
    """Every reason once; a field whose cell could not be read keeps the cell's reason only
    (not "is required" for the value that was not taken from it)."""
    unread = {p.field for p in cells}
    seen: list[FieldProblem] = []
    for p in problems:
        if p.field in unread and p not in cells:
            continue
        if p not in seen and not (
            p.field == "photo"
            and p.reason.startswith("required")
            and any(q.field == "photo" for q in seen)
        ):
            seen.append(p)
    return seen
