"""What the twins removed by issue 13 cost or saved: micro-benchmarks of the removed code (run in
a checkout of the commit before the removal) against the one path left (run here), and the
verification hot path that was kept, measured with and without it.

``python -m bench.twins micro --before-dir DIR`` runs the same measurements in two checkouts,
alternated (before, after, before, after, ...; ``--rounds``, default 3), each in its own venv
(``DIR/.venv``; this checkout's ``.venv`` for after). What is measured is CPU time of the
process (``time.process_time``; SoftHSM2 runs in the process, so its work is counted), per card
or per row, the best of several repeats in each round:

* **records**: a card's records from its element values (``plan_values``: what the bulk path
  runs per card after ``perso_values``) and from its :class:`~cardspec.perso.CardPersoData`.
  Before: the bulk planner (``issuance.batches.bulkprep.RecordPlanner``) beside the general
  encoder (``cardspec.perso.plan_records``), which the bulk path also ran on the first card of
  each chunk of 500 as a check. After: ``cardspec.perso.RecordPlanner``, the only path of
  ``plan_records``. The same cards (``cardspec.perso.sample_perso_data`` for distinct card
  codes and numbers); the records of both commits are compared by digest (the financial file
  apart: it gained its track 2 element in e1a9831, a feature, not a twin's doing).
* **perso**: a card's element values from its rows (``issuance.batches.dataprep.perso_values``,
  the bulk path's) and its ``CardPersoData`` (``perso_data``, the single-card path's and, before,
  the bulk check's once per chunk). Before: two implementations of the same rules. After:
  ``perso_data`` is ``perso_values`` turned into the dataclass (``cardspec.perso.from_values``).
  Rows are plain objects with the columns read (no database).
* **audit**: the ``batch_item.prepare`` audit rows of a chunk of 500 cards
  (``bulkprep.Preparer._event_rows``). Before: hand-written f-string JSON beside
  ``audit.event_row`` (checked on the first row). After: ``audit.EventTemplate`` (from
  ``audit.event_values``). The rows' details are compared by digest: the canonical JSON is
  unchanged.
* **verification audit**: the ``card.verified`` event's columns of one verification
  (``issuance.services.verification._audit_values``). Before: hand-written JSON (``json.dumps``
  of the details, two of its strings scrubbed). After: ``audit.event_values``. The rows
  (the time column apart) compared by digest.
* **pkcs11**: a card's derivations through ``Pkcs11KeyService.card_crypto(...).derive_all``
  (the card-centre slots; the bank's EMV keys too where the commit has them, as
  :mod:`bench.hsm_derive`). Before: the direct PKCS#11 path and its python-pkcs11 twin
  (``fast_path=False``). After: the direct path, the only one.

The snippets of the before side are written for the layout of commit 989a6c4 (the end of the
first wave: ``issuance.settings``, ``hsm.config``, ``bulkprep.RecordPlanner``); another before
commit needs its own. Each round's figures are printed as one JSON line; the summary gives each
figure's best, median and worst over the rounds.

``python -m bench.twins hotpath`` measures the twin that was kept, ``api/hotpath.py`` beside the
FastAPI routes (a Hypothesis test proves them equal): :mod:`bench.verification`'s setup (durable
PostgreSQL, SoftHSM2, ``YKT_BENCH_CARDS`` cards, wrk), then the product's server with the hot
path (``ykt serve``) and the same application with ``hot = None`` (every verification through
FastAPI's routes), alternated (``--rounds``), ``YKT_BENCH_SECONDS`` each: valid verifications/s,
verify p99 and server CPU per verification.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARK = "TWINS "

_COMMON = r"""
import atexit, hashlib, json, os, shutil, tempfile, time
TMP = tempfile.mkdtemp(prefix="ykt-twins-")
atexit.register(shutil.rmtree, TMP, True)
from datetime import date, datetime, timezone
from types import SimpleNamespace as NS

def best(fn, n, repeats=5):
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append((time.process_time() - t) / n * 1e6)
    return round(min(times), 2)

from cardspec import ids
from cardspec.perso import DEFAULT_PROFILE as P, plan_records, sample_perso_data

N = int(os.environ.get("YKT_TWINS_CARDS", "2000"))
DATAS = [sample_perso_data(ids.make_card_identification_code("330100", i.to_bytes(8, "big")),
                           P, card_number=ids.make_card_number("B" + str(i).zfill(7)),
                           issue_date=date(2026, 12, 1), pan="6212260012345678903")
         for i in range(1, N + 1)]
NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
ME = NS(batch_id=7, output="in_house")
NEW = [NS(row=NS(item_id=1000 + i, card=NS(id=50000 + i)), chip_serial=f"{i:016X}",
          profile_name="ssc2-3des", perso_file="batch-000007/seg-0001.perso")
       for i in range(500)]

from bench.verification import _cid

PEOPLE = [NS(name="张三", card_name=None, citizen_id=_cid(i * 7919), sex="12"[i % 2],
             ethnicity="01", region_code="330106", birth_date=date(1980, 1, 1))
          for i in range(1, N + 1)]
ROWS = [NS(id=i, card_number=d.card_number, key_version=1, algorithm="3des",
           region_code="330100") for i, d in enumerate(DATAS, start=1)]
CICS = [d.card_identification_code for d in DATAS]
ISSUED = date(2026, 12, 1)

def verification_audit():
    from issuance.audit import Actor
    from issuance.models import Channel, ChipAppKind, StaffRole
    from issuance.services import verification as vf
    actor = Actor("bench-hospital", StaffRole.SYSTEM, Channel.SYSTEM)
    kind = ChipAppKind.MEDICAL
    verdict = vf.Verdict(True, None, kind, card_number="B0000001")
    cids = [f"{i:032x}" for i in range(N)]
    def rows():
        return [vf._audit_values(actor, d.card_identification_code, verdict, kind,
                                 d.card_number, c, NOW) for d, c in zip(DATAS, cids)]
    out["audit_verification_row_us"] = best(rows, N)
    out["audit_verification_digest"] = hashlib.sha256(
        repr([tuple(r)[1:] for r in rows()]).encode()).hexdigest()[:16]
out = {}

def digest_records(plan):
    h = hashlib.sha256()
    for d in DATAS[:200]:
        for name, recs in plan(d).items():
            if name == "SFI01":  # gained track 2 (tag 57) in e1a9831: not a twin's doing
                continue
            h.update(name.encode())
            for r in recs:
                h.update(r)
    return h.hexdigest()[:16]

def digest_rows(rows):
    return hashlib.sha256(repr([r[1:] for r in rows]).encode()).hexdigest()[:16]
"""

_BEFORE = r"""
from issuance.audit import SYSTEM_ACTOR
from issuance.batches.bulkprep import Preparer, RecordPlanner
from issuance.models import BatchStage
ME.actor = SYSTEM_ACTOR

import tempfile
from issuance.batches import dataprep as dp
from issuance.models import ApplicationChannel
from issuance.settings import load_settings
S = load_settings(environ={"YKT_DATA_DIR": os.path.join(TMP, "settings")})
PROF = dp.card_profile(S, "3des")
APP = NS(decided_at=NOW, channel=ApplicationChannel.COUNTER)
PAN = "6212260012345678903"
out["perso_values_us"] = best(lambda: [dp.perso_values(S, c, p, APP, cic, ISSUED, PROF, pan=PAN)
                                       for c, p, cic in zip(ROWS, PEOPLE, CICS)], N)
out["perso_data_us"] = best(lambda: [dp.perso_data(S, c, p, APP, cic, ISSUED, "123456", PROF)
                                     for c, p, cic in zip(ROWS, PEOPLE, CICS)], N)

planner = RecordPlanner(P)
VALUES = []
plan_values = planner.plan_values
planner.plan_values = lambda v: VALUES.append(v) or plan_values(v)
[planner.plan(d) for d in DATAS]
planner.plan_values = plan_values
out["records_plan_values_us"] = best(lambda: [planner.plan_values(v) for v in VALUES], N)
out["records_bulk_planner_us"] = best(lambda: [planner.plan(d) for d in DATAS], N)
out["records_general_encoder_us"] = best(lambda: [plan_records(d, P) for d in DATAS], N)
out["records_digest"] = digest_records(planner.plan)
assert out["records_digest"] == digest_records(lambda d: plan_records(d, P))

rows = lambda: Preparer._event_rows(ME, NEW, BatchStage.PREPARED, NOW, NOW)
out["audit_row_us"] = best(rows, len(NEW), 20)
out["audit_digest"] = digest_rows(rows())

import tempfile
from pathlib import Path
from bench.hsm_derive import PAN, PSN, SLOTS, _config
from cardspec.keyscheme import Algorithm
from hsm import ceremony, softhsm
from hsm import pkcs11 as p11
from hsm.service import CardKeyRef, Pkcs11KeyService

