"""Verification API throughput and latency, beside a hello-world endpoint of the same server.

Setup (all throwaway, under a temporary directory): a PostgreSQL cluster with its *durable
defaults* (``fsync=on``, ``synchronous_commit=on``, ``full_page_writes=on``; the settings in
force are asked of the server and printed), a SoftHSM2 token with issuer master keys, a signing
key and a transport key; ``CARDS`` active cards seeded in bulk (with their chip applications);
one hospital client. Each card's internal-authentication key is exported from the HSM (wrapped
under the transport key, as for a card bureau) so the load generator can answer like the chips.

Server: the product's own command, ``ykt serve --workers 2`` (uvicorn workers, uvloop,
httptools, no access log), configured by environment (``YKT_DATA_DIR``, ``YKT_DATABASE__URL``).

Load: wrk with ``bench/verification_wrk.lua`` (``-t32 -c32``: one connection per wrk thread),
or with ``YKT_BENCH_GENERATOR=python`` a Python generator in its own process (asyncio + uvloop,
raw keep-alive HTTP/1.1). One *verification* (flow) = ``POST /v1/verifications/challenge`` +
the card's INTERNAL AUTHENTICATE answer computed by the generator like the chip does (3DES with
the card's IRK, exported from the HSM wrapped under a transport key as for a card bureau) +
``POST /v1/verifications`` (challenge consumed, HSM cryptogram check, card and application
status, audit event, all committed durably). Only flows answered ``valid`` count; any error or
``invalid`` answer fails the benchmark. The hello-world figure is ``GET /v1/hello`` measured by
the same generator with the same connections in the same run, and by plain ``wrk -t2``.

Latency is reported per request kind (challenge, verify) and per flow; the p99 target is judged
on the verify request, throughput on flows/s. CPU: everything shares this machine's 2 cores;
the CPU seconds used by the server workers, by PostgreSQL and by the generator during the run
are read from /proc and printed, with the machine's total busy time (the difference is what
other processes used). ``YKT_BENCH_GEN_CPUS=1`` pins the generator with ``taskset`` (it cannot
be kept off the server's cores on a 2-core machine; its CPU share is printed either way).

The machine's floor, measured in the same run on the same database and printed beside the
figures: :mod:`bench.floor_app` - a plain ASGI app on the same uvicorn/asyncpg stack without
FastAPI, authentication, HSM or call log that does per flow only what a verification cannot do
without on PostgreSQL (one card read, one durable write of the used challenge and the audit
event) - driven by the same generator (flows/s, CPU per flow, its own hello-world), and pgbench
running the same two statements with the same number of clients (PostgreSQL alone). The
verification's ratio to that floor, and the target's, show how far the target is physically
reachable on the machine.

After the run, the audit events it wrote are sealed (hash chain and checkpoints, no signer) and
the sealer's rate is printed: it has to keep up with the verification rate (the floor's events
are sealed too).

Targets (issue 7): >= 3,000 verifications/s, verify p99 <= 20 ms, >= 30 % of hello-world.
Run alone: ``python -m bench.verification`` (``YKT_BENCH_SECONDS``, ``YKT_BENCH_CARDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from yikatong.wiring import hsm_config

SECONDS = float(os.environ.get("YKT_BENCH_SECONDS", "10"))
CARDS = int(os.environ.get("YKT_BENCH_CARDS", "2000"))
GEN_CPUS = os.environ.get("YKT_BENCH_GEN_CPUS", "")
#: "wrk" (wrk + bench/verification_wrk.lua, the default when wrk is installed) or "python"
GENERATOR = os.environ.get("YKT_BENCH_GENERATOR", "wrk" if shutil.which("wrk") else "python")
LUA = Path(__file__).resolve().with_name("verification_wrk.lua")
CONNECTIONS = int(os.environ.get("YKT_BENCH_CONNECTIONS", "32"))
WORKERS = 2
ROOT = Path(__file__).resolve().parent.parent
TRANSPORT = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
TARGET_PER_S = 3000.0
TARGET_P99_MS = 20.0
TARGET_RATIO = 0.30
#: issue 20: the product against the floor with the HSM check, measured in the same run
TARGET_RATIO_FLOOR_HSM = 0.85


def _master(slot: Any) -> bytes:
    return hashlib.sha256(f"ykt-bench:{slot.value}".encode()).digest()[:16]


def _setup_hsm(data_dir: Path) -> None:
    from cardspec import keyscheme
    from cardspec.keyscheme import Algorithm
    from hsm import ceremony, softhsm
    from hsm.pkcs11 import open_token
    from yikatong.settings import load_settings

    config = hsm_config(load_settings(environ={"YKT_DATA_DIR": str(data_dir)}))
    softhsm.ensure_token(config)
    token = open_token(config)
    alg = Algorithm.DES3
    for slot in ceremony.CENTRE_SLOTS:  # the card centre's masters (FIN_* are a bank's)
        key = _master(slot)
        half = hashlib.sha256(key).digest()[:16]
        comps = [half, bytes(a ^ b for a, b in zip(key, half, strict=True))]
        ceremony.import_master(token, slot, comps, [keyscheme.kcv(c, alg) for c in comps], alg, 1)
    half = hashlib.sha256(TRANSPORT).digest()[:16]
    comps = [half, bytes(a ^ b for a, b in zip(TRANSPORT, half, strict=True))]
    ceremony.import_transport_key(
        token, "bench", comps, [keyscheme.kcv(c, Algorithm.AES) for c in comps]
    )
    ceremony.generate_signing_key(token)


def _cid(n: int) -> str:
    from cardspec.ids import citizen_id_check_char

    body = f"330106{1950 + n % 50}{1 + n % 12:02d}{1 + n % 28:02d}{n % 1000:03d}"
    return body + citizen_id_check_char(body)


def card_identifiers(i: int) -> tuple[str, str]:
    """Card identification code and card number of bench card ``i`` (also bench.scale's)."""
    from cardspec.ids import make_card_identification_code, make_card_number

    cic = make_card_identification_code("330100", i.to_bytes(8, "big"))
    return cic, make_card_number("B" + str(i).zfill(7))


def hospital_token(engine: Any) -> str:
    """Register a hospital client and return a two-hour bearer token for it."""
    from issuance import services
    from issuance.db import make_sessionmaker, transaction
    from issuance.models import AgencyKind
    from issuance.services import credentials

    with transaction(make_sessionmaker(engine)) as s:
        code = f"bench-hospital-{random.randrange(10**9)}"
        agency = services.create_agency(s, code, "Bench Hospital", AgencyKind.HOSPITAL, "330100")
        new = credentials.register_agency_client(s, agency)
        assert new.client_secret is not None
        return credentials.issue_token(
            s, new.client_id, new.client_secret, ttl=timedelta(hours=2)
        ).access_token


def _seed(url: str, n: int) -> str:
    import sqlalchemy as sa

    from issuance import migrations
    from issuance.db import make_engine
    from issuance.models import Card, ChipApplication, Person

    engine = make_engine(url=url)
    migrations.upgrade(engine)
    today = date.today()
    persons, cards, apps = [], [], []
    for i in range(1, n + 1):
        cic, number = card_identifiers(i)
        persons.append({"id": i, "citizen_id": _cid(i * 7919), "name": "张三", "sex": "1",
                        "birth_date": date(1980, 1, 1), "region_code": "330106"})  # fmt: skip
        cards.append({"id": i, "card_number": number, "card_identification_code": cic,
                      "kind": "formal", "status": "active", "person_id": i,
                      "region_code": "330100", "key_version": 1, "algorithm": "3des",
                      "issue_date": today,
                      "expiry_date": today + timedelta(days=3650)})  # fmt: skip
        for kind in ("social_security", "medical", "pension"):
            apps.append({"card_id": i, "kind": kind, "status": "active"})
    with engine.begin() as conn:
        conn.execute(sa.insert(Person), persons)
        conn.execute(sa.insert(Card), cards)
        conn.execute(sa.insert(ChipApplication), apps)
        for table in ("persons", "cards", "chip_applications"):
            conn.exec_driver_sql(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        conn.exec_driver_sql("ANALYZE")
    token = hospital_token(engine)
    engine.dispose()
    return token


def export_irks(data_dir: Path, cards: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(cic, card number, IRK hex) of ``cards`` ((cic, card number) pairs), each IRK exported
    from the HSM wrapped under the bench transport key (what a bureau receives), unwrapped
    here: the load generator answers like the chips."""
    from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

    from cardspec.keyscheme import KeySlot
    from hsm.service import CardKeyRef, Pkcs11KeyService
    from yikatong.settings import load_settings

    keys = Pkcs11KeyService.from_config(
        hsm_config(load_settings(environ={"YKT_DATA_DIR": str(data_dir)}))
    )
    out = []
    for cic, number in cards:
        wrapped = keys.export_card_keys(CardKeyRef(cic), [KeySlot.IRK], "bench")[KeySlot.IRK]
        out.append((cic, number, aes_key_unwrap_with_padding(TRANSPORT, wrapped).hex()))
    return out


def hsm_check_cost(data_dir: Path, cards: list[tuple[str, str]], n: int = 2000) -> float:
    """CPU microseconds of one cryptogram check in the HSM (the product's
    :func:`hsm.internal_auth.check_internal_auth`: card key and session key derived, the
    random encrypted, both objects destroyed), measured alone in a fresh process."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return float(pool.apply(_hsm_check_child, (str(data_dir), cards[: min(len(cards), n)], n)))


def _hsm_check_child(data_dir: str, cards: list[tuple[str, str]], n: int) -> float:
    from hsm.errors import CryptogramMismatch
    from hsm.internal_auth import check_internal_auth
    from hsm.service import CardKeyRef, Pkcs11KeyService
    from yikatong.settings import load_settings

    keys = Pkcs11KeyService.from_config(
        hsm_config(load_settings(environ={"YKT_DATA_DIR": data_dir}))
    )
    refs = [CardKeyRef(cic) for cic, _ in cards]
    wrong = bytes(8)  # the check runs in full, then says "mismatch"

    def once(i: int) -> None:
        with contextlib.suppress(CryptogramMismatch):
            check_internal_auth(keys, refs[i % len(refs)], os.urandom(8), os.urandom(8), wrong)

    for i in range(50):  # warm-up: master handle cached
        once(i)
    start = time.process_time()
    for i in range(n):
        once(i)
    return (time.process_time() - start) / n * 1e6


# --- the load generator (its own process: python -m bench.verification --generate ...) --------
class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # asyncio's or uvloop's TCP transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        at = head.find(b"content-length:")
        length = 0
        if at >= 0:
            eol = head.find(b"\r\n", at)
            length = int(head[at + 15 : eol if eol >= 0 else len(head)])
        total = end + 4 + length
        if len(self.buf) < total:
            return
        status = int(head[9:12])
        body = bytes(self.buf[end + 4 : total])
        del self.buf[:total]
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


def _request(method: str, path: str, token: str | None, body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


@dataclass
class _Tally:
    flows: int = 0  # valid verifications
    errors: int = 0
    invalid: int = 0
    first_error: str = ""


async def _verify_conn(
    port: int, token: str, cards: list[tuple[str, str, bytes]], until: float, tally: _Tally,
    lat: dict[str, array[float]],
) -> None:  # fmt: skip
    from cardspec import keyscheme
    from cardspec.keyscheme import Algorithm

    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Conn, "127.0.0.1", port)
    challenge_req = _request("POST", "/v1/verifications/challenge", token, b"")
    head = _request("POST", "/v1/verifications", token, b"").rsplit(b"Content-Length: 0", 1)[0]
    rnd = random.Random()
    clock = time.perf_counter
    ch_lat, v_lat, f_lat = lat["challenge"], lat["verify"], lat["flow"]
    while clock() < until:
        cic, number, irk = cards[rnd.randrange(len(cards))]
        t0 = clock()
        status, body = await conn.request(challenge_req)
        t1 = clock()
        if status != 200:
            tally.errors += 1
            tally.first_error = tally.first_error or f"challenge {status}: {body[:200]!r}"
            continue
        ch = json.loads(body)
        challenge = bytes.fromhex(ch["challenge"])
        answer = keyscheme.internal_auth_response(irk, challenge[:8], challenge[8:], Algorithm.DES3)
        payload = (
            b'{"challenge_id":"%s","card_identification_code":"%s","card_number":"%s",'
            b'"response":"%s","application":"medical"}'
            % (ch["challenge_id"].encode(), cic.encode(), number.encode(), answer.hex().encode())
        )
        t2 = clock()
        status, body = await conn.request(
            head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload
        )
        t3 = clock()
        if status != 200:
            tally.errors += 1
            tally.first_error = tally.first_error or f"verify {status}: {body[:200]!r}"
            continue
        if not json.loads(body)["valid"]:
            tally.invalid += 1
            tally.first_error = tally.first_error or f"invalid: {body[:200]!r}"
            continue
        tally.flows += 1
        ch_lat.append(t1 - t0)
        v_lat.append(t3 - t2)
        f_lat.append(t3 - t0)
    assert conn.transport is not None
    conn.transport.close()


async def _hello_conn(port: int, until: float, tally: _Tally, lat: dict[str, array[float]]) -> None:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Conn, "127.0.0.1", port)
    req = _request("GET", "/v1/hello", None)
    clock = time.perf_counter
    hello_lat = lat["hello"]
    while clock() < until:
        t0 = clock()
        status, _ = await conn.request(req)
        if status != 200:
            tally.errors += 1
            continue
        tally.flows += 1
        hello_lat.append(clock() - t0)
    assert conn.transport is not None
    conn.transport.close()


def _pct(values: array[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return round(s[min(len(s) - 1, int(p * len(s)))] * 1000.0, 2)


async def _generate(kind: str, port: int, seconds: float, spec: dict[str, Any]) -> dict[str, Any]:
    tally = _Tally()
    lat: dict[str, array[float]] = {k: array("d") for k in ("challenge", "verify", "flow", "hello")}
    cards = [(c, n, bytes.fromhex(k)) for c, n, k in spec.get("cards", [])]
    start = time.perf_counter()
    until = start + seconds
    cpu0 = time.process_time()
    if kind == "hello":
        conns = [_hello_conn(port, until, tally, lat) for _ in range(CONNECTIONS)]
    else:
        conns = [
            _verify_conn(port, spec["token"], cards, until, tally, lat) for _ in range(CONNECTIONS)
        ]
    await asyncio.gather(*conns)
    elapsed = time.perf_counter() - start
    out: dict[str, Any] = {
        "per_s": tally.flows / elapsed,
        "count": tally.flows,
        "errors": tally.errors,
        "invalid": tally.invalid,
        "first_error": tally.first_error,
        "elapsed": elapsed,
        "generator_cpu_s": time.process_time() - cpu0,
    }
    for name, values in lat.items():
        if values:
            out[f"{name}_p50_ms"] = _pct(values, 0.50)
            out[f"{name}_p99_ms"] = _pct(values, 0.99)
            out[f"{name}_p999_ms"] = _pct(values, 0.999)
            out[f"{name}_max_ms"] = round(max(values) * 1000.0, 2)
    return out


def generator_main(argv: list[str]) -> None:
    """``--generate KIND PORT SECONDS SPEC_FILE``: run the load, print the figures as JSON."""
    kind, port, seconds, spec_file = argv[0], int(argv[1]), float(argv[2]), argv[3]
    spec = json.loads(Path(spec_file).read_text()) if spec_file != "-" else {}
    try:
        import uvloop

        result = uvloop.run(_generate(kind, port, seconds, spec))
    except ImportError:
        result = asyncio.run(_generate(kind, port, seconds, spec))
    print(json.dumps(result))


# --- CPU accounting ---------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / _TICK


def _postmaster_pid(pg: Any) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


@dataclass
class _Procs:
    server: int
    postgres: int
    #: the database's libpq URI: its transactions are counted too (None: not counted)
    dsn: str | None = None

    def snapshot(self) -> dict[str, float]:
        got = {
            "server": _cpu_seconds(_tree(self.server)),
            "postgres": _cpu_seconds(_tree(self.postgres)),
            "machine": _machine_busy(),
        }
        if self.dsn is not None:
            got.update(_transactions(self.dsn))
        return got


def _transactions(dsn: str) -> dict[str, float]:
    """The server's transaction counters: ``xacts`` committed (every statement of the pool is
    its own transaction, read-only ones included; from the statistics, which each backend
    hands in at most once a second, so a run's count is off by up to a second's worth at
    either end) and ``writes``, transactions that wrote (the next transaction id: exact;
    each is a durable commit, one WAL flush unless flushes are shared)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname ="
            " current_database()), pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        ).fetchone()
    assert row is not None
    return {"xacts": float(row[0]), "writes": float(row[1])}


def _connections_per_worker(server: int, port: int) -> list[int]:
    """Established connections to ``port`` held by each process of the server's tree (its
    uvicorn workers share one listening socket: which worker accepts a connection is a race,
    and a worker with more of the benchmark's keep-alive connections serves each of them more
    slowly), most first. From /proc: the workers' socket inodes against /proc/net/tcp."""
    established: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    established.add(f[9])
    counts = []
    for pid in _tree(server):
        n = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    n += target.startswith("socket:[") and target[8:-1] in established
        if n:
            counts.append(n)
    return sorted(counts, reverse=True)


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _generator_cmd(kind: str, port: int, seconds: float, spec_dir: Path) -> list[str]:
    if kind == "ecard":  # e-card codes (bench.ecard's own Python generator)
        from bench import ecard

        return ecard.generator_cmd(port, seconds, spec_dir)
    if GENERATOR == "wrk":
        args = ["hello"] if kind == "hello" else ["verify", str(spec_dir / "cards.txt"),
                                                  (spec_dir / "token").read_text()]  # fmt: skip
        return ["wrk", f"-t{CONNECTIONS}", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s",
                "--timeout", "10s", "-s", str(LUA), f"http://127.0.0.1:{port}", "--",
                *args]  # fmt: skip
    return [sys.executable, "-m", "bench.verification", "--generate", kind, str(port),
            str(seconds), str(spec_dir / "spec.json") if kind == "verify" else "-"]  # fmt: skip


def _run_generator(
    kind: str, port: int, seconds: float, spec_dir: Path, procs: _Procs
) -> dict[str, Any]:
    cmd = _generator_cmd(kind, port, seconds, spec_dir)
    if GEN_CPUS and shutil.which("taskset"):
        cmd = ["taskset", "-c", GEN_CPUS, *cmd]
    split: list[int] = []  # connections per worker: the sample that saw the most of them
    done = threading.Event()

    def sample() -> None:  # every 0.5 s while the generator runs (it connects when ready)
        while not done.wait(0.5):
            got = _connections_per_worker(procs.server, port)
            if sum(got) >= sum(split):
                split[:] = got

    sampler = threading.Thread(target=sample, daemon=True)
    before, gen_before = procs.snapshot(), _children_cpu()
    sampler.start()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    finally:
        done.set()
        sampler.join()
    after, gen_after = procs.snapshot(), _children_cpu()
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("YKT-RESULT ", "{"))]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"load generator failed: {proc.stdout[-1000:]} {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("YKT-RESULT "))
    result["connections_per_worker"] = split
    elapsed = result["elapsed"]
    result["per_s"] = result["count"] / elapsed
    for key in ("server", "postgres", "machine"):
        result[f"{key}_cores"] = (after[key] - before[key]) / elapsed
    if "xacts" in after and result["count"]:  # (the snapshots' own read is one of each)
        for key in ("xacts", "writes"):
            result[f"{key}_per_flow"] = round((after[key] - before[key] - 1) / result["count"], 3)
    result["generator_cores"] = (gen_after - gen_before) / elapsed
    result["other_cores"] = max(
        0.0,
        result["machine_cores"]
        - result["server_cores"]
        - result["postgres_cores"]
        - result["generator_cores"],
    )
    return result


def _wrk_hello(port: int, seconds: float) -> dict[str, float] | None:
    if shutil.which("wrk") is None:
        return None
    proc = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{max(1, int(seconds))}s", "--latency",
         f"http://127.0.0.1:{port}/v1/hello"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    out: dict[str, float] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            out["per_s"] = float(parts[1])
        elif len(parts) == 2 and parts[0] == "99%":
            value = parts[1]
            for suffix, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
                if value.endswith(suffix):
                    out["p99_ms"] = float(value[: -len(suffix)]) * scale
                    break
    return out or None


def _start_server(
    env: dict[str, str],
    port: int,
    log: Path,
    cmd: list[str] | None = None,
    health: str = "/healthz",
) -> subprocess.Popen[bytes]:
    """``ykt serve`` (the product's command; or ``cmd``), waited for until ``health`` answers."""
    import httpx

    if cmd is None:
        ykt = Path(sys.executable).with_name("ykt")
        base = [str(ykt)] if ykt.exists() else [sys.executable, "-m", "yikatong.cli.main"]
        cmd = [*base, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers",
               str(WORKERS)]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            err = log.read_text(errors="replace")
            raise RuntimeError(f"{cmd[0]} exited ({proc.returncode}): {err[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{health}", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the server did not start")


def _floor_cmd(port: int) -> list[str]:
    """The floor application (:mod:`bench.floor_app`) under the same uvicorn settings as
    ``ykt serve`` (workers, uvloop, httptools, no access log)."""
    return [sys.executable, "-m", "uvicorn", "--factory", "bench.floor_app:app",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(WORKERS),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning"]  # fmt: skip


#: pgbench script: the floor's two statements (the product's card read and its durable
#: used-challenge + audit-event write), one verification per transaction script run.
_PGBENCH_SCRIPT = """\\set n random(1, {cards})
SELECT c.id, c.card_number, c.kind, c.status, c.key_version, c.algorithm, c.expiry_date, \
p.id, p.name, p.citizen_id, p.sex, p.birth_date, a.status FROM cards AS c \
JOIN persons AS p ON p.id = c.person_id LEFT JOIN chip_applications AS a \
ON a.card_id = c.id AND a.kind = 'medical' WHERE c.card_identification_code = \
'330100D156000005' || lpad(upper(to_hex(CAST(:n AS bigint))), 16, '0');
WITH u AS (INSERT INTO used_challenges (id) VALUES (decode(lpad(to_hex(CAST(\
extract(epoch FROM now()) AS bigint) + 60), 8, '0') || substr(md5(CAST(random() AS text)), \
1, 24), 'hex')) ON CONFLICT DO NOTHING RETURNING id), ev AS (INSERT INTO audit_events \
(occurred_at, actor_staff_id, actor_name, actor_role, channel, action, entity_type, \
entity_id, before, after, reason, details) SELECT now(), NULL, 'pgbench', 'system', \
'system', 'card.verified', 'card', '330100D156000005' || lpad(upper(to_hex(CAST(:n AS \
bigint))), 16, '0'), NULL, CASE WHEN u.id IS NULL THEN 'invalid' ELSE 'valid' END, NULL, \
repeat('x', 190) FROM (VALUES (1)) AS one (x) LEFT JOIN u ON true) SELECT count(*) FROM u;
"""


def _pgbench(url: str, seconds: float, cards: int, spec_dir: Path) -> dict[str, float] | None:
    """pgbench with the floor's two statements, ``CONNECTIONS`` clients (None without
    pgbench). The CPU figure is the whole machine's during the run."""
    exe = shutil.which("pgbench")
    if exe is None:
        return None
    from issuance.db_async import dsn_from_url

    script = spec_dir / "floor.pgbench"
    script.write_text(_PGBENCH_SCRIPT.format(cards=cards).replace("\\\n", ""))
    dsn = dsn_from_url(url)
    base = [exe, "-n", "-M", "prepared", "-c", str(CONNECTIONS), "-j", "2", "-f", str(script)]
    subprocess.run([*base, "-T", "1", dsn], capture_output=True, check=False)  # warm-up
    busy0, t0 = _machine_busy(), time.perf_counter()
    proc = subprocess.run(
        [*base, "-T", str(max(1, round(seconds))), dsn], capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    busy, elapsed = _machine_busy() - busy0, time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("tps = "):
            return {"tps": float(line.split()[2]), "machine_cores": busy / elapsed}
    raise RuntimeError(f"pgbench failed: {proc.stdout[-500:]} {proc.stderr[-1000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _seal_rate(url: str) -> dict[str, float]:
    """Seal every event the run wrote (no signer): the sealer's throughput."""
    from issuance import audit
    from issuance.db import make_engine, make_sessionmaker, transaction

    engine = make_engine(url=url)
    sealed, start = 0, time.perf_counter()
    while True:
        with transaction(make_sessionmaker(engine)) as s:
            n = audit.seal(s, None, delay=timedelta(0)).sealed
        sealed += n
        if n == 0:
            break
    elapsed = time.perf_counter() - start
    with transaction(make_sessionmaker(engine)) as s:
        report = audit.verify_chain(s)
    engine.dispose()
    return {
        "sealed": sealed,
        "seal_per_s": sealed / elapsed if elapsed else 0.0,
        "verified_events": report.events,
    }


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def run(
    url: str, pg: Any, data_dir: Path, token: str, cards: list[tuple[str, str]],
    ecards: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Measure against a prepared database: ``cards`` are (cic, card number) of active cards
    with an active medical application (bench.scale runs it on its 10M-card database too).
    Then the machine's floor on the same database: :mod:`bench.floor_app` driven by the same
    generator, and pgbench with its two statements."""
    from devstack.dbserver import free_port
    from issuance.db_async import dsn_from_url

    spec_dir = Path(tempfile.mkdtemp(prefix="ykt-bench-spec-"))
    ecard_m: dict[str, Any] | None = None
    keyed = export_irks(data_dir, cards)
    (spec_dir / "spec.json").write_text(json.dumps({"token": token, "cards": keyed}))
    (spec_dir / "cards.txt").write_text("".join(f"{c} {n} {k}\n" for c, n, k in keyed))
    (spec_dir / "token").write_text(token)
    env = {**os.environ, "YKT_DATA_DIR": str(data_dir), "YKT_DATABASE__URL": url}
    env.pop("YKT_CONFIG", None)
    short = max(3.0, SECONDS / 2)
    load_average = os.getloadavg()[0]
    try:
        port = free_port()
        server = _start_server(env, port, spec_dir / "server.log")
        try:
            procs = _Procs(server.pid, _postmaster_pid(pg), dsn_from_url(url))
            _run_generator("verify", port, 2.0, spec_dir, procs)  # warm-up
            _run_generator("hello", port, 1.0, spec_dir, procs)
            verify = _run_generator("verify", port, SECONDS, spec_dir, procs)
            hello = _run_generator("hello", port, short, spec_dir, procs)
            wrk = _wrk_hello(port, short)
            if ecards:  # e-card codes beside the chip verification (bench.ecard)
                from bench import ecard

                ecard_m = ecard.measure(port, short, spec_dir, procs, data_dir, token, ecards)
        finally:
            _stop(server)
        port = free_port()
        floor_env = {**env, "YKT_FLOOR_DSN": dsn_from_url(url)}
        floor = _start_server(floor_env, port, spec_dir / "floor.log", _floor_cmd(port), "/")
        try:
            procs = _Procs(floor.pid, _postmaster_pid(pg))
            _run_generator("verify", port, 2.0, spec_dir, procs)  # warm-up
            floor_verify = _run_generator("verify", port, short, spec_dir, procs)
            floor_hello = _run_generator("hello", port, short, spec_dir, procs)
        finally:
            _stop(floor)
        port = free_port()
        hsm_env = {**floor_env, "YKT_FLOOR_HSM": "1"}
        floor = _start_server(hsm_env, port, spec_dir / "floor-hsm.log", _floor_cmd(port), "/")
        try:
            procs = _Procs(floor.pid, _postmaster_pid(pg), dsn_from_url(url))
            _run_generator("verify", port, 2.0, spec_dir, procs)  # warm-up
            floor_hsm = _run_generator("verify", port, SECONDS, spec_dir, procs)
        finally:
            _stop(floor)
        pgbench = _pgbench(url, short, len(cards) if cards else 1, spec_dir)
        hsm_us = hsm_check_cost(data_dir, cards)
    finally:
        shutil.rmtree(spec_dir, ignore_errors=True)
    return {"verify": verify, "hello": hello, "wrk": wrk, "floor_verify": floor_verify,
            "floor_hello": floor_hello, "floor_hsm": floor_hsm, "pgbench": pgbench,
            "load_average": load_average,
            "hsm_check_cpu_us": hsm_us, "ecard": ecard_m}  # fmt: skip


def report(
    m: dict[str, Any], settings: dict[str, str], cards: int, seal: dict[str, float] | None
) -> dict[str, Any]:
    verify, hello, wrk = m["verify"], m["hello"], m["wrk"]
    per_s = verify["per_s"]
    ratio = per_s / hello["per_s"] if hello["per_s"] else 0.0
    ratio_wrk = per_s / wrk["per_s"] if wrk and wrk.get("per_s") else None
    clean = verify["errors"] == 0 and verify["invalid"] == 0
    result: dict[str, Any] = {
        "verifications_per_s": round(per_s, 1),
        "verify_p50_ms": verify.get("verify_p50_ms"),
        "verify_p99_ms": verify.get("verify_p99_ms"),
        "challenge_p50_ms": verify.get("challenge_p50_ms"),
        "challenge_p99_ms": verify.get("challenge_p99_ms"),
        "flow_p50_ms": verify.get("flow_p50_ms"),
        "flow_p99_ms": verify.get("flow_p99_ms"),
        # the tail: p99.9 and the slowest of each kind, and how the connections were spread
        # over the workers (design notes: docs/design/api.md, "The tail at 32 connections")
        "verify_p999_ms": verify.get("verify_p999_ms"),
        "verify_max_ms": verify.get("verify_max_ms"),
        "challenge_p999_ms": verify.get("challenge_p999_ms"),
        "challenge_max_ms": verify.get("challenge_max_ms"),
        "flow_p999_ms": verify.get("flow_p999_ms"),
        "flow_max_ms": verify.get("flow_max_ms"),
        "connections_per_worker": verify.get("connections_per_worker"),
        "valid_verifications": verify["count"],
        "errors": verify["errors"],
        "invalid": verify["invalid"],
        "hello_per_s": round(hello["per_s"], 1),
        "hello_p99_ms": hello.get("hello_p99_ms"),
        "hello_wrk_per_s": None if not wrk else wrk.get("per_s"),
        "hello_wrk_p99_ms": None if not wrk else wrk.get("p99_ms"),
        "limit": round(hello["per_s"], 1),
        "ratio": round(ratio, 3),
        "ratio_vs_wrk_hello": None if ratio_wrk is None else round(ratio_wrk, 3),
        "cores_server": round(verify["server_cores"], 2),
        "cores_postgres": round(verify["postgres_cores"], 2),
        "cores_generator": round(verify["generator_cores"], 2),
        "cores_other_processes": round(verify["other_cores"], 2),
        "server_cpu_us_per_verification": round(verify["server_cores"] / per_s * 1e6, 1)
        if per_s
        else None,
        "postgres_cpu_us_per_verification": round(verify["postgres_cores"] / per_s * 1e6, 1)
        if per_s
        else None,
        "generator_cpu_us_per_verification": round(verify["generator_cores"] / per_s * 1e6, 1)
        if per_s
        else None,
        # PostgreSQL transactions per verification: all (each statement is one) and those
        # that wrote (durable commits); grouping makes both less than one per statement
        "pg_xacts_per_verification": verify.get("xacts_per_flow"),
        "pg_writes_per_verification": verify.get("writes_per_flow"),
        "target_verifications_per_s": TARGET_PER_S,
        "target_verify_p99_ms": TARGET_P99_MS,
        "target_ratio": TARGET_RATIO,
        "verdict_throughput": _verdict(clean and per_s >= TARGET_PER_S),
        "verdict_p99": _verdict(clean and (verify.get("verify_p99_ms") or 1e9) <= TARGET_P99_MS),
        "verdict_ratio": _verdict(clean and ratio >= TARGET_RATIO),
        "generator": GENERATOR,
        "connections": CONNECTIONS,
        "workers": WORKERS,
        "cards": cards,
        "seconds": SECONDS,
        "postgres_settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
    }
    floor, floor_hello, pgb = m.get("floor_verify"), m.get("floor_hello"), m.get("pgbench")
    if floor is not None and floor_hello is not None:
        fps = floor["per_s"]
        result.update({
            "floor_flows_per_s": round(fps, 1),
            "floor_verify_p99_ms": floor.get("verify_p99_ms"),
            "floor_server_cpu_us_per_flow": round(floor["server_cores"] / fps * 1e6, 1)
            if fps else None,
            "floor_postgres_cpu_us_per_flow": round(floor["postgres_cores"] / fps * 1e6, 1)
            if fps else None,
            "floor_cores_other_processes": round(floor["other_cores"], 2),
            "floor_hello_per_s": round(floor_hello["per_s"], 1),
            "ratio_to_floor": round(per_s / fps, 3) if fps else None,
            "target_to_floor": round(TARGET_PER_S / fps, 2) if fps else None,
        })  # fmt: skip
    fh = m.get("floor_hsm")
    if fh is not None and fh["per_s"]:
        fps = fh["per_s"]
        ratio_hsm = per_s / fps
        result.update({
            "floor_hsm_flows_per_s": round(fps, 1),
            "floor_hsm_verify_p99_ms": fh.get("verify_p99_ms"),
            "floor_hsm_server_cpu_us_per_flow": round(fh["server_cores"] / fps * 1e6, 1),
            "floor_hsm_postgres_cpu_us_per_flow": round(fh["postgres_cores"] / fps * 1e6, 1),
            "floor_hsm_cores_other_processes": round(fh["other_cores"], 2),
            "floor_hsm_pg_xacts_per_flow": fh.get("xacts_per_flow"),
            "floor_hsm_pg_writes_per_flow": fh.get("writes_per_flow"),
            "ratio_to_floor_hsm": round(ratio_hsm, 3),
            "target_ratio_to_floor_hsm": TARGET_RATIO_FLOOR_HSM,
            "verdict_ratio_to_floor_hsm": _verdict(clean and ratio_hsm >= TARGET_RATIO_FLOOR_HSM),
        })  # fmt: skip
    if per_s and verify["server_cores"] and verify["postgres_cores"]:
        per_server_core = per_s / verify["server_cores"]
        result.update({
            # what one core of an API node verifies (server CPU only: the node's own work)
            "verifications_per_s_per_api_core": round(per_server_core, 1),
            "verifications_per_s_per_api_node_2_cores": round(2 * per_server_core, 1),
            # what one core of the database server carries
            "verifications_per_s_per_postgres_core": round(per_s / verify["postgres_cores"], 1),
            # this whole 2-core machine (server, PostgreSQL and the load generator on it)
            "verifications_per_s_per_machine_core": round(
                per_s / max(verify["machine_cores"], 1e-9), 1
            ),
        })  # fmt: skip
    result["load_average_1min"] = round(m.get("load_average", os.getloadavg()[0]), 2)
    if pgb is not None:
        result["pgbench_floor_tps"] = round(pgb["tps"], 1)
        result["pgbench_machine_cores"] = round(pgb["machine_cores"], 2)
    hsm_us = m.get("hsm_check_cpu_us")
    if hsm_us is not None and floor is not None and floor["per_s"] and per_s:
        cores = os.cpu_count() or 1
        fps = floor["per_s"]
        parts = {
            "generator": verify["generator_cores"] / per_s * 1e6,
            "floor_server": floor["server_cores"] / fps * 1e6,
            "floor_postgres": floor["postgres_cores"] / fps * 1e6,
            "hsm_check": hsm_us,
        }
        result.update({
            "hsm_check_cpu_us": round(hsm_us, 1),
            "cpu_budget_us_per_verification_at_target": round(cores / TARGET_PER_S * 1e6, 1),
            "cpu_us_no_implementation_avoids": round(sum(parts.values()), 1),
        })  # fmt: skip
    if seal is not None:
        result["audit_seal_per_s"] = round(seal["seal_per_s"], 1)
        result["audit_events_sealed"] = seal["sealed"]
    _print(result, verify)
    if m.get("ecard"):
        from bench import ecard

        result.update(ecard.report(m["ecard"]))
    if not clean:
        raise RuntimeError(
            f"{verify['errors']} errors and {verify['invalid']} invalid verifications "
            f"(first: {verify['first_error']})"
        )
    return result


def _print(r: dict[str, Any], verify: dict[str, Any]) -> None:
    print(f"PostgreSQL: {r['postgres_settings']}")
    print(
        f"verification: {r['verifications_per_s']:.0f} valid verifications/s "
        f"({r['valid_verifications']} in {r['seconds']:.0f} s; {r['connections']} connections, "
        f"{r['workers']} workers, {r['cards']} cards); errors {r['errors']}, invalid {r['invalid']}"
    )
    print(
        f"  latency ms  verify p50 {r['verify_p50_ms']} p99 {r['verify_p99_ms']} | challenge "
        f"p50 {r['challenge_p50_ms']} p99 {r['challenge_p99_ms']} | whole flow p50 "
        f"{r['flow_p50_ms']} p99 {r['flow_p99_ms']}"
    )
    print(
        f"  tail ms     verify p99.9 {r['verify_p999_ms']} max {r['verify_max_ms']} | challenge "
        f"p99.9 {r['challenge_p999_ms']} max {r['challenge_max_ms']} | whole flow p99.9 "
        f"{r['flow_p999_ms']} max {r['flow_max_ms']}; connections per worker "
        f"{r['connections_per_worker']}"
    )
    print(
        f"  CPU cores used: server {r['cores_server']}, PostgreSQL {r['cores_postgres']}, "
        f"generator {r['cores_generator']}, other processes {r['cores_other_processes']} "
        f"(per verification: server {r['server_cpu_us_per_verification']} us, PostgreSQL "
        f"{r['postgres_cpu_us_per_verification']} us, generator "
        f"{r['generator_cpu_us_per_verification']} us)"
    )
    print(
        f"  PostgreSQL transactions per verification: {r['pg_xacts_per_verification']} (each "
        f"statement is one), of which durable writes {r['pg_writes_per_verification']}"
    )
    print(
        f"hello-world: {r['hello_per_s']:.0f} req/s p99 {r['hello_p99_ms']} ms (same generator, "
        f"{r['generator']}); wrk -t2 -c{r['connections']}: {r['hello_wrk_per_s']} req/s p99 "
        f"{r['hello_wrk_p99_ms']} ms"
    )
    if "floor_flows_per_s" in r:
        print(
            f"machine floor, same run: bench.floor_app (plain ASGI on the same uvicorn + asyncpg,"
            f" no FastAPI, auth, HSM or call log; per flow one card read + one durable write): "
            f"{r['floor_flows_per_s']:.0f} flows/s, verify p99 {r['floor_verify_p99_ms']} ms, "
            f"CPU per flow server {r['floor_server_cpu_us_per_flow']} us + PostgreSQL "
            f"{r['floor_postgres_cpu_us_per_flow']} us (other processes "
            f"{r['floor_cores_other_processes']} cores); its hello-world "
            f"{r['floor_hello_per_s']:.0f} req/s"
        )
    if "pgbench_floor_tps" in r:
        print(
            f"machine floor, PostgreSQL alone: pgbench, the same two statements, "
            f"{r['connections']} clients: {r['pgbench_floor_tps']:.0f} verifications/s "
            f"(machine {r['pgbench_machine_cores']} cores busy)"
        )
    if "floor_flows_per_s" in r:
        print(
            f"verification = {r['ratio_to_floor']:.2f} x the floor; the {TARGET_PER_S:.0f}/s "
            f"target = {r['target_to_floor']:.2f} x the floor"
        )
    if "floor_hsm_flows_per_s" in r:
        print(
            f"machine floor with the HSM check, same run: bench.floor_app + the chip cryptogram "
            f"checked in the token: {r['floor_hsm_flows_per_s']:.0f} flows/s, verify p99 "
            f"{r['floor_hsm_verify_p99_ms']} ms, CPU per flow server "
            f"{r['floor_hsm_server_cpu_us_per_flow']} us + PostgreSQL "
            f"{r['floor_hsm_postgres_cpu_us_per_flow']} us; PostgreSQL transactions per flow "
            f"{r['floor_hsm_pg_xacts_per_flow']}, durable writes "
            f"{r['floor_hsm_pg_writes_per_flow']}"
        )
        print(
            f"[{r['verdict_ratio_to_floor_hsm']}] verification / floor with the HSM check = "
            f"{r['ratio_to_floor_hsm']:.3f} (limit >= {TARGET_RATIO_FLOOR_HSM})"
        )
    if "verifications_per_s_per_api_core" in r:
        print(
            f"throughput per core: {r['verifications_per_s_per_api_core']:.0f}/s per API server "
            f"core ({r['verifications_per_s_per_api_node_2_cores']:.0f}/s per 2-core API node), "
            f"{r['verifications_per_s_per_postgres_core']:.0f}/s per PostgreSQL core, "
            f"{r['verifications_per_s_per_machine_core']:.0f}/s per core of this machine (all "
            f"parts on it); 1-min load average at the start {r['load_average_1min']}"
        )
    if "cpu_budget_us_per_verification_at_target" in r:
        print(
            f"CPU budget at the {TARGET_PER_S:.0f}/s target on this machine: "
            f"{r['cpu_budget_us_per_verification_at_target']} us per verification for "
            f"everything (server, PostgreSQL, load generator); measured in this run, the parts "
            f"no implementation avoids (generator + the floor's server and PostgreSQL + the HSM "
            f"check alone, {r['hsm_check_cpu_us']} us): {r['cpu_us_no_implementation_avoids']} us"
        )
    if "audit_seal_per_s" in r:
        print(f"audit sealer: {r['audit_seal_per_s']:.0f} events/s ({r['audit_events_sealed']})")
    print(
        f"[{r['verdict_throughput']}] throughput {r['verifications_per_s']:.0f}/s "
        f"(target >= {TARGET_PER_S:.0f}/s)"
    )
    print(f"[{r['verdict_p99']}] verify p99 {r['verify_p99_ms']} ms (target <= {TARGET_P99_MS} ms)")
    print(
        f"[{r['verdict_ratio']}] ratio to hello-world {r['ratio']:.3f} (target >= "
        f"{TARGET_RATIO}); to wrk's hello-world {r['ratio_vs_wrk_hello']}"
    )


def main() -> dict[str, Any]:
    from devstack.dbserver import TemporaryPostgres

    tmp = Path(tempfile.mkdtemp(prefix="ykt-bench-verify-"))
    os.chmod(tmp, 0o755)
    data_dir = tmp / "data"
    try:
        with TemporaryPostgres(tmp / "pg", durable=True) as pg:
            settings = pg.settings_in_force()
            url = pg.create_database("bench")
            _setup_hsm(data_dir)
            token = _seed(url, CARDS)
            cards = [card_identifiers(i) for i in range(1, CARDS + 1)]
            from bench import ecard

            m = run(url, pg, data_dir, token, cards, ecard.seed_ecards(url, cards))
            seal = _seal_rate(url)
            return report(m, settings, CARDS, seal)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--generate":
        generator_main(sys.argv[2:])
    else:
        main()
