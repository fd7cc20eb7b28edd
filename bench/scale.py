"""Status lookups at province scale: PostgreSQL with 10 million cards vs 100,000.

What it does, in a throwaway PostgreSQL cluster (:class:`issuance.dbserver.TemporaryPostgres`,
deleted afterwards):

1. migrates an empty database (the product's Alembic migrations: same tables, same indexes);
2. bulk-inserts N persons and N cards with ``INSERT ... SELECT generate_series`` (one statement
   per million rows, indexes in place, as a growing database has them), then ``ANALYZE``;
   the build time is printed;
3. times the three status lookups the verification path and the lifecycle make — card by card
   identification code, card by card number, the person's cards by social security number —
   2,000 random keys each, one indexed query per lookup on one connection, and prints p50/p99
   beside the same lookups on a 100,000-card database built the same way in the same run
   (the limit: the lookups must stay flat, ratio p99(N) / p99(100k) close to 1);
4. shows ``EXPLAIN`` for each lookup (it must be an index scan, never a sequential scan).

Size: ``YKT_BENCH_SCALE_ROWS`` (default :data:`DEFAULT_ROWS`). On this 2-core machine building
10,000,000 cards takes longer than the ~3 minutes a ``make bench`` step may use, so the default
is the largest round size that fits; set ``YKT_BENCH_SCALE_ROWS=10000000`` for the 10M figure
(the printout says so). Run alone: ``python -m bench.scale``.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

TARGET_ROWS = 10_000_000
#: Largest round size that builds in ~3 minutes here (measured: ~28 s per million cards and
#: persons on 2 cores, so 10M takes ~5 min or more: past the ~3 min a bench step may use).
DEFAULT_ROWS = 5_000_000
SMALL_ROWS = 100_000
CHUNK = 1_000_000
LOOKUPS = 2_000
REGION = "330106"
BIRTH0 = date(1940, 1, 1)
DAYS = 25_000  # birth dates spread over ~68 years; x 1000 sequence numbers = 25M people

#: The statuses a terminal must refuse (for the status feed / memory bench).
REFUSED = ("suspended", "lost_provisional", "lost_formal", "damaged", "replaced", "expired",
           "cancelled")  # fmt: skip


def citizen_id(n: int) -> str:
    """The (synthetic) 18-character number of person ``n`` — same formula as the SQL below."""
    birth = BIRTH0 + timedelta(days=n % DAYS)
    return f"{REGION}{birth:%Y%m%d}{(n // DAYS) % 1000:03d}X"


def card_number(n: int) -> str:
    return f"B{n:08d}"


def card_code(n: int) -> str:
    return f"330100D156000005{n:016X}"


def _psql_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def fill(
    url: str, rows: int, *, statuses: tuple[str, ...] = ("active",), quiet: bool = False
) -> float:
    """Insert persons 1..rows and one card each (status cycling through ``statuses``);
    ANALYZE. Returns the seconds taken."""
    import psycopg

    status_sql = "(ARRAY[" + ",".join(f"'{s}'" for s in statuses) + f"])[1 + g % {len(statuses)}]"
    start = time.perf_counter()
    with psycopg.connect(_psql_url(url), autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        for lo in range(1, rows + 1, CHUNK):
            hi = min(rows, lo + CHUNK - 1)
            conn.execute(
                f"""INSERT INTO persons (id, citizen_id, name, sex, birth_date, region_code,
                                         created_at)
                SELECT g,
                       '{REGION}' || to_char(DATE '{BIRTH0}' + (g % {DAYS}), 'YYYYMMDD')
                         || lpad(((g / {DAYS}) % 1000)::text, 3, '0') || 'X',
                       '测试' || g, '1', DATE '{BIRTH0}' + (g % {DAYS}), '{REGION}', now()
                FROM generate_series({lo}, {hi}) AS g"""
            )
            conn.execute(
                f"""INSERT INTO cards (id, card_number, card_identification_code, kind, status,
                                       status_changed_at, person_id, region_code, key_version,
                                       algorithm, fee_fen, created_at, version, issue_date,
                                       expiry_date)
                SELECT g, 'B' || lpad(g::text, 8, '0'),
                       '330100D156000005' || lpad(upper(to_hex(g)), 16, '0'),
                       'formal', {status_sql}, now(), g, '330100', 1, '3des', 0, now(), 1,
                       DATE '2024-01-01', DATE '2034-01-01'
                FROM generate_series({lo}, {hi}) AS g"""
            )
            if not quiet:
                print(f"  {hi:>12,} cards  {time.perf_counter() - start:6.1f} s", flush=True)
        conn.execute("SELECT setval(pg_get_serial_sequence('persons', 'id'), %s)", (rows,))
        conn.execute("SELECT setval(pg_get_serial_sequence('cards', 'id'), %s)", (rows,))
        conn.execute("ANALYZE persons")
        conn.execute("ANALYZE cards")
    return time.perf_counter() - start


def migrated_database(pg: Any, name: str) -> str:
    from issuance import migrations
    from issuance.db import make_engine

    url = str(pg.create_database(name))
    engine = make_engine(url=url)
    migrations.upgrade(engine)
    engine.dispose()
    return url


LOOKUP_SQL = {
    "by card identification code": (
        "SELECT c.status, c.card_number, p.name FROM cards c JOIN persons p ON p.id = c.person_id "
        "WHERE c.card_identification_code = %s",
        card_code,
    ),
    "by card number": (
        "SELECT c.status, c.card_identification_code FROM cards c WHERE c.card_number = %s",
        card_number,
    ),
    "by person SSN": (
        "SELECT c.id, c.status, c.kind FROM persons p JOIN cards c ON c.person_id = p.id "
        "WHERE p.citizen_id = %s",
        citizen_id,
    ),
}


def _ms(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def time_lookups(url: str, rows: int, seed: int = 7) -> dict[str, dict[str, Any]]:
    """p50/p99 (ms) of each lookup over LOOKUPS random existing keys, and its plan."""
    import psycopg

    rnd = random.Random(seed)
    out: dict[str, dict[str, Any]] = {}
    with psycopg.connect(_psql_url(url), autocommit=True) as conn:
        for name, (sql, key) in LOOKUP_SQL.items():
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, (key(rows // 2),)))
            keys = [key(rnd.randint(1, rows)) for _ in range(LOOKUPS)]
            for k in keys[:100]:  # warm the connection / plan cache
                conn.execute(sql, (k,)).fetchall()
            times = []
            for k in keys:
                t0 = time.perf_counter()
                found = conn.execute(sql, (k,)).fetchall()
                times.append(time.perf_counter() - t0)
                assert found, f"{name}: key not found"
            out[name] = {"p50_ms": _ms(times, 50), "p99_ms": _ms(times, 99), "plan": plan}
    return out


def main() -> dict[str, Any]:
    from issuance.dbserver import TemporaryPostgres

    rows = int(os.environ.get("YKT_BENCH_SCALE_ROWS", DEFAULT_ROWS))
    figures: dict[str, Any] = {"rows": rows}
    if rows < TARGET_ROWS:
        print(
            f"NOTE: building {rows:,} cards (default: what builds in ~3 min on this machine). "
            f"The 10M-card figure needs YKT_BENCH_SCALE_ROWS={TARGET_ROWS}."
        )
    with (
        tempfile.TemporaryDirectory(prefix="ykt-bench-scale-") as tmp,
        TemporaryPostgres(Path(tmp) / "pg") as pg,
    ):
        small_url = migrated_database(pg, "scale_small")
        fill(small_url, SMALL_ROWS, quiet=True)
        small = time_lookups(small_url, SMALL_ROWS)
        big_url = migrated_database(pg, "scale_big")
        print(f"building {rows:,} persons + {rows:,} cards ...")
        build = fill(big_url, rows)
        figures["build_seconds"] = round(build, 1)
        figures["build_rows_per_s"] = round(rows / build)
        print(f"built {rows:,} cards in {build:.1f} s ({rows / build:,.0f} cards/s)")
        if rows < TARGET_ROWS:
            estimate = build * TARGET_ROWS / rows
            figures["estimated_10M_build_seconds"] = round(estimate)
            print(f"(10M cards would take ~{estimate / 60:.0f} min to build here)")
        big = time_lookups(big_url, rows)
    print(f"\n{'lookup':32} {'p50 ms':>8} {'p99 ms':>8} | at {SMALL_ROWS:,}: p50 / p99 | ratio p99")
    all_indexed = True
    for name in LOOKUP_SQL:
        b, s = big[name], small[name]
        ratio = b["p99_ms"] / s["p99_ms"] if s["p99_ms"] else float("inf")
        indexed = "Index" in b["plan"] and "Seq Scan" not in b["plan"]
        all_indexed &= indexed
        print(
            f"{name:32} {b['p50_ms']:8.3f} {b['p99_ms']:8.3f} | "
            f"{s['p50_ms']:8.3f} / {s['p99_ms']:8.3f} | {ratio:5.2f}"
            f"  {'index scan' if indexed else 'NOT INDEXED'}"
        )
        key = name.replace(" ", "_")
        figures[f"{key}_p50_ms"] = round(b["p50_ms"], 3)
        figures[f"{key}_p99_ms"] = round(b["p99_ms"], 3)
        figures[f"{key}_p99_ms_at_100k"] = round(s["p99_ms"], 3)
        figures[f"{key}_p99_ratio"] = round(ratio, 2)
    print("\nEXPLAIN at full size:")
    for name in LOOKUP_SQL:
        print(f"-- {name}\n{big[name]['plan']}")
    figures["all_lookups_indexed"] = all_indexed
    if not all_indexed:
        raise AssertionError("a status lookup is not using an index")
    return figures


if __name__ == "__main__":
    main()
