"""The ykt db / app / cards / audit commands end to end on a private SQLite database."""

from __future__ import annotations

import pytest
from conftest import make_cid
from typer.testing import CliRunner

from issuance import cli_audit, cli_cards, cli_db, cli_people
from issuance.settings import get_settings

runner = CliRunner()


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("YKT_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def ok(app, *args):
    res = runner.invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_cli_flow(env):
    ok(cli_db.app, "upgrade")
    assert "models and migrations agree" in ok(cli_db.app, "check")
    for name, role in [
        ("c1", "clerk"),
        ("r1", "reviewer"),
        ("a1", "approver"),
        ("f1", "fund_supervisor"),
    ]:
        ok(cli_db.app, "create-staff", name, "--role", role)
    cid = make_cid(birth=__import__("datetime").date(2021, 6, 1))  # under 6: photo exempt
    out = ok(
        cli_people.app,
        "submit",
        "--id",
        cid,
        "--name",
        "小明",
        "--phone",
        "13800000000",
        "--as",
        "c1",
    )
    assert cid not in out and "application 1 received" in out
    ok(cli_people.app, "process", "1", "--as", "c1")
    res = runner.invoke(cli_people.app, ["review", "1", "--as", "c1"])
    assert res.exit_code != 0  # maker–checker / role
    ok(cli_people.app, "review", "1", "--as", "r1")
    out = ok(cli_people.app, "approve", "1", "--as", "a1")
    number = out.split("card ")[1].split()[0]
    assert "number_allocated" in ok(cli_cards.app, "show", number)
    assert cid not in ok(cli_people.app, "list")
    out = ok(cli_cards.app, "temporary", "--id", cid, "--as", "c1")
    assert "temporary card" in out
    out = ok(cli_audit.app, "verify", "--chain-only")
    assert "audit chain OK" in out


def test_check_fails_when_behind(env):
    ok(cli_db.app, "upgrade", "base")
    res = runner.invoke(cli_db.app, ["check"])
    assert res.exit_code == 1
