"""``ykt cards collect|activate|activate-financial|expire-losses``, ``ykt outbox drain`` and the
audit log sealed with a real SoftHSM token's signing key (``ykt audit seal|verify|public-key``),
tampering included. Each test has its own SQLite database and token under tmp."""

from __future__ import annotations

import os
import sqlite3
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
import typer
from issuance_cli_helpers import Cli
from issuance_helpers import INITIAL_BANK_PIN, emulated_chip, make_cid
from typer.testing import CliRunner

from cardspec import cardops, keyscheme
from cardspec.emulator import Card as EmulatedCard
from cardspec.keyscheme import Algorithm
from cardspec.reader import InProcessReader
from devstack.bank import IMK_SLOTS, answer_request, demo_bank_toml
from hsm import ceremony
from hsm.service import SoftwareKeyService
from issuance import audit, services
from issuance.errors import PermissionDenied
from issuance.models import AgencyKind, AuditEvent, BankAccount
from yikatong.cli import audit as cli_audit
from yikatong.cli import bank as cli_bank
from yikatong.cli import cards as cli_cards
from yikatong.cli import db as cli_db
from yikatong.cli import hsm as hsm_cli
from yikatong.cli import main as ykt_cli
from yikatong.cli import outbox as cli_outbox
from yikatong.cli import people as cli_people
from yikatong.cli import worker as cli_worker
from yikatong.cli.db import session_scope
from yikatong.settings import get_settings

runner = CliRunner()
cli = Cli()
worker_app = typer.Typer()
worker_app.command()(cli_worker.worker)


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


def ok(app, *args: str, **kw) -> str:
    return cli.ok(app, *args, **kw)


def _shipped_card(
    staff: dict[str, str], serial: str = "A1B2C3D4E5F60718", bank: bool = False
) -> str:
    """An approved application taken through production with the services; its card number.
    ``bank``: its account asked of the bank and the bank's response loaded (``ykt bank``)
    before production."""
    ok(cli_db.app, "upgrade")
    cli.staff(staff)
    cid = make_cid(birth=date(2021, 6, 1))  # under 6: no photo needed
    ok(cli_people.app, "submit", "--id", cid, "--name", "小红", "--phone", "13900000000",
       "--ethnicity", "01", "--as", "c1")  # fmt: skip
    ok(cli_people.app, "process", "1", "--as", "c1")
    ok(cli_people.app, "review", "1", "--as", "r1")
    number = ok(cli_people.app, "approve", "1", "--as", "a1").split("card ")[1].split()[0]
    if bank:
        _bank_exchange()
    with session_scope() as s:
        card = services.find_card(s, card_number=number)
        actor = services.actor_for(s, "c1")
        for step in ("start_production", "personalise", "ship"):
            services.advance_production(
                s,
                get_settings(),
                card.id,
                step,
                actor,
                chip_serial=bytes.fromhex(serial),
            )
    return number


STAFF = {"c1": "clerk", "r1": "reviewer", "a1": "approver", "b1": "bank_teller"}
BANK, DOMAIN = "ICBC-TEST", "icbc-test"
#: The bank's issuer master keys (known test keys: the bank side's, the chip's oracle).
IMKS = {slot: bytes([n + 1]) * 16 for n, slot in enumerate(IMK_SLOTS)}


def _bank_exchange() -> None:
    """The bank configured, its request file written and answered by the (throwaway) bank
    side, the response loaded: all through ``ykt bank``."""
    data_dir = get_settings().data_dir
    (data_dir / "yikatong.toml").write_text(demo_bank_toml(BANK, DOMAIN), encoding="utf-8")
    get_settings.cache_clear()
    with session_scope() as s:
        services.create_agency(s, BANK, "ICBC test branch", AgencyKind.BANK, "330100")
    req = data_dir / "icbc.req"
    assert "1 card(s)" in ok(cli_bank.app, "request-file", BANK, "-o", str(req), "--as", "c1")
    rsp = data_dir / "icbc.rsp"
    rsp.write_text(answer_request(req.read_text(encoding="utf-8")), encoding="utf-8")
    assert "1 account(s) loaded" in ok(cli_bank.app, "load-response", BANK, str(rsp),
                                       "--as", "c1")  # fmt: skip
    res = cli.invoke(cli_bank.app, "load-response", BANK, str(req), "--as", "c1")
    assert res.exit_code == 1  # a request is not a response: refused, nothing loaded


