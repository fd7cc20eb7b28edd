"""``ykt serve`` and the client kit as a hospital developer runs them: real processes.

* the worker count: ``--workers`` flag, else ``[api] workers`` when set, else the CPU count;
* ``ykt api agency-add`` registers a hospital; ``ykt serve`` (uvicorn, 2 workers) serves the
  API; ``ykt verify --card-number N`` drives the whole flow against the emulated chip of that
  card (its image in ``<data_dir>/cards``) and prints VALID; the same card inserted into a
  virtual reader (isolated pcscd + vpcd) verifies through PC/SC with ``ykt verify --reader``;
  a lost card prints INVALID (lost) and exits 1.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from api_helpers import Hsm, active_card, emulator_for, staff
from server_helpers import PROJECT, server_env, serving, ykt

from cardspec.emulator import Card as EmulatedCard
from issuance import services
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import Channel
from yikatong.cli.api import worker_count
from yikatong.settings import load_settings

pytestmark = [pytest.mark.softhsm, pytest.mark.slow]


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ykt(*args), env=env, cwd=PROJECT, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def test_worker_count_flag_then_setting_then_cpus(tmp_path: Path) -> None:
    base = {"YKT_DATA_DIR": str(tmp_path)}
    unset = load_settings(environ=base)
    assert worker_count(None, unset) == (os.cpu_count() or 2)
    assert worker_count(3, unset) == 3
    set5 = load_settings(environ={**base, "YKT_API__WORKERS": "5"})
    assert worker_count(None, set5) == 5 and worker_count(1, set5) == 1
    (tmp_path / "yikatong.toml").write_text("[api]\nworkers = 4\n")
    assert worker_count(None, load_settings(environ=base)) == 4


def test_serve_starts_the_configured_number_of_workers(
    tmp_path: Path, _sqlite_template: Path, api_hsm: Hsm
) -> None:
    # about process wiring, not the database: one backend is enough
    db = tmp_path / "serve.db"
    shutil.copyfile(_sqlite_template, db)
    conf = api_hsm.config.softhsm_conf or Path()
    env = server_env(tmp_path / "data", f"sqlite:///{db}", conf, YKT_API__WORKERS="3")
    with serving(env, tmp_path / "serve.log", workers=None, expect_workers=3) as server:
        pids = set(server.worker_pids)
        assert len(pids) == 3, server.log_text()
    log = server.log_text()
    assert "Started parent process" in log
    assert log.count("Application startup complete.") == 3


def _save_chip(hsm: Hsm, card: object, cards_dir: Path) -> Path:
    reader = emulator_for(hsm, card)  # type: ignore[arg-type]
    chip = reader.card
    assert isinstance(chip, EmulatedCard)
    cic = card.card_identification_code  # type: ignore[attr-defined]
    path = cards_dir / f"{cic[16:].upper()}.json"
    cards_dir.mkdir(parents=True, exist_ok=True)
    chip.save(path)
    return path


@pytest.mark.pcsc
def test_hospital_developer_flow_with_ykt_verify(
    tmp_path: Path, fresh_db_url: str, api_hsm: Hsm
) -> None:
    data = tmp_path / "data"
    conf = api_hsm.config.softhsm_conf or Path()
    env = server_env(data, fresh_db_url, conf)
    settings = load_settings(environ={"YKT_DATA_DIR": str(data), "YKT_DATABASE__URL": fresh_db_url})
    engine = make_engine(url=fresh_db_url)
    with transaction(make_sessionmaker(engine)) as s:
        actors = staff(s, "serve")
        cards = [active_card(s, settings, actors) for _ in range(2)]
    images = [_save_chip(api_hsm, c, settings.cards_dir) for c in cards]
    # 1. the card centre registers the hospital (secret shown once)
    added = run(env, "api", "agency-add", "hz-hospital-serve", "--name", "City Hospital")
    assert added.returncode == 0, added.stdout + added.stderr
    client_id = re.search(r"client_id\s+(\S+)", added.stdout)
    secret = re.search(r"client_secret\s+(\S+)", added.stdout)
    assert client_id and secret, added.stdout
    creds = {"YKT_CLIENT_ID": client_id.group(1), "YKT_CLIENT_SECRET": secret.group(1)}
    with serving(env, tmp_path / "serve.log", workers=2) as server:
        venv = {**env, **creds}
        # 2. ykt verify against the emulated chip of card N
        n = cards[1].card_number
        got = run(venv, "verify", "--url", server.base_url, "--card-number", n, "--holder")
        assert got.returncode == 0, got.stdout + got.stderr
        assert got.stdout.startswith("VALID") and f"card {n}" in got.stdout
        assert "holder 张三" in got.stdout and "*" in got.stdout  # masked for a hospital
        missing = run(venv, "verify", "--url", server.base_url, "--card-number", "Z00000005")
        assert missing.returncode == 2 and "no emulated card" in missing.stdout + missing.stderr
        typo = run(venv, "verify", "--url", server.base_url, "--card-number", "Z00000000")
        assert typo.returncode == 2 and "check character" in typo.stdout + typo.stderr
        # 3. the same through PC/SC: the card in a virtual reader
        readers = subprocess.Popen(
            ykt("readers", "start", "--count", "1"), env=env, cwd=PROJECT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            assert readers.stdout is not None
            lines: list[str] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (lines and lines[-1].startswith("export")):
                line = readers.stdout.readline()
                if not line:
                    break
                lines.append(line)
            text = "".join(lines)
            name = re.search(r"slot 0: (.+)", text)
            csock = re.search(r"export PCSCLITE_CSOCK_NAME=(\S+)", text)
            assert name and csock, text
            inserted = run(env, "readers", "insert", "0", str(images[0]))
            assert inserted.returncode == 0, inserted.stdout + inserted.stderr
            penv = {**venv, "PCSCLITE_CSOCK_NAME": csock.group(1)}
            reader = name.group(1).strip()
            got = run(penv, "verify", "--url", server.base_url, "--reader", reader)
            assert got.returncode == 0, got.stdout + got.stderr
            assert got.stdout.startswith("VALID") and f"card {cards[0].card_number}" in got.stdout
            # 4. a loss report: the very next ykt verify says so and exits 1
            with transaction(make_sessionmaker(engine)) as s:
                phone = actors["clerk"].via(Channel.PHONE)
                services.report_loss(s, settings, cards[0].id, phone, note="lost")
            got = run(penv, "verify", "--url", server.base_url, "--reader", reader)
            assert got.returncode == 1 and got.stdout.startswith("INVALID (lost)"), got.stdout
        finally:
            readers.send_signal(signal.SIGINT)
            try:
                readers.wait(20)
            except subprocess.TimeoutExpired:
                readers.kill()
                readers.wait()
    assert "Traceback" not in server.log_text()
    engine.dispose()


def test_cli_staff_token_needs_the_users_password_and_clients_an_admin(
    tmp_path: Path, fresh_db_url: str
) -> None:
    import sqlalchemy as sa

    from issuance.models import AuditEvent
    from issuance.services import credentials

    env = {k: v for k, v in os.environ.items() if not k.startswith("YKT_")}
    env |= {"YKT_DATA_DIR": str(tmp_path / "data"), "YKT_DATABASE__URL": fresh_db_url}

    def ykt_in(
        extra: dict[str, str], *args: str, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ykt(*args), env={**env, **extra}, cwd=PROJECT, input=stdin, capture_output=True,
            text=True, timeout=120, check=False,
        )  # fmt: skip

    boss = ykt_in({}, "db", "create-staff", "boss", "--role", "admin", "--password-stdin",
                  stdin="pw-of-boss\n")  # fmt: skip
    assert boss.returncode == 0, boss.stdout + boss.stderr  # the bootstrap administrator
    clerk = ykt_in({"YKT_STAFF_PASSWORD": "pw-of-boss"}, "db", "create-staff", "clerk1",
                   "--role", "clerk", "--password-stdin", "--as", "boss",
                   stdin="pw-of-clerk\n")  # fmt: skip
    assert clerk.returncode == 0, clerk.stdout + clerk.stderr
    # staff act as themselves: a token needs the user's own password
    bad = ykt_in({"YKT_STAFF_PASSWORD": "pw-of-boss"}, "api", "staff-token", "clerk1")
    assert bad.returncode == 2 and "wrong password" in bad.stdout + bad.stderr
    good = ykt_in({"YKT_STAFF_PASSWORD": "pw-of-clerk"}, "api", "staff-token", "clerk1")
    assert good.returncode == 0, good.stdout + good.stderr
    token = good.stdout.strip().splitlines()[-1]
    engine = make_engine(url=fresh_db_url)
    with transaction(make_sessionmaker(engine)) as s:
        p = credentials.authenticate(s, token)
        assert p.actor.username == "clerk1" and "cards:loss" in p.scopes
        assert "audit:read" not in p.scopes
    # registering an agency is an admin's act once users have passwords
    args = ("api", "agency-add", "hz-cli-hospital", "--name", "Hospital")
    nobody = ykt_in({}, *args)
    assert nobody.returncode != 0 and "--as" in nobody.stdout + nobody.stderr
    as_clerk = ykt_in({"YKT_STAFF_PASSWORD": "pw-of-clerk"}, *args, "--as", "clerk1")
    assert as_clerk.returncode == 2 and "may not manage API clients" in as_clerk.stderr
    as_boss = ykt_in({"YKT_STAFF_PASSWORD": "pw-of-boss"}, *args, "--as", "boss")
    assert as_boss.returncode == 0 and "client_secret" in as_boss.stdout, as_boss.stderr
    with transaction(make_sessionmaker(engine)) as s:
        ev = s.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == "api.credential_created")
        ).one()
        assert ev.actor_name == "boss"
    # issue 15: disabling is an admin's act too, audited, and stops the token at once
    boss_pw = {"YKT_STAFF_PASSWORD": "pw-of-boss"}
    off = ykt_in(boss_pw, "api", "staff-disable", "clerk1", "--as", "boss")
    assert off.returncode == 0 and "disabled" in off.stdout, off.stderr
    with transaction(make_sessionmaker(engine)) as s, pytest.raises(credentials.PermissionDenied):
        credentials.authenticate(s, token)
    cid = as_boss.stdout.split("client_id", 1)[1].split()[0]
    secret = as_boss.stdout.split("client_secret", 1)[1].split()[0]
    for command in ("client-disable", "client-enable", "agency-disable", "agency-enable"):
        name = cid if command.startswith("client") else "hz-cli-hospital"
        done = ykt_in(boss_pw, "api", command, name, "--as", "boss")
        assert done.returncode == 0, done.stdout + done.stderr
    assert ykt_in(boss_pw, "api", "revoke", cid, "--as", "boss").returncode == 0
    with transaction(make_sessionmaker(engine)) as s:
        with pytest.raises(credentials.PermissionDenied):  # revoked: disabled too
            credentials.issue_token(s, cid, secret)
        actions = set(s.scalars(sa.select(AuditEvent.action)))
    assert {"staff.disabled", "api.client_disabled", "api.client_enabled", "agency.disabled",
            "agency.enabled", "api.tokens_revoked"} <= actions  # fmt: skip
    engine.dispose()