config = _config(Path(TMP) / "hsm")
softhsm.ensure_token(config)
ceremony.init_keys(p11.open_token(config), Algorithm.DES3)
token = p11.open_token(config)
for fast in (True, False):
    service = Pkcs11KeyService(token, fast_path=fast)
    refs = [CardKeyRef("330182D156000005" + i.to_bytes(8, "big").hex().upper(), pan=PAN, psn=PSN)
            for i in range(300)]
    def cards():
        for ref in refs:
            with service.card_crypto(ref) as crypto:
                crypto.derive_all(SLOTS)
    cards()
    name = "pkcs11_direct_card_us" if fast else "pkcs11_python_pkcs11_card_us"
    out[name] = best(cards, len(refs), 3)
out["pkcs11_keys_per_card"] = len(SLOTS)
"""

_AFTER = r"""
from issuance.audit import SYSTEM_ACTOR
from issuance.batches.bulkprep import Preparer
from issuance.models import BatchStage
ME.actor = SYSTEM_ACTOR

import tempfile
from issuance.bank import CardBankData
from issuance.batches import dataprep as dp
from issuance.models import ApplicationChannel
from yikatong.settings import load_settings
S = load_settings(environ={"YKT_DATA_DIR": os.path.join(TMP, "settings")})
PROF = dp.card_profile(S, "3des")
APP = NS(decided_at=NOW, channel=ApplicationChannel.COUNTER)
BANKD = CardBankData("6212260012345678903", "00", date(2036, 12, 31), "220", "bench", 1)
out["perso_values_us"] = best(lambda: [dp.perso_values(S, c, p, APP, cic, ISSUED, PROF, bank=BANKD)
                                       for c, p, cic in zip(ROWS, PEOPLE, CICS)], N)
out["perso_data_us"] = best(lambda: [dp.perso_data(S, c, p, APP, cic, ISSUED, "123456", PROF,
                                                   bank=BANKD, bank_pin="654321")
                                     for c, p, cic in zip(ROWS, PEOPLE, CICS)], N)

from cardspec.perso import planner, record_values
VALUES = [record_values(d, P) for d in DATAS]
one = planner(P)
out["records_plan_values_us"] = best(lambda: [one.plan_values(v) for v in VALUES], N)
out["records_bulk_planner_us"] = best(lambda: [plan_records(d, P) for d in DATAS], N)
out["records_digest"] = digest_records(lambda d: plan_records(d, P))

rows = lambda: Preparer._event_rows(ME, NEW, BatchStage.PREPARED, NOW)
out["audit_row_us"] = best(rows, len(NEW), 20)
out["audit_digest"] = digest_rows(rows())

import tempfile
from pathlib import Path
from bench.hsm_derive import BANK, PAN, PSN, SLOTS, _bank_keys, _config
from cardspec.keyscheme import Algorithm
from hsm import ceremony, softhsm
from hsm import pkcs11 as p11
from hsm.service import CardKeyRef, Pkcs11KeyService

config = _config(Path(TMP) / "hsm")
softhsm.ensure_token(config)
ceremony.init_keys(p11.open_token(config), Algorithm.DES3)
_bank_keys(config)
service = Pkcs11KeyService(p11.open_token(config))
refs = [CardKeyRef("330182D156000005" + i.to_bytes(8, "big").hex().upper(), pan=PAN, psn=PSN,
                   bank=BANK) for i in range(300)]
def cards():
    for ref in refs:
        with service.card_crypto(ref) as crypto:
            crypto.derive_all(SLOTS)
