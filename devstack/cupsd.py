"""``TemporaryCups``: a private, real CUPS scheduler with a card queue.

Design notes: ``docs/design/printers.md`` (section ``devstack.cupsd``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from printers.errors import PrinterUnavailable

CUPS_LIB = Path("/usr/lib/cups")
CUPSD = "/usr/sbin/cupsd"

PPD_TEMPLATE = """*PPD-Adobe: "4.3"
*FormatVersion: "4.3"
*FileVersion: "1.0"
*LanguageVersion: English
*LanguageEncoding: ISOLatin1
*PCFileName: "YKTCARD.PPD"
*Manufacturer: "Yikatong"
*Product: "(Yikatong Card Printer)"
*ModelName: "Yikatong Card Printer"
*ShortNickName: "Yikatong Card Printer"
*NickName: "Yikatong Card Printer, PDF"
*PSVersion: "(3010.000) 0"
*LanguageLevel: "3"
*ColorDevice: True
*DefaultColorSpace: RGB
*FileSystem: False
*Throughput: "1"
*LandscapeOrientation: Plus90
*TTRasterizer: Type42
*cupsVersion: 2.4
*cupsFilter: "application/vnd.cups-pdf 0 -"
*OpenUI *PageSize/Media Size: PickOne
*OrderDependency: 10 AnySetup *PageSize
*DefaultPageSize: CR80
*PageSize CR80/CR80 ID-1 card: "<</PageSize[243 153]/ImagingBBox null>>setpagedevice"
*CloseUI: *PageSize
*OpenUI *PageRegion: PickOne
*OrderDependency: 10 AnySetup *PageRegion
*DefaultPageRegion: CR80
*PageRegion CR80/CR80 ID-1 card: "<</PageSize[243 153]/ImagingBBox null>>setpagedevice"
*CloseUI: *PageRegion
*DefaultImageableArea: CR80
*ImageableArea CR80/CR80 ID-1 card: "0 0 243 153"
*DefaultPaperDimension: CR80
*PaperDimension CR80/CR80 ID-1 card: "243 153"
"""

CAPTURE_BACKEND = """#!/bin/sh
# Yikatong capture backend: writes the job's document to the directory of its device URI
# (capture:/some/dir) as job-<id>.pdf, atomically.
if [ $# -eq 0 ]; then
  echo 'direct capture "Unknown" "Yikatong capture backend"'
  exit 0
fi
dir="${DEVICE_URI#capture:}"
out="$dir/job-$1.pdf"
tmp="$dir/.job-$1.tmp"
if [ $# -ge 6 ]; then cat "$6" > "$tmp" || exit 1; else cat > "$tmp" || exit 1; fi
mv "$tmp" "$out" || exit 1
echo "INFO: captured $out" >&2
exit 0
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable_by_others(path: Path) -> bool:
    """True if every directory from / to ``path`` is searchable by other users."""
    for p in [path, *path.parents]:
        try:
            if not p.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


class TemporaryCups:
    """A private cupsd with one card queue; use as a context manager."""

    def __init__(
        self, base_dir: Path, queue: str = "yikatong-cards", start_timeout_s: float = 10.0
    ):
        self.base_dir = Path(base_dir)
        self.queue = queue
        self.start_timeout_s = start_timeout_s
        self.root: Path | None = None
        self.port = 0
        self._owned_root = False
        self._proc: subprocess.Popen[bytes] | None = None

    # --- locations ---
    @property
    def _r(self) -> Path:
        if self.root is None:
            raise PrinterUnavailable("TemporaryCups is not started")
        return self.root

    @property
    def socket_path(self) -> Path:
        return self._r / "cups.sock"

    @property
    def server(self) -> str:
        """What ``CupsPrinter`` / ``CUPS_SERVER`` take: the domain socket."""
        return str(self.socket_path)

    @property
    def capture_dir(self) -> Path:
        return self._r / "capture"

    @property
    def error_log(self) -> Path:
        return self._r / "log" / "error_log"

    def captured(self) -> list[Path]:
        return sorted(self.capture_dir.glob("job-*.pdf"))

    # --- lifecycle ---
    def __enter__(self) -> TemporaryCups:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _make_root(self) -> Path:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if _reachable_by_others(self.base_dir):
            root = Path(tempfile.mkdtemp(prefix="cups-", dir=self.base_dir))
        else:
            root = Path(tempfile.mkdtemp(prefix="ykt-cups-"))
            self._owned_root = True
        root.chmod(0o755)
        return root

    def _write_config(self, root: Path) -> None:
        for sub in (
            "etc",
            "etc/ppd",
            "spool",
            "cache",
            "state",
            "tmp",
            "log",
            "capture",
            "serverbin",
            "serverbin/backend",
        ):
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub).chmod(0o755)
        (root / "tmp").chmod(0o1777)
        sb = root / "serverbin"
        for entry in CUPS_LIB.iterdir():
            if entry.name != "backend":
                (sb / entry.name).symlink_to(entry)
        for backend in (CUPS_LIB / "backend").iterdir():
            (sb / "backend" / backend.name).symlink_to(backend)
        capture = sb / "backend" / "capture"
        capture.write_text(CAPTURE_BACKEND)
        os.chown(capture, 0, 0)
        capture.chmod(0o700)  # root-owned, 0700: cupsd runs it as root
        (root / "card.ppd").write_text(PPD_TEMPLATE)
        (root / "cups-files.conf").write_text(
            f"""ServerRoot {root}/etc
RequestRoot {root}/spool
CacheDir {root}/cache
StateDir {root}/state
TempDir {root}/tmp
ServerBin {sb}
AccessLog {root}/log/access_log
ErrorLog {root}/log/error_log
PageLog {root}/log/page_log
Printcap {root}/printcap
FileDevice Yes
User lp
Group lp
SystemGroup root
"""
        )
        (root / "cupsd.conf").write_text(
            f"""LogLevel info
Listen 127.0.0.1:{self.port}
Listen {root}/cups.sock
Browsing No
BrowseLocalProtocols none
WebInterface No
DefaultAuthType None
DefaultEncryption Never
PreserveJobHistory Yes
PreserveJobFiles No
MaxJobs 0
<Location />
  Order allow,deny
  Allow all
</Location>
<Policy default>
  JobPrivateAccess all
  JobPrivateValues none
  SubscriptionPrivateAccess all
  SubscriptionPrivateValues none
  <Limit All>
    Order deny,allow
  </Limit>
</Policy>
"""
        )

    def start(self) -> None:
        if os.geteuid() != 0:
            raise PrinterUnavailable("TemporaryCups needs root (cupsd checks file ownership)")
        if not Path(CUPSD).exists():
            raise PrinterUnavailable(f"{CUPSD} not found: install Debian's cups-daemon")
        self.root = self._make_root()
        self.port = free_port()
        self._write_config(self.root)
        log = (self.root / "log" / "cupsd.out").open("wb")
        self._proc = subprocess.Popen(
            [
                CUPSD,
                "-f",
                "-c",
                str(self.root / "cupsd.conf"),
                "-s",
                str(self.root / "cups-files.conf"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        try:
            self._wait_ready()
            self._add_queue()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrinterUnavailable(
                    f"cupsd exited with {self._proc.returncode}: {self._log_tail()}"
                )
            if self.socket_path.exists():
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), 0.2),
                ):
                    return
            time.sleep(0.02)
        raise PrinterUnavailable(
            f"cupsd not ready after {self.start_timeout_s}s: {self._log_tail()}"
        )

    def _add_queue(self) -> None:
        import cups

        conn = cups.Connection(host=str(self.socket_path), port=0)
        conn.addPrinter(
            self.queue,
            filename=str(self._r / "card.ppd"),
            device=f"capture:{self.capture_dir}",
            info="Yikatong card printer (capture)",
        )
        conn.enablePrinter(self.queue)
        conn.acceptJobs(self.queue)

    def _log_tail(self) -> str:
        texts = []
        for p in (self._r / "log" / "cupsd.out", self.error_log):
            with contextlib.suppress(OSError):
                texts.append(p.read_text(errors="replace")[-1500:])
        return " | ".join(t for t in texts if t)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._owned_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
