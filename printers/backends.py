"""The printer adapter the settings choose: the file spool or a CUPS queue."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

from printers.cups import CupsPrinter
from printers.errors import SpoolError
from printers.spool import CardPrinter, DocumentPrinter, FileSpool


class PrinterSection(Protocol):
    """What the printers read of ``[printer]`` (:class:`issuance.settings.PrinterSettings`)."""

    @property
    def backend(self) -> Literal["file", "cups"]: ...
    @property
    def cups_server(self) -> str: ...
    @property
    def cups_queue(self) -> str: ...


class PrinterSettings(Protocol):
    """The frozen settings a printer is made from."""

    @property
    def printer(self) -> PrinterSection: ...
    @property
    def spool_dir(self) -> Path: ...


def make_printer(settings: PrinterSettings) -> CardPrinter:
    """The printer adapter chosen by ``settings.printer.backend``."""
    backend = settings.printer.backend
    if backend == "file":
        return FileSpool(settings.spool_dir)
    if backend == "cups":
        return CupsPrinter(settings.printer.cups_server, settings.printer.cups_queue)
    raise SpoolError(f"unknown printer backend {backend!r}")


def make_document_printer(
    backend: str, *, directory: Path, cups_server: str, cups_queue: str
) -> DocumentPrinter:
    """The printer of ready documents (PIN mailers) for ``[printer] backend``: an owner-only
    file spool ``directory`` or the CUPS queue ``cups_queue``."""
    if backend == "file":
        return FileSpool(directory)
    if backend == "cups":
        return CupsPrinter(cups_server, cups_queue)
    raise SpoolError(f"unknown printer backend {backend!r}")
