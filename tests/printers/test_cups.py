"""A real cupsd (started here): a card job goes through the filter chain to the backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfReader

from devstack.cupsd import TemporaryCups, free_port
from printers.cups import CupsPrinter
from printers.errors import PrinterNotFound, PrinterUnavailable
from printers.faces import CardFace, render_back, render_front

pytestmark = pytest.mark.cups

CR80_PT = (85.60 / 25.4 * 72, 53.98 / 25.4 * 72)


@pytest.fixture(scope="module")
def cupsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporaryCups]:
    with TemporaryCups(tmp_path_factory.mktemp("cups")) as server:
        yield server


def test_card_job_reaches_the_backend_as_two_cr80_pages(
    cupsd: TemporaryCups, face: CardFace
) -> None:
    printer = CupsPrinter(cupsd.server, cupsd.queue, wait=True, timeout_s=30)
    result = printer.print_card("cups-card-1", render_front(face), render_back(face))
    assert result.state == "completed" and result.reference.isdigit()
    captured = cupsd.capture_dir / f"job-{result.reference}.pdf"
    assert captured.exists(), cupsd.captured()
    reader = PdfReader(captured)
    assert len(reader.pages) == 2
    for page in reader.pages:
        assert abs(float(page.mediabox.width) - CR80_PT[0]) <= 1
        assert abs(float(page.mediabox.height) - CR80_PT[1]) <= 1
    # the same job id is not printed twice
    again = printer.print_card("cups-card-1", render_front(face), render_back(face))
    assert again.duplicate and again.reference == result.reference
    status = printer.queue_status()
    assert status["accepting"] is True and status["queue"] == cupsd.queue


def test_tcp_listener_works_too(cupsd: TemporaryCups) -> None:
    img = Image.new("RGB", (1011, 638), "white")
    printer = CupsPrinter(f"127.0.0.1:{cupsd.port}", cupsd.queue, wait=True, timeout_s=30)
    assert printer.print_card("cups-tcp-1", img, img).state == "completed"


def test_missing_queue_is_printer_not_found(cupsd: TemporaryCups) -> None:
    img = Image.new("RGB", (1011, 638), "white")
    with pytest.raises(PrinterNotFound) as info:
        CupsPrinter(cupsd.server, "no-such-queue").print_card("cups-missing", img, img)
    assert info.value.ipp_status == 0x0406


def test_unreachable_server_is_unavailable(tmp_path: Path) -> None:
    img = Image.new("RGB", (1011, 638), "white")
    with pytest.raises(PrinterUnavailable):
        CupsPrinter(f"127.0.0.1:{free_port()}", "cards").print_card("cups-down", img, img)
