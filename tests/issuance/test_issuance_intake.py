"""Employer / collective files: one veto per record, good records go through, no duplicates."""

from __future__ import annotations

import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import openpyxl
import pytest
from issuance_helpers import JPEG_FIXTURE, fake_process_photo, make_cid
from PIL import Image

from issuance import intake, services
from issuance.errors import ValidationError
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


PHOTOS = Path(__file__).resolve().parents[1] / "fixtures" / "photos"


def test_file_through_the_real_photo_pipeline(session, settings, actors, tmp_path):
    """No stand-in: issuance.photos.process_photo checks each photo (OpenCV face detection,
    framing, background, sharpness) and produces the card photo stored with the application."""
    ok_cid, tilted_cid, two_cid, text_cid = make_cid(), make_cid(), make_cid(), make_cid()
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut.jpg", "astronaut_tilted.jpg", "two_faces.jpg", "not_an_image.jpg"):
        shutil.copy(PHOTOS / name, folder / name)
    csv_path = tmp_path / "school.csv"
    csv_path.write_text(
        "citizen_id,name,phone,photo\n"
        f"{ok_cid},吴一,13700000011,astronaut.jpg\n"
        f"{tilted_cid},吴二,13700000012,astronaut_tilted.jpg\n"
        f"{two_cid},吴三,13700000013,two_faces.jpg\n"
        f"{text_cid},吴四,13700000014,not_an_image.jpg\n",
        encoding="utf-8",
    )
    coll = services.get_or_create_collective(session, f"School {ok_cid[-5:]}", kind="school")
    report = intake.import_file(session, settings, csv_path, coll, actors["clerk"], photos=folder)
    assert [o.line for o in report.accepted] == [2]
    reasons = {o.line: o.problems[0].reason for o in report.rejected}
    assert "tilted" in reasons[3] and "2 faces" in reasons[4] and "not an image" in reasons[5]
    assert all(len(o.problems) == 1 and o.problems[0].field == "photo" for o in report.rejected)
    app = session.get(Application, report.accepted[0].application_id)
    assert app.channel == ApplicationChannel.COLLECTIVE
    card_photo = Image.open(io.BytesIO(app.photo_jpeg))
    assert card_photo.format == "JPEG" and card_photo.size == (
        settings.photos.width, settings.photos.height,
    )  # fmt: skip
    assert settings.photos.min_bytes <= len(app.photo_jpeg) <= settings.photos.max_bytes
    assert app.photo_sha256 == hashlib.sha256(app.photo_jpeg).hexdigest()
    assert not card_photo.getexif()  # metadata stripped


def test_counter_intake_through_the_real_photo_pipeline(session, settings, actors):
    data = services.ApplicationInput(
        citizen_id=make_cid(), name="郑十", phone="13700000021",
        photo=(PHOTOS / "astronaut_exif_rotated.jpg").read_bytes(), ethnicity="01")  # fmt: skip
    app = services.submit_application(session, settings, data, actors["clerk"])
    img = Image.open(io.BytesIO(app.photo_jpeg))
    assert img.size == (settings.photos.width, settings.photos.height)  # upright, card-sized
    bad = services.ApplicationInput(
        citizen_id=make_cid(), name="郑十一", phone="13700000022",
        photo=(PHOTOS / "astronaut_tilted.jpg").read_bytes(), ethnicity="01")  # fmt: skip
    with pytest.raises(ValidationError) as err:
        services.submit_application(session, settings, bad, actors["clerk"])
    assert [(p.field, "tilted" in p.reason) for p in err.value.problems] == [("photo", True)]
