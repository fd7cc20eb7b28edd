"""Security checks (issue 7) on real parts: a SoftHSM token made in tmp by ``ykt hsm init``,
inspected with OpenSC's ``pkcs11-tool`` (an independent PKCS#11 client); malformed cryptograms
against the HSM; audit tampering by direct SQL on a throwaway PostgreSQL."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from cardspec import ids, keyscheme
from hsm.errors import CryptogramMismatch
from hsm.service import CardKeyRef, KeyService
from issuance import audit, migrations, services
from issuance.db import make_engine
from issuance.errors import IntegrityError
from issuance.models import AuditEvent, StaffRole
from yikatong.cli import hsm as hsm_cli
from yikatong.settings import Settings, get_settings, load_settings
from yikatong.wiring import key_service_from_settings

pytestmark = [pytest.mark.slow, pytest.mark.softhsm]

PKCS11_TOOL = shutil.which("pkcs11-tool")


@pytest.fixture(scope="module")
def hsm_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("hsm-security")
    old = os.environ.get("YKT_DATA_DIR")
    os.environ["YKT_DATA_DIR"] = str(root)
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(hsm_cli.app, ["init"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        yield root
    finally:
        if old is None:
            os.environ.pop("YKT_DATA_DIR", None)
        else:
            os.environ["YKT_DATA_DIR"] = old
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def hsm_settings(hsm_dir: Path) -> Settings:
    return load_settings(environ={"YKT_DATA_DIR": str(hsm_dir)})


@pytest.fixture(scope="module")
def key_service(hsm_settings: Settings) -> KeyService:
    return key_service_from_settings(hsm_settings)


def _tool(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    assert PKCS11_TOOL is not None, "pkcs11-tool (opensc) is not installed: run make setup"
    env = {**os.environ, "SOFTHSM2_CONF": str(settings.softhsm_conf)}
    return subprocess.run(
        [PKCS11_TOOL, "--module", str(settings.hsm.module), "--token-label",
         settings.hsm.token_label, "--login", "--pin", settings.hsm.user_pin(), *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_master_keys_are_not_extractable_per_pkcs11_tool(hsm_settings: Settings):
    listing = _tool(hsm_settings, "--list-objects")
    assert listing.returncode == 0, listing.stderr
    blocks = re.split(r"\n(?=\S)", listing.stdout.strip())
    keys = {}
    for block in blocks:
        if not block.startswith(("Secret Key Object", "Private Key Object")):
            continue
        label = re.search(r"label:\s+(\S+)", block)
        access = re.search(r"Access:\s+(.*)", block)
        assert label and access, block
        keys[label.group(1)] = {a.strip() for a in access.group(1).split(",")}
    masters = [k for k in keys if k.startswith("ykt:") and k != "ykt:signing:v1"]
    from hsm.ceremony import CENTRE_SLOTS  # the card centre's own (the bank's are the bank's)

    assert len(masters) >= len(CENTRE_SLOTS) and "ykt:signing:v1" in keys, sorted(keys)
    for label, access in keys.items():
        assert {"sensitive", "always sensitive", "never extractable"} <= access, (label, access)
        assert "extractable" not in access, label
    # and no master key's value can be read out (pkcs11-tool cannot even try private keys)
    out = Path(hsm_settings.data_dir) / "leak.bin"
    for label in masters:
        res = _tool(hsm_settings, "--read-object", "--type", "secrkey", "--label", label,
                    "-o", str(out))  # fmt: skip
        assert res.returncode != 0 and not out.exists(), label
        assert "CKR_ATTRIBUTE_SENSITIVE" in res.stderr, res.stderr


def test_malformed_cryptograms_get_their_specific_error(key_service: KeyService):
    code = ids.make_card_identification_code("330100", bytes.fromhex("1122334455667788"))
    ref = CardKeyRef(code)
    factor, rnd = keyscheme.card_factor(code), os.urandom(8)
    with key_service.card_crypto(ref) as crypto:
        good = crypto.internal_auth_response(factor, rnd)
    key_service.verify_internal_auth(ref, factor, rnd, good)  # the genuine answer passes
    other = CardKeyRef(ids.make_card_identification_code("330100", bytes(8)))
    with key_service.card_crypto(other) as crypto:
        copy = crypto.internal_auth_response(factor, rnd)
    flipped = bytes([good[0] ^ 1]) + good[1:]
    for bad in (good[:-1], good + b"\x00", b"", flipped, copy, bytes(len(good))):
        with pytest.raises(CryptogramMismatch):
            key_service.verify_internal_auth(ref, factor, rnd, bad)
    with pytest.raises(CryptogramMismatch):  # a replay against a new challenge
        key_service.verify_internal_auth(ref, factor, os.urandom(8), good)
    # malformed challenges are refused before the HSM is asked (a caller's bug, ValueError)
    with pytest.raises(ValueError, match="8 bytes"):
        key_service.verify_internal_auth(ref, factor[:7], rnd, good)
    with pytest.raises(ValueError, match="8 bytes"):
        key_service.verify_internal_auth(ref, factor, rnd + b"\x00", good)


@pytest.fixture
def pg_session(pg_server: object) -> Iterator[tuple[Session, str]]:
    name = f"ykt_tamper_{os.getpid()}_{os.urandom(3).hex()}"
    url = pg_server.create_database(name)  # type: ignore[attr-defined]
    engine = make_engine(url=url)
    migrations.upgrade(engine)
    with Session(engine, expire_on_commit=False) as s:
        yield s, url
    engine.dispose()


def _raw_sql(url: str, sql: str, *params: object) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        conn.execute(sql, params)


TAMPERING = {
    # an event rewritten: the first bad event is named
    "edit": (
        "UPDATE audit_events SET actor_name = 'someone else' WHERE chain_seq = 6", 6, "event id"
    ),
    # an event deleted from the middle of the chain
    "delete_middle": (
        "DELETE FROM audit_events WHERE chain_seq = 9", 9, "sequence 9 is missing"
    ),
    # the last event deleted (the chain head still names it)
    "delete_tail": (
        "DELETE FROM audit_events WHERE chain_seq = 12", 12,
        "the head says sequence 12 but the log ends at 11",
    ),
}  # fmt: skip


@pytest.mark.postgres
@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_audit_tampering_by_sql_is_detected(pg_session, key_service: KeyService, case: str):
    """Each tampering on its own fresh, sealed chain (no case depends on an earlier one)."""
    session, url = pg_session
    for i in range(12):
        services.create_staff(session, f"clerk{i}", StaffRole.CLERK)
    session.commit()
    audit.seal(session, key_service, delay=timedelta(0), checkpoint_every=4)
    session.commit()
    pem = key_service.public_key_pem()
    assert audit.verify_chain(session, pem).signed_checkpoints == 3
    sql, seq, expected = TAMPERING[case]
    target = session.scalars(sa.select(AuditEvent).where(AuditEvent.chain_seq == seq)).one()
    _raw_sql(url, sql)
    session.expire_all()
    with pytest.raises(IntegrityError) as err:
        audit.verify_chain(session, pem)
    message = str(err.value)
    assert expected in message, message
    if case == "edit":
        assert err.value.details["event_id"] == target.id and f"event id {target.id}" in message
    else:
        assert err.value.details.get("chain_seq") == seq, err.value.details
