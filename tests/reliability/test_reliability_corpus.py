"""Bad-input corpus (issue 7): photos, import files, a misbehaving card's APDU responses and
malformed cryptograms. Each bad input gets its own specific error, never a crash; the good
records beside it are still stored.

The corpus is built at test time from the photo fixtures of tests/fixtures/photos (their
sources are in SOURCES.md there) and from generated files.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from hashlib import sha256
from pathlib import Path

import openpyxl
import pytest
import sqlalchemy as sa
from PIL import Image

from cardspec import cardops, ids, keyscheme, perso
from cardspec.crypto import SoftwareCardCrypto
from cardspec.emulator import blank_card
from cardspec.errors import (
    ApduError,
    CardError,
    CardNotFoundError,
    CardStateError,
    ResponseError,
    SecurityError,
)
from cardspec.ids import citizen_id_check_char
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import DEFAULT_PROFILE, FinancialData, Holder, MedicalData, PensionData
from cardspec.reader import InProcessReader
from issuance import intake, photos, services
from issuance.errors import PhotoRejected, ValidationError
from issuance.models import Application, StaffRole
from issuance.photos import PhotoProblem

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "photos"
_n = iter(range(int.from_bytes(os.urandom(2), "big") * 10, 10**7))


def cid(birth: date = date(1985, 3, 14)) -> str:
    body = f"330106{birth:%Y%m%d}{next(_n) % 1000:03d}"
    return body + citizen_id_check_char(body)


def _tiny() -> bytes:
    buf = io.BytesIO()
    Image.open(FIXTURES / "astronaut.jpg").resize((48, 60)).save(buf, "JPEG")
    return buf.getvalue()


def _small_face() -> bytes:
    buf = io.BytesIO()  # 300x300: big enough as an image, the face ~55 px (79 needed)
    Image.open(FIXTURES / "astronaut.jpg").resize((300, 300)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _no_face() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (600, 740), (240, 240, 240)).save(buf, "JPEG")
    return buf.getvalue()


#: (corpus name, bytes, expected PhotoProblem or None = accepted after conversion)
PHOTOS: list[tuple[str, Callable[[], bytes], PhotoProblem | None]] = [
    ("truncated.jpg", lambda: (FIXTURES / "truncated.jpg").read_bytes(), PhotoProblem.CORRUPT),
    ("not_an_image.jpg", lambda: (FIXTURES / "not_an_image.jpg").read_bytes(),
     PhotoProblem.NOT_AN_IMAGE),
    ("bomb.png", lambda: (FIXTURES / "bomb.png").read_bytes(), PhotoProblem.TOO_MANY_PIXELS),
    ("two_faces.jpg", lambda: (FIXTURES / "two_faces.jpg").read_bytes(),
     PhotoProblem.SEVERAL_FACES),
    ("no_face.jpg", _no_face, PhotoProblem.NO_FACE),
    ("camera.png", lambda: (FIXTURES / "camera.png").read_bytes(), PhotoProblem.NO_FACE),
    ("small_face.jpg", _small_face, PhotoProblem.FACE_TOO_SMALL),
    ("small_image.jpg", lambda: (FIXTURES / "astronaut_small.jpg").read_bytes(),
     PhotoProblem.IMAGE_TOO_SMALL),
    ("tiny.jpg", _tiny, PhotoProblem.IMAGE_TOO_SMALL),
    ("empty.jpg", lambda: b"", PhotoProblem.EMPTY),
    ("gif.gif", lambda: b"GIF89a" + bytes(40), PhotoProblem.NOT_AN_IMAGE),
    # converted, not refused: CMYK and 16-bit grey to sRGB, alpha flattened on white
    ("cmyk.jpg", lambda: (FIXTURES / "astronaut_cmyk.jpg").read_bytes(), None),
    ("grey16.png", lambda: (FIXTURES / "astronaut_grey16.png").read_bytes(), None),
    ("alpha.png", lambda: (FIXTURES / "astronaut_alpha.png").read_bytes(), None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "make", "problem"), PHOTOS, ids=[p[0] for p in PHOTOS])
def test_photo_corpus_gets_specific_reasons(name, make, problem, settings):
    data = make()
    if problem is None:
        out = photos.process_photo(data, settings.photos)
        assert (out.width, out.height) == (settings.photos.width, settings.photos.height)
        assert settings.photos.min_bytes <= len(out.jpeg) <= settings.photos.max_bytes
        return
    with pytest.raises(PhotoRejected) as err:
        photos.process_photo(data, settings.photos)
    assert err.value.details["reason"] == problem.value, err.value.message


@pytest.fixture
def clerk(session):
    staff = services.create_staff(session, f"clerk-{next(_n)}", StaffRole.CLERK)
    return services.actor_for(session, staff.username)


def _apps(session, collective) -> int:
    return session.scalar(
        sa.select(sa.func.count())
        .select_from(Application)
        .where(Application.collective_id == collective.id)
    )


def test_import_with_bad_photos_keeps_the_good_records(session, settings, clerk, tmp_path):
    good = [cid(), cid()]
    zpath = tmp_path / "photos.zip"
    rows = [["citizen_id", "name", "phone", "photo"]]
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(FIXTURES / "astronaut.jpg", "ok1.jpg")
        z.write(FIXTURES / "astronaut_cmyk.jpg", "ok2.jpg")
        rows += [[good[0], "李雷", "13800000001", "ok1.jpg"],
                 [good[1], "韩梅梅", "13800000002", "ok2.jpg"]]  # fmt: skip
        for name, make, problem in PHOTOS:
            if problem is not None and name in ("truncated.jpg", "bomb.png", "two_faces.jpg"):
                z.writestr(name, make())
                rows.append([cid(), "王五", "13800000003", name])
    csv_path = tmp_path / "employer.csv"
    csv_path.write_text("\n".join(",".join(r) for r in rows), encoding="utf-8")
    coll = services.get_or_create_collective(session, f"Acme {next(_n)}")
    report = intake.import_file(session, settings, csv_path, coll, clerk, photos=zpath)
    assert len(report.accepted) == 2 and len(report.rejected) == 3
    reasons = {r.line: " ".join(p.reason for p in r.problems) for r in report.rejected}
    assert (
        "truncated" in reasons[4]
        and "more than the 50,000,000 allowed" in reasons[5]
        and "2 faces" in reasons[6]
    )
    assert all({p.field for p in r.problems} == {"photo"} for r in report.rejected)
    assert _apps(session, coll) == 2


def _write(path: Path, rows: list[list[str]], encoding: str = "utf-8") -> Path:
    path.write_bytes("\n".join(",".join(r) for r in rows).encode(encoding))
    return path


def test_import_file_corpus(session, settings, clerk, tmp_path):
    """Bad encodings, damaged workbooks, missing columns, bad check characters, duplicates and
    huge fields: the file or the record is refused with its reason; good records are kept."""
    coll = services.get_or_create_collective(session, f"School {next(_n)}")
    kid = date(2021, 5, 1)  # under 6: no photo needed

    def imp(path: Path) -> intake.ImportReport:
        return intake.import_file(session, settings, path, coll, clerk)

    # GB18030 / GBK (what Excel writes on Chinese Windows) is read, not refused
    gbk_ok = cid(kid)
    gbk_rows = [["身份证号码", "姓名", "联系电话"], [gbk_ok, "欧阳娜娜", "13800000010"]]
    rep = imp(_write(tmp_path / "gbk.csv", gbk_rows, "gbk"))
    assert len(rep.accepted) == 1
    # UTF-16 and random bytes: the whole file is refused with a reason, nothing stored
    for name, blob in [
        ("utf16.csv", "citizen_id,name\n".encode("utf-16")),
        ("random.csv", bytes(range(128, 256)) * 3),
    ]:
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValidationError) as err:
            imp(tmp_path / name)
        assert err.value.problems[0].field in ("file", "header"), str(err.value)
    # a damaged workbook and a CSV renamed .xlsx
    good_xlsx = tmp_path / "good.xlsx"
    wb = openpyxl.Workbook()
    wb.active.append(["citizen_id", "name", "phone"])
    wb.active.append([cid(kid), "张伟", "13800000011"])
    wb.save(good_xlsx)
    (tmp_path / "cut.xlsx").write_bytes(good_xlsx.read_bytes()[:300])
    (tmp_path / "fake.xlsx").write_bytes(b"citizen_id,name\n")
    for name in ("cut.xlsx", "fake.xlsx"):
        with pytest.raises(ValidationError) as err:
            imp(tmp_path / name)
        assert err.value.problems[0].field == "file" and "XLSX" in err.value.problems[0].reason
    assert len(imp(good_xlsx).accepted) == 1
    # missing columns
    with pytest.raises(ValidationError) as err:
        imp(_write(tmp_path / "cols.csv", [["name", "phone"], ["张伟", "13800000012"]]))
    assert err.value.problems[0].field == "header"
    # a field over the CSV parser's limit: the file is refused before any record is stored
    before = _apps(session, coll)
    with pytest.raises(ValidationError) as err:
        huge = [["citizen_id", "name", "phone", "address"],
                [cid(kid), "张伟", "13800000013", "x" * 200_000]]  # fmt: skip
        imp(_write(tmp_path / "huge.csv", huge))
    assert "field larger" in err.value.problems[0].reason
    assert _apps(session, coll) == before
    # record-level: bad check character, duplicate in the same file, a 20 KB name and a
    # 100 KB address; the good line still goes through
    good, dup = cid(kid), cid(kid)
    bad_check = dup[:17] + ("0" if dup[17] != "0" else "1")
    rows = [["citizen_id", "name", "phone", "address"],
            [good, "周杰", "13800000020", ""],
            [bad_check, "周杰伦", "13800000021", ""],
            [dup, "刘洋", "13800000022", ""],
            [dup, "刘洋", "13800000023", ""],
            [cid(kid), "名" * 20_000, "13800000024", ""],
            [cid(kid), "陈明", "13800000025", "路" * 100_000]]  # fmt: skip
    rep = imp(_write(tmp_path / "records.csv", rows))
    assert len(rep.accepted) == 2  # good + the first dup line
    by_line = {r.line: r.problems for r in rep.rejected}
    assert by_line[3][0].field == "citizen_id" and "check" in by_line[3][0].reason
    assert "in progress" in by_line[5][0].reason  # the same person twice
    assert by_line[6][0].field == "name" and by_line[7][0].field == "address"
    assert dup not in repr(rep) and good not in repr(rep)  # masked
    # re-import: no duplicates, nothing new
    again = imp(tmp_path / "records.csv")
    assert not again.accepted and len(again.duplicates) == 2


# --- a misbehaving card ------------------------------------------------------------------------
SERIAL = bytes.fromhex("0A1B2C3D4E5F6071")
PAN, PSN = "6217000012345678907", "01"


def _crypto() -> SoftwareCardCrypto:
    masters = {s: sha256(f"reliability:{s.value}".encode()).digest()[:16] for s in KeySlot}
    code = ids.make_card_identification_code("330182", SERIAL)
    return SoftwareCardCrypto(
        masters,
        (keyscheme.card_factor(code),),
        Algorithm.DES3,
        (keyscheme.emv_factor(PAN, PSN),),
        klk_master=sha256(b"reliability:klk").digest()[:16],
    )


def _perso_data() -> perso.CardPersoData:
    return perso.CardPersoData(
        card_identification_code=ids.make_card_identification_code("330182", SERIAL),
        card_number=ids.make_card_number("X0000002"),
        spec_version=DEFAULT_PROFILE.spec_version,
        issue_date=date(2024, 3, 1),
        expiry_date=date(2034, 3, 1),
        init_org_code="330100000001",
        holder=Holder("11010519491231002X", "张三", "2", "01", "110105", date(1949, 12, 31)),
        initial_pin="123456",
        bank_pin="802413",
        medical=MedicalData("310", "330182", "1", "11", date(2020, 1, 1)),
        pension=PensionData("1", "330182", date(2020, 1, 1), "11100"),
        financial=FinancialData(PAN, date(2034, 3, 31), PSN, "ZHANG SAN"),
    )


@dataclass
class Fault:
    """Corrupt the answer to the ``nth`` command with instruction ``ins`` (0 = every one)."""

    ins: int
    change: Callable[[bytes], bytes]
    nth: int = 0


class MisbehavingReader:
    """A :class:`cardspec.reader.Reader` in front of a real (emulated) card that corrupts
    chosen answers, as a worn contact, a broken chip or a hostile card would."""

    def __init__(self, inner: InProcessReader, fault: Fault) -> None:
        self.inner, self.fault, self.name = inner, fault, "misbehaving reader"
        self.seen: dict[int, int] = {}

    def connect(self) -> bytes:
        return self.inner.connect()

    def transmit(self, command: bytes) -> bytes:
        resp = self.inner.transmit(command)
        ins = command[1]
        self.seen[ins] = self.seen.get(ins, 0) + 1
        if ins == self.fault.ins and self.fault.nth in (0, self.seen[ins]):
            return self.fault.change(resp)
        return resp

    def disconnect(self) -> None:
        self.inner.disconnect()


def sw(code: int) -> Callable[[bytes], bytes]:
    return lambda _resp: code.to_bytes(2, "big")


def _cut_data(resp: bytes) -> bytes:  # half the data, status still 9000
    return resp[: (len(resp) - 2) // 2] + resp[-2:]


def _garbage_tlv(resp: bytes) -> bytes:  # a length byte running past the end
    return b"\x01\x7f\x41" + resp[-2:]


SELECT, READ, CHALLENGE, EXT_AUTH, UPDATE, WRITE = 0xA4, 0xB2, 0x84, 0x82, 0xDC, 0xD4

READ_FAULTS = [
    ("one-byte answer", Fault(SELECT, lambda r: r[:1]), ApduError),
    ("empty answer", Fault(READ, lambda r: b""), ApduError),
    ("application missing", Fault(SELECT, sw(0x6A82)), CardNotFoundError),
    ("record missing", Fault(READ, sw(0x6A83), nth=2), CardNotFoundError),
    ("security status", Fault(READ, sw(0x6982)), SecurityError),
    ("card locked", Fault(SELECT, sw(0x6985)), CardStateError),
    ("memory failure", Fault(READ, sw(0x6581)), CardError),
    ("truncated record", Fault(READ, _cut_data, nth=1), ResponseError),
    ("garbage TLV record", Fault(READ, _garbage_tlv, nth=3), ResponseError),
    ("garbage FCI", Fault(SELECT, lambda r: b"\x6f\x05\x9f\x0c" + r[-2:]), ResponseError),
    ("FCI without algorithm", Fault(SELECT, lambda r: b"\x6f\x00" + r[-2:]), ResponseError),
]

PERSO_FAULTS = [
    ("short challenge", Fault(CHALLENGE, lambda r: r[:4] + r[-2:]), ResponseError),
    ("challenge truncated", Fault(CHALLENGE, lambda r: r[:1]), ApduError),
    ("ext auth refused", Fault(EXT_AUTH, sw(0x6300)), SecurityError),
    ("no transport key", Fault(EXT_AUTH, sw(0x6A88)), CardStateError),
    ("write key refused", Fault(WRITE, sw(0x6982), nth=2), SecurityError),
    ("record write fails", Fault(UPDATE, sw(0x6581), nth=5), CardError),
    ("record not found", Fault(UPDATE, sw(0x6A83), nth=1), CardNotFoundError),
    ("FCI garbage", Fault(SELECT, _garbage_tlv, nth=1), ResponseError),
]


@pytest.mark.parametrize(("what", "fault", "error"), PERSO_FAULTS, ids=[f[0] for f in PERSO_FAULTS])
def test_personalisation_against_a_misbehaving_card(what, fault, error):
    crypto = _crypto()
    card = blank_card(
        SERIAL, crypto.card_key(KeySlot.KMC), Algorithm.DES3, klk=crypto.key_loading_key()
    )
    reader = MisbehavingReader(InProcessReader(card), fault)
    with pytest.raises(error) as err:
        perso.personalise(reader, crypto, _perso_data())
    assert type(err.value) is error or error is CardError, f"{what}: {err.value!r}"
    assert reader.seen.get(fault.ins), what  # the fault was actually hit


@pytest.fixture(scope="module")
def personalised() -> InProcessReader:
    crypto = _crypto()
    card = blank_card(
        SERIAL, crypto.card_key(KeySlot.KMC), Algorithm.DES3, klk=crypto.key_loading_key()
    )
    reader = InProcessReader(card)
    perso.personalise(reader, crypto, _perso_data())
    return reader


@pytest.mark.parametrize(("what", "fault", "error"), READ_FAULTS, ids=[f[0] for f in READ_FAULTS])
def test_terminal_read_of_a_misbehaving_card(what, fault, error, personalised):
    assert cardops.read_card_public(personalised).card_number  # the card itself is fine
    reader = MisbehavingReader(personalised, fault)
    with pytest.raises(error) as err:
        cardops.read_card_public(reader)
    assert type(err.value) is error or error is CardError, f"{what}: {err.value!r}"
    status = fault.change(b"\x90\x00")
    if len(status) == 2 and status != b"\x90\x00":  # a wrong status word: kept on the error
        assert err.value.sw == int.from_bytes(status, "big")


def test_internal_authenticate_with_bad_answers(personalised):
    reader = personalised
    public = cardops.read_card_public(reader)
    factor = keyscheme.card_factor(public.card_identification_code)
    for change, error in [
        (lambda r: r[:1], ApduError),
        (lambda r: r[:5] + r[-2:], ResponseError),
        (sw(0x6982), SecurityError),
    ]:
        bad = MisbehavingReader(reader, Fault(0x88, change))
        with pytest.raises(error):
            cardops.internal_authenticate(bad, factor, os.urandom(8))
    answer = cardops.internal_authenticate(reader, factor, rnd := os.urandom(8))
    with pytest.raises(SecurityError) as err:  # a copy with another key
        other = SoftwareCardCrypto({s: bytes(16) for s in KeySlot}, (factor,), Algorithm.DES3)
        cardops.check_internal_authenticate(other, factor, rnd, answer)
    assert err.value.sw == 0x6300
    cardops.check_internal_authenticate(_crypto(), factor, rnd, answer)
