"""The CUPS adapter: send each card as a 2-page CR80 PDF to an IPP queue (pycups/libcups).

``CupsPrinter(server, queue)``: ``server`` is ``host:port``, ``host`` (port 631) or the path of a
CUPS domain socket; empty = libcups' default (``CUPS_SERVER`` or the local scheduler). The job
title is the job id, which makes printing idempotent: a job id this printer already sent, or one
still queued on the server (pending, held, processing), is not sent twice. Duplicate detection
is cheap: an in-process map of the jobs sent plus one ``Get-Jobs`` of the *not completed* jobs
(a queue holds a few), never the server's whole job history. ``wait=True`` (or
:meth:`CupsPrinter.wait_for`) follows a job until the printer reports it completed: the batch
pipeline counts a card printed only then. CUPS/IPP failures are translated into
:mod:`printers.errors` with the raw IPP status kept in ``ipp_status``.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Any

from PIL import Image

from printers.errors import (
    JobFailed,
    JobRejected,
    PrinterError,
    PrinterNotFound,
    PrinterUnavailable,
)
from printers.spool import PrintResult, card_pdf, check_job_id

try:  # pycups is a C extension: keep the import error readable
    import cups
except ImportError as _exc:  # pragma: no cover - depends on the machine
    cups = None
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None

#: IPP job-state values (RFC 8011 section 5.3.7).
JOB_STATES = {
    3: "pending",
    4: "held",
    5: "processing",
    6: "stopped",
    7: "canceled",
    8: "aborted",
    9: "completed",
}

_lock = threading.Lock()  # libcups' connection objects are not shared between threads


def map_cups_error(exc: BaseException, queue: str) -> PrinterError:
    """Translate a pycups exception into the printers error tree."""
    if cups is not None and isinstance(exc, cups.IPPError):
        status, message = exc.args[0], (exc.args[1] if len(exc.args) > 1 else "")
        if status == cups.IPP_NOT_FOUND:
            return PrinterNotFound(f"no print queue {queue!r}: {message}", ipp_status=status)
        if status in (
            cups.IPP_NOT_ACCEPTING,
            cups.IPP_NOT_POSSIBLE,
            cups.IPP_FORBIDDEN,
            cups.IPP_NOT_AUTHORIZED,
            cups.IPP_NOT_AUTHENTICATED,
        ):
            return JobRejected(f"queue {queue!r} refused the job: {message}", ipp_status=status)
        if status == cups.IPP_SERVICE_UNAVAILABLE:
            return PrinterUnavailable(f"print server unavailable: {message}", ipp_status=status)
        return PrinterError(f"IPP error 0x{status:04x} on {queue!r}: {message}", ipp_status=status)
    if cups is not None and isinstance(exc, cups.HTTPError):
        return PrinterUnavailable(f"HTTP error {exc.args[0]} talking to the print server")
    return PrinterUnavailable(f"cannot reach the print server: {exc}")


class CupsPrinter:
    """Prints cards through a CUPS queue."""

    backend = "cups"

    def __init__(
        self,
        server: str,
        queue: str,
        *,
        wait: bool = False,
        timeout_s: float = 60.0,
        options: dict[str, str] | None = None,
    ) -> None:
        if cups is None:
            raise PrinterUnavailable(f"pycups is not installed: {_IMPORT_ERROR}")
        self.server = server
        self.queue = queue
        self.wait = wait
        self.timeout_s = timeout_s
        self.options = {"media": "CR80", "PageSize": "CR80", **(options or {})}
        #: job id -> CUPS job id of the jobs this printer sent
        self._sent: dict[str, int] = {}

    def _connect(self) -> Any:
        assert cups is not None
        server = self.server or cups.getServer()
        if server.startswith("/"):
            host, port = server, 0
        elif ":" in server and not server.startswith("["):
            host, _, p = server.rpartition(":")
            port = int(p)
        else:
            host, port = server, 631
        # libcups' cupsPrintFile2 looks the destination up on the *default* server, not on the
        # connection it was given: point the (process-wide) defaults at the same server, under
        # the module lock that every call here holds.
        cups.setServer(host)
        if port:
            cups.setPort(port)
        try:
            return cups.Connection(host=host, port=port)
        except RuntimeError as exc:
            raise PrinterUnavailable(
                f"cannot connect to the print server {server!r}: {exc}"
            ) from exc

    def _existing(self, conn: Any, job_id: str) -> int | None:
        """A job with this id sent by this printer, or still queued on the server."""
        known = self._sent.get(job_id)
        if known is not None:
            return known
        jobs = conn.getJobs(which_jobs="not-completed", requested_attributes=["job-id", "job-name"])
        for jid, attrs in jobs.items():
            if attrs.get("job-name") == job_id:
                return int(jid)
        return None

    def print_card(self, job_id: str, front: Image.Image, back: Image.Image) -> PrintResult:
        check_job_id(job_id)
        return self._send(job_id, card_pdf(front, back), self.options)

    def print_document(self, job_id: str, pdf: bytes) -> PrintResult:
        """Print a ready PDF (a PIN mailer) on this queue with the queue's own media (not the
        card's CR80). The PDF goes through an owner-only temporary file, removed once CUPS has
        it; the server removes its own copy after printing when its ``cupsd.conf`` says
        ``PreserveJobFiles No`` (CUPS keeps job files a day by default)."""
        check_job_id(job_id)
        options = {k: v for k, v in self.options.items() if k not in ("media", "PageSize")}
        return self._send(job_id, pdf, options)

    def _send(self, job_id: str, pdf: bytes, options: dict[str, str]) -> PrintResult:
        """Send ``pdf`` as job ``job_id`` once (a job of that name already sent or queued is
        answered as a duplicate), then wait for it if the printer waits."""
        with _lock:
            conn = self._connect()
            try:
                self._check_queue(conn)
                existing = self._existing(conn, job_id)
                if existing is not None:
                    state = self._state(conn, existing)
                    return PrintResult(job_id, self.backend, str(existing), state, duplicate=True)
                with tempfile.NamedTemporaryFile(suffix=".pdf", delete=False) as fh:
                    fh.write(pdf)
                    path = fh.name
                try:
                    cups_id = int(conn.printFile(self.queue, path, job_id, options))
                finally:
                    os.unlink(path)
                self._sent[job_id] = cups_id
                state = self._state(conn, cups_id)
            except PrinterError:
                raise
            except Exception as exc:
                if cups is not None and isinstance(
                    exc, cups.IPPError | cups.HTTPError | RuntimeError
                ):
                    raise map_cups_error(exc, self.queue) from exc
                raise
        if self.wait:
            state = self.wait_for(cups_id)
        return PrintResult(job_id, self.backend, str(cups_id), state)

    def _check_queue(self, conn: Any) -> None:
        """Raise PrinterNotFound / JobRejected before sending anything."""
        attrs = conn.getPrinterAttributes(
            self.queue, requested_attributes=["printer-is-accepting-jobs", "printer-state"]
        )
        if not attrs.get("printer-is-accepting-jobs", True):
            raise JobRejected(
                f"queue {self.queue!r} is not accepting jobs",
                ipp_status=cups.IPP_NOT_ACCEPTING if cups else None,
            )

    def _state(self, conn: Any, cups_id: int) -> str:
        attrs = conn.getJobAttributes(cups_id, requested_attributes=["job-state"])
        return JOB_STATES.get(int(attrs.get("job-state", 0)), "unknown")

    def job_state(self, cups_id: int) -> str:
        with _lock:
            conn = self._connect()
            try:
                return self._state(conn, cups_id)
            except Exception as exc:
                if cups is not None and isinstance(exc, cups.IPPError | cups.HTTPError):
                    raise map_cups_error(exc, self.queue) from exc
                raise

    def queue_status(self) -> dict[str, object]:
        """The queue's state and its not-yet-completed jobs."""
        with _lock:
            conn = self._connect()
            try:
                attrs = conn.getPrinterAttributes(
                    self.queue,
                    requested_attributes=[
                        "printer-state",
                        "printer-is-accepting-jobs",
                        "printer-state-message",
                        "queued-job-count",
                    ],
                )
                jobs = conn.getJobs(
                    which_jobs="not-completed",
                    requested_attributes=["job-id", "job-name", "job-state"],
                )
            except Exception as exc:
                if cups is not None and isinstance(exc, cups.IPPError | cups.HTTPError):
                    raise map_cups_error(exc, self.queue) from exc
                raise
        return {
            "server": self.server,
            "queue": self.queue,
            "state": {3: "idle", 4: "processing", 5: "stopped"}.get(
                int(attrs.get("printer-state", 0)), "unknown"
            ),
            "accepting": bool(attrs.get("printer-is-accepting-jobs", False)),
            "message": attrs.get("printer-state-message", ""),
            "jobs": [
                {
                    "cups_id": int(j),
                    "job_id": a.get("job-name"),
                    "state": JOB_STATES.get(int(a.get("job-state", 0)), "unknown"),
                }
                for j, a in sorted(jobs.items())
            ],
        }

    def wait_for(self, cups_id: int, timeout_s: float | None = None) -> str:
        """Poll until the job completes; raise JobFailed if aborted/cancelled or on timeout."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        delay = 0.02
        while True:
            state = self.job_state(cups_id)
            if state == "completed":
                return state
            if state in ("canceled", "aborted", "stopped"):
                raise JobFailed(f"CUPS job {cups_id} on {self.queue!r} ended {state}")
            if time.monotonic() > deadline:
                raise JobFailed(f"CUPS job {cups_id} on {self.queue!r} still {state} after timeout")
            time.sleep(delay)
            delay = min(0.25, delay * 1.5)
