"""A throwaway PostgreSQL server for tests and benchmarks.

``initdb`` refuses to run as root, so when we are root the cluster is created and run as the
``postgres`` system user (``runuser -u postgres``) inside ``base_dir`` (chowned to it). The server
listens on 127.0.0.1 on a free port and on a private unix socket directory; trust auth, user
``app``. Everything is stopped and removed on exit.

By default the cluster trades durability for speed (``fsync=off``, ``synchronous_commit=off``,
``full_page_writes=off``): right for tests, whose data is thrown away. Benchmarks pass
``durable=True`` to run with PostgreSQL's durable defaults, and print
:meth:`TemporaryPostgres.settings_in_force`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from issuance.errors import ConfigError


def _pg_bin() -> Path:
    """Where initdb and pg_ctl are: ``$YKT_PG_BIN``, else the newest Debian/Ubuntu
    ``/usr/lib/postgresql/<major>/bin`` (12 on Ubuntu 22.04's, 15 on Debian 12's, 16 on
    Ubuntu 24.04's package)."""
    if os.environ.get("YKT_PG_BIN"):
        return Path(os.environ["YKT_PG_BIN"])
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
    if not found:
        return Path("/usr/lib/postgresql/15/bin")
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


PG_BIN = _pg_bin()
PG_USER = "app"
#: Server settings of a throwaway test cluster: nothing survives a crash (nothing needs to).
UNSAFE_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
#: Settings a benchmark reports (durability first).
REPORTED_SETTINGS = (
    "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method", "shared_buffers",
    "max_connections", "server_version",
)  # fmt: skip


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TemporaryPostgres:
    """``with TemporaryPostgres(tmp) as pg: pg.url`` — a private PostgreSQL cluster."""

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        port: int | None = None,
        durable: bool = False,
        settings: dict[str, str] | None = None,
    ) -> None:
        """``durable``: PostgreSQL's durable defaults instead of :data:`UNSAFE_FAST_SETTINGS`;
        ``settings``: further ``-c name=value`` server settings (e.g. ``shared_buffers``)."""
        self.durable = durable
        self.settings = {**({} if durable else UNSAFE_FAST_SETTINGS), **(settings or {})}
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="ykt-pg-"))
        self.port = port or free_port()
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "run"
        self.log_file = self.base_dir / "pg.log"
        self._started = False

    # -- helpers ---------------------------------------------------------------------------
    def _as_postgres(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        cmd = [*self._as_postgres(), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log = (
                self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            )
            raise ConfigError(
                f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip()} {log}"
            )

    def url_for(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> TemporaryPostgres:
        if not (PG_BIN / "initdb").exists():
            raise ConfigError(f"PostgreSQL binaries not found in {PG_BIN} (install postgresql)")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base_dir, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
            # the postgres user must be able to reach base_dir through its parents
            for parent in self.base_dir.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", PG_USER, "--auth=trust",
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        extra = {"max_connections": "100", **self.settings}
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} " + " ".join(
            f"-c {name}={value}" for name, value in extra.items()
        )
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
            "-t", "30", "-o", opts, "start",
        )  # fmt: skip
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            try:
                self._run(
                    str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"
                )
            finally:
                self._started = False
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create a database (optionally copied from ``template``) and return its URL."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={PG_USER} dbname=postgres", autocommit=True
        ) as conn:
            tmpl = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{tmpl}')
        return self.url_for(name)

    def settings_in_force(self, names: tuple[str, ...] = REPORTED_SETTINGS) -> dict[str, str]:
        """``SHOW name`` for each of ``names``, asked of the running server."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={PG_USER} dbname=postgres", autocommit=True
        ) as conn:
            return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}  # type: ignore[index]

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
