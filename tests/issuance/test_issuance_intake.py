"""Employer / collective files: one veto per record, good records go through, no duplicates."""

from __future__ import annotations

import zipfile

import openpyxl
from conftest import JPEG_FIXTURE, fake_process_photo, make_cid

from issuance import intake, services
from issuance.models import Application, ApplicationChannel


def _rows():
    good1, good2, bad = make_cid(), make_cid(male=False), make_cid()
    return (
        good1,
        good2,
        bad,
        [
            ["公民身份号码", "姓名", "联系电话", "性别", "照片", "ignored"],
            [good1, "王五", "13700000001", "男", "a.jpg", "x"],
            [good2, "赵六", "0571-88888888", "2", "b.jpg", ""],
            [bad[:17] + ("0" if bad[17] != "0" else "1"), "X1", "123", "女", "missing.jpg", ""],
            [good1[:6] + "20991301001X", "陈七", "13700000003", "", "a.jpg", ""],
        ],
    )


def _check(report, good1, good2):
    assert len(report.accepted) == 2 and len(report.rejected) == 2
    by_line = {r.line: {p.field for p in r.problems} for r in report.rejected}
    assert by_line[4] == {"citizen_id", "name", "phone", "photo"}
    assert "citizen_id" in by_line[5]
    assert good1 not in repr(report)  # masked


def test_csv_with_photo_zip_and_reimport(session, settings, actors, tmp_path):
    good1, good2, _bad, rows = _rows()
    csv_path = tmp_path / "staff.csv"
    csv_path.write_text("\n".join(",".join(r) for r in rows), encoding="utf-8")
    photos = tmp_path / "photos.zip"
    with zipfile.ZipFile(photos, "w") as z:
        z.writestr("photos/a.jpg", JPEG_FIXTURE)
        z.writestr("photos/b.jpg", JPEG_FIXTURE + b"b")
    coll = services.get_or_create_collective(session, "Acme Ltd")
    report = intake.import_file(
        session,
        settings,
        csv_path,
        coll,
        actors["clerk"],
        photos=photos,
        photo_processor=fake_process_photo,
    )
    _check(report, good1, good2)
    apps = session.query(Application).filter(Application.collective_id == coll.id).all()
    assert len(apps) == 2 and {a.channel for a in apps} == {ApplicationChannel.EMPLOYER}
    again = intake.import_file(
        session,
        settings,
        csv_path,
        coll,
        actors["clerk"],
        photos=photos,
        photo_processor=fake_process_photo,
    )
    assert len(again.accepted) == 0 and len(again.duplicates) == 2
    assert session.query(Application).filter(Application.collective_id == coll.id).count() == 2


def test_xlsx_with_photo_directory(session, settings, actors, tmp_path):
    good1, good2, _bad, rows = _rows()
    wb = openpyxl.Workbook()
    for r in rows:
        wb.active.append(r)
    path = tmp_path / "school.xlsx"
    wb.save(path)
    photo_dir = tmp_path / "photos"
    photo_dir.mkdir()
    (photo_dir / "a.jpg").write_bytes(JPEG_FIXTURE)
    (photo_dir / "b.jpg").write_bytes(JPEG_FIXTURE + b"b")
    coll = services.get_or_create_collective(session, "No. 3 Primary School", kind="school")
    report = intake.import_file(
        session,
        settings,
        path,
        coll,
        actors["clerk"],
        photos=photo_dir,
        photo_processor=fake_process_photo,
    )
    _check(report, good1, good2)
    assert {a.channel for a in session.query(Application).filter_by(collective_id=coll.id)} == {
        ApplicationChannel.COLLECTIVE
    }