def _bank_ceremony() -> None:
    """``ykt hsm init``, then the bank's IMKs imported by its two custodians (components and
    KCVs typed at the prompts) into its key domain."""
    ok(hsm_cli.app, "init", "--if-missing")
    for slot, key in IMKS.items():
        first = bytes(range(16))
        second = bytes(a ^ b for a, b in zip(key, first, strict=True))
        typed = "".join(f"{c.hex()}\n{keyscheme.kcv(c, Algorithm.DES3).hex()}\n"
                        for c in (first, second))  # fmt: skip
        out = ok(hsm_cli.app, "import", slot.value, "--bank", DOMAIN, "--custodian", "王工",
                 "--custodian", "李工", "--no-audit", input=typed)  # fmt: skip
        assert (
            f"ykt:bank:{DOMAIN}:" in out and keyscheme.kcv(key, Algorithm.DES3).hex().upper() in out
        )
    res = cli.invoke(hsm_cli.app, "import", "fin_ac", "--custodian", "x", "--custodian", "y",
                     "--no-audit", input="")  # fmt: skip
    assert res.exit_code != 0  # a bank's key: only into its domain (--bank)


NEW_PIN = "480159"


def _chip_image(number: str) -> Path:
    """The card's chip as an emulator image under <data_dir>/cards (as production leaves it),
    personalised with throwaway card-centre keys and the bank's EMV keys (its IMKs, the PAN
    the bank gave)."""
    with session_scope() as s:
        card = services.find_card(s, card_number=number)
        pan = s.scalars(sa.select(BankAccount.pan).where(BankAccount.card_id == card.id)).one()
        path = get_settings().cards_dir / f"{card.card_identification_code[-16:]}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = SoftwareKeyService(
            {(slot, Algorithm.DES3, 1): os.urandom(16) for slot in ceremony.CENTRE_SLOTS},
            klk_masters={1: os.urandom(16)},
            bank_masters={(DOMAIN, k, Algorithm.DES3, 1): v for k, v in IMKS.items()},
        )  # throwaway card-centre keys; the bank's IMKs as its custodians imported them
        emulated_chip(card, keys, path=path, pan=pan, bank=DOMAIN)
    return path


@pytest.mark.pcsc
def test_collect_activate_financial_loss_and_outbox(env: Path, caplog: pytest.LogCaptureFixture):
    _bank_ceremony()
    number = _shipped_card(STAFF, bank=True)
    with caplog.at_level("INFO", logger="issuance.outbox"):
        out = ok(cli_outbox.app, "drain")
    assert "1 notifications sent, 0 pending" in out
    assert "card.ready_for_collection" in caplog.text and "13900000000" not in caplog.text
    assert "0 notifications sent" in ok(cli_outbox.app, "drain")  # sent once only

    res = cli.invoke(cli_cards.app, "activate", number, "--as", "c1")
    assert res.exit_code != 0  # not collected yet: undeclared transition
    ok(cli_cards.app, "collect", number, "--as", "c1")
    assert "status issued" in ok(cli_cards.app, "show", number)
    assert "active" in ok(cli_cards.app, "activate", number, "--as", "c1")

    image = _chip_image(number)
    pins = f"{NEW_PIN}\n{NEW_PIN}\n"  # the holder types the new PIN twice, nothing else
    res = cli.invoke(cli_cards.app, "activate-financial", number, "--no-card-auth", "--as", "b1",
                     input=pins)  # fmt: skip
    assert res.exit_code != 0 and "identity" in str(res.exception)
    res = cli.invoke(cli_cards.app, "activate-financial", number, "--identity-checked",
                     "--no-card-auth", "--as", "c1", input=pins)  # fmt: skip
    assert res.exit_code != 0 and isinstance(res.exception, PermissionDenied)  # not a teller
    with caplog.at_level("DEBUG"):
        out = ok(cli_cards.app, "activate-financial", number, "--identity-checked",
                 "--no-card-auth", "--as", "b1", input=pins)  # fmt: skip
    assert "Virtual PCD" in out and "financial function active" in out
    shown = ok(cli_cards.app, "show", number)
    assert "financial" in shown and "status active" in shown
    # the PIN is on the chip (the emulator image behind the virtual reader) and nowhere else
    chip = EmulatedCard.load(image)
    reader = InProcessReader(chip)
    reader.connect()
    cardops.verify_pin(reader, NEW_PIN, pin_name="bank")
    db_bytes = b"".join(p.read_bytes() for p in env.glob("yikatong.db*"))
    for pin in (NEW_PIN, INITIAL_BANK_PIN):
        assert pin.encode() not in db_bytes and pin not in caplog.text and pin not in out
    with session_scope() as s:
        ev = s.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == "chip.financial_pin_set")
        ).one()
        assert ev.actor_name == "b1" and '"pin_method":"issuer_script"' in ev.details

    out = ok(cli_cards.app, "report-loss", number, "--channel", "phone", "--as", "c1")
    assert "provisional" in out
    assert "0 provisional loss reports lapsed" in ok(cli_cards.app, "expire-losses")
    assert "lost_provisional" in ok(cli_cards.app, "show", number)
    res = cli.invoke(cli_cards.app, "unreport", number, "--channel", "phone", "--as", "c1")
    assert res.exit_code != 0 and "identity" in str(res.exception)  # phone: identity too
    ok(cli_cards.app, "unreport", number, "--channel", "phone", "--identity-checked",
       "--as", "c1")  # fmt: skip
    assert "status active" in ok(cli_cards.app, "show", number)


