"""FileSpool and the printer factory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfReader

from printers.backends import make_printer
from printers.errors import SpoolError
from printers.faces import CardFace, render_back, render_front
from printers.spool import CardPrinter, FileSpool, card_pdf
from yikatong.settings import Settings, load_settings

CR80_PT = (85.60 / 25.4 * 72, 53.98 / 25.4 * 72)


def test_file_spool_writes_png_and_two_page_cr80_pdf(tmp_path: Path, face: CardFace) -> None:
    spool = FileSpool(tmp_path / "spool")
    assert isinstance(spool, CardPrinter)
    result = spool.print_card("card-0001", render_front(face), render_back(face))
    assert result.state == "spooled" and not result.duplicate
    front_png, back_png, pdf = spool.paths("card-0001")
    assert set(result.files) == {front_png, back_png, pdf}
    assert Image.open(front_png).size == (1011, 638)
    assert Image.open(back_png).format == "PNG"
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    reader = PdfReader(pdf)
    assert len(reader.pages) == 2
    for page in reader.pages:
        assert abs(float(page.mediabox.width) - CR80_PT[0]) < 1
        assert abs(float(page.mediabox.height) - CR80_PT[1]) < 1
    assert not list((tmp_path / "spool").glob(".*.tmp"))


def test_file_spool_is_idempotent(tmp_path: Path, face: CardFace) -> None:
    spool = FileSpool(tmp_path)
    front, back = render_front(face), render_back(face)
    first = spool.print_card("job-7", front, back)
    mtime = first.files[2].stat().st_mtime_ns
    again = spool.print_card("job-7", front, back)
    assert again.duplicate and again.reference == first.reference
    assert first.files[2].stat().st_mtime_ns == mtime
    assert spool.status()["jobs"] == 1


def test_invalid_job_id_and_unwritable_spool(tmp_path: Path, face: CardFace) -> None:
    img = Image.new("RGB", (1011, 638), "white")
    with pytest.raises(SpoolError):
        FileSpool(tmp_path).print_card("../evil", img, img)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpoolError):
        FileSpool(blocker / "sub").print_card("job", img, img)


def test_pdf_is_deterministic() -> None:
    img = Image.new("RGB", (1011, 638), (200, 10, 10))
    a, b = card_pdf(img, img), card_pdf(img, img)
    assert a == b
    assert len(re.findall(rb"/Type\s*/Page\b", a)) == 2


def test_make_printer_follows_settings(tmp_path: Path, settings: Settings) -> None:
    printer = make_printer(settings)
    assert isinstance(printer, FileSpool) and printer.directory == settings.spool_dir
    from printers.cups import CupsPrinter

    cups_settings = load_settings(
        environ={
            "YKT_DATA_DIR": str(tmp_path),
            "YKT_PRINTER__BACKEND": "cups",
            "YKT_PRINTER__CUPS_SERVER": "127.0.0.1:1",
            "YKT_PRINTER__CUPS_QUEUE": "cards",
        }
    )
    cp = make_printer(cups_settings)
    assert isinstance(cp, CupsPrinter) and cp.queue == "cards"
