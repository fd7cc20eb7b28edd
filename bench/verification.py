"""Verification API throughput and latency, beside a hello-world endpoint of the same server.

Setup (all throwaway, under a temporary directory): a PostgreSQL cluster
(:class:`issuance.dbserver.TemporaryPostgres`), a SoftHSM2 token with issuer master keys, a
signing key and a transport key; ``CARDS`` active cards seeded in bulk; one hospital client.
Each card's internal-authentication key is exported from the HSM (wrapped under the transport
key, as for a card bureau) so the load generator can answer like the chips do.

Server: the real one, ``uvicorn api.app:app_from_env --factory --workers 2`` (uvloop,
httptools, no access log).

Load: a Python asyncio load generator over raw keep-alive HTTP/1.1 connections (wrk cannot
compute a card's 3DES answer between two requests), ``CONNECTIONS`` connections. One
*verification* = ``POST /v1/verifications/challenge`` + the card's INTERNAL AUTHENTICATE answer
computed by the generator + ``POST /v1/verifications`` (challenge consumed, HSM cryptogram check,
card and application status, audit event). The hello-world figure is ``GET /v1/hello`` with the
same generator and connections, in the same run (and with wrk too when installed, for scale).

Targets (issue 7): >= 3,000 verifications/s, p99 <= 20 ms, >= 30 % of hello-world.
Everything (server, PostgreSQL, load generator) shares this machine's cores: the figures are
what a 2-core box does when it also generates its own load. Run alone: ``python -m
bench.verification`` (``YKT_BENCH_SECONDS``, ``YKT_BENCH_CARDS`` to change the run).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

SECONDS = float(os.environ.get("YKT_BENCH_SECONDS", "10"))
CARDS = int(os.environ.get("YKT_BENCH_CARDS", "2000"))
CONNECTIONS = 32
WORKERS = 2
ROOT = Path(__file__).resolve().parent.parent
TRANSPORT = bytes.fromhex("00112233445566778899AABBCCDDEEFF")


def _master(slot: Any) -> bytes:
    return hashlib.sha256(f"ykt-bench:{slot.value}".encode()).digest()[:16]


def _setup_hsm(data_dir: Path) -> None:
    from cardspec import keyscheme
    from cardspec.keyscheme import Algorithm, KeySlot
    from hsm import ceremony, softhsm
    from hsm.config import HsmConfig
    from hsm.pkcs11 import open_token
    from issuance.settings import load_settings

    config = HsmConfig.from_settings(load_settings(environ={"YKT_DATA_DIR": str(data_dir)}))
    softhsm.ensure_token(config)
    token = open_token(config)
    alg = Algorithm.DES3
    for slot in KeySlot:
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


@dataclass
class Seeded:
    token: str
    cards: list[tuple[str, str, bytes]]  # (cic, card number, IRK)


def _seed(url: str, data_dir: Path, n: int) -> Seeded:
    import sqlalchemy as sa
    from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

    from cardspec.ids import make_card_identification_code, make_card_number
    from cardspec.keyscheme import KeySlot
    from hsm.config import HsmConfig
    from hsm.service import CardKeyRef, Pkcs11KeyService
    from issuance import migrations, services
    from issuance.db import make_engine, make_sessionmaker, transaction
    from issuance.models import AgencyKind, Card, ChipApplication, Person
    from issuance.services import credentials
    from issuance.settings import load_settings

    engine = make_engine(url=url)
    migrations.upgrade(engine)
    today = date.today()
    persons, cards, apps, out = [], [], [], []
    for i in range(1, n + 1):
        cic = make_card_identification_code("330100", i.to_bytes(8, "big"))
        number = make_card_number("B" + str(i).zfill(7))
        persons.append({"id": i, "citizen_id": _cid(i * 7919), "name": "张三", "sex": "1",
                        "birth_date": date(1980, 1, 1), "region_code": "330106"})  # fmt: skip
        cards.append({"id": i, "card_number": number, "card_identification_code": cic,
                      "kind": "formal", "status": "active", "person_id": i,
                      "region_code": "330100", "key_version": 1, "algorithm": "3des",
                      "issue_date": today,
                      "expiry_date": today + timedelta(days=3650)})  # fmt: skip
        for kind in ("social_security", "medical", "pension"):
            apps.append({"card_id": i, "kind": kind, "status": "active"})
        out.append((cic, number))
    with engine.begin() as conn:
        conn.execute(sa.insert(Person), persons)
        conn.execute(sa.insert(Card), cards)
        conn.execute(sa.insert(ChipApplication), apps)
        if engine.dialect.name == "postgresql":
            for table in ("persons", "cards", "chip_applications"):
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
            conn.exec_driver_sql("ANALYZE")
    with transaction(make_sessionmaker(engine)) as s:
        agency = services.create_agency(
            s, "bench-hospital", "Bench Hospital", AgencyKind.HOSPITAL, "330100"
        )
        new = credentials.register_agency_client(s, agency)
        assert new.client_secret is not None
        token = credentials.issue_token(
            s, new.client_id, new.client_secret, ttl=timedelta(hours=2)
        ).access_token
    engine.dispose()
    keys = Pkcs11KeyService.from_config(
        HsmConfig.from_settings(load_settings(environ={"YKT_DATA_DIR": str(data_dir)}))
    )
    seeded = []
    for cic, number in out:
        wrapped = keys.export_card_keys(CardKeyRef(cic), [KeySlot.IRK], "bench")[KeySlot.IRK]
        seeded.append((cic, number, aes_key_unwrap_with_padding(TRANSPORT, wrapped)))
    return Seeded(token, seeded)


# --- load generator ---------------------------------------------------------------------------
@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)  # seconds, per request of interest
    flows: int = 0
    errors: int = 0
    invalid: int = 0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length) if length else b""
    return status, body


def _request(method: str, path: str, token: str | None, body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def _verify_conn(
    port: int, token: str, cards: list[tuple[str, str, bytes]], until: float, stats: Stats
) -> None:
    from cardspec import keyscheme
    from cardspec.keyscheme import Algorithm

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    challenge_req = _request("POST", "/v1/verifications/challenge", token, b"")
    rnd = random.Random()
    try:
        while time.perf_counter() < until:
            cic, number, irk = cards[rnd.randrange(len(cards))]
            t0 = time.perf_counter()
            writer.write(challenge_req)
            status, body = await _read_response(reader)
            if status != 200:
                stats.errors += 1
                continue
            ch = json.loads(body)
            challenge = bytes.fromhex(ch["challenge"])
            answer = keyscheme.internal_auth_response(
                irk, challenge[:8], challenge[8:], Algorithm.DES3
            )
            payload = json.dumps(
                {"challenge_id": ch["challenge_id"], "card_identification_code": cic,
                 "card_number": number, "response": answer.hex(), "application": "medical"}
            ).encode()  # fmt: skip
            t1 = time.perf_counter()
            writer.write(_request("POST", "/v1/verifications", token, payload))
            status, body = await _read_response(reader)
            t2 = time.perf_counter()
            if status != 200:
                stats.errors += 1
                continue
            if not json.loads(body)["valid"]:
                stats.invalid += 1
            stats.flows += 1
            stats.latencies.append(t2 - t1)
            stats.latencies.append(t1 - t0)  # the challenge request is part of the flow too
    finally:
        writer.close()


async def _hello_conn(port: int, until: float, stats: Stats) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    req = _request("GET", "/v1/hello", None)
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(req)
            status, _ = await _read_response(reader)
            if status != 200:
                stats.errors += 1
                continue
            stats.flows += 1
            stats.latencies.append(time.perf_counter() - t0)
    finally:
        writer.close()


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))] * 1000.0


async def _load(kind: str, port: int, seconds: float, seeded: Seeded | None) -> dict[str, float]:
    stats = Stats()
    start = time.perf_counter()
    until = start + seconds
    if kind == "hello":
        conns = [_hello_conn(port, until, stats) for _ in range(CONNECTIONS)]
    else:
        assert seeded is not None
        conns = [
            _verify_conn(port, seeded.token, seeded.cards, until, stats) for _ in range(CONNECTIONS)
        ]
    await asyncio.gather(*conns)
    elapsed = time.perf_counter() - start
    return {
        "per_s": stats.flows / elapsed,
        "p50_ms": _pct(stats.latencies, 0.50),
        "p99_ms": _pct(stats.latencies, 0.99),
        "errors": stats.errors,
        "invalid": stats.invalid,
    }


def _run_load(kind: str, port: int, seconds: float, seeded: Seeded | None) -> dict[str, float]:
    try:
        import uvloop

        return uvloop.run(_load(kind, port, seconds, seeded))
    except ImportError:
        return asyncio.run(_load(kind, port, seconds, seeded))


def _wrk_hello(port: int, seconds: float) -> float | None:
    if shutil.which("wrk") is None:
        return None
    proc = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{max(1, int(seconds))}s",
         f"http://127.0.0.1:{port}/v1/hello"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    return None


def _start_server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.app:app_from_env", "--factory",
         "--workers", str(WORKERS), "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log", "--loop", "uvloop", "--http", "httptools",
         "--log-level", "warning"],
        env=env, cwd=ROOT,
    )  # fmt: skip
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the API server did not start")


def main() -> dict[str, Any]:
    from issuance.dbserver import TemporaryPostgres, free_port

    tmp = Path(tempfile.mkdtemp(prefix="ykt-bench-verify-"))
    os.chmod(tmp, 0o755)
    data_dir = tmp / "data"
    try:
        with TemporaryPostgres(tmp / "pg") as pg:
            url = pg.create_database("bench")
            _setup_hsm(data_dir)
            seeded = _seed(url, data_dir, CARDS)
            env = {**os.environ, "YKT_DATA_DIR": str(data_dir), "YKT_DATABASE__URL": url}
            env.pop("YKT_CONFIG", None)
            port = free_port()
            server = _start_server(env, port)
            try:
                _run_load("verify", port, 1.0, seeded)  # warm-up: HSM sessions, pools
                _run_load("hello", port, 1.0, None)
                verify = _run_load("verify", port, SECONDS, seeded)
                hello = _run_load("hello", port, SECONDS / 2, None)
                wrk = _wrk_hello(port, SECONDS / 2)
            finally:
                server.terminate()
                server.wait(timeout=20)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = verify["per_s"] / hello["per_s"] if hello["per_s"] else 0.0
    result = {
        "verifications_per_s": round(verify["per_s"], 1),
        "verification_p50_ms": round(verify["p50_ms"], 2),
        "verification_p99_ms": round(verify["p99_ms"], 2),
        "verification_errors": verify["errors"],
        "verification_invalid": verify["invalid"],
        "hello_per_s": round(hello["per_s"], 1),
        "hello_p99_ms": round(hello["p99_ms"], 2),
        "hello_wrk_per_s": None if wrk is None else round(wrk, 1),
        "limit": round(hello["per_s"], 1),
        "ratio": round(ratio, 3),
        "target_verifications_per_s": 3000,
        "target_p99_ms": 20,
        "target_ratio": 0.30,
        "connections": CONNECTIONS,
        "workers": WORKERS,
        "cards": CARDS,
        "seconds": SECONDS,
    }
    print(
        f"verification: {result['verifications_per_s']:.0f} verifications/s "
        f"(challenge + verify, {CONNECTIONS} connections, {WORKERS} workers, PostgreSQL, "
        f"SoftHSM), p50 {result['verification_p50_ms']} ms, p99 "
        f"{result['verification_p99_ms']} ms per request; errors {verify['errors']}, "
        f"invalid {verify['invalid']}"
    )
    print(
        f"hello-world (same server, same generator): {result['hello_per_s']:.0f} req/s, p99 "
        f"{result['hello_p99_ms']} ms; wrk: {result['hello_wrk_per_s']} req/s"
    )
    print(
        f"ratio verifications/s : hello req/s = {ratio:.3f} (target >= 0.30); targets "
        f">= 3000/s, p99 <= 20 ms"
    )
    return result


if __name__ == "__main__":
    main()
