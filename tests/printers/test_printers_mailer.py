"""The PIN mailer's printers: the owner-only file spool and a real CUPS server (its job
files not kept once printed); the page keeps the PINs inside the tear-off strip."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pypdf import PdfReader

from devstack.cupsd import TemporaryCups
from printers.backends import make_document_printer
from printers.cups import CupsPrinter
from printers.mailer import MailerText, mailer_pdf, mask_card_number, render_pin_mailer
from printers.spool import FileSpool

TEXT = MailerText(
    issuer="杭州市人力资源和社会保障局", holder_name="陈建国",
    address="浙江省杭州市西湖区北山街道1号",
    card_number_masked=mask_card_number("A00000011"), reference="pin-mailer-1",
    pins=(("社保密码 social security PIN", "480159"), ("金融密码 bank PIN", "730264")),
)  # fmt: skip


def test_layout_and_repr_keep_the_pins_in_their_place() -> None:
    assert mask_card_number("A00000011") == "A0****011"
    page = render_pin_mailer(TEXT)
    left, top, right, bottom = page.tear_off
    assert top > page.image.height // 2  # the strip is the foot of the page
    assert len(page.pin_boxes) == 2
    for box in page.pin_boxes:
        assert left <= box[0] < box[2] <= right and top <= box[1] < box[3] <= bottom
    assert "480159" not in repr(TEXT) and "730264" not in repr(TEXT)
    assert mailer_pdf(page) == mailer_pdf(render_pin_mailer(TEXT))  # same mailer, same bytes


def test_file_spool_is_owner_only_and_idempotent(tmp_path: Path) -> None:
    printer = make_document_printer("file", directory=tmp_path / "mailers", cups_server="",
                                    cups_queue="")  # fmt: skip
    assert isinstance(printer, FileSpool)
    pdf = mailer_pdf(render_pin_mailer(TEXT))
    first = printer.print_document("pin-mailer-1", pdf)
    path = Path(first.reference)
    assert path.read_bytes() == pdf and not first.duplicate
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = printer.print_document("pin-mailer-1", b"%PDF- other")
    assert again.duplicate and path.read_bytes() == pdf
    assert not list(path.parent.glob(".*.tmp"))


@pytest.fixture(scope="module")
def cupsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporaryCups]:
    with TemporaryCups(tmp_path_factory.mktemp("cups-mailer")) as server:
        yield server


def test_cups_prints_the_mailer_and_keeps_no_job_file(cupsd: TemporaryCups) -> None:
    printer = make_document_printer("cups", directory=Path("/nonexistent"),
                                    cups_server=cupsd.server, cups_queue=cupsd.queue)  # fmt: skip
    assert isinstance(printer, CupsPrinter)
    printer.wait, printer.timeout_s = True, 30
    result = printer.print_document("pin-mailer-cups-1", mailer_pdf(render_pin_mailer(TEXT)))
    assert result.state == "completed" and result.reference.isdigit()
    captured = cupsd.capture_dir / f"job-{result.reference}.pdf"
    assert captured.exists(), cupsd.captured()
    assert len(PdfReader(captured).pages) == 1
    # printed: the server keeps no copy of the document (PreserveJobFiles No)
    assert not [p for p in (cupsd.root / "spool").rglob("d*") if p.is_file()]
    again = printer.print_document("pin-mailer-cups-1", b"%PDF- other")
    assert again.duplicate and again.reference == result.reference
