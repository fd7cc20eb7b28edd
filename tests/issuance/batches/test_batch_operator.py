"""What the operator sees and the cards that come back: a replacement card made through a
real batch, the back's validity and region from the settings and the profile's layout,
Ctrl-C / SIGTERM saying how to resume, a station error printed before the resume command
with its own exit code, and ``ykt demo`` end to end (resume hint when interrupted, the
``ykt verify`` command at the end). Real processes, pcscd + vpcd, SoftHSM; SQLite and
PostgreSQL where a database is involved."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from batch_helpers import HsmRoot, assert_batch_invariants, batch_settings, hsm_root, populate
from cli_helpers import ykt, ykt_cmd, ykt_env
from sqlalchemy.engine import Engine

from issuance import services
from issuance.batches import items as bi
from issuance.batches.pipeline import RunOptions
from issuance.batches.selection import BatchFilter, create_batch
from issuance.batches.shipping import issue_card, ship_batch
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import BankAccount, BatchItem, BatchStage, Card, CardStatus, Channel
from printers.facecode import decode_file
from printers.layout import DEFAULT_LAYOUT, layout_for_profile
from yikatong.demo import BRANCH_CODE, open_demo_accounts
from yikatong.settings import Settings
from yikatong.wiring import runner_for

pytestmark = pytest.mark.pcsc


@pytest.fixture(scope="session")
def op_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("op-hsm"))


@pytest.fixture
def env(tmp_path: Path, fresh_db_url: str, op_hsm: HsmRoot) -> Iterator[tuple[Settings, Engine]]:
    settings = batch_settings(tmp_path / "data", fresh_db_url, op_hsm,
                              {"YKT_LIFECYCLE__CARD_VALIDITY_YEARS": "6"})  # fmt: skip
    engine = make_engine(settings)
    yield settings, engine
    engine.dispose()


def test_a_replacement_card_goes_through_a_real_batch(env: tuple[Settings, Engine]) -> None:
    settings, engine = env
    pop = populate(engine, settings, 2, name="first")
    factory = make_sessionmaker(engine)

    def txn(fn):  # type: ignore[no-untyped-def]
        with transaction(factory) as s:
            return fn(s)

    with runner_for(settings, pop.batch_id, engine=engine, options=RunOptions(readers=1)) as r:
        assert r.run().checked == 2
    operator, teller = pop.actors["demo-operator"], pop.actors["demo-teller"]
    clerk = pop.actors["demo-clerk"]
    ship_batch(txn, settings, pop.batch_id, BRANCH_CODE, operator)
    lost = pop.card_numbers[0]
    txn(lambda s: issue_card(s, lost, teller))

    def replace(s):  # type: ignore[no-untyped-def]
        card = s.scalars(sa.select(Card).where(Card.card_number == lost)).one()
        services.activate_card(s, card.id, teller)
        services.report_loss(s, settings, card.id, clerk.via(Channel.COUNTER),
                             identity_checked=True)  # fmt: skip
        new = services.replace_card(s, settings, card.id, clerk)
        assert new.application_id == card.application_id is not None
        return new.card_number, card.application_id

    new_number, app_id = txn(replace)
    # the replacement card's financial application: the bank keeps the holder's account (the
    # same PAN, the next PAN sequence number) and hotlists the old card's
    assert open_demo_accounts(txn, settings, operator) == 1
    with transaction(factory) as s:
        accounts = {c.card_number: a for c, a in s.execute(
            sa.select(Card, BankAccount).join(BankAccount, BankAccount.card_id == Card.id)
            .where(Card.card_number.in_([lost, new_number])))}  # fmt: skip
        old_acc, new_acc = accounts[lost], accounts[new_number]
        assert (new_acc.pan, new_acc.psn, new_acc.account_ref) == (
            old_acc.pan, "01", old_acc.account_ref)  # fmt: skip
        assert new_acc.replaces_account_id == old_acc.id and old_acc.hotlist_request_id
    batch = txn(lambda s: create_batch(s, operator, "replacements", BatchFilter(region_code="33")))
    assert batch.card_count == 1
    with runner_for(settings, batch.id, engine=engine, options=RunOptions(readers=1)) as r:
        summary = r.run()
    assert summary.finished and summary.checked == 1
    with transaction(factory) as s:
        assert_batch_invariants(s, settings, batch.id, (new_number,))
        item = s.scalars(sa.select(BatchItem).where(BatchItem.batch_id == batch.id)).one()
        assert item.application_id == app_id and item.stage == BatchStage.CHECKED
        card = s.get(Card, item.card_id)
        assert card is not None and card.status == CardStatus.PERSONALISED
        old = s.scalars(sa.select(Card).where(Card.card_number == lost)).one()
        assert old.status == CardStatus.REPLACED and old.replaced_by_id == card.id
        pdf = Path(item.print_ref or "")
    back = pdf.with_name(pdf.name.replace(".pdf", ".back.png"))
    face = decode_file(back, DEFAULT_LAYOUT.back.face_code.px(300))  # type: ignore[union-attr]
    assert face.card_number == new_number and face.photo_sha256  # the photo printed again


def test_back_shows_the_configured_validity_and_the_region(env: tuple[Settings, Engine]) -> None:
    settings, engine = env
    pop = populate(engine, settings, 1, name="validity")
    day = date(2026, 3, 1)
    with runner_for(settings, pop.batch_id, engine=engine,
                    options=RunOptions(readers=1, today=day)) as r:  # fmt: skip
        assert r.run().checked == 1
    (back,) = settings.spool_dir.glob("*.back.png")
    face = decode_file(back, DEFAULT_LAYOUT.back.face_code.px(settings.printer.dpi))  # type: ignore[union-attr]
    assert face.validity == "2026.03.01-2032.03.01"  # card_validity_years = 6
    assert face.region.startswith("杭州市") and len(face.region) > 3
    assert layout_for_profile("ssc2-3des") is DEFAULT_LAYOUT
    assert layout_for_profile("ssc3-aes-nofin") is DEFAULT_LAYOUT
    with transaction(make_sessionmaker(engine)) as s:
        card = s.scalars(sa.select(Card).where(Card.batch_id == pop.batch_id)).one()
        assert card.expiry_date == date(2032, 3, 1)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_says_how_to_resume(
    env: tuple[Settings, Engine], op_hsm: HsmRoot, sig: signal.Signals
) -> None:
    settings, engine = env
    pop = populate(engine, settings, 12, name=f"int-{sig.name}")
    factory = make_sessionmaker(engine)
    shell = ykt_env(settings, op_hsm)
    proc = subprocess.Popen(ykt_cmd("batch", "run", pop.batch_name, "--readers", "1"), env=shell,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        with transaction(factory) as s:
            if bi.stage_counts(s, pop.batch_id)[BatchStage.CHECKED] >= 1:
                break
        time.sleep(0.05)
    assert proc.poll() is None
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert f"Resume with:\n  ykt batch resume {pop.batch_name}" in err
    with transaction(factory) as s:  # the card in hand was finished, nothing left in a station
        counts = bi.stage_counts(s, pop.batch_id)
        assert not any(counts[st] for st in bi.IN_STATION), (counts, err[-3000:])
        assert 1 <= counts[BatchStage.CHECKED] < 12
    done = ykt(shell, "batch", "resume", pop.batch_name, "--readers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    with transaction(factory) as s:
        assert assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)["good"] == 12


def test_a_station_error_is_printed_before_the_resume_command(
    env: tuple[Settings, Engine], op_hsm: HsmRoot, tmp_path: Path
) -> None:
    """The file spool cannot be written (a full disk, a read-only mount): the station stops
    on the error, and the operator sees it, then how to resume, exit code 3."""
    settings, engine = env
    pop = populate(engine, settings, 2, name="broken")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool directory should be")
    shell = ykt_env(settings, op_hsm, YKT_PRINTER__SPOOL_DIR=str(blocker / "spool"))
    done = ykt(shell, "batch", "run", "broken", "--readers", "1")
    assert done.returncode == 3, done.stdout + done.stderr
    text = done.stderr
    assert "station error:" in text and "cannot write to the spool" in text
    assert text.index("station error:") < text.index("Resume with:")
    assert "ykt batch resume broken" in text
    with transaction(make_sessionmaker(engine)) as s:  # one chip lost, not counted against
        counts = assert_batch_invariants(s, settings, pop.batch_id, pop.card_numbers)
        assert counts["spoiled"] == 1 and counts["failed"] == 0
        attempts = set(s.scalars(sa.select(BatchItem.attempts).where(
            BatchItem.batch_id == pop.batch_id)))  # fmt: skip
        assert attempts == {0}


def test_ykt_demo_end_to_end_and_interrupted(tmp_path: Path, op_hsm: HsmRoot) -> None:
    data = tmp_path / "demo"
    shell = {**ykt_env(batch_settings(data, f"sqlite:///{data / 'yikatong.db'}", op_hsm),
                       op_hsm)}  # fmt: skip
    done = ykt(shell, "demo", "--residents", "3", "--readers", "2", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    assert "3 good card(s)" in text or "production: 3 good card(s)" in text
    assert "card faces (PNG + PDF)" in text and "batch report:" in text
    line = next(ln for ln in text.splitlines() if "ykt verify --card-number" in ln)
    assert "YKT_CLIENT_ID=demo-hospital-330106-" in line and "YKT_CLIENT_SECRET=" in line
    number = line.rsplit(" ", 1)[1]
    assert len(number) == 9 and "activated at the bank" in text
    # interrupted: it says which batch to resume
    proc = subprocess.Popen(ykt_cmd("demo", "--residents", "40", "--readers", "1"), env=shell,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    spool = data / "spool"
    before = len(list(spool.glob("*.pdf")))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(spool.glob("*.pdf"))) > before:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert "demo interrupted" in out and "ykt batch resume demo-" in out, out[-2000:] + err[-2000:]
