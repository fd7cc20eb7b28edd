"""Memory: the product's signed status feed of 1,000,000 refused cards stays under 1 GiB RSS,
on the server and on the terminal that verifies it.

What it does:

1. starts a throwaway PostgreSQL cluster (:class:`devstack.dbserver.TemporaryPostgres`),
   migrates a database with the product's migrations and bulk-inserts 1,000,000 persons and
   1,000,000 cards, every one in a state a terminal must refuse (suspended, lost, damaged,
   replaced, expired, cancelled) with ``INSERT ... SELECT generate_series``
   (:func:`bench.scale.fill`);
2. makes a SoftHSM token with the product's keys (the feed's ECDSA P-256 signing key among
   them, :func:`yikatong.demo.ensure_hsm`) and registers a hospital with ``feed:read``;
3. starts the product's server, ``ykt serve --workers 1`` (uvicorn; with one worker the
   serving process is the worker itself), and reads its RSS once it is up;
4. in a fresh child process (its peak RSS is the verifier's alone), a terminal downloads the
   full feed from ``GET /v1/status-feed`` with the client kit (:meth:`api.client.YktClient.
   status_feed`: streamed, every line hashed, the HSM signature checked against the
   published public key, every entry counted);
5. prints the peak RSS (``VmHWM`` in ``/proc/PID/status``) of the server worker and of the
   verifying client beside the 1 GiB limit.

The database server's own memory is not counted (it is the database's, bounded by its
configuration). Other work on the machine changes the timings, not the memory figures.
Run alone: ``python -m bench.memory`` (a few minutes here; ``YKT_BENCH_FEED_CARDS`` changes
the size).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CARDS = int(os.environ.get("YKT_BENCH_FEED_CARDS", "1000000"))
LIMIT_BYTES = 1 << 30
PROJECT = Path(__file__).resolve().parent.parent


def _status_kib(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def _client(base_url: str, token: str, queue: Any) -> None:
    """Child process: the terminal side; downloads and verifies the whole feed."""
    from api.client import YktClient

    baseline = _status_kib("self", "VmRSS") * 1024
    start = time.perf_counter()
    with YktClient.with_token(base_url, token, timeout=600) as client:
        summary = client.status_feed()
    queue.put(
        {
            "kind": summary.kind,
            "entries": summary.count,
            "refused": summary.refused,
            "sequence": summary.sequence,
            "seconds": time.perf_counter() - start,
            "baseline_rss": baseline,
            "peak_rss": _status_kib("self", "VmHWM") * 1024,
        }
    )


def _prepare(data: Path, url: str) -> tuple[dict[str, str], str]:
    """The HSM token and a hospital's bearer token; the server's environment."""
    from issuance import services
    from issuance.db import make_engine, make_sessionmaker, transaction
    from issuance.models import AgencyKind
    from issuance.services import credentials
    from yikatong.demo import ensure_hsm
    from yikatong.settings import load_settings

    env = {k: v for k, v in os.environ.items() if not k.startswith(("YKT_", "SOFTHSM2"))}
    env |= {"YKT_DATA_DIR": str(data), "YKT_DATABASE__URL": url, "PYTHONUNBUFFERED": "1"}
    settings = load_settings(environ=env)
    ensure_hsm(settings)
    engine = make_engine(url=url)
    with transaction(make_sessionmaker(engine)) as s:
        agency = services.create_agency(s, "bench-hospital", "Hospital", AgencyKind.HOSPITAL,
                                        "330100")  # fmt: skip
        new = credentials.register_agency_client(s, agency)
        token = credentials.issue_token(s, new.client_id, new.client_secret or "").access_token
    engine.dispose()
    return env, token


def _serve(env: dict[str, str], port: int, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    cmd = [sys.executable, "-m", "yikatong.cli.main", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "Application startup complete." in text:
            pids = re.findall(r"Started server process \[(\d+)\]", text)
            return proc, int(pids[-1]) if pids else proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"ykt serve did not start:\n{log.read_text()[-2000:]}")


def main() -> dict[str, Any]:
    from bench.scale import REFUSED, fill, migrated_database
    from devstack.dbserver import TemporaryPostgres, free_port

    with (
        tempfile.TemporaryDirectory(prefix="ykt-bench-memory-") as tmp,
        TemporaryPostgres(Path(tmp) / "pg") as pg,
    ):
        url = migrated_database(pg, "memory")
        print(f"inserting {CARDS:,} refused cards ...", flush=True)
        build = fill(url, CARDS, statuses=REFUSED, quiet=True)
        print(f"built in {build:.1f} s", flush=True)
        env, token = _prepare(Path(tmp) / "data", url)
        port = free_port()
        server, worker = _serve(env, port, Path(tmp) / "serve.log")
        try:
            server_start_rss = _status_kib(worker, "VmRSS") * 1024
            ctx = multiprocessing.get_context("spawn")  # a clean child: its peak is the client's
            queue = ctx.Queue()
            child = ctx.Process(target=_client, args=(f"http://127.0.0.1:{port}", token, queue))
            child.start()
            r = queue.get(timeout=3600)
            child.join()
            server_peak = _status_kib(worker, "VmHWM") * 1024
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    if r["entries"] != CARDS or r["refused"] != CARDS or r["kind"] != "full":
        raise AssertionError(f"feed: {r}; {CARDS} refused entries expected")
    client_peak = r["peak_rss"]
    mib = 2**20
    print(
        f"status feed: {r['entries']:,} refused cards streamed from GET /v1/status-feed, "
        f"HSM signature verified, in {r['seconds']:.1f} s ({r['entries'] / r['seconds']:,.0f} "
        "entries/s; timings are noisy on a shared machine)"
    )
    for who, peak, base in (
        ("server worker", server_peak, server_start_rss),
        ("verifying client", client_peak, r["baseline_rss"]),
    ):
        print(
            f"{who:17} peak RSS {peak / mib:6.0f} MiB (at start {base / mib:.0f} MiB) vs limit "
            f"{LIMIT_BYTES / mib:.0f} MiB: ratio {peak / LIMIT_BYTES:.3f} -> "
            f"{'OK' if peak < LIMIT_BYTES else 'OVER'}"
        )
    return {
        "status_feed_cards": r["entries"],
        "status_feed_seconds": round(r["seconds"], 1),
        "server_worker_peak_rss_mib": round(server_peak / mib, 1),
        "server_worker_start_rss_mib": round(server_start_rss / mib, 1),
        "client_peak_rss_mib": round(client_peak / mib, 1),
        "client_start_rss_mib": round(r["baseline_rss"] / mib, 1),
        "limit_mib": LIMIT_BYTES // mib,
        "server_ratio_to_limit": round(server_peak / LIMIT_BYTES, 3),
        "client_ratio_to_limit": round(client_peak / LIMIT_BYTES, 3),
        "db_build_seconds": round(build, 1),
    }


if __name__ == "__main__":
    main()