def test_temporary_card_hand_back_cancel_expire_deaths_and_worker(env: Path):
    number = _shipped_card({**STAFF, "s1": "supervisor"})
    with session_scope() as s:
        person = services.find_card(s, card_number=number).person
        cid = person.citizen_id
    out = ok(cli_cards.app, "temporary", "--id-file", "-", "--as", "c1", input=cid + "\n")
    temp = out.split("temporary card ")[1].split()[0]
    out = ok(cli_cards.app, "collect", number, "--as", "c1")  # temporary card not brought
    assert f"temporary card {temp} cancelled, NOT handed back" in out
    out = ok(cli_cards.app, "hand-back", temp, "--as", "c1")
    assert "deposit refunded: 5.00 yuan" in out
    res = cli.invoke(cli_cards.app, "hand-back", temp, "--as", "c1")
    assert "already handed back" in str(res.exception)
    # the periodic jobs in one round; nothing is due yet but the outbox and the audit chain
    out = ok(worker_app, "--once", "--unsigned")
    assert "outbox 1" in out and "expire_cards 0" in out and "audit_seal" in out
    assert "0 cards expired" in ok(cli_cards.app, "expire")
    # cancel one card at the counter, with a reason
    ok(cli_cards.app, "activate", number, "--as", "c1")
    res = cli.invoke(cli_cards.app, "cancel", number, "--as", "c1")
    assert res.exit_code != 0  # a reason is required
    ok(cli_cards.app, "cancel", number, "--reason", "emigrated", "--as", "c1")
    assert "status cancelled" in ok(cli_cards.app, "show", number)
    # the death feed is recorded as run by its operator
    feed = env / "deaths.csv"
    feed.write_text(f"citizen_id,death_date\n{cid},2024-05-01\n", encoding="utf-8")
    res = cli.invoke(cli_cards.app, "cancel-deaths", str(feed))
    assert res.exit_code != 0  # who runs it must be said
    out = ok(cli_cards.app, "cancel-deaths", str(feed), "--as", "s1")
    assert "1 deaths recorded" in out
    with session_scope() as s:
        ev = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "person.deceased")).one()
        assert (ev.actor_name, ev.channel) == ("s1", "feed")


def test_outbox_is_registered_on_the_root_command(env: Path):
    ykt_cli._register()
    res = runner.invoke(ykt_cli.app, ["outbox", "--help"])
    assert res.exit_code == 0 and "drain" in res.output
    res = runner.invoke(ykt_cli.app, ["cards", "--help"])
    commands = ("collect", "activate-financial", "expire-losses", "expire", "hand-back", "cancel")
    assert all(c in res.output for c in commands)
    res = runner.invoke(ykt_cli.app, ["worker", "--help"])
    assert res.exit_code == 0 and "--once" in res.output


