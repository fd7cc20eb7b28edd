"""The ykt db / app / cards / audit commands end to end on a private SQLite database."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from issuance_cli_helpers import Cli
from issuance_helpers import make_cid
from typer.testing import CliRunner

from issuance.models import Application, AuditEvent, Staff
from yikatong.cli import audit as cli_audit
from yikatong.cli import cards as cli_cards
from yikatong.cli import db as cli_db
from yikatong.cli import people as cli_people
from yikatong.cli.db import session_scope
from yikatong.settings import get_settings

runner = CliRunner()


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("YKT_DATA_DIR", str(tmp_path))
    for var in ("YKT_STAFF", "YKT_STAFF_PASSWORD", "YKT_STAFF_PASSWORD_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli_db, "_prompted", {})
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def ok(app, *args):
    res = runner.invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_cli_flow(env):
    cli = Cli()
    ok(cli_db.app, "upgrade")
    assert "models and migrations agree" in ok(cli_db.app, "check")
    cli.staff({"c1": "clerk", "r1": "reviewer", "a1": "approver", "f1": "fund_supervisor"})
    cid = make_cid(birth=__import__("datetime").date(2021, 6, 1))  # under 6: photo exempt
    out = cli.ok(
        cli_people.app, "submit", "--name", "小明", "--phone", "13800000000", "--ethnicity", "01",
        "--as", "c1",
        input=cid + "\n",  # the ID asked for at the prompt: not in the shell history
    )  # fmt: skip
    assert "application 1 received" in out and cid[:14] not in out.split("\n")[-2]
    cli.ok(cli_people.app, "process", "1", "--as", "c1")
    res = cli.invoke(cli_people.app, "review", "1", "--as", "c1")
    assert res.exit_code != 0  # maker–checker / role
    cli.ok(cli_people.app, "review", "1", "--as", "r1")
    out = cli.ok(cli_people.app, "approve", "1", "--as", "a1")
    number = out.split("card ")[1].split()[0]
    assert "number_allocated" in ok(cli_cards.app, "show", number)
    assert cid not in ok(cli_people.app, "list")
    id_file = env / "id.txt"
    id_file.write_text(cid + "\n")
    out = cli.ok(cli_cards.app, "temporary", "--id-file", str(id_file), "--as", "c1")
    assert "temporary card" in out
    out = ok(cli_audit.app, "verify", "--chain-only")
    assert "audit chain OK" in out
    assert "consistency only" in out  # says it proves no more than that


def test_cli_identity_needs_the_password(env):
    cli = Cli()
    ok(cli_db.app, "upgrade")
    cli.bootstrap()
    # once a user exists, nobody creates users without acting as an admin with their password
    res = cli.invoke(cli_db.app, "create-staff", "x1", "--role", "admin")
    assert res.exit_code != 0 and "say who acts" in res.output
    cli.staff({"c1": "clerk"})
    res = cli.invoke(cli_db.app, "create-staff", "x2", "--role", "admin", "--as", "c1")
    assert res.exit_code != 0 and "may not create staff" in str(res.exception)
    child = make_cid(birth=__import__("datetime").date(2021, 6, 1))  # no photo needed
    submit = ["submit", "--id", child, "--name", "小明", "--phone", "13800000000",
              "--ethnicity", "01"]  # fmt: skip
    # a wrong password, an unknown user, no password at all: refused, nothing recorded
    wrong = cli.invoke(cli_people.app, *submit, "--as", "c1",
                       env={"YKT_STAFF_PASSWORD": "not-the-password"})  # fmt: skip
    assert "unknown user or wrong password" in str(wrong.exception)
    unknown = cli.invoke(cli_people.app, *submit, "--as", "ghost",
                         env={"YKT_STAFF_PASSWORD": "whatever-it-is"})  # fmt: skip
    assert "unknown user or wrong password" in str(unknown.exception)
    silent = cli.invoke(cli_people.app, *submit, "--as", "nobody", input="")
    assert silent.exit_code != 0
    with session_scope() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Application)) == 0
    # YKT_STAFF names the user, the password comes from a file or the prompt
    pw_file = env / "pw"
    pw_file.write_text(cli.passwords["c1"] + "\n")
    out = cli.ok(cli_people.app, *submit,
                 env={"YKT_STAFF": "c1", "YKT_STAFF_PASSWORD_FILE": str(pw_file)})  # fmt: skip
    assert "application 1 received" in out
    out = cli.ok(cli_people.app, "process", "1", input=cli.passwords["c1"] + "\n",
                 env={"YKT_STAFF": "c1"})  # fmt: skip
    assert "process done" in out and cli.passwords["c1"] not in out
    # a user changes their own password; the old one stops working
    cli.ok(cli_db.app, "set-password", "c1", "--password-stdin", "--as", "c1",
           input="a-brand-new-password\n")  # fmt: skip
    res = cli.invoke(cli_people.app, "list")  # (no identity needed to list)
    assert res.exit_code == 0
    old = cli.invoke(cli_cards.app, "cancel", "X", "--reason", "r", "--as", "c1")
    assert "wrong password" in str(old.exception)
    cli.passwords["c1"] = "a-brand-new-password"
    res = cli.invoke(cli_cards.app, "cancel", "A00000003", "--reason", "r", "--as", "c1")
    assert "no card" in str(res.exception)  # authenticated: now only the card is unknown
    with session_scope() as s:
        hashes = s.scalars(sa.select(Staff.password_hash)).all()
        details = " ".join(s.scalars(sa.select(AuditEvent.details)).all())
    assert all(h.startswith("scrypt$") for h in hashes)
    assert not any(pw in details for pw in cli.passwords.values())


def test_check_fails_when_behind(env):
    ok(cli_db.app, "upgrade", "base")
    res = runner.invoke(cli_db.app, ["check"])
    assert res.exit_code == 1


PHOTOS = Path(__file__).resolve().parents[1] / "fixtures" / "photos"


def test_app_import_command(env):
    cli = Cli()
    ok(cli_db.app, "upgrade")
    cli.staff({"c1": "clerk"})
    good, tilted, bad = make_cid(), make_cid(), make_cid()
    archive = env / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(PHOTOS / "astronaut.jpg", "photos/zhang.jpg")
        z.write(PHOTOS / "astronaut_tilted.jpg", "photos/li.jpg")
    sheet = env / "employees.csv"
    sheet.write_text(
        "公民身份号码,姓名,联系电话,照片\n"
        f"{good},张伟,13600000001,zhang.jpg\n"
        f"{tilted},李娜,13600000002,li.jpg\n"
        f"{bad[:17]}{'0' if bad[17] != '0' else '1'},王芳,136,missing.jpg\n",
        encoding="utf-8",
    )
    args = ["import", str(sheet), "--collective", "Acme Ltd", "--photos", str(archive)]
    out = cli.ok(cli_people.app, *args, "--as", "c1")
    assert "employees.csv: 1 accepted, 2 rejected, 0 already imported" in out
    assert "line 3" in out and "tilted" in out  # the real photo pipeline's reason
    assert "line 4" in out and "citizen_id" in out and "phone" in out and "photo" in out
    assert good not in out and tilted not in out  # masked
    out = cli.ok(cli_people.app, *args, "--as", "c1")
    assert "0 accepted, 2 rejected, 1 already imported" in out
    res = cli.invoke(cli_people.app, *args)
    assert res.exit_code != 0  # who imports must be said