cards()
out["pkcs11_direct_card_us"] = best(cards, len(refs), 3)
out["pkcs11_keys_per_card"] = len(SLOTS)
"""


def _snippet(side: str) -> str:
    body = _BEFORE if side == "before" else _AFTER
    return _COMMON + body + f"\nverification_audit()\nprint({MARK!r} + json.dumps(out))\n"


def _run_side(side: str, tree: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("YKT_") or k == "YKT_TWINS_CARDS"}  # fmt: skip
    env.pop("SOFTHSM2_CONF", None)
    python = tree / ".venv" / "bin" / "python"
    proc = subprocess.run([str(python), "-c", _snippet(side)], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return dict(json.loads(line[len(MARK) :]))
    raise RuntimeError(f"{side} ({tree}) failed: {proc.stderr[-3000:]}")


def micro(before_dir: Path, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for n in range(1, rounds + 1):
        for side, tree in (("before", before_dir), ("after", ROOT)):
            load = os.getloadavg()[0]
            got = _run_side(side, tree)
            got["load_1min"] = round(load, 2)
            runs[side].append(got)
            print(f"{side} #{n}: {json.dumps(got)}", flush=True)
    summary: dict[str, Any] = {}
    for side, got in runs.items():
        for name in got[0]:
            values = [g[name] for g in got]
            if isinstance(values[0], float) and not name.startswith("load"):
                summary[f"{side}_{name}"] = {"best": min(values),
                                             "median": statistics.median(values),
                                             "worst": max(values)}  # fmt: skip
            else:
                summary[f"{side}_{name}"] = sorted(set(values))
    for name, value in summary.items():
        print(f"{name}: {value}")
    return {"runs": runs, "summary": summary}


# --- the kept twin: the hot path beside the routes --------------------------------------------


def routes_only_app() -> Any:
    """The product's application with its hot path off: every call through FastAPI's routes
    (uvicorn ``--factory bench.twins:routes_only_app``; settings from the environment)."""
    from yikatong.wiring import app_from_env

    app = app_from_env()
    app.hot = None  # type: ignore[attr-defined]
    return app


def _routes_cmd(port: int) -> list[str]:
    from bench import verification as bv

    return [sys.executable, "-m", "uvicorn", "--factory", "bench.twins:routes_only_app",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(bv.WORKERS),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning"]  # fmt: skip


def hotpath(rounds: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ykt-bench-twins-"))
    try:
        return _hotpath(tmp, rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _hotpath(tmp: Path, rounds: int) -> dict[str, Any]:
    from bench import verification as bv
    from devstack.dbserver import TemporaryPostgres, free_port

    os.chmod(tmp, 0o755)
    data_dir = tmp / "data"
    out: dict[str, list[dict[str, Any]]] = {"hot_path": [], "routes_only": []}
    with TemporaryPostgres(tmp / "pg", durable=True) as pg:
        url = pg.create_database("bench")
        bv._setup_hsm(data_dir)
        token = bv._seed(url, bv.CARDS)
        cards = [bv.card_identifiers(i) for i in range(1, bv.CARDS + 1)]
        keyed = bv.export_irks(data_dir, cards)
        spec = tmp / "spec"
        spec.mkdir()
        (spec / "spec.json").write_text(json.dumps({"token": token, "cards": keyed}))
        (spec / "cards.txt").write_text("".join(f"{c} {n} {k}\n" for c, n, k in keyed))
        (spec / "token").write_text(token)
        env = {**os.environ, "YKT_DATA_DIR": str(data_dir), "YKT_DATABASE__URL": url}
        env.pop("YKT_CONFIG", None)
        for n in range(1, rounds + 1):
            for kind in ("hot_path", "routes_only"):
                port = free_port()
                cmd = None if kind == "hot_path" else _routes_cmd(port)
                load = os.getloadavg()[0]
                server = bv._start_server(env, port, spec / f"{kind}.log", cmd)
                try:
                    procs = bv._Procs(server.pid, bv._postmaster_pid(pg))
                    bv._run_generator("verify", port, 2.0, spec, procs)  # warm-up
                    m = bv._run_generator("verify", port, bv.SECONDS, spec, procs)
                finally:
                    bv._stop(server)
                if m["errors"] or m["invalid"]:
                    raise RuntimeError(f"{kind}: {m['errors']} errors, {m['invalid']} invalid "
                                       f"({m['first_error']})")  # fmt: skip
                got = {"verifications_per_s": round(m["per_s"], 1),
                       "verify_p99_ms": m.get("verify_p99_ms"),
                       "server_cpu_us_per_verification":
                           round(m["server_cores"] / m["per_s"] * 1e6, 1),
                       "postgres_cpu_us_per_verification":
                           round(m["postgres_cores"] / m["per_s"] * 1e6, 1),
                       "load_1min": round(load, 2)}  # fmt: skip
                out[kind].append(got)
                print(f"{kind} #{n}: {json.dumps(got)}", flush=True)
    for kind, got in out.items():
        for name in ("verifications_per_s", "verify_p99_ms", "server_cpu_us_per_verification"):
            values = [g[name] for g in got]
            print(f"{kind} {name}: median {statistics.median(values)} "
                  f"(min {min(values)}, max {max(values)})")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.twins", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("micro", help="the removed twins, before against after")
    m.add_argument("--before-dir", required=True, type=Path)
    m.add_argument("--rounds", type=int, default=3)
    h = sub.add_parser("hotpath", help="the kept twin: the hot path against the routes alone")
    h.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    start = time.perf_counter()
    if a.what == "micro":
        micro(a.before_dir, a.rounds)
    else:
        hotpath(a.rounds)
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
