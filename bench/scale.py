"""Province scale: the product's lookups and the verification API on 10 million cards.

What it does, in a throwaway PostgreSQL cluster with its durable defaults
(:class:`devstack.dbserver.TemporaryPostgres` ``durable=True``; bigger ``shared_buffers`` and
``max_wal_size`` for the bulk load), deleted afterwards:

1. migrates an empty database (the product's Alembic migrations);
2. bulk-loads N persons, N cards and ``APPS_PER_CARD`` chip applications per card (social
   security and medical, active): the foreign keys, unique constraints and secondary indexes
   of those three tables are dropped first and re-created afterwards *from their own
   definitions* (read from the catalogue), which is what a bulk load does; the result is
   checked against the models (``migrations.drift`` is empty: the schema is the product's);
   then ``ANALYZE``. The build time is printed;
3. times, at N and on a 100,000-card database built the same way in the same run (the limit:
   lookups must stay flat, p99(N) / p99(100k) close to 1), 2,000 random existing keys each:

   * the verification path's own lookup statement (``issuance.services.verification``'s
     ``SQL_LOOKUP``: card + holder + chip application by card identification code, one
     query; the challenge is stateless, see that module), as the API sends it;
   * ``find_card`` by card number and by card identification code (the ORM function the
     lifecycle uses, through a Session);
   * the person's cards by social security number;

4. shows ``EXPLAIN`` for each (index scans only; a sequential scan fails the benchmark);
5. runs the verification API benchmark (:func:`bench.verification.run`, ``ykt serve`` + the
   wrk flow) against the N-card database, on 2,000 random cards of it.

Size: ``YKT_BENCH_SCALE_ROWS`` (default 10,000,000). ``YKT_BENCH_SCALE_API=0`` skips step 5.
Run alone: ``python -m bench.scale``.
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
DEFAULT_ROWS = TARGET_ROWS
SMALL_ROWS = 100_000
CHUNK = 1_000_000
LOOKUPS = 2_000
APPS_PER_CARD = ("social_security", "medical")
REGION = "330106"
BIRTH0 = date(1940, 1, 1)
DAYS = 25_000  # birth dates spread over ~68 years; x 1000 sequence numbers = 25M people
#: Server settings for the bulk load (durability untouched: fsync, synchronous_commit and
#: full_page_writes keep their defaults; the loading session alone commits asynchronously).
PG_SETTINGS = {
    "shared_buffers": "2GB",
    "max_wal_size": "16GB",
    "checkpoint_timeout": "30min",
    "max_parallel_maintenance_workers": "2",
}
LOADED_TABLES = ("persons", "cards", "chip_applications")

#: The statuses a terminal must refuse (for the status feed / memory bench).
REFUSED = ("suspended", "lost_provisional", "lost_formal", "damaged", "replaced", "expired",
           "cancelled")  # fmt: skip


def citizen_id(n: int) -> str:
    """The (synthetic) 18-character number of person ``n`` — same formula as the SQL below."""
    birth = BIRTH0 + timedelta(days=n % DAYS)
    return f"{REGION}{birth:%Y%m%d}{(n // DAYS) % 1000:03d}X"


def card_number(n: int) -> str:
    return f"B{n:08d}"


def phone(n: int) -> str:
    """Person ``n``'s phone number when loaded with ``phones=True``."""
    return f"139{n:08d}"


def name(n: int) -> str:
    return f"测试{n}"


def birth_date(n: int) -> date:
    return BIRTH0 + timedelta(days=n % DAYS)


def card_code(n: int) -> str:
    return f"330100D156000005{n:016X}"


