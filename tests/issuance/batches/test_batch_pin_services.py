"""The PIN services through the real parts: a card made by the production line (SoftHSM,
isolated pcscd + vpcd, the emulated chip), its sealed PIN mailer printed by ``ykt outbox
drain`` (PINs computed in the HSM), then at the counter with ``ykt`` as a clerk runs it (a
subprocess; the desk's virtual reader; hidden prompts fed on stdin): the mailer's PIN changed,
a weak PIN refused, three wrong tries blocking the PIN (shown blocked by ``cards show`` and
``people show``), unblocked, reset. No PIN in any output, log, row or audit event."""

from __future__ import annotations

import io
import re
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from batch_helpers import HsmRoot, batch_settings, hsm_root, populate
from cli_helpers import ykt_cmd, ykt_env
from PIL import ImageChops
from pypdf import PdfReader
from sqlalchemy.engine import Engine

from cardspec import cardops
from cardspec.emulator import Card as EmulatedCard
from cardspec.errors import PinError
from cardspec.profile.social import get_profile
from cardspec.reader import InProcessReader
from issuance.batches.mailers import mailer_text
from issuance.batches.pipeline import RunOptions
from issuance.batches.shipping import issue_card, ship_batch
from issuance.db import Base, make_engine, make_sessionmaker, transaction
from issuance.models import AuditEvent, Card, OutboxMessage
from printers.mailer import mailer_pdf, render_pin_mailer
from yikatong.demo import BRANCH_CODE
from yikatong.settings import Settings
from yikatong.wiring import key_service_from_settings, runner_for

pytestmark = pytest.mark.pcsc

NEW, WRONG, WEAK, RESET = "480159", "907315", "111111", "730264"


@pytest.fixture(scope="session")
def pin_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("pin-hsm"))


@pytest.fixture
def env(tmp_path: Path, fresh_db_url: str, pin_hsm: HsmRoot) -> Iterator[tuple[Settings, Engine]]:
    settings = batch_settings(tmp_path / "data", fresh_db_url, pin_hsm)
    engine = make_engine(settings)
    yield settings, engine
    engine.dispose()


def _issued_card(settings: Settings, engine: Engine) -> str:
    """One card made by the production line, shipped and handed to its holder."""
    pop = populate(engine, settings, 1, name="pins")
    ks = key_service_from_settings(settings)
    operator = pop.actors["demo-operator"]
    with runner_for(settings, pop.batch_id, engine=engine, key_service=ks, actor=operator,
                    options=RunOptions(readers=1)) as runner:  # fmt: skip
        assert runner.run().checked == 1
    factory = make_sessionmaker(engine)

    def txn(fn):  # type: ignore[no-untyped-def]
        with transaction(factory) as s:
            return fn(s)

    ship_batch(txn, settings, pop.batch_id, BRANCH_CODE, operator)
    (number,) = pop.card_numbers
    txn(lambda s: issue_card(s, number, pop.actors["demo-teller"]))
    return number


