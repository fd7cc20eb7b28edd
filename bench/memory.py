"""Memory: a 1,000,000-card refusal status list streamed from PostgreSQL stays under 1 GiB RSS.

What it does:

1. starts a throwaway PostgreSQL cluster (:class:`issuance.dbserver.TemporaryPostgres`),
   migrates a database with the product's migrations and bulk-inserts 1,000,000 persons and
   1,000,000 cards, every one in a state a terminal must refuse (suspended, lost, damaged,
   replaced, expired, cancelled) with ``INSERT ... SELECT generate_series``
   (:func:`bench.scale.fill`);
2. in a fresh child process (so its peak RSS is the generator's alone, not the builder's),
   streams those cards with a server-side cursor (SQLAlchemy ``yield_per``: 10,000 rows per
   fetch) into a status list file — one line ``card identification code, card number, province
   status code`` per card — hashing as it writes, then signs the SHA-256 with an ECDSA P-256 key
   (the product signs with the HSM's signing key through the same ``sign()`` port; a software
   key here keeps the figure about memory, not the HSM);
3. prints the child's peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) beside the 1 GiB
   limit, and the same child's baseline RSS before streaming (interpreter + libraries).

The database server's own memory is not counted (it is the database's, bounded by its
configuration). Run alone: ``python -m bench.memory`` (~1 minute here).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

CARDS = 1_000_000
LIMIT_BYTES = 1 << 30
FETCH = 10_000


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _stream(url: str, out_path: str, queue: Any) -> None:
    """Child process: stream the refusal list into a signed file; report figures."""
    import sqlalchemy as sa
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    from bench.scale import REFUSED
    from issuance.db import make_engine
    from issuance.lifecycle import PROVINCE_STATUS_CODES
    from issuance.models import Card, CardStatus

    baseline = _rss_now()
    codes = {str(s): PROVINCE_STATUS_CODES[s] for s in CardStatus}
    engine = make_engine(url=url)
    digest = hashlib.sha256()
    n = 0
    start = time.perf_counter()
    stmt = (
        sa.select(Card.card_identification_code, Card.card_number, Card.status)
        .where(Card.status.in_(REFUSED))
        .order_by(Card.id)
        .execution_options(yield_per=FETCH)  # server-side cursor, FETCH rows at a time
    )
    with engine.connect() as conn, open(out_path, "wb") as out:
        header = b"# yikatong refusal status list v1: card_identification_code,card_number,code\n"
        out.write(header)
        digest.update(header)
        for part in conn.execute(stmt).partitions():
            chunk = "".join(f"{c},{num},{codes[str(s)]}\n" for c, num, s in part).encode("ascii")
            out.write(chunk)
            digest.update(chunk)
            n += len(part)
    key = ec.generate_private_key(ec.SECP256R1())
    signature = key.sign(digest.digest(), ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    Path(out_path + ".sig").write_bytes(signature)
    engine.dispose()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    queue.put(
        {
            "entries": n,
            "seconds": time.perf_counter() - start,
            "baseline_rss": baseline,
            "peak_rss": peak,
            "file_bytes": Path(out_path).stat().st_size,
            "sha256": digest.hexdigest(),
        }
    )


def main() -> dict[str, Any]:
    from bench.scale import REFUSED, fill, migrated_database
    from issuance.dbserver import TemporaryPostgres

    with (
        tempfile.TemporaryDirectory(prefix="ykt-bench-memory-") as tmp,
        TemporaryPostgres(Path(tmp) / "pg") as pg,
    ):
        url = migrated_database(pg, "memory")
        print(f"inserting {CARDS:,} refused cards ...")
        build = fill(url, CARDS, statuses=REFUSED, quiet=True)
        print(f"built in {build:.1f} s")
        ctx = multiprocessing.get_context("spawn")  # a clean child: its peak is the stream's
        queue = ctx.Queue()
        child = ctx.Process(target=_stream, args=(url, str(Path(tmp) / "status.csv"), queue))
        child.start()
        r = queue.get(timeout=600)
        child.join()
    if r["entries"] != CARDS:
        raise AssertionError(f"{r['entries']} entries streamed, {CARDS} expected")
    peak, base = r["peak_rss"], r["baseline_rss"]
    print(
        f"status list: {r['entries']:,} cards, {r['file_bytes'] / 1e6:.1f} MB, signed, "
        f"in {r['seconds']:.1f} s ({r['entries'] / r['seconds']:,.0f} cards/s)"
    )
    print(
        f"peak RSS {peak / 2**20:.0f} MiB (baseline {base / 2**20:.0f} MiB before streaming) "
        f"vs limit {LIMIT_BYTES / 2**20:.0f} MiB: ratio {peak / LIMIT_BYTES:.3f}"
        f" -> {'OK' if peak < LIMIT_BYTES else 'OVER'}"
    )
    return {
        "status_list_cards": r["entries"],
        "status_list_seconds": round(r["seconds"], 1),
        "status_list_peak_rss_mib": round(peak / 2**20, 1),
        "baseline_rss_mib": round(base / 2**20, 1),
        "limit_mib": LIMIT_BYTES // 2**20,
        "ratio_to_limit": round(peak / LIMIT_BYTES, 3),
        "db_build_seconds": round(build, 1),
    }


if __name__ == "__main__":
    main()