def _psql_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def detach(conn: Any, loaded: tuple[str, ...] = LOADED_TABLES) -> list[str]:
    """Drop the foreign keys, unique constraints and secondary indexes of the ``loaded``
    tables (primary keys stay: rows arrive in id order); return the statements re-creating
    them."""
    tables = list(loaded)
    fks = conn.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE contype = 'f' AND conrelid::regclass::text = ANY(%s)",
        (tables,),
    ).fetchall()
    uniques = conn.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE contype = 'u' AND conrelid::regclass::text = ANY(%s)",
        (tables,),
    ).fetchall()
    indexes = conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " WHERE i.indrelid::regclass::text = ANY(%s) AND NOT i.indisprimary"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        (tables,),
    ).fetchall()
    for table, name, _ in fks:
        conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for table, name, _ in uniques:
        conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    return (
        [f'ALTER TABLE {t} ADD CONSTRAINT "{n}" {d}' for t, n, d in uniques]
        + [d for _, d in indexes]
        + [f'ALTER TABLE {t} ADD CONSTRAINT "{n}" {d}' for t, n, d in fks]
    )


def fill(
    url: str,
    rows: int,
    *,
    statuses: tuple[str, ...] = ("active",),
    quiet: bool = False,
    phones: bool = False,
) -> float:
    """Insert persons 1..rows, one card each (status cycling through ``statuses``) and its
    chip applications; re-create the constraints and indexes; ANALYZE. Returns the seconds.
    ``phones``: each person also has a phone number, :func:`phone` (the person search)."""
    import psycopg

    status_sql = "(ARRAY[" + ",".join(f"'{s}'" for s in statuses) + f"])[1 + g % {len(statuses)}]"
    phone_sql = "'139' || lpad(g::text, 8, '0')" if phones else "NULL"
    start = time.perf_counter()
    with psycopg.connect(_psql_url(url), autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("SET synchronous_commit = off")  # this session only: a bulk load
        recreate = detach(conn)
        for lo in range(1, rows + 1, CHUNK):
            hi = min(rows, lo + CHUNK - 1)
            conn.execute(
                f"""INSERT INTO persons (id, citizen_id, name, sex, birth_date, region_code,
                                         created_at, phone)
                SELECT g,
                       '{REGION}' || to_char(DATE '{BIRTH0}' + (g % {DAYS}), 'YYYYMMDD')
                         || lpad(((g / {DAYS}) % 1000)::text, 3, '0') || 'X',
                       '测试' || g, '1', DATE '{BIRTH0}' + (g % {DAYS}), '{REGION}', now(),
                       {phone_sql}
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
            for k, kind in enumerate(APPS_PER_CARD):
                conn.execute(
                    f"""INSERT INTO chip_applications (id, card_id, kind, status,
                                                       status_changed_at, pin_set, version)
                    SELECT (g - 1) * {len(APPS_PER_CARD)} + {k + 1}, g, '{kind}', 'active',
                           now(), false, 1
                    FROM generate_series({lo}, {hi}) AS g"""
                )
            if not quiet:
                print(f"  {hi:>12,} cards  {time.perf_counter() - start:6.1f} s", flush=True)
        loaded = time.perf_counter() - start
        for sql in recreate:
            conn.execute(sql)
        if not quiet:
            print(
                f"  constraints and indexes re-created ({len(recreate)}) "
                f"{time.perf_counter() - start:6.1f} s (load {loaded:.1f} s)",
                flush=True,
            )
        conn.execute("SELECT setval(pg_get_serial_sequence('persons', 'id'), %s)", (rows,))
        conn.execute("SELECT setval(pg_get_serial_sequence('cards', 'id'), %s)", (rows,))
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('chip_applications', 'id'), %s)",
            (rows * len(APPS_PER_CARD),),
        )
        for table in LOADED_TABLES:
            conn.execute(f"ANALYZE {table}")
    return time.perf_counter() - start


def migrated_database(pg: Any, name: str) -> str:
    from issuance import migrations
    from issuance.db import make_engine

    url = str(pg.create_database(name))
    engine = make_engine(url=url)
    migrations.upgrade(engine)
    engine.dispose()
    return url


def _ms(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def _plan(conn: Any, sql: str, params: Any) -> str:
    return "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, params))


def _timed(fn: Any, keys: list[Any]) -> list[float]:
    for k in keys[:100]:  # warm the connection, the plan cache, psycopg's prepared statements
        fn(k)
    times = []
    for k in keys:
        t0 = time.perf_counter()
        fn(k)
        times.append(time.perf_counter() - t0)
    return times


def time_lookups(url: str, rows: int, seed: int = 7) -> dict[str, dict[str, Any]]:
    """p50/p99 (ms) of each lookup over LOOKUPS random existing keys, and its plan."""
    import psycopg
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.orm import Session

    from issuance.db import make_engine
    from issuance.models import Card
    from issuance.services import find_card

    rnd = random.Random(seed)
    ids = [rnd.randint(1, rows) for _ in range(LOOKUPS)]
    out: dict[str, dict[str, Any]] = {}
    out["verification lookup (API statement)"] = _verification_lookups(url, rows, ids)
    with psycopg.connect(_psql_url(url), autocommit=True) as conn:

        def by_ssn(n: int) -> None:
            assert conn.execute(_SSN_SQL, (citizen_id(n),)).fetchall(), "person not found"

        out["cards by person SSN"] = _stats(
            _timed(by_ssn, ids), _plan(conn, _SSN_SQL, (citizen_id(rows // 2),))
        )
        dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
        engine = make_engine(url=url)
        with Session(engine) as session:
            for name, key, column in (
                ("find_card by card number", card_number, Card.card_number),
                ("find_card by card identification code", card_code,
                 Card.card_identification_code),
            ):  # fmt: skip

                def lookup(n: int, key: Any = key, name: str = name) -> None:
                    if "number" in name:
                        card = find_card(session, card_number=key(n))
                    else:
                        card = find_card(session, card_identification_code=key(n))
                    assert card.id == n
                    session.expunge_all()

                stmt = sa.select(Card).where(column == key(rows // 2))
                sql = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
                out[name] = _stats(_timed(lookup, ids), _plan(conn, sql, None))
        engine.dispose()
    return out


def _verification_lookups(url: str, rows: int, ids: list[int]) -> dict[str, Any]:
    """The API's lookup statement as the API sends it (asyncpg, prepared), timed per call."""
    import asyncio

    import asyncpg

    from issuance.db_async import dsn_from_url
    from issuance.services.verification import SQL_LOOKUP

    async def measure() -> dict[str, Any]:
        conn = await asyncpg.connect(dsn_from_url(url))
        try:

            async def lookup(n: int) -> None:
                got = await conn.fetchrow(SQL_LOOKUP, card_code(n), "medical")
                assert got is not None and got[0] == n, "card not found"

            for n in ids[:100]:
                await lookup(n)
            times = []
            for n in ids:
                t0 = time.perf_counter()
                await lookup(n)
                times.append(time.perf_counter() - t0)
            plan = "\n".join(
                r[0]
                for r in await conn.fetch("EXPLAIN " + SQL_LOOKUP, card_code(rows // 2), "medical")
            )
            return _stats(times, plan)
        finally:
            await conn.close()

    return asyncio.run(measure())


_SSN_SQL = (
    "SELECT c.id, c.status, c.kind FROM persons p JOIN cards c ON c.person_id = p.id "
    "WHERE p.citizen_id = %s"
)


def _stats(times: list[float], plan: str) -> dict[str, Any]:
    return {"p50_ms": _ms(times, 50), "p99_ms": _ms(times, 99), "plan": plan}


def _verification_api(pg: Any, url: str, rows: int, tmp: Path) -> dict[str, Any]:
    """bench.verification's run on this database (2,000 random cards of it)."""
    from bench import verification as bv
    from issuance.db import make_engine

    data_dir = tmp / "data"
    bv._setup_hsm(data_dir)
    engine = make_engine(url=url)
    token = bv.hospital_token(engine)
    engine.dispose()
    rnd = random.Random(11)
    cards = [(card_code(n), card_number(n)) for n in rnd.sample(range(1, rows + 1), 2000)]
    m = bv.run(url, pg, data_dir, token, cards)
    return bv.report(m, pg.settings_in_force(), rows, None)


def main() -> dict[str, Any]:
    from devstack.dbserver import TemporaryPostgres
    from issuance import migrations
    from issuance.db import make_engine

    rows = int(os.environ.get("YKT_BENCH_SCALE_ROWS", DEFAULT_ROWS))
    with_api = os.environ.get("YKT_BENCH_SCALE_API", "1") != "0"
    figures: dict[str, Any] = {"rows": rows}
    with (
        tempfile.TemporaryDirectory(prefix="ykt-bench-scale-") as tmp,
        TemporaryPostgres(Path(tmp) / "pg", durable=True, settings=PG_SETTINGS) as pg,
    ):
        os.chmod(tmp, 0o755)
        settings = pg.settings_in_force()
        print("PostgreSQL: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
        small_url = migrated_database(pg, "scale_small")
        fill(small_url, SMALL_ROWS, quiet=True)
        small = time_lookups(small_url, SMALL_ROWS)
        big_url = migrated_database(pg, "scale_big")
        print(f"building {rows:,} persons + {rows:,} cards + {rows * len(APPS_PER_CARD):,} "
              "chip applications ...")  # fmt: skip
        build = fill(big_url, rows)
        engine = make_engine(url=big_url)
        drift = migrations.drift(engine)
        engine.dispose()
        if drift:
            raise AssertionError(f"the bulk load changed the schema: {drift}")
        figures["build_seconds"] = round(build, 1)
        figures["build_cards_per_s"] = round(rows / build)
        print(f"built {rows:,} cards in {build:.1f} s ({rows / build:,.0f} cards/s); "
              "schema identical to the models")  # fmt: skip
        big = time_lookups(big_url, rows)
        print(f"\n{'lookup':40} {'p50 ms':>8} {'p99 ms':>8} | at {SMALL_ROWS:,}: p50 / p99 "
              "| ratio p99")  # fmt: skip
        all_indexed = True
        for name in big:
            b, s = big[name], small[name]
            ratio = b["p99_ms"] / s["p99_ms"] if s["p99_ms"] else float("inf")
            indexed = "Index" in b["plan"] and "Seq Scan" not in b["plan"]
            all_indexed &= indexed
            print(
                f"{name:40} {b['p50_ms']:8.3f} {b['p99_ms']:8.3f} | "
                f"{s['p50_ms']:8.3f} / {s['p99_ms']:8.3f} | {ratio:5.2f}"
                f"  {'index scans' if indexed else 'NOT INDEXED'}"
            )
            key = name.split(" (")[0].replace(" ", "_")
            figures[f"{key}_p50_ms"] = round(b["p50_ms"], 3)
            figures[f"{key}_p99_ms"] = round(b["p99_ms"], 3)
            figures[f"{key}_p99_ms_at_100k"] = round(s["p99_ms"], 3)
            figures[f"{key}_p99_ratio"] = round(ratio, 2)
        print(f"\nEXPLAIN at {rows:,} cards:")
        for name in big:
            print(f"-- {name}\n{big[name]['plan']}")
        figures["all_lookups_indexed"] = all_indexed
        if not all_indexed:
            raise AssertionError("a lookup is not using an index")
        if with_api:
            print(f"\nverification API on the {rows:,}-card database:")
            api = _verification_api(pg, big_url, rows, Path(tmp))
            for key in ("verifications_per_s", "verify_p50_ms", "verify_p99_ms", "flow_p99_ms",
                        "ratio", "verdict_throughput", "verdict_p99", "verdict_ratio"):  # fmt: skip
                figures[f"api_{key}"] = api[key]
    return figures


if __name__ == "__main__":
    main()
