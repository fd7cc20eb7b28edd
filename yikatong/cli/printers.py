"""``ykt print ...``: card faces and print spoolers."""

from __future__ import annotations

import json
import tempfile
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="Card faces and print spoolers.")
out = Console()

SAMPLE_PHOTO = (
    Path(__file__).resolve().parent.parent
    / "issuance"
    / "sample_data"
    / "photos"
    / "resident-01.jpg"
)


def sample_face(photo: Path | None = None) -> object:
    """A fictional holder's card face, with a processed sample photo."""
    from issuance.photos import process_photo
    from printers.faces import CardFace
    from yikatong.settings import get_settings

    settings = get_settings()
    processed = process_photo((photo or SAMPLE_PHOTO).read_bytes(), settings.photos)
    return CardFace(
        name="张晓明",
        ssn="33010619900101123X",
        card_number="A00000019",
        issue_date=date.today(),
        photo_jpeg=processed.jpeg,
        issuer_name=settings.issuer.name,
        bank_name=settings.issuer.bank_name,
        region="杭州市西湖区",
    )


@app.command("sample")
def sample(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for front/back PNG and the PDF.")
    ],
    photo: Annotated[
        Path | None, typer.Option(help="Photo file (default: a sample resident).")
    ] = None,
    dpi: Annotated[int, typer.Option(help="Resolution of the rendering.")] = 300,
) -> None:
    """Render a sample card face (front, back, 2-page PDF) from the demo photos."""
    from printers.faces import CardFace, render_back, render_front
    from printers.spool import FileSpool

    face = sample_face(photo)
    assert isinstance(face, CardFace)
    result = FileSpool(out_dir).print_card(
        f"sample-{date.today():%Y%m%d}", render_front(face, dpi), render_back(face, dpi)
    )
    for f in result.files:
        out.print(str(f))


@app.command("spool-status")
def spool_status() -> None:
    """Jobs in the file spool (backend = file) or the CUPS queue (backend = cups)."""
    from printers.spool import FileSpool
    from yikatong.settings import get_settings

    settings = get_settings()
    if settings.printer.backend == "file":
        out.print_json(json.dumps(FileSpool(settings.spool_dir).status()))
        return
    from printers.cups import CupsPrinter

    printer = CupsPrinter(settings.printer.cups_server, settings.printer.cups_queue)
    out.print_json(json.dumps(printer.queue_status()))


@app.command("cups-test")
def cups_test(
    keep: Annotated[Path | None, typer.Option(help="Copy the captured PDF here.")] = None,
) -> None:
    """Start a private cupsd with a card queue, print the sample card, check what arrived."""
    from devstack.cupsd import TemporaryCups
    from printers.cups import CupsPrinter
    from printers.faces import CardFace, render_back, render_front

    face = sample_face()
    assert isinstance(face, CardFace)
    with (
        tempfile.TemporaryDirectory(prefix="ykt-cups-test-") as tmp,
        TemporaryCups(Path(tmp)) as cupsd,
    ):
        printer = CupsPrinter(cupsd.server, cupsd.queue, wait=True, timeout_s=30)
        result = printer.print_card("cups-test", render_front(face), render_back(face))
        files = cupsd.captured()
        out.print(f"CUPS job {result.reference}: {result.state}; captured {len(files)} file(s)")
        for f in files:
            data = f.read_bytes()
            out.print(f"  {f.name}: {len(data)} bytes, PDF={data.startswith(b'%PDF')}")
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f.name).write_bytes(data)
        if result.state != "completed" or not files:
            raise typer.Exit(1)
