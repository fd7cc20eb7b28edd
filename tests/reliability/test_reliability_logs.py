"""No PIN and no full citizen ID number in any log line of a full demo run (issue 7).

A full run, in real processes on a data directory of its own: ``ykt demo`` (intake with the
sample photos, a batch personalised on virtual readers: isolated pcscd + vpcd + the card
emulator, printed through a private CUPS scheduler, shipped, collected, one card activated),
then what the demo tells a hospital developer to do (``ykt serve`` with 2 workers and
``ykt verify --card-number N --holder``), then ``ykt outbox drain`` (the log sink).

Everything those processes wrote is collected: their stdout and stderr, and every log file
under the data directory (pcscd, the card stations' server, the CUPS logs, the reports).
Then every holder's 18-character ID number (from the database) and every card's initial PIN
(recomputed in the HSM with :func:`issuance.batches.dataprep.initial_pin`) is searched for:
none may appear. The card images (the chip holds the number by design), the printed card
faces (the number is on the card face by design), the database and the HSM token are not logs
and are not searched.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from server_helpers import PROJECT, serving, ykt

from devstack.cupsd import TemporaryCups
from issuance.batches.dataprep import initial_pin, key_ref
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import Card, Person
from yikatong.settings import load_settings
from yikatong.wiring import key_service_from_settings

pytestmark = [pytest.mark.slow, pytest.mark.pcsc, pytest.mark.softhsm, pytest.mark.cups]

#: Not logs: what the system of record, the chips and the card faces hold by design.
NOT_LOGS = ("cards", "spool", "hsm", "stock")
NOT_LOG_SUFFIXES = (".db", ".db-wal", ".db-shm", ".png", ".pdf", ".so", ".key")


def _run(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ykt(*args), env=env, cwd=PROJECT, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def _log_files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or rel.parts[0] in NOT_LOGS or path.suffix in NOT_LOG_SUFFIXES:
            continue
        out.append(path)
    return out


def test_no_pin_or_full_id_number_in_any_log_of_a_full_demo_run(
    tmp_path: Path, fresh_db_url: str
) -> None:
    data = tmp_path / "data"
    texts: dict[str, str] = {}
    with TemporaryCups(tmp_path / "cups") as cups:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("YKT_", "SOFTHSM2"))}
        env |= {
            "YKT_DATA_DIR": str(data), "YKT_DATABASE__URL": fresh_db_url,
            "YKT_PRINTER__BACKEND": "cups", "YKT_PRINTER__CUPS_SERVER": cups.server,
            "YKT_PRINTER__CUPS_QUEUE": cups.queue, "COLUMNS": "200", "PYTHONUNBUFFERED": "1",
        }  # fmt: skip
        env.pop("PCSCLITE_CSOCK_NAME", None)
        demo = _run(env, "demo")
        texts["ykt demo (stdout)"], texts["ykt demo (stderr)"] = demo.stdout, demo.stderr
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        assert cups.captured(), "the demo printed nothing through CUPS"
        hint = re.search(
            r"YKT_CLIENT_ID=(\S+) YKT_CLIENT_SECRET=(\S+) ykt verify --card-number (\S+)",
            demo.stdout,
        )
        assert hint, demo.stdout[-2000:]
        client_id, secret, number = hint.groups()
        with serving(env, tmp_path / "serve.log", workers=2) as server:
            venv = {**env, "YKT_CLIENT_ID": client_id, "YKT_CLIENT_SECRET": secret}
            got = _run(venv, "verify", "--url", server.base_url, "--card-number", number,
                       "--holder")  # fmt: skip
            texts["ykt verify (stdout)"], texts["ykt verify (stderr)"] = got.stdout, got.stderr
            assert got.returncode == 0 and got.stdout.startswith("VALID"), got.stdout + got.stderr
            assert "holder " in got.stdout  # the holder line was printed (masked)
        texts["ykt serve (log)"] = server.log_text()
        drain = _run(env, "outbox", "drain")
        texts["ykt outbox drain (stdout)"] = drain.stdout
        texts["ykt outbox drain (stderr)"] = drain.stderr
        assert drain.returncode == 0, drain.stdout + drain.stderr
        assert "notify card.ready_for_collection" in drain.stdout + drain.stderr
        for path in sorted((cups.error_log.parent).glob("*")):
            texts[f"cups {path.name}"] = path.read_text(errors="replace")
    for path in _log_files(data):
        texts[str(path.relative_to(data))] = path.read_text(errors="replace")
    names = " ".join(texts)
    assert "pcscd.log" in names and "server.log" in names and "cups error_log" in names, names
    assert sum(len(t) for t in texts.values()) > 10_000  # real output, not empty files

    # what must not be in any of it
    settings = load_settings(environ={"YKT_DATA_DIR": str(data), "YKT_DATABASE__URL": fresh_db_url})
    engine = make_engine(url=fresh_db_url)
    with transaction(make_sessionmaker(engine)) as s:
        ids = list(s.scalars(sa.select(Person.citizen_id)))
        cards = list(s.scalars(sa.select(Card).where(Card.card_identification_code.is_not(None))))
        service = key_service_from_settings(settings)
        pins = {
            c.card_number: initial_pin(service, key_ref(c, c.card_identification_code or ""))
            for c in cards
        }
    engine.dispose()
    assert len(ids) >= 8 and len(pins) >= 8
    assert all(len(c) == 18 for c in ids) and all(
        len(p) == 6 and p.isdigit() for p in pins.values()
    )
    leaks = []
    for source, text in texts.items():
        upper = text.upper()
        for cid in ids:
            if cid.upper() in upper or cid[:17] in text:  # with or without its check character
                leaks.append(f"{source}: citizen ID {cid[:6]}…")
        for number, pin in pins.items():
            if re.search(rf"(?<![0-9]){pin}(?![0-9])", text):
                leaks.append(f"{source}: the initial PIN of card {number}")
    assert not leaks, leaks
