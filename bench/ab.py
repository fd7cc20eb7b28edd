"""Before/after benchmark of two commits in one sitting: each commit's OWN benches, alternated.

``python -m bench.ab BEFORE AFTER`` checks each commit out in a detached worktree under
``/tmp/ykt-ab-<sha>`` (or uses the directory given by ``--before-dir``/``--after-dir``), makes
its venv with that commit's own ``scripts/setup.sh`` when it has none, then runs
``python -m bench.verification`` and ``python -m bench.dataprep`` of each commit, from that
commit's tree and venv, alternating the two commits (A B A B ...; ``--rounds``, default 2):
on a shared machine the load moves, and alternation spreads it over both sides. Every run gets
the same workload (the ``YKT_BENCH_*`` sizes below, or as set in the environment: the same
values go to both commits) and the 1-minute and 5-minute load averages are recorded beside it,
before and after.

Each bench's ``main()`` returns its figures as a dict; the figures both commits report under
the same name are compared: mean and spread (min-max over the runs) per commit, the limit when
the figure has one, and a verdict: ``same`` when the two ranges overlap, otherwise ``better`` or
``worse`` (in the figure's own direction: per second and ratios up, latencies and CPU per
operation down). Figures only one commit prints are listed apart. The raw runs go to
``--json`` (default ``var/ab/ab-<before>-<after>.json``, rewritten after every run), the table
to ``--markdown`` if given; each run's output to ``var/ab/<commit>-<bench>-<round>.log``.
``--report JSON`` only prints the table of the runs already in a ``--json`` file (a sitting cut
short still gives its figures; the commits are those of the file, BEFORE and AFTER are not
used).

Nothing is timed inside a unit test: this is a measuring procedure. The worktrees it made are
left for a rerun; remove them with ``git worktree remove --force /tmp/ykt-ab-<sha>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARK = "AB-RESULT "
#: the workload given to both commits unless the environment sets it (same values for both)
WORKLOAD = {
    "YKT_BENCH_SECONDS": "10",
    "YKT_BENCH_CARDS": "2000",
    "YKT_BENCH_DATAPREP_CARDS": "4000",
    "YKT_BENCH_DATAPREP_DB": "postgres",
    "YKT_BENCH_DATAPREP_WORKERS": "1,2",
    "YKT_BENCH_1M": "0",
    # e-card rounds (bench.ecard, newer commits only) run after the compared figures: one
    "YKT_BENCH_ECARD_ROUNDS": "1",
}
BENCHES = ("verification", "dataprep")
#: limits printed by the benches (issue 7, issue 20), for the table
LIMITS = {
    "verifications_per_s": ">= 3000",
    "verify_p99_ms": "<= 20",
    "ratio": ">= 0.30",
    "ratio_to_floor_hsm": ">= 0.85",
}
LOWER_IS_BETTER = (
    "_ms",
    "_us",
    "_us_per_verification",
    "_us_per_flow",
    "_mib",
    "_extrapolated",
    "_over_floor",
    "_over_generator",
)
#: the machine's own measures (floors, limits, raw HSM rates, what ran beside): no better or
#: worse for the product, only higher or lower
MACHINE = (
    "floor_",
    "pgbench_",
    "hello_",
    "cores_",
    "limit",
    "hsm_check_cpu_us",
    "cpu_us_no_implementation_avoids",
    "_hsm_only_ceiling",
    "_hsm_work_limit",
)
NOT_COMPARED = {"cards", "seconds", "connections", "workers", "target_verifications_per_s",
                "target_verify_p99_ms", "target_ratio", "target_to_floor", "keys_per_card",
                "cards_per_run", "valid_verifications", "audit_events_sealed", "errors",
                "invalid", "cpu_budget_us_per_verification_at_target",
                "target_ratio_to_floor_hsm", "load_average_1min"}  # fmt: skip


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def _worktree(commit: str, given: str | None) -> Path:
    if given:
        return Path(given)
    sha = _git("rev-parse", "--short=10", commit)
    if _git("rev-parse", "HEAD").startswith(sha):
        return ROOT  # this checkout is the commit itself
    path = Path(f"/tmp/ykt-ab-{sha}")
    if not path.exists():
        _git("worktree", "add", "--detach", str(path), sha)
    return path


def _venv(tree: Path) -> Path:
    python = tree / ".venv" / "bin" / "python"
    if not python.exists():
        print(f"ab: making the venv of {tree} with its own scripts/setup.sh", flush=True)
        subprocess.run(["bash", "scripts/setup.sh"], cwd=tree, check=True)
    return python


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YKT_")}
    env.pop("SOFTHSM2_CONF", None)
    env.pop("PYTHONPATH", None)
    for key, default in WORKLOAD.items():
        env[key] = os.environ.get(key, default)
    for key, value in os.environ.items():  # other bench knobs, the same for both commits
        if key.startswith("YKT_BENCH_"):
            env[key] = value
    return env


def run_one(label: str, tree: Path, python: Path, bench: str, n: int, logs: Path) -> dict[str, Any]:
    """One bench of one commit, from its own tree and venv; its figures and the loads."""
    code = (
        f"import json, os; os.environ.pop('SOFTHSM2_CONF', None); "
        f"from bench import {bench} as b; r = b.main(); print({MARK!r} + json.dumps(r))"
    )
    log = logs / f"{label}-{bench}-{n}.log"
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run([str(python), "-c", code], cwd=tree, env=_env(), capture_output=True,
                          text=True, check=False)  # fmt: skip
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    figures: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            figures = json.loads(line[len(MARK) :])
    if proc.returncode or not figures:
        raise RuntimeError(f"{label} {bench} run {n} failed (exit {proc.returncode}): see {log}")
    print(f"ab: {label} {bench} #{n}: {wall:.0f} s, load 1-min {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f} (5-min {load_before[1]:.2f} -> {load_after[1]:.2f})",
          flush=True)  # fmt: skip
    return {"commit": label, "bench": bench, "round": n, "wall_s": round(wall, 1),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in load_after], "figures": figures}  # fmt: skip


def _stats(values: list[float]) -> tuple[float, float, float]:
    return statistics.fmean(values), min(values), max(values)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _verdict(name: str, before: list[float], after: list[float]) -> str:
    _, b_lo, b_hi = _stats(before)
    _, a_lo, a_hi = _stats(after)
    if a_lo <= b_hi and b_lo <= a_hi:
        return "same"
    higher = a_lo > b_hi
    if name.startswith(MACHINE) or name.endswith(MACHINE):
        return "higher" if higher else "lower"
    lower_better = name.endswith(LOWER_IS_BETTER)
    return "worse" if higher == lower_better else "better"


def _limit(name: str) -> str:
    if name in LIMITS:
        return LIMITS[name]
    if name.endswith("p_ratio"):
        return ">= 0.70"
    if name.endswith("p_ratio_to_hsm_work"):
        return ">= 0.85"
    return ""


def derived(figures: dict[str, Any]) -> dict[str, Any]:
    """Figures computed the same way from what both commits print: the server's CPU per
    verification over the floor's and over the load generator's of the same run; data
    preparation's ratio
    to the ceiling of the card's HSM calls, ``ratio`` (to the raw derive limit) divided by
    ``hsm_only_ceiling`` (the share of the HSM time that is derivation, from the wrap and
    encrypt rates of the same run) - newer commits also measure that ceiling directly
    (``ratio_to_hsm_work``)."""
    out = dict(figures)
    server = figures.get("server_cpu_us_per_verification")
    if server and figures.get("floor_server_cpu_us_per_flow"):
        # the server's CPU per verification in units of the floor's, measured in the same run
        # on the same machine moment (the floor's code is the same in both commits)
        out["server_cpu_over_floor"] = round(server / figures["floor_server_cpu_us_per_flow"], 3)
    if server and figures.get("generator_cpu_us_per_verification"):
        # ... and of the load generator's (the same wrk script for both): what contention for
        # the cores adds to every process's CPU per operation cancels out
        out["server_cpu_over_generator"] = round(
            server / figures["generator_cpu_us_per_verification"], 3
        )
    for name, value in figures.items():
        if not name.endswith("p_ratio") or not isinstance(value, int | float):
            continue
        db, output = name.split("_", 1)[0], name.split("_", 1)[1].rsplit("_", 2)[0]
        ceiling = figures.get(f"{db}_{output}_hsm_only_ceiling")
        if ceiling:
            out[name.removesuffix("_ratio") + "_ratio_to_hsm_calls"] = round(value / ceiling, 3)
    return out


def compare(runs: list[dict[str, Any]], before: str, after: str) -> list[dict[str, Any]]:
    """One row per figure: its values under each commit, and the verdict."""
    rows: list[dict[str, Any]] = []
    runs = [{**r, "figures": derived(r["figures"])} for r in runs]
    for bench in BENCHES:
        mine = [r for r in runs if r["bench"] == bench]
        if not mine:
            continue
        names: list[str] = []
        for r in mine:
            names += [k for k, v in r["figures"].items()
                      if k not in names and isinstance(v, int | float) and not isinstance(v, bool)
                      and k not in NOT_COMPARED]  # fmt: skip
        for name in names:
            vals = {c: [float(r["figures"][name]) for r in mine
                        if r["commit"] == c and isinstance(r["figures"].get(name), int | float)]
                    for c in (before, after)}  # fmt: skip
            loads = {c: [r["load_before"][0] for r in mine if r["commit"] == c]
                     for c in (before, after)}  # fmt: skip
            row: dict[str, Any] = {"bench": bench, "figure": name, "limit": _limit(name),
                                   "values": vals, "loads": loads}  # fmt: skip
            if vals[before] and vals[after]:
                row["verdict"] = _verdict(name, vals[before], vals[after])
            else:
                row["verdict"] = "only " + (before if vals[before] else after)
            rows.append(row)
    return rows


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean, lo, hi = _stats(values)
    return f"{_fmt(mean)} ({_fmt(lo)}-{_fmt(hi)})"


def markdown(rows: list[dict[str, Any]], before: str, after: str) -> str:
    out = [f"| bench | figure | before {before} (min-max) | after {after} (min-max) | limit | "
           "verdict | 1-min loads before / after |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        loads = " / ".join(", ".join(f"{x:.1f}" for x in row["loads"][c]) for c in (before, after))
        out.append(f"| {row['bench']} | `{row['figure']}` | {_cell(row['values'][before])} | "
                   f"{_cell(row['values'][after])} | {row['limit']} | {row['verdict']} | "
                   f"{loads} |")  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--benches", default=",".join(BENCHES))
    p.add_argument("--before-dir")
    p.add_argument("--after-dir")
    p.add_argument("--json")
    p.add_argument("--markdown")
    p.add_argument("--report", metavar="JSON", help="only compare the runs of an earlier --json")
    a = p.parse_args(argv)
    benches = [b for b in a.benches.split(",") if b]
    unknown = set(benches) - set(BENCHES)
    if unknown:
        p.error(f"unknown bench {sorted(unknown)}; choose from {', '.join(BENCHES)}")
    if a.report:  # the table of runs already made (e.g. a sitting cut short)
        done = json.loads(Path(a.report).read_text())
        order = list(dict.fromkeys(r["commit"] for r in done["runs"]))  # before ran first
        first, second = done.get("labels", order)
        table = markdown(compare(done["runs"], first, second), first, second)
        if a.markdown:
            Path(a.markdown).write_text(table)
        print(table)
        return 0
    labels = {c: _git("rev-parse", "--short=7", c) for c in (a.before, a.after)}
    trees = {a.before: _worktree(a.before, a.before_dir), a.after: _worktree(a.after, a.after_dir)}
    pythons = {c: _venv(t) for c, t in trees.items()}
    logs = ROOT / "var" / "ab"
    logs.mkdir(parents=True, exist_ok=True)
    out = Path(a.json) if a.json else logs / f"ab-{labels[a.before]}-{labels[a.after]}.json"
    runs: list[dict[str, Any]] = []
    workload = {k: _env()[k] for k in sorted(_env()) if k.startswith("YKT_BENCH_")}
    print(f"ab: {labels[a.before]} (before) vs {labels[a.after]} (after), workload {workload}")
    for n in range(1, a.rounds + 1):
        for bench in benches:
            for commit in (a.before, a.after):
                runs.append(run_one(labels[commit], trees[commit], pythons[commit], bench, n,
                                    logs))  # fmt: skip
                out.write_text(
                    json.dumps(
                        {
                            "labels": [labels[a.before], labels[a.after]],
                            "workload": workload,
                            "runs": runs,
                        },
                        indent=1,
                    )
                )
    rows = compare(runs, labels[a.before], labels[a.after])
    table = markdown(rows, labels[a.before], labels[a.after])
    out.write_text(
        json.dumps(
            {
                "labels": [labels[a.before], labels[a.after]],
                "workload": workload,
                "runs": runs,
                "rows": rows,
            },
            indent=1,
        )
    )
    if a.markdown:
        Path(a.markdown).write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