class Ykt:
    """``ykt`` in a subprocess; every output kept (searched for PINs at the end)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env, self.outputs = env, []  # type: ignore[var-annotated]

    def __call__(self, *args: str, stdin: str = "", ok: bool = True) -> str:
        r = subprocess.run(ykt_cmd(*args), env=self.env, input=stdin, capture_output=True,
                           text=True, timeout=240)  # fmt: skip
        self.outputs.append(r.stdout + r.stderr)
        if ok:
            assert r.returncode == 0, r.stdout + r.stderr
        else:
            assert r.returncode != 0, r.stdout + r.stderr
        return r.stdout + r.stderr


def _chip(settings: Settings, cic: str) -> InProcessReader:
    chip = EmulatedCard.load(settings.cards_dir / f"{cic[-16:]}.json")
    reader = InProcessReader(chip)
    reader.connect()
    return reader


def test_mailer_then_change_weak_block_unblock_reset(
    env: tuple[Settings, Engine], pin_hsm: HsmRoot
) -> None:
    settings, engine = env
    number = _issued_card(settings, engine)
    ykt = Ykt(ykt_env(settings, pin_hsm))

    # --- the sealed PIN mailer, printed by draining the outbox ---------------------------------
    assert ", 0 pending" in ykt("outbox", "drain")
    (pdf_path,) = settings.mailer_dir.glob("*.pdf")
    assert stat.S_IMODE(pdf_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.mailer_dir.stat().st_mode) == 0o700
    assert not list(settings.spool_dir.glob("pin-mailer-*.pdf"))  # not among the card faces
    ks = key_service_from_settings(settings)
    with transaction(make_sessionmaker(engine)) as s:
        card = s.scalars(sa.select(Card).where(Card.card_number == number)).one()
        cic = card.card_identification_code
        assert cic is not None
        text = mailer_text(settings, ks, card, pdf_path.stem)  # recomputed in the HSM
        person_cid = card.person.citizen_id
        (msg,) = s.scalars(sa.select(OutboxMessage).where(
            OutboxMessage.topic == "card.initial_pin_mailer")).all()  # fmt: skip
        assert msg.sent_at is not None and msg.last_error is None
        (printed,) = s.scalars(sa.select(AuditEvent).where(
            AuditEvent.action == "card.pin_mailer_printed")).all()  # fmt: skip
        assert printed.entity_id == str(card.id) and pdf_path.stem in (printed.details or "")
    pins = {("bank" if "bank" in label else "ss"): pin for label, pin in text.pins}
    ss_pin, bank_pin = pins["ss"], pins["bank"]
    assert ss_pin != bank_pin  # separate PINs: the bank PIN never defaults to the other
    # the spooled PDF is exactly that drawing; the PINs lie only in the tear-off strip
    page = render_pin_mailer(text)
    assert pdf_path.read_bytes() == mailer_pdf(page, pdf_path.stem)
    left, top, right, bottom = page.tear_off
    for box in page.pin_boxes:
        assert left <= box[0] and top <= box[1] and box[2] <= right and box[3] <= bottom
    reader = PdfReader(pdf_path)
    assert len(reader.pages) == 1
    (drawn,) = reader.pages[0].images
    other = render_pin_mailer(replace(text, pins=tuple((lab, "000000") for lab, _ in text.pins)))
    (other_drawn,) = PdfReader(io.BytesIO(mailer_pdf(other, pdf_path.stem))).pages[0].images
    changed = ImageChops.difference(drawn.image.convert("RGB"),
                                    other_drawn.image.convert("RGB")).getbbox()  # fmt: skip
    assert changed is not None  # the PINs are on the page...
    assert left <= changed[0] and top <= changed[1]  # ...and only inside the tear-off strip
    assert changed[2] <= right and changed[3] <= bottom
    # the mailer's bank PIN is the one on the chip
    chip = _chip(settings, cic)
    profile = get_profile(chip.card.state.profile_name)  # type: ignore[attr-defined]
    cardops.verify_pin(chip, bank_pin, pin_name="bank", profile=profile)

    # --- the counter: the holder changes the mailer's PIN ---------------------------------------
    out = ykt("cards", "pin-change", number, "--as", "demo-clerk",
              stdin=f"{ss_pin}\n{NEW}\n{NEW}\n", ok=False)  # fmt: skip
    assert "identity" in out  # the clerk must check the holder's identity document
    out = ykt("cards", "pin-change", number, "--identity-checked", "--as", "demo-clerk",
              stdin=f"{ss_pin}\n{NEW}\n{NEW}\n")  # fmt: skip
    assert "Virtual PCD" in out and "social security PIN changed on the card (3 tries)" in out
    out = ykt("cards", "pin-change", number, "--identity-checked", "--as", "demo-clerk",
              stdin=f"{NEW}\n{WEAK}\n{WEAK}\n", ok=False)  # fmt: skip
    assert "too weak: repeated digits" in out
    assert "PIN: 3 tries left" in ykt("cards", "show", number)  # the card never saw it

    # --- three wrong tries block it; shown blocked ---------------------------------------------
    for left_after in ("2 tries left", "1 tries left", "blocked"):
        out = ykt("cards", "pin-change", number, "--identity-checked", "--as", "demo-clerk",
                  stdin=f"{WRONG}\n{RESET}\n{RESET}\n", ok=False)  # fmt: skip
        assert left_after in out
    shown = ykt("cards", "show", number)
    assert re.search(r"social_security\s+PIN blocked", shown), shown
    assert re.search(r"medical\s+PIN blocked", shown), shown
    people = ykt("people", "show", "--card", number, "--as", "demo-clerk")
    assert re.search(r"social_security\s+PIN blocked", people), people
    out = ykt("cards", "pin-change", number, "--identity-checked", "--as", "demo-clerk",
              stdin=f"{NEW}\n{RESET}\n{RESET}\n", ok=False)  # fmt: skip
    assert "blocked" in out  # even the right PIN, until unblocked

    # --- unblocked at the counter: the holder's PIN works again ---------------------------------
    out = ykt("cards", "pin-unblock", number, "--identity-checked", "--as", "demo-clerk",
              stdin=f"{NEW}\n")  # fmt: skip
    assert "social security PIN unblocked on the card (3 tries)" in out
    assert "counter unblocks/resets left for this PIN: 4" in out
    shown = ykt("cards", "show", number)
    assert "PIN blocked" not in shown and "PIN: 3 tries left" in shown

    # --- forgotten: reset to a new PIN the holder types -----------------------------------------
    out = ykt("cards", "pin-reset", number, "--identity-checked", "--as", "demo-clerk",
              stdin=f"{RESET}\n{RESET}\n")  # fmt: skip
    assert "social security PIN reset on the card" in out
    chip = _chip(settings, cic)
    cardops.verify_pin(chip, RESET, profile=profile)
    assert not cardops.pin_status(chip, profile)["ss"].must_change
    with pytest.raises(PinError):
        cardops.verify_pin(chip, NEW, profile=profile)

    # --- audited, and no PIN anywhere ------------------------------------------------------------
    with transaction(make_sessionmaker(engine)) as s:
        actions = [e.action for e in s.scalars(sa.select(AuditEvent).where(
            AuditEvent.entity_id == str(card.id), AuditEvent.action.like("card.pin%")
        ).order_by(AuditEvent.id))]  # fmt: skip
        dump = "\n".join(
            "" if v is None else repr(v)
            for table in Base.metadata.sorted_tables
            for row in s.execute(sa.select(table)).all()
            for v in row
        )
    assert actions == ["card.pin_mailer_printed", "card.pin_changed",
                       "card.pin_refused", "card.pin_refused", "card.pin_blocked",
                       "card.pin_refused", "card.pin_refused", "card.pin_unblocked",
                       "card.pin_reset"]  # fmt: skip
    logs = "\n".join(p.read_text(errors="replace") for p in settings.run_dir.rglob("*")
                     if p.is_file() and p.suffix in (".log", ".txt", ""))  # fmt: skip
    for pin in (ss_pin, bank_pin, NEW, WRONG, WEAK, RESET):
        standalone = re.compile(rf"(?<![0-9A-Fa-f]){pin}(?![0-9A-Fa-f])")
        assert not standalone.search(dump), "a PIN in the database"
        assert not standalone.search(logs), "a PIN in the logs"
        for output in ykt.outputs:
            assert not standalone.search(output), output
    assert person_cid not in "\n".join(ykt.outputs)
