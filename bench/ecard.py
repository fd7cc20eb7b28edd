"""E-card verifications per second, beside the chip verification in the same run
(:func:`bench.verification.run` calls :func:`measure`; issue 21).

Setup: one live e-card per bench card (``ecards`` rows in bulk, bound to the bench's active
cards). Before each round, fresh codes are made and signed in the bench's SoftHSM token by the
issuer's signing key (:func:`issuance.services.ecard_token.encode`, what the resident's page
shows; each code is single use, so a round needs as many codes as it verifies) - this is not
timed. Load: a Python generator in its own process (asyncio, raw keep-alive HTTP/1.1,
``CONNECTIONS`` connections) posts each code once to ``POST /v1/ecard/verifications`` (the
product's ``ykt serve``, the same server as the chip figures): signature and expiry checked,
the nonce used once (``ecard_nonces``), the e-card and card read, the audit event written, all
committed durably. Only ``valid`` answers count; an error or ``invalid`` fails the benchmark.

The rounds alternate with short chip-verification rounds on the same server (``ROUNDS`` each),
so both figures come with their spread (min / median / max) measured under the same load from
the rest of the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import time
from array import array
from pathlib import Path
from typing import Any

ROUNDS = int(os.environ.get("YKT_BENCH_ECARD_ROUNDS", "3"))
#: codes made per round (the round ends early if it uses them all: the rate stays exact)
CODES = int(os.environ.get("YKT_BENCH_ECARD_CODES", "4000"))


def public_id(i: int) -> str:
    return (b"ykt-bench-ecard" + i.to_bytes(8, "big")).hex()[-32:]


def seed_ecards(url: str, cards: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """An e-card for each bench card ``i`` (card id = person id = i, as bench.verification
    seeds them); returns (e-card id, card number)."""
    import sqlalchemy as sa

    from issuance.db import make_engine
    from issuance.models import Ecard, utcnow

    engine = make_engine(url=url)
    rows, out = [], []
    for i, (_cic, number) in enumerate(cards, start=1):
        rows.append({"public_id": public_id(i), "person_id": i, "card_id": i,
                     "proof": "counter_identity_check", "issued_at": utcnow()})  # fmt: skip
        out.append((public_id(i), number))
    with engine.begin() as conn:
        conn.execute(sa.insert(Ecard), rows)
        conn.exec_driver_sql("ANALYZE ecards")
    engine.dispose()
    return out


def mint_codes(data_dir: Path, ecards: list[tuple[str, str]], count: int) -> list[str]:
    """``count`` fresh codes of random bench e-cards, signed in the HSM."""
    from hsm.service import Pkcs11KeyService
    from issuance.services import ecard_token
    from yikatong.settings import load_settings
    from yikatong.wiring import hsm_config

    settings = load_settings(environ={"YKT_DATA_DIR": str(data_dir)})
    keys = Pkcs11KeyService.from_config(hsm_config(settings))
    pem = keys.public_key_pem()
    life = settings.ecard.code_seconds + settings.ecard.code_grace_seconds
    now = int(time.time())
    rnd = random.Random()
    codes = []
    for _ in range(count):
        eid, number = ecards[rnd.randrange(len(ecards))]
        claims = ecard_token.Claims(bytes.fromhex(eid), ecard_token.card_ref(number), now,
                                    now + life, ecard_token.new_nonce())  # fmt: skip
        codes.append(ecard_token.encode(claims, pem, keys.sign))
    return codes


async def _conn(
    port: int, token: str, codes: list[str], until: float, tally: Any, lat: array[float]
) -> None:
    from bench.verification import _Conn, _request

    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Conn, "127.0.0.1", port)
    head = _request("POST", "/v1/ecard/verifications", token, b"")
    head = head.rsplit(b"Content-Length: 0", 1)[0]
    clock = time.perf_counter
    while clock() < until and codes:
        payload = json.dumps({"code": codes.pop()}).encode()
        t0 = clock()
        status, body = await conn.request(head + b"Content-Length: %d\r\n\r\n" % len(payload)
                                          + payload)  # fmt: skip
        t1 = clock()
        if status != 200:
            tally.errors += 1
            tally.first_error = tally.first_error or f"ecard {status}: {body[:200]!r}"
            continue
        if not json.loads(body)["valid"]:
            tally.invalid += 1
            tally.first_error = tally.first_error or f"invalid: {body[:200]!r}"
            continue
        tally.flows += 1
        lat.append(t1 - t0)
    assert conn.transport is not None
    conn.transport.close()


async def _generate(port: int, seconds: float, spec: dict[str, Any]) -> dict[str, Any]:
    from bench.verification import CONNECTIONS, _pct, _Tally

    tally = _Tally()
    lat: array[float] = array("d")
    codes = list(spec["codes"])
    start = time.perf_counter()
    cpu0 = time.process_time()
    await asyncio.gather(*(
        _conn(port, spec["token"], codes, start + seconds, tally, lat) for _ in range(CONNECTIONS)
    ))  # fmt: skip
    elapsed = time.perf_counter() - start
    return {
        "per_s": tally.flows / elapsed, "count": tally.flows, "errors": tally.errors,
        "invalid": tally.invalid, "first_error": tally.first_error, "elapsed": elapsed,
        "generator_cpu_s": time.process_time() - cpu0, "codes_left": len(codes),
        "verify_p50_ms": _pct(lat, 0.50), "verify_p99_ms": _pct(lat, 0.99),
    }  # fmt: skip


def generator_cmd(port: int, seconds: float, spec_dir: Path) -> list[str]:
    return [sys.executable, "-m", "bench.ecard", "--generate", str(port), str(seconds),
            str(spec_dir / "ecard.json")]  # fmt: skip


def measure(
    port: int, seconds: float, spec_dir: Path, procs: Any, data_dir: Path, token: str,
    ecards: list[tuple[str, str]],
) -> dict[str, Any]:  # fmt: skip
    """``ROUNDS`` e-card rounds alternating with chip rounds on the running server."""
    from bench.verification import _run_generator

    chip, ecard = [], []
    for _ in range(ROUNDS):
        chip.append(_run_generator("verify", port, seconds, spec_dir, procs))
        codes = mint_codes(data_dir, ecards, CODES)
        (spec_dir / "ecard.json").write_text(json.dumps({"token": token, "codes": codes}))
        ecard.append(_run_generator("ecard", port, seconds, spec_dir, procs))
    return {"chip_rounds": chip, "ecard_rounds": ecard}


def spread(rounds: list[dict[str, Any]], key: str = "per_s") -> dict[str, float]:
    values = [r[key] for r in rounds]
    return {"min": round(min(values), 1), "median": round(statistics.median(values), 1),
            "max": round(max(values), 1)}  # fmt: skip


def report(m: dict[str, Any]) -> dict[str, Any]:
    """The e-card figures (and the alternating chip rounds') with their spread; raise if an
    e-card verification failed."""
    chip, ecard = m["chip_rounds"], m["ecard_rounds"]
    bad = [r for r in ecard + chip if r["errors"] or r["invalid"]]
    e, c = spread(ecard), spread(chip)
    ep99 = spread(ecard, "verify_p99_ms")
    cpu = [r["server_cores"] / r["per_s"] * 1e6 for r in ecard if r["per_s"]]
    pg = [r["postgres_cores"] / r["per_s"] * 1e6 for r in ecard if r["per_s"]]
    out = {
        "ecard_verifications_per_s": e["median"],
        "ecard_per_s_min": e["min"], "ecard_per_s_max": e["max"],
        "ecard_verify_p99_ms_median": ep99["median"],
        "ecard_server_cpu_us_per_verification": round(statistics.median(cpu), 1) if cpu else None,
        "ecard_postgres_cpu_us_per_verification": round(statistics.median(pg), 1) if pg else None,
        "chip_rounds_per_s_median": c["median"],
        "chip_rounds_per_s_min": c["min"], "chip_rounds_per_s_max": c["max"],
        "ecard_rounds": len(ecard),
    }  # fmt: skip
    print(
        f"e-card: {e['median']:.0f} valid verifications/s (median of {len(ecard)} rounds, "
        f"min {e['min']:.0f}, max {e['max']:.0f}; each {[round(r['per_s']) for r in ecard]}); "
        f"verify p99 {ep99['median']} ms; CPU per verification server "
        f"{out['ecard_server_cpu_us_per_verification']} us, PostgreSQL "
        f"{out['ecard_postgres_cpu_us_per_verification']} us"
    )
    print(
        f"  chip rounds alternating with them: {c['median']:.0f}/s median (min {c['min']:.0f},"
        f" max {c['max']:.0f}; each {[round(r['per_s']) for r in chip]})"
    )
    if bad:
        raise RuntimeError(f"e-card bench: errors or invalid answers ({bad[0]['first_error']})")
    return out


def generator_main(argv: list[str]) -> None:
    port, seconds, spec_file = int(argv[0]), float(argv[1]), argv[2]
    spec = json.loads(Path(spec_file).read_text())
    try:
        import uvloop

        result = uvloop.run(_generate(port, seconds, spec))
    except ImportError:
        result = asyncio.run(_generate(port, seconds, spec))
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--generate":
        generator_main(sys.argv[2:])
    else:
        from bench import verification

        verification.main()
