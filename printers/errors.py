"""Exceptions of the printers package.

PrinterError               root; ``ipp_status`` keeps the raw IPP status code when there is one
├── FontMissing            no CJK font to render the card face
├── PrinterUnavailable     the print server cannot be reached or refused the connection
├── PrinterNotFound        the queue does not exist on the server (IPP client-error-not-found)
├── JobRejected            the server refused the job (not accepting, bad document, ...)
├── JobFailed              the job was aborted or cancelled after being accepted
└── SpoolError             the file spool could not write a job
"""

from __future__ import annotations

from typing import Any


class PrinterError(Exception):
    """Root of every error raised by the printers package."""

    code = "printer_error"

    def __init__(self, message: str, *, ipp_status: int | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.ipp_status = ipp_status
        self.details = details


class FontMissing(PrinterError):
    code = "font_missing"


class PrinterUnavailable(PrinterError):
    code = "printer_unavailable"


class PrinterNotFound(PrinterError):
    code = "printer_not_found"


class JobRejected(PrinterError):
    code = "job_rejected"


class JobFailed(PrinterError):
    code = "job_failed"


class SpoolError(PrinterError):
    code = "spool_error"
