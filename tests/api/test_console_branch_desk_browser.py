"""The branch page starts the reader-side PIN entry itself (Debian's Chromium, Playwright): the
teller starts the financial activation on the page, the desk station (``ykt branch desk``, a
real subprocess on the "reader's host", the holder's PIN fed on its standard input as a PIN
pad would) claims it, sets the PIN on the chip through the bank's issuer script and records
the outcome; the page shows the progress, the exact refusal (two PIN entries that differ, a
weak PIN) and the result. No PIN in the page, the audit log or the station's output."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from console_helpers import PASSWORD
from playwright.sync_api import Browser, Page, expect

# the card centre's journey fixtures: the service as ``ykt serve`` builds it, Chromium, shots
from test_console_centre_browser import (  # noqa: F401
    BRANCH,
    Centre,
    _approved,
    _page,
    _shot,
    _sign_in,
    browser,
    centre,
    maker_key,
    shots,
)

from issuance import services
from issuance.batches.pipeline import RunOptions
from issuance.batches.selection import BatchFilter, create_batch
from issuance.batches.shipping import issue_card, ship_batch
from issuance.models import AuditEvent, ChipAppKind, DeskRequest

READER = "desk-1"
pytestmark = [pytest.mark.slow, pytest.mark.pcsc]


def _card_at_the_branch(c: Centre) -> str:
    """One approved card (its account opened by the bank's files) made by a real batch,
    shipped to the branch, handed over and active: ready for the financial function."""
    from issuance.db import make_sessionmaker, transaction
    from yikatong.wiring import runner_for

    ((number, _),) = _approved(c, ["诸葛明月"])
    supervisor, teller = c.actors["supervisor"], c.actors["bank_teller"]
    with c.session() as s:  # type: ignore[attr-defined]
        batch_id = create_batch(s, supervisor, "desk-1", BatchFilter(region_code="33")).id
    with runner_for(c.settings, batch_id, engine=c.engine, options=RunOptions(readers=1)) as r:
        assert r.run().checked == 1
    factory = make_sessionmaker(c.engine)

    def txn(fn):  # type: ignore[no-untyped-def]
        with transaction(factory) as s:
            return fn(s)

    ship_batch(txn, c.settings, batch_id, BRANCH, supervisor)
    with c.session() as s:  # type: ignore[attr-defined]
        issue_card(s, number, teller)
        services.activate_card(s, services.find_card(s, card_number=number).id, teller)
    return number


@pytest.fixture
def station(
    centre: Centre,  # noqa: F811
    tmp_path: Path,
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """The desk station of READER as the branch runs it on the reader's host: its own process,
    the teller's password from the environment, the PIN pad's entries on standard input."""
    c = centre
    env = {
        **os.environ,
        "YKT_DATA_DIR": str(c.settings.data_dir),
        "YKT_DATABASE__URL": c.settings.database_url,
        "YKT_HSM__SOFTHSM_CONF": str(c.settings.hsm.softhsm_conf),
        "YKT_READERS__COUNT": "1",
        "YKT_STAFF_PASSWORD": PASSWORD,
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
    }
    env.pop("PCSCLITE_CSOCK_NAME", None)
    log = tmp_path / "station.log"
    with log.open("w", encoding="utf-8") as out:
        cmd = [
            sys.executable,
            "-m",
            "yikatong.cli.main",
            "branch",
            "desk",
            "--reader",
            READER,
            "--poll",
            "0.5",
            "--as",
            c.actors["bank_teller"].username,
        ]
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, text=True
        )
        try:
            yield proc, log
        finally:
            proc.terminate()
            proc.wait(20)


def _start(p: Page, number: str) -> None:
    """The teller starts the activation from the branch page: identity ticked, the desk reader."""
    p.goto("/console/branch")
    row = p.get_by_role("row").filter(has_text=number)
    row.get_by_role("checkbox").check()
    row.get_by_label("柜台读卡器").fill(READER)
    row.get_by_role("button", name=f"启用金融功能 {number}").click()
    assert "请求已发往柜台读卡工位" in p.get_by_role("status").first.inner_text()
    assert p.locator("input[type=password]").count() == 0  # no PIN field on the page


def _pad(proc: subprocess.Popen[str], *entries: str) -> None:
    """The holder types at the desk's PIN pad (the station's standard input)."""
    assert proc.stdin is not None
    proc.stdin.write("".join(f"{e}\n" for e in entries))
    proc.stdin.flush()


def test_teller_starts_activation_the_desk_station_completes_it(
    browser: Browser,  # noqa: F811
    centre: Centre,  # noqa: F811
    shots: Path,  # noqa: F811
    station: tuple[subprocess.Popen[str], Path],
) -> None:
    c = centre
    proc, log = station
    number = _card_at_the_branch(c)
    p, errors = _page(browser, c.url)
    _sign_in(p, c.actors["bank_teller"].username)
    desk = p.locator("#desk")

    # the identity box not ticked: refused on the page, nothing sent to the desk
    p.goto("/console/branch")
    row = p.get_by_role("row").filter(has_text=number)
    row.get_by_label("柜台读卡器").fill(READER)
    row.get_by_role("button", name=f"启用金融功能 {number}").click()
    assert "identity_checked" in p.get_by_role("alert").inner_text()

    # 1. the holder types two different PINs at the pad: refused, said exactly
    _start(p, number)
    expect(desk).to_contain_text("等待工位接单")
    _shot(p, path=str(shots / "branch-desk-waiting.png"))
    _pad(proc, "246810", "135792")
    expect(desk).to_contain_text("柜台办理被拒绝", timeout=90_000)
    assert "the two PIN entries differ" in desk.inner_text()

    # 2. a weak PIN: refused by the PIN rules, said exactly
    p.get_by_role("link", name="返回网点重新办理").click()
    _start(p, number)
    _pad(proc, "111111", "111111")
    expect(desk).to_contain_text("柜台办理被拒绝", timeout=90_000)
    refusal = desk.get_by_role("alert").inner_text()
    assert "the PIN is too weak" in refusal and "pin" in refusal, refusal
    _shot(p, path=str(shots / "branch-desk-weak-pin-refused.png"))

    # 3. a good PIN: the station sets it on the chip; the page shows the function active
    p.get_by_role("link", name="返回网点重新办理").click()
    _start(p, number)
    _pad(proc, "246810", "246810")
    expect(desk).to_contain_text("已启用：密码已在卡上设置。", timeout=90_000)
    _shot(p, path=str(shots / "branch-desk-active.png"))
    assert errors == []

    with c.session() as s:  # type: ignore[attr-defined]
        card = services.find_card(s, card_number=number)
        fin = card.chip_app(ChipAppKind.FINANCIAL)
        assert fin is not None and fin.status == "active" and fin.pin_set
        outcomes = [
            r.outcome
            for r in s.scalars(
                sa.select(DeskRequest)
                .where(DeskRequest.card_id == card.id)
                .order_by(DeskRequest.id)
            )
        ]
        assert outcomes == ["refused", "refused", "active"]
        events = s.scalars(sa.select(AuditEvent).where(AuditEvent.entity_id == str(card.id))).all()
        actions = [e.action for e in events]
        assert actions.count("desk.activation_requested") == 3
        assert actions.count("console.financial_activation_requested") == 3
        assert actions.count("desk.activation_finished") == 3
        assert "chip.financial_pin_set" in [
            e.action for e in s.scalars(sa.select(AuditEvent))
        ]  # the one activation path's own event
        everything = " ".join(f"{e.details} {e.reason}" for e in s.scalars(sa.select(AuditEvent)))
    for pin in ("246810", "135792", "111111"):
        assert pin not in everything  # never audited
        assert pin not in log.read_text(encoding="utf-8")  # never printed by the station
    assert "financial function active" in log.read_text(encoding="utf-8")
