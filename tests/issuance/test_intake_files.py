"""The bad-input corpus for files: what employers' spreadsheets and exported CSVs really hold.

Every good record lands, every bad record gets every one of its reasons, and no value is ever
changed on the way in: an ID typed as a number in Excel (a float that cannot hold 18 digits) is
refused naming the cell, never "corrected" into another person's number.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from pathlib import Path

import openpyxl
from issuance_helpers import JPEG_FIXTURE, fake_process_photo, make_cid

from issuance import intake, services
from issuance.models import Application, Person
from issuance.services.applications import ApplicationInput, normalise


def _photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir(exist_ok=True)
    (folder / "p.jpg").write_bytes(JPEG_FIXTURE)
    return folder


def _import(session, settings, actors, path: Path, tmp_path: Path, name: str):  # type: ignore[no-untyped-def]
    coll = services.get_or_create_collective(session, name)
    return intake.import_file(
        session,
        settings,
        path,
        coll,
        actors["clerk"],
        photos=_photos(tmp_path),
        photo_processor=fake_process_photo,
    )


def _reasons(report) -> dict[int, dict[str, tuple[str, str | None]]]:  # type: ignore[no-untyped-def]
    return {o.line: {p.field: (p.reason, p.code) for p in o.problems} for o in report.rejected}


def test_number_typed_id_cell_is_refused_never_turned_into_another_id(
    session, settings, actors, tmp_path
) -> None:
    """The defect: 330106202307072048 typed as a number is stored by Excel as a float, read
    back as 330106202307072128 -- a different valid ID -- and was imported silently."""
    real = "330106202307072048"
    stored = int(float(real))  # what the spreadsheet's number cell gives back
    assert stored != int(real)
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["公民身份号码", "姓名", "联系电话", "出生日期", "照片"])
    ws.append([float(real), "钱一", "13700000031", None, "p.jpg"])  # the number cell
    good = make_cid()
    ws.append([good, "钱二", 13700000032, None, "p.jpg"])  # phone typed as a number
    kid = make_cid(date(2023, 7, 7))
    ws.append([kid, "钱三", "13700000033", datetime(2023, 7, 7), None])  # a date cell: fine
    path = tmp_path / "numbers.xlsx"
    wb.save(path)
    report = _import(session, settings, actors, path, tmp_path, "Numbers Ltd")
    reasons = _reasons(report)
    assert [o.line for o in report.accepted] == [4]
    cid_reason, code = reasons[2]["citizen_id"]
    assert code == "number_cell" and "cell A2 is a number" in cid_reason
    assert "format the column as text" in cid_reason
    assert set(reasons[2]) == {"citizen_id"}  # no "must be 18 characters, got 0" beside it
    phone_reason, code = reasons[3]["phone"]
    assert code == "number_cell" and "cell C3" in phone_reason
    # nobody was created under the float's ID, or under any ID but the date-typed child's
    assert session.query(Person).filter(Person.citizen_id == str(stored)).count() == 0
    app = session.get(Application, report.accepted[0].application_id)
    assert app.person.citizen_id == kid and app.person.birth_date == date(2023, 7, 7)


def test_formula_without_stored_value_and_merged_cells_get_their_own_reasons(
    session, settings, actors, tmp_path
) -> None:
    wb = openpyxl.Workbook()  # written by a script: formulas are never computed
    ws = wb.active
    ws.append(["citizen_id", "name", "phone", "address", "photo"])
    cid1, cid2, cid3, cid4 = make_cid(), make_cid(), make_cid(), make_cid()
    ws.append(['=CONCATENATE("3301","06")', "孙一", "13700000041", "A", "p.jpg"])
    ws.append([cid2, "孙二", "13700000042", "西湖区", "p.jpg"])
    ws.append([cid3, "孙三", "13700000043", None, "p.jpg"])  # D3:D4 merged below
    ws.append([])  # an empty row: skipped, not a record
    ws.append([cid4, "孙四", "13700000044", "B", "p.jpg"])
    ws.append([cid1, "孙五", "=B2", "C", "p.jpg"])
    ws.merge_cells("D3:D4")
    path = tmp_path / "script.xlsx"
    wb.save(path)
    report = _import(session, settings, actors, path, tmp_path, "Script Ltd")
    reasons = _reasons(report)
    assert reasons[2]["citizen_id"][1] == "formula_without_value"
    assert "cell A2 holds a formula whose value was never computed" in reasons[2]["citizen_id"][0]
    assert reasons[4]["address"][1] == "merged_cell" and "D3:D4" in reasons[4]["address"][0]
    assert reasons[7]["phone"][1] == "formula_without_value"
    assert sorted(o.line for o in report.accepted) == [3, 6]
    assert 5 not in reasons  # the empty row is no record


def test_csv_with_bom_and_gb18030_read_alike(session, settings, actors, tmp_path) -> None:
    cid1, cid2 = make_cid(), make_cid()
    rows = [["公民身份号码", "姓名", "手机号码", "照片"],
            [f" {cid1[:-1]}{cid1[-1].lower()} ", "周一", "137 0000 0051", "p.jpg"],
            [cid2, "周二", "13700000052", "p.jpg"]]  # fmt: skip
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8"))
    gb = tmp_path / "gb.csv"
    gb.write_bytes(buf.getvalue().encode("gb18030"))
    utf8_rows = [(r.line, r.values) for r in intake.read_rows(bom)]
    gb_rows = [(r.line, r.values) for r in intake.read_rows(gb)]
    assert utf8_rows == gb_rows and utf8_rows[0][1]["name"] == "周一"
    report = _import(session, settings, actors, bom, tmp_path, "BOM Ltd")
    assert len(report.accepted) == 2 and not report.rejected
    app = session.get(Application, report.accepted[0].application_id)
    assert app.person.citizen_id == cid1.upper() and app.phone == "13700000051"


def test_one_normaliser_for_every_channel() -> None:
    cid = make_cid()
    messy = ApplicationInput(
        citizen_id=f"\u3000{cid[:-1]}{cid[-1].lower()} ",
        name=" 吴一 ",
        phone=" 137 0000 0061 ",
        sex=" m ",
        region_code=" 330106 ",
        ethnicity="０１",  # full-width digits from a Chinese input method
    )
    n = normalise(messy)
    assert (n.citizen_id, n.name, n.phone, n.sex, n.region_code, n.ethnicity) == (
        cid.upper(), "吴一", "13700000061", "M", "330106", "01",
    )  # fmt: skip
    assert normalise(n) == n  # idempotent: a second channel changes nothing


def test_ten_thousand_rows_with_one_bad_row(
    session, settings, actors, tmp_path, db_backend
) -> None:
    """10,000 records land whole on SQLite; on PostgreSQL (the same code, slower per row on
    this shared machine) 1,000."""
    count = 10_000 if db_backend == "sqlite" else 1_000
    bad_line = count // 2
    cids = [make_cid() for _ in range(count)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["citizen_id", "name", "phone", "photo"])
    for i, cid in enumerate(cids, start=2):
        w.writerow([cid if i != bad_line else cid[:-1] + "Y", "郑一", f"137{i:08d}", "p.jpg"])
    path = tmp_path / "big.csv"
    path.write_text(buf.getvalue(), encoding="utf-8")
    rows = list(intake.read_rows(path))
    assert len(rows) == count and all(not r.problems for r in rows)
    # nothing altered on the way in
    assert [r.values["citizen_id"] for r in rows if r.line != bad_line] == [
        c for i, c in enumerate(cids, start=2) if i != bad_line
    ]
    report = _import(session, settings, actors, path, tmp_path, "Big Ltd")
    assert len(report.accepted) == count - 1
    assert [o.line for o in report.rejected] == [bad_line]
    assert report.rejected[0].problems[0].field == "citizen_id"
    landed = {
        cid for (cid,) in session.query(Person.citizen_id).filter(Person.citizen_id.in_(cids))
    }
    assert landed == set(cids) - {cids[bad_line - 2]}


def test_mpo_first_picture_is_said_in_the_application_record(session, settings, actors) -> None:
    """The real photo pipeline on a phone's MPO file: accepted, and the audit record of the
    application says the first picture was used."""
    import json

    import sqlalchemy as sa

    from issuance.models import AuditEvent
    from tests.fixtures.photos.corpus import astronaut, hopper, mpo

    data = ApplicationInput(citizen_id=make_cid(), name="冯十一", phone="13700000081",
                            ethnicity="01", photo=mpo(astronaut(), hopper()))  # fmt: skip
    app = services.submit_application(session, settings, data, actors["clerk"])
    event = session.scalars(
        sa.select(AuditEvent).where(
            AuditEvent.action == "application.received", AuditEvent.entity_id == str(app.id)
        )
    ).one()
    notes = json.loads(event.details)["photo_notes"]
    assert notes[0] == "MPO file of 2 pictures: the first picture was used"
