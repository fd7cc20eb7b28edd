"""A real ``ykt serve`` (uvicorn, worker processes) in a subprocess, for the tests that need the
product's own server: mutual TLS, the ``ykt verify`` client kit, races, memory.

:func:`server_env` gives the environment of a data directory, a database and a SoftHSM token;
:func:`start_serve` starts the server on a free port and waits until every worker finished its
startup (read from the server log: a TLS server needs no client to be probed); :class:`Server`
stops it (SIGTERM to the uvicorn parent, which stops its workers; SIGKILL after a grace time).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from devstack.dbserver import free_port

PROJECT = Path(__file__).resolve().parents[2]


def ykt(*args: str) -> list[str]:
    """The ``ykt`` command line (this interpreter, the project's code)."""
    return [sys.executable, "-m", "yikatong.cli.main", *args]


def server_env(data_dir: Path, db_url: str, softhsm_conf: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YKT_") and k != "SOFTHSM2_CONF"}
    env |= {
        "YKT_DATA_DIR": str(data_dir),
        "YKT_DATABASE__URL": db_url,
        "YKT_HSM__SOFTHSM_CONF": str(softhsm_conf),
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
        **extra,
    }
    return env


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    scheme: str
    log: Path
    worker_pids: list[int] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in self.worker_pids:  # a worker left behind would keep the port
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # gone
            if b"multiprocessing" in cmdline:  # still our uvicorn worker (spawned child)
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def start_serve(
    env: dict[str, str],
    log: Path,
    *,
    workers: int | None = 2,
    args: tuple[str, ...] = (),
    scheme: str = "http",
    timeout: float = 90.0,
    expect_workers: int | None = None,
) -> Server:
    port = free_port()
    cmd = ykt("serve", "--host", "127.0.0.1", "--port", str(port), *args)
    if workers is not None:
        cmd += ["--workers", str(workers)]
    out = log.open("wb")
    proc = subprocess.Popen(cmd, env=env, cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    server = Server(proc, port, scheme, log)
    expected = expect_workers or workers or 1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        server.worker_pids = [int(p) for p in re.findall(r"Started server process \[(\d+)\]", text)]
        if text.count("Application startup complete.") >= expected:
            return server
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"ykt serve did not start ({proc.returncode}):\n{log.read_text()[-3000:]}")


@contextmanager
def serving(env: dict[str, str], log: Path, **kwargs: object) -> Iterator[Server]:
    server = start_serve(env, log, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
