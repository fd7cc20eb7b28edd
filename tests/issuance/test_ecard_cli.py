"""``ykt ecard issue|code|link|show|authorise-loss|verify-offline`` with a real SoftHSM token's
signing key (issue 21): the PNG a clerk writes is decoded by zxing-cpp; the terminal's offline
check uses only the issuer's public key and a signed status feed saved to a file."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import pytest
from issuance_cli_helpers import Cli
from issuance_helpers import make_cid
from qr_scan import scan_qr

from issuance import services
from issuance.services import status_feed
from yikatong.cli import audit as cli_audit
from yikatong.cli import cards as cli_cards
from yikatong.cli import db as cli_db
from yikatong.cli import ecard as cli_ecard
from yikatong.cli import hsm as hsm_cli
from yikatong.cli import people as cli_people
from yikatong.cli.db import session_scope
from yikatong.settings import get_settings
from yikatong.wiring import key_service_from_settings

pytestmark = pytest.mark.softhsm
cli = Cli()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("YKT_DATA_DIR", str(tmp_path))
    for var in ("YKT_STAFF", "YKT_STAFF_PASSWORD", "YKT_STAFF_PASSWORD_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli_db, "_prompted", {})
    cli.passwords.clear()
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _active_card() -> str:
    cli.ok(cli_db.app, "upgrade")
    cli.staff({"c1": "clerk", "r1": "reviewer", "a1": "approver"})
    cli.ok(cli_people.app, "submit", "--id", make_cid(birth=date(2021, 6, 1)), "--name", "小红",
           "--phone", "13900000000", "--ethnicity", "01", "--as", "c1")  # fmt: skip
    cli.ok(cli_people.app, "process", "1", "--as", "c1")
    cli.ok(cli_people.app, "review", "1", "--as", "r1")
    number = cli.ok(cli_people.app, "approve", "1", "--as", "a1").split("card ")[1].split()[0]
    with session_scope() as s:
        card = services.find_card(s, card_number=number)
        actor = services.actor_for(s, "c1")
        for step in ("start_production", "personalise", "ship"):
            services.advance_production(s, get_settings(), card.id, step, actor,
                                        chip_serial=bytes.fromhex("A1B2C3D4E5F60718"))  # fmt: skip
    cli.ok(cli_cards.app, "collect", number, "--as", "c1")
    cli.ok(cli_cards.app, "activate", number, "--as", "c1")
    return number


def _saved_feed(path: Path) -> Path:
    """The full signed status feed as the API serves it, saved to a file (what a terminal
    keeps), after the feed's settle time."""
    time.sleep(status_feed.SETTLE.total_seconds() + 0.2)
    keys = key_service_from_settings(get_settings())
    with session_scope() as s:
        writer = status_feed.FeedWriter("full", None, status_feed.high_water(s))
        body = writer.header()
        for chunk in status_feed.chunks(status_feed.iter_full(s)):
            body += writer.entries(chunk)
    path.write_bytes(body + writer.trailer(keys.sign(writer.message())))
    return path


def _code(env: Path, ecard_id: str, name: str) -> str:
    png = env / f"{name}.png"
    text = cli.ok(cli_ecard.app, "code", ecard_id, "--png", str(png), "--as", "c1").strip()
    assert scan_qr(png) == [text]
    return text


def test_counter_issue_code_and_offline_check(env: Path) -> None:
    cli.ok(hsm_cli.app, "init")  # SoftHSM token with master keys and the signing key
    number = _active_card()
    out = cli.ok(cli_ecard.app, "issue", number, "--as", "c1")
    ecard_id = out.split("e-card ")[1].split()[0]
    assert len(ecard_id) == 32
    bad = cli.invoke(cli_ecard.app, "issue", number, "--as", "c1")
    assert bad.exit_code != 0  # one live e-card per person
    link = cli.ok(cli_ecard.app, "link", ecard_id, "--as", "c1")
    assert link.startswith("/console/ecard/r/") and "valid until" in link

    pem = env / "issuer.pem"
    cli.ok(cli_audit.app, "public-key", "--output", str(pem))
    before = _code(env, ecard_id, "before")
    feed = _saved_feed(env / "feed-1.ndjson")
    ok = cli.invoke(cli_ecard.app, "verify-offline", before, "--public-key", str(pem),
                    "--feed", str(feed))  # fmt: skip
    assert (ok.exit_code, ok.output.strip()) == (0, "VALID")

    cli.ok(cli_cards.app, "report-loss", number, "--channel", "phone", "--identity-checked",
           "--as", "c1")  # fmt: skip
    feed = _saved_feed(env / "feed-2.ndjson")
    lost = cli.invoke(cli_ecard.app, "verify-offline", before, "--public-key", str(pem),
                      "--feed", str(feed))  # fmt: skip
    assert (lost.exit_code, lost.output.strip()) == (1, "INVALID (lost)")
    assert cli.invoke(cli_ecard.app, "code", ecard_id, "--as", "c1").exit_code != 0

    cli.ok(cli_ecard.app, "authorise-loss", ecard_id, "--as", "c1")
    assert "authorised during the loss" in cli.ok(cli_ecard.app, "show", ecard_id)
    during = _code(env, ecard_id, "during")
    ok = cli.invoke(cli_ecard.app, "verify-offline", during, "--public-key", str(pem),
                    "--feed", str(feed))  # fmt: skip
    assert (ok.exit_code, ok.output.strip()) == (0, "VALID")
    # a changed feed does not verify: nothing is taken from it
    tampered = env / "feed-bad.ndjson"
    tampered.write_bytes(feed.read_bytes().replace(b'"refused":true', b'"refused":false'))
    res = cli.invoke(cli_ecard.app, "verify-offline", before, "--public-key", str(pem),
                     "--feed", str(tampered))  # fmt: skip
    assert res.exit_code != 0 and "VALID" not in res.output
