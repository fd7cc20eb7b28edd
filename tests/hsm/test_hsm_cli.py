"""``ykt hsm ...`` through Typer's CliRunner on a token of its own: imports typed by named
custodians, transport keys, rotation, listing with KCVs, the public key; ceremonies recorded
in the audit log of the configured database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from hsm_helpers import components_of
from typer.testing import CliRunner

from cardspec import keyscheme
from cardspec.keyscheme import Algorithm
from hsm import ceremony, softhsm
from hsm.pkcs11 import Pkcs11Token, open_token
from hsm.service import Pkcs11KeyService, verify_signature
from issuance.db import make_engine
from issuance.models import AuditEvent
from yikatong.cli.hsm import app
from yikatong.settings import get_settings, load_settings
from yikatong.wiring import hsm_config

pytestmark = pytest.mark.softhsm
runner = CliRunner()


@dataclass(frozen=True)
class CliToken:
    root: Path
    token: Pkcs11Token


@pytest.fixture(scope="module")
def cli_token(tmp_path_factory: pytest.TempPathFactory) -> CliToken:
    root = tmp_path_factory.mktemp("hsm-cli")
    config = hsm_config(load_settings(environ={"YKT_DATA_DIR": str(root)}))
    softhsm.ensure_token(config)
    token = open_token(config)
    ceremony.init_keys(token, Algorithm.DES3)
    return CliToken(root, token)


@pytest.fixture
def ykt(cli_token: CliToken, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliToken]:
    """The CLI's settings point at the module's token (no database unless a test sets one)."""
    for name in list(os.environ):
        if name.startswith("YKT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("YKT_DATA_DIR", str(cli_token.root))
    get_settings.cache_clear()
    yield cli_token
    get_settings.cache_clear()


def _use_db(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("YKT_DATABASE__URL", url)
    get_settings.cache_clear()


def _events(url: str, action: str) -> list[AuditEvent]:
    engine = make_engine(url=url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(AuditEvent).where(AuditEvent.action == action)).all()
        return list(rows)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def _listed() -> dict[str, dict[str, object]]:
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    return {row["label"]: row for row in map(json.loads, result.output.splitlines())}


def _next_version(t: CliToken) -> int:
    return 1 + max(k.version or 0 for k in ceremony.list_keys(t.token))


def _typed(parts: list[bytes], alg: Algorithm) -> str:
    """What the custodians type: each component (hidden) then its KCV."""
    return "".join(f"{p.hex()}\n{keyscheme.kcv(p, alg).hex()}\n" for p in parts)


def test_import_by_named_custodians_is_recorded(
    ykt: CliToken, fresh_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_db(monkeypatch, fresh_db_url)
    v = _next_version(ykt)
    label = f"ykt:eak:3des:v{v}"
    key = os.urandom(16)
    parts = components_of(key, 2)
    result = runner.invoke(
        app, ["import", "eak", "--version", str(v), "-c", "Alice Wang", "-c", "Bob Li",
              "--as", "sec-officer"], input=_typed(parts, Algorithm.DES3),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    kcv = keyscheme.kcv(key, Algorithm.DES3).hex().upper()
    assert f"{label} imported, KCV {kcv}" in result.output
    assert all(p.hex() not in result.output.lower() for p in parts)  # typed without echo
    assert _listed()[label]["kcv"] == kcv
    (event,) = _events(fresh_db_url, "hsm.key_imported")
    details = json.loads(event.details)
    assert event.entity_id == label and event.actor_name == "sec-officer"
    assert details["kcv"] == kcv and details["custodians"] == [
        {"component": n, "custodian": name, "kcv": keyscheme.kcv(p, Algorithm.DES3).hex().upper()}
        for n, (name, p) in enumerate(zip(["Alice Wang", "Bob Li"], parts, strict=True), 1)
    ]
    assert all(p.hex() not in event.details.lower() for p in (key, *parts))

    # a component whose KCV is wrong: refused, no key, nothing recorded
    bad = _typed(parts, Algorithm.DES3).replace(keyscheme.kcv(parts[1], Algorithm.DES3).hex(),
                                                "000000")  # fmt: skip
    refused = runner.invoke(
        app, ["import", "eak", "--version", str(v + 1), "-c", "a", "-c", "b"], input=bad
    )
    assert refused.exit_code != 0 and f"ykt:eak:3des:v{v + 1}" not in _listed()
    assert len(_events(fresh_db_url, "hsm.key_imported")) == 1
    # one name per component, and two different people
    same = runner.invoke(app, ["import", "eak", "--version", str(v + 1), "-c", "a", "-c", "a"])
    assert same.exit_code != 0 and "different custodian" in same.output

    # the key-loading key master (always AES), names asked at the prompt
    klk = os.urandom(16)
    kparts = components_of(klk, 3)
    typed = "".join(
        f"{name}\n{p.hex()}\n{keyscheme.kcv(p, Algorithm.AES).hex()}\n"
        for name, p in zip(["c1", "c2", "c3"], kparts, strict=True)
    )
    result = runner.invoke(app, ["import", "klk", "-n", "3", "--version", str(v)], input=typed)
    assert result.exit_code == 0, result.output
    row = _listed()[ceremony.klk_label(v)]
    assert row["kind"] == "klk" and row["kcv"] == keyscheme.kcv(klk, Algorithm.AES).hex().upper()
    (klk_event,) = [e for e in _events(fresh_db_url, "hsm.key_imported") if "klk" in e.entity_id]
    assert [c["custodian"] for c in json.loads(klk_event.details)["custodians"]] == [
        "c1", "c2", "c3"
    ]  # fmt: skip


def test_transport_keys_have_their_kcv_listed(ykt: CliToken) -> None:
    """Transport keys may only wrap, so the HSM cannot compute their KCV: ``list`` shows the
    one recorded at import. Without a database the ceremony says it is not recorded."""
    key = os.urandom(16)
    parts = components_of(key, 2)
    result = runner.invoke(
        app, ["transport-key", "import", "bureau-x", "-c", "Carol", "-c", "Dave"],
        input=_typed(parts, Algorithm.AES),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not recorded in the audit log" in result.output
    row = _listed()["ykt:transport:bureau-x"]
    assert row["kcv"] == keyscheme.kcv(key, Algorithm.AES).hex().upper()
    assert row["kcv_source"] == "import record" and not row["extractable"]

    shown = runner.invoke(
        app, ["transport-key", "generate", "bureau-y", "-n", "3", "-c", "E", "-c", "F", "-c", "G"],
        input="\n\n\n",
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    comps = re.findall(r"component \d: ([0-9A-F]{32})  KCV ([0-9A-F]{6})", shown.output)
    assert len(comps) == 3
    combined = bytearray(16)
    for comp, kcv in comps:
        assert keyscheme.kcv(bytes.fromhex(comp), Algorithm.AES).hex().upper() == kcv
        combined = bytearray(a ^ b for a, b in zip(combined, bytes.fromhex(comp), strict=True))
    assert _listed()["ykt:transport:bureau-y"]["kcv"] == (
        keyscheme.kcv(bytes(combined), Algorithm.AES).hex().upper()
    )
    table = runner.invoke(app, ["list"])
    assert table.exit_code == 0 and "new cards use key set" in table.output


def test_rotate_moves_new_cards_to_the_next_complete_set(
    ykt: CliToken, fresh_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_db(monkeypatch, fresh_db_url)
    before = ceremony.current_version(ykt.token, Algorithm.DES3)
    assert before is not None
    highest = max(k.version or 0 for k in ceremony.list_keys(ykt.token) if k.kind == "master")
    result = runner.invoke(app, ["rotate", "--algorithm", "3des"])
    assert result.exit_code == 0, result.output
    after = highest + 1  # above every version present, complete or not (an import under way)
    assert ceremony.current_version(ykt.token, Algorithm.DES3) == after
    assert f"3des key set: v{before} -> v{after}" in result.output
    listed = _listed()
    for label in ceremony.key_set_labels(Algorithm.DES3, after):
        assert listed[label]["version"] == after and listed[label]["kcv"]
        assert listed[label]["sensitive"] and not listed[label]["extractable"]
    for label in ceremony.key_set_labels(Algorithm.DES3, before):
        assert label in listed  # the old set stays: its cards keep working
    table = runner.invoke(app, ["list"])
    assert f"3des: new cards use key set v{after}" in table.output
    (event,) = _events(fresh_db_url, "hsm.key_set_rotated")
    details = json.loads(event.details)
    assert (details["from_version"], details["to_version"]) == (before, after)
    assert (
        len(details["keys"]) >= len(ceremony.CENTRE_SLOTS) and event.entity_id == f"3des:v{after}"
    )


def test_unmigrated_database_stops_the_ceremony_before_any_key(
    ykt: CliToken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_db(monkeypatch, f"sqlite:///{tmp_path / 'empty.db'}")
    v = str(_next_version(ykt))
    result = runner.invoke(app, ["generate", "puk", "--version", v])
    assert result.exit_code != 0 and "ykt db upgrade" in result.output
    assert f"ykt:puk:3des:v{v}" not in _listed()
    ok = runner.invoke(app, ["generate", "puk", "--version", v, "--no-audit"])
    assert ok.exit_code == 0 and f"ykt:puk:3des:v{v}" in _listed()


def test_export_public_key(ykt: CliToken, tmp_path: Path) -> None:
    out = tmp_path / "issuer.pem"
    result = runner.invoke(app, ["export-public-key", "-o", str(out)])
    assert result.exit_code == 0, result.output
    pem = out.read_bytes()
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    service = Pkcs11KeyService(ykt.token)
    verify_signature(pem, b"status feed", service.sign(b"status feed"))
    printed = runner.invoke(app, ["export-public-key"])
    assert printed.exit_code == 0 and printed.output.encode() == pem
