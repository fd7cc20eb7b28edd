"""An isolated pcscd with vpcd readers and emulated cards behind them.

Design notes: ``docs/design/readers.md`` (section ``readers.virtual.pcscd``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from readers.pcsc import CSOCK_ENV, PcscError
from readers.virtual.layout import VPCD_DRIVER, StackLayout

#: The default card: the project's emulator, loaded from a JSON card image.
DEFAULT_CARD_FACTORY = "cardspec.emulator:Card.load"
PCSCD = Path("/usr/sbin/pcscd")
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class VirtualReaderError(PcscError):
    """The virtual reader stack failed to start, or its control channel refused a request.

    ``log`` names the log to read (pcscd's or the card server's).
    """

    def __init__(self, message: str, *, log: Path | None = None) -> None:
        super().__init__(message + (f" (see {log})" if log else ""))
        self.log = log


@dataclass(frozen=True)
class SlotStatus:
    slot: int
    reader: str
    port: int
    image: str | None
    connected: bool
    apdus: int

    @property
    def present(self) -> bool:
        return self.image is not None


class StackControl:
    """Client of a running stack's control socket (one short connection per request)."""

    def __init__(self, run_dir: Path, *, timeout: float = 30.0) -> None:
        self.path = Path(run_dir) / "control.sock"
        self.timeout = timeout

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        payload = json.dumps({"op": op, **fields}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(payload)
                reply = sock.makefile("rb").readline()
        except OSError as exc:
            raise VirtualReaderError(
                f"no virtual reader stack answers at {self.path}: {exc}"
            ) from exc
        if not reply:
            raise VirtualReaderError(f"the virtual reader stack at {self.path} closed the channel")
        answer: dict[str, Any] = json.loads(reply)
        if not answer.get("ok"):
            raise VirtualReaderError(
                f"{op} refused: {answer.get('error')}", log=self.path.parent / "server.log"
            )
        return answer

    def ping(self) -> dict[str, Any]:
        return self.request("ping")

    def insert(self, slot: int, image: Path, *, wait: bool = True) -> SlotStatus:
        """Load the card image into ``slot`` (replacing any card); with ``wait`` returns once
        pcscd sees the card."""
        answer = self.request("insert", slot=slot, image=str(Path(image).resolve()), wait=wait)
        return SlotStatus(**answer["slot"])

    def remove(self, slot: int, *, wait: bool = True) -> SlotStatus:
        """Take the card out of ``slot``; with ``wait`` returns once pcscd sees it empty."""
        return SlotStatus(**self.request("remove", slot=slot, wait=wait)["slot"])

    def status(self) -> list[SlotStatus]:
        return [SlotStatus(**s) for s in self.request("status")["slots"]]

    def shutdown(self) -> None:
        self.request("shutdown")


class VirtualReaderStack:
    """An isolated pcscd with ``readers`` vpcd readers (1..16) and a card server.

    ``card_factory`` is ``"module:callable"``: called in the card server process with an image
    path, it returns a :class:`cardspec.reader.CardHandler` (default: the emulator's
    ``Card.load``). ``python_path`` entries are added to the server's ``PYTHONPATH`` (for
    factories outside the project packages, e.g. in tests). ``log_dir``: where pcscd.log and
    server.log are written (default ``run_dir``).
    """

    def __init__(
        self,
        run_dir: Path,
        readers: int = 2,
        *,
        card_factory: str = DEFAULT_CARD_FACTORY,
        python_path: tuple[Path, ...] | list[Path] = (),
        startup_timeout: float = 15.0,
        pcscd: Path = PCSCD,
        driver: Path = VPCD_DRIVER,
        log_dir: Path | None = None,
    ) -> None:
        self.layout = StackLayout(
            Path(run_dir).resolve(), readers, Path(log_dir).resolve() if log_dir else None
        )
        self.card_factory = card_factory
        self.python_path = [Path(p).resolve() for p in python_path]
        self.startup_timeout = startup_timeout
        self.pcscd = Path(pcscd)
        self.driver = Path(driver)
        self.control = StackControl(self.layout.run_dir)
        self._proc: subprocess.Popen[bytes] | None = None
        self._parent_fd: int | None = None

    # --- what clients need -----------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self.layout.run_dir

    @property
    def readers(self) -> int:
        return self.layout.readers

    @property
    def csock(self) -> Path:
        """pcscd's client socket: the value of ``PCSCLITE_CSOCK_NAME`` for clients."""
        return self.layout.csock

    @property
    def environ(self) -> dict[str, str]:
        """Environment variables selecting this pcscd (merge into a client's environment)."""
        return {CSOCK_ENV: str(self.csock)}

    def client_env(self) -> dict[str, str]:
        """A full environment for a client subprocess (``os.environ`` + :attr:`environ`)."""
        return {**os.environ, **self.environ}

    def reader_names(self) -> list[str]:
        """PC/SC reader names, in slot order."""
        return self.layout.reader_names()

    def reader_name(self, slot: int) -> str:
        return self.layout.reader_name(slot)

    @property
    def pid(self) -> int | None:
        """PID of the card server (also the process group of the stack)."""
        return self._proc.pid if self._proc else None

    @property
    def pcscd_pid(self) -> int | None:
        """PID of the stack's pcscd (from its pid file), ``None`` if not running."""
        try:
            text = (self.layout.pcscd_dir / "pcscd.pid").read_text().strip("\x00\n ")
        except OSError:
            return None
        return int(text) if text.isdigit() and self.running else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the card server if it has exited (0: asked to stop)."""
        return self._proc.poll() if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # --- cards -----------------------------------------------------------------------------

    def insert(self, slot: int, image: Path, *, wait: bool = True) -> SlotStatus:
        return self.control.insert(slot, image, wait=wait)

    def remove(self, slot: int, *, wait: bool = True) -> SlotStatus:
        return self.control.remove(slot, wait=wait)

    def status(self) -> list[SlotStatus]:
        return self.control.status()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> VirtualReaderStack:
        if self._proc is not None:
            raise VirtualReaderError("stack already started")
        for tool in ("unshare", "ip", "mount"):
            if not _which(tool):
                raise VirtualReaderError(f"{tool} not found on PATH (util-linux / iproute2)")
        if not self.pcscd.exists():
            raise VirtualReaderError(f"pcscd not found at {self.pcscd} (install pcscd)")
        if self.layout.control_sock.exists():
            try:
                self.control.ping()
            except VirtualReaderError:
                self.layout.control_sock.unlink(missing_ok=True)  # stale
            else:
                raise VirtualReaderError(f"a stack is already running in {self.run_dir}")
        self.layout.run_dir.mkdir(parents=True, exist_ok=True)
        if self.layout.log_dir is not None:
            self.layout.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.layout.write_config(self.driver)
        except (ValueError, FileNotFoundError) as exc:
            raise VirtualReaderError(str(exc)) from exc
        self.layout.pcscd_log.write_bytes(b"")
        self.layout.csock.unlink(missing_ok=True)

        env = dict(os.environ)
        env.pop(CSOCK_ENV, None)
        paths = [str(_PROJECT_ROOT), *map(str, self.python_path)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        cmd = [
            "unshare", "--mount", "--net", "--propagation", "private", "--",
            sys.executable, "-m", "readers.virtual.server",
            "--run-dir", str(self.run_dir), "--readers", str(self.readers),
            "--factory", self.card_factory, "--pcscd", str(self.pcscd),
            "--startup-timeout", str(self.startup_timeout),
        ]  # fmt: skip
        # The server stops when this process exits: it holds the read end of a pipe whose
        # write end only this process has (closed by the kernel at exit, whatever the thread).
        read_fd, self._parent_fd = os.pipe()
        cmd += ["--parent-fd", str(read_fd)]
        try:
            with open(self.layout.server_log, "wb") as log:
                self._proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, start_new_session=True, cwd=str(self.run_dir), pass_fds=(read_fd,),
                )  # fmt: skip
        finally:
            os.close(read_fd)
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout + 5.0
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise VirtualReaderError(
                    f"virtual reader stack exited with status {self._proc.returncode} during "
                    f"startup: {_tail(self.layout.server_log)}; pcscd log {self.layout.pcscd_log}",
                    log=self.layout.server_log,
                )
            if self.layout.control_sock.exists():
                try:
                    self.control.ping()
                    return
                except VirtualReaderError:
                    pass
            time.sleep(0.02)
        raise VirtualReaderError(
            f"{self.readers} virtual readers not visible after {self.startup_timeout:.0f} s: "
            f"{_tail(self.layout.server_log)}",
            log=self.layout.pcscd_log,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the card server and pcscd; kills the process group if they linger."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if self._parent_fd is not None:
            os.close(self._parent_fd)
            self._parent_fd = None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the server leads its own process group
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        # Whatever is left in the group (pcscd if the server was killed hard).
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.02)
            if not _group_alive(pgid):
                break
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self.layout.control_sock.unlink(missing_ok=True)

    def __enter__(self) -> VirtualReaderStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A group made only of zombies still "exists": check /proc for live members.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _which(tool: str) -> bool:
    from shutil import which

    return which(tool) is not None or Path("/usr/sbin", tool).exists()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
