"""The printing port and the file-spool adapter.

``CardPrinter`` is what issuance calls: ``print_card(job_id, front, back) -> PrintResult``.
Adapters: :class:`FileSpool` (PNG + 2-page PDF per card in a directory; the default, also what
a card bureau's hot folder looks like) and :class:`printers.cups.CupsPrinter` (an IPP print
server). :func:`printers.backends.make_printer` picks one from ``settings.printer.backend``.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image

from printers.errors import SpoolError
from printers.layout import CARD_WIDTH_MM, MM_PER_INCH

_EPOCH_2000 = time.gmtime(946_684_800)
#: Fixed PDF dates: the same page gives the same PDF bytes.
EPOCH_2000 = _EPOCH_2000
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class PrintResult:
    """What a printer did with one card."""

    job_id: str
    backend: str
    #: Backend's own reference: spool file path or CUPS job id.
    reference: str
    #: "spooled", "pending", "processing", "completed".
    state: str
    files: tuple[Path, ...] = field(default=())
    #: True when the same job_id had already been printed/spooled (nothing was sent again).
    duplicate: bool = False


@runtime_checkable
class CardPrinter(Protocol):
    """Print one card: front and back images at the card's size."""

    def print_card(self, job_id: str, front: Image.Image, back: Image.Image) -> PrintResult: ...


@runtime_checkable
class DocumentPrinter(Protocol):
    """Print one ready PDF document (a PIN mailer): :meth:`FileSpool.print_document`,
    :meth:`printers.cups.CupsPrinter.print_document`."""

    def print_document(self, job_id: str, pdf: bytes) -> PrintResult: ...


def check_job_id(job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise SpoolError(f"invalid job id {job_id!r} (letters, digits, . _ - ; 1-128 chars)")
    return job_id


def card_pdf(front: Image.Image, back: Image.Image) -> bytes:
    """A 2-page PDF, each page exactly ID-1 (CR80) in size, front then back."""
    dpi = front.width * MM_PER_INCH / CARD_WIDTH_MM
    buf = io.BytesIO()
    front.convert("RGB").save(
        buf,
        "PDF",
        save_all=True,
        append_images=[back.convert("RGB")],
        resolution=dpi,
        title="card",
        creationDate=_EPOCH_2000,  # fixed dates: the same card gives the same PDF bytes
        modDate=_EPOCH_2000,
    )
    return buf.getvalue()


def page_size_pt(width_px: int, dpi: float) -> float:
    return width_px / dpi * 72.0


def _atomic_write(path: Path, data: bytes) -> None:
    # mkstemp creates the file owner-only (0600): a document with a secret is never readable
    # by others, not even while it is written
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FileSpool:
    """Writes ``<job>.front.png``, ``<job>.back.png`` and ``<job>.pdf`` atomically.

    The PDF is written last and is the commit point: a job whose PDF exists is complete, and
    printing the same job id again returns the existing files (``duplicate=True``).
    """

    backend = "file"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def paths(self, job_id: str) -> tuple[Path, Path, Path]:
        d = self.directory
        return d / f"{job_id}.front.png", d / f"{job_id}.back.png", d / f"{job_id}.pdf"

    def print_card(self, job_id: str, front: Image.Image, back: Image.Image) -> PrintResult:
        check_job_id(job_id)
        front_png, back_png, pdf = self.paths(job_id)
        files = (front_png, back_png, pdf)
        if pdf.exists():
            return PrintResult(job_id, self.backend, str(pdf), "spooled", files, duplicate=True)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for path, img in ((front_png, front), (back_png, back)):
                buf = io.BytesIO()
                img.convert("RGB").save(buf, "PNG")
                _atomic_write(path, buf.getvalue())
            _atomic_write(pdf, card_pdf(front, back))
        except OSError as exc:
            raise SpoolError(f"cannot write to the spool {self.directory}: {exc}") from exc
        return PrintResult(job_id, self.backend, str(pdf), "spooled", files)

    def print_document(self, job_id: str, pdf: bytes) -> PrintResult:
        """Spool a ready PDF as ``<job>.pdf``, owner-only (directory 0700, file 0600): PIN
        mailers. The same job id again returns the existing file (``duplicate=True``)."""
        check_job_id(job_id)
        path = self.directory / f"{job_id}.pdf"
        if path.exists():
            return PrintResult(job_id, self.backend, str(path), "spooled", (path,), duplicate=True)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.directory.chmod(0o700)
            _atomic_write(path, pdf)
        except OSError as exc:
            raise SpoolError(f"cannot write to the spool {self.directory}: {exc}") from exc
        return PrintResult(job_id, self.backend, str(path), "spooled", (path,))

    def status(self) -> dict[str, object]:
        """Jobs complete in the spool and leftovers of interrupted writes."""
        if not self.directory.exists():
            return {"directory": str(self.directory), "jobs": 0, "incomplete": 0, "bytes": 0}
        pdfs = sorted(self.directory.glob("*.pdf"))
        temps = list(self.directory.glob(".*.tmp"))
        fronts = {p.name[: -len(".front.png")] for p in self.directory.glob("*.front.png")}
        done = {p.stem for p in pdfs}
        size = sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())
        return {
            "directory": str(self.directory),
            "jobs": len(done),
            "incomplete": len(fronts - done) + len(temps),
            "bytes": size,
            "latest": pdfs[-1].stem if pdfs else None,
        }


def describe(result: PrintResult) -> str:
    return json.dumps(
        {
            "job_id": result.job_id,
            "backend": result.backend,
            "reference": result.reference,
            "state": result.state,
            "duplicate": result.duplicate,
        },
        ensure_ascii=False,
    )
