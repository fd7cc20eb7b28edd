"""Where an isolated virtual reader stack keeps its files, and its pcscd reader configuration.

Design notes: ``docs/design/readers.md`` (section ``readers.virtual.layout``).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: vpcd's driver as packaged by Debian (``dpkg -L vsmartcard-vpcd``).
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
#: First vpcd port (0x8C7B, vpcd's default); slot i uses FIRST_PORT + i.
FIRST_PORT = 0x8C7B
#: pcscd's limit (PCSCLITE_MAX_READERS_CONTEXTS).
MAX_READERS = 16
#: sockaddr_un.sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def short_run_dir(preferred: Path) -> Path:
    """``preferred`` when pcscd's client socket under it fits a unix socket address; otherwise
    (a deep data directory) a short directory in the system temp dir named after the hash of
    ``preferred``, so that two data directories never share one."""
    if len(str((preferred / "pcscd" / "pcscd.comm").resolve()).encode()) <= 100:
        return preferred
    tag = hashlib.sha256(str(preferred.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"ykt-{tag}"


@dataclass(frozen=True)
class StackLayout:
    run_dir: Path
    readers: int
    #: where pcscd.log and server.log go (default: run_dir)
    log_dir: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.readers <= MAX_READERS:
            raise ValueError(
                f"readers must be 1..{MAX_READERS} (pcscd's limit), not {self.readers}"
            )

    @property
    def entries(self) -> int:
        """reader.conf entries (each gives two readers)."""
        return (self.readers + 1) // 2

    @property
    def conf_dir(self) -> Path:
        return self.run_dir / "reader.conf.d"

    @property
    def drivers_dir(self) -> Path:
        return self.run_dir / "drivers"

    @property
    def pcscd_dir(self) -> Path:
        return self.run_dir / "pcscd"

    @property
    def csock(self) -> Path:
        return self.pcscd_dir / "pcscd.comm"

    @property
    def control_sock(self) -> Path:
        return self.run_dir / "control.sock"

    @property
    def pcscd_log(self) -> Path:
        return (self.log_dir or self.run_dir) / "pcscd.log"

    @property
    def server_log(self) -> Path:
        return (self.log_dir or self.run_dir) / "server.log"

    def port(self, slot: int) -> int:
        return FIRST_PORT + slot

    def ports(self) -> list[int]:
        return [self.port(i) for i in range(self.readers)]

    def reader_name(self, slot: int) -> str:
        return f"Virtual PCD {slot // 2} 00 {slot % 2:02X}"

    def reader_names(self) -> list[str]:
        """Reader names of the stack's slots, in slot order."""
        return [self.reader_name(i) for i in range(self.readers)]

    def check_socket_paths(self) -> None:
        for path in (self.csock, self.control_sock):
            if len(str(path).encode()) > _MAX_SOCKET_PATH:
                raise ValueError(
                    f"socket path too long for a unix socket ({len(str(path))} bytes): {path}; "
                    "use a shorter run directory"
                )

    def write_config(self, driver: Path = VPCD_DRIVER) -> None:
        """Write reader.conf.d and the driver copies (idempotent)."""
        self.check_socket_paths()
        if not driver.exists():
            raise FileNotFoundError(f"vpcd driver not found: {driver} (install vsmartcard-vpcd)")
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.drivers_dir.mkdir(parents=True, exist_ok=True)
        self.pcscd_dir.mkdir(parents=True, exist_ok=True)
        for old in self.conf_dir.iterdir():
            old.unlink()
        for entry in range(self.entries):
            if entry == 0:
                libpath = driver
            else:
                libpath = self.drivers_dir / f"libifdvpcd-{entry}.so"
                if not libpath.exists():
                    shutil.copyfile(driver.resolve(), libpath)
            channel = FIRST_PORT + 2 * entry
            (self.conf_dir / f"vpcd-{entry}").write_text(
                f'FRIENDLYNAME "Virtual PCD {entry}"\n'
                f"DEVICENAME   /dev/null:0x{channel:04X}\n"
                f"LIBPATH      {libpath}\n"
                f"CHANNELID    0x{channel:04X}\n"
            )