@pytest.mark.softhsm
def test_audit_sealed_by_the_hsm_and_tampering_detected(env: Path):
    ok(hsm_cli.app, "init")  # SoftHSM token with master keys and the signing key, under tmp
    _shipped_card({"c1": "clerk", "r1": "reviewer", "a1": "approver"})
    out = ok(cli_audit.app, "seal", "--delay", "0", "--checkpoint-every", "5")
    assert "signed by the HSM" in out
    pem_file = env / "audit-key.pem"
    ok(cli_audit.app, "public-key", "--output", str(pem_file))
    assert pem_file.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "audit chain OK" in ok(cli_audit.app, "verify")
    out = ok(cli_audit.app, "verify", "--public-key", str(pem_file))
    events = int(out.split("OK: ")[1].split()[0])
    assert events > 10 and "0 not yet sealed" in out

    db = env / "yikatong.db"

    def verify_fails() -> str:
        res = runner.invoke(cli_audit.app, ["verify", "--no-seal"])
        assert res.exit_code == 1, res.output
        return res.output

    with sqlite3.connect(db) as conn:  # edit one sealed row behind the application's back
        (eid, reason) = conn.execute(
            "SELECT id, reason FROM audit_events WHERE chain_seq = 7"
        ).fetchone()
        conn.execute("UPDATE audit_events SET reason = 'nothing happened' WHERE id = ?", (eid,))
    assert f"event id {eid}" in verify_fails()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_events SET reason = ? WHERE id = ?", (reason, eid))
    assert "audit chain OK" in ok(cli_audit.app, "verify", "--no-seal")

    with sqlite3.connect(db) as conn:  # delete a row
        row = conn.execute("SELECT * FROM audit_events WHERE chain_seq = 4").fetchone()
        conn.execute("DELETE FROM audit_events WHERE chain_seq = 4")
    assert "sequence 4 is missing" in verify_fails()
    cols = ",".join("?" * len(row))
    with sqlite3.connect(db) as conn:
        conn.execute(f"INSERT INTO audit_events VALUES ({cols})", row)

    # a forger who can write the database but not use the HSM: edit a row, recompute every
    # hash after it, the head, and the checkpoints signed with a key of their own stored
    # beside them -> only the check against the HSM's key gives it away
    forger = audit.SoftwareSigner()
    forger_pem = forger.public_key_pem().decode("ascii")
    with session_scope() as s:
        ev = s.scalars(sa.select(AuditEvent).where(AuditEvent.chain_seq == 3)).one()
        ev.reason = "forged"
        prev = ev.prev_hash
        for later in s.scalars(
            sa.select(AuditEvent).where(AuditEvent.chain_seq >= 3).order_by(AuditEvent.chain_seq)
        ):
            later.prev_hash, later.hash = prev, audit.chain_hash(prev, later)
            prev = later.hash
        s.flush()
        hashes = dict(s.execute(sa.select(AuditEvent.chain_seq, AuditEvent.hash)).all())
        s.execute(sa.text("UPDATE audit_chain_head SET last_hash = :h"), {"h": prev})
        for seq, h in hashes.items():
            s.execute(
                sa.text(
                    "UPDATE audit_checkpoints SET hash = :h, signature = :sig, "
                    "public_key_pem = :pem WHERE chain_seq = :q"
                ),
                {"h": h, "q": seq, "pem": forger_pem,
                 "sig": forger.sign(audit.checkpoint_message(seq, h))},
            )  # fmt: skip
    assert "audit chain OK" in ok(cli_audit.app, "verify", "--chain-only")  # hashes agree...
    out = verify_fails()  # ...but the HSM's signature does not
    assert "checkpoint at sequence 5" in out and "signature" in out


@pytest.mark.softhsm
def test_unsigned_checkpoints_fail_the_strict_check(env: Path):
    ok(hsm_cli.app, "init")
    ok(cli_db.app, "upgrade")
    ok(cli_db.app, "create-staff", "c9", "--role", "clerk")
    ok(cli_audit.app, "seal", "--delay", "0", "--unsigned")
    res = runner.invoke(cli_audit.app, ["verify"])
    assert res.exit_code == 1 and "not signed" in res.output
    assert "audit chain OK" in ok(cli_audit.app, "verify", "--chain-only")
