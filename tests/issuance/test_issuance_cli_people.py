"""``ykt people find|show`` (issue 16): a resident found by ID number (read from a file or
stdin, never the shell), card number, phone or name; the whole record in words people read."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from issuance_cli_helpers import Cli
from issuance_helpers import JPEG_FIXTURE, fake_process_photo, make_cid

from yikatong.cli import cards as cli_cards
from yikatong.cli import db as cli_db
from yikatong.cli import people as cli_people
from yikatong.cli import residents as cli_residents
from yikatong.settings import get_settings

cli = Cli()
STAFF = {"c1": "clerk", "r1": "reviewer", "a1": "approver"}


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


def test_find_and_show_a_resident_by_id_number_only(env: Path) -> None:
    cli.ok(cli_db.app, "upgrade")
    cli.staff(STAFF)
    cid = make_cid(birth=date(2021, 6, 1))  # under 6: no photo needed
    cli.ok(cli_people.app, "submit", "--id", cid, "--name", "陈建国", "--phone", "13900000000",
           "--ethnicity", "01", "--as", "c1")  # fmt: skip
    cli.ok(cli_people.app, "process", "1", "--as", "c1")
    cli.ok(cli_people.app, "review", "1", "--as", "r1")
    number = cli.ok(cli_people.app, "approve", "1", "--as", "a1").split("card ")[1].split()[0]

    out = cli.ok(cli_residents.app, "find", "--id-file", "-", "--as", "c1", input=cid + "\n")
    assert "陈建国" in out and number in out and "number_allocated" in out
    assert cid not in out and "next: ykt people show --person 1" in out
    for args in (["--card", number], ["--phone", "139 0000 0000"],
                 ["--name", "陈建国", "--birth-date", "2021-06-01"],
                 ["--name", "陈建国", "--region", "330100"]):  # fmt: skip
        assert number in cli.ok(cli_residents.app, "find", *args, "--as", "c1"), args

    shown = cli.ok(cli_residents.app, "show", "--id-file", "-", "--as", "c1", input=cid + "\n")
    assert "陈建国" in shown and cid not in shown and "None" not in shown
    assert f"{number} formal number_allocated" in shown
    assert "financial" in shown and "PIN not set" in shown
    assert "deposits: none" in shown and "loss reports: none" in shown
    assert "application.approved" in shown or "application.received" in shown
    assert "+08:00" in shown  # the issuer's time zone, with its offset
    assert "address -" in shown  # nothing prints None

    res = cli.invoke(cli_residents.app, "find", "--name", "陈建国", "--as", "c1")
    assert res.exit_code != 0 and "too broad" in str(res.exception)
    res = cli.invoke(cli_residents.app, "find", "--card", number, "--as", "r1")
    assert res.exit_code != 0 and "may not search" in str(res.exception)
    assert "nobody found" in cli.ok(cli_residents.app, "find", "--id", make_cid(), "--as", "c1")
    # the card found by ID number alone can then be reported lost
    assert "status number_allocated" in cli.ok(cli_cards.app, "show", number)


def test_app_show_every_field_and_the_photo(env: Path) -> None:
    from issuance import services
    from yikatong.cli.db import session_scope

    cli.ok(cli_db.app, "upgrade")
    cli.staff(STAFF)
    cid = make_cid(birth=date(1990, 3, 15))
    with session_scope() as s:
        a = services.submit_application(
            s, get_settings(),
            services.ApplicationInput(citizen_id=cid, name="陈建国", phone="13900000001",
                                      photo=JPEG_FIXTURE, ethnicity="01",
                                      address="杭州市[西湖区]文三路1号"),
            services.actor_for(s, "c1"), photo_processor=fake_process_photo,
        )  # fmt: skip
        app_id = a.id
    cli.ok(cli_people.app, "process", str(app_id), "--as", "c1")
    out = cli.ok(cli_people.app, "show", str(app_id), "--as", "r1")
    assert "陈建国" in out and "杭州市[西湖区]文三路1号" in out  # printed as typed
    assert cid not in out and "processed" in out and "by c1" in out
    assert "reviewed by: -" in out and "None" not in out and "+08:00" in out
    assert "fee: 0.00 yuan" in out and "--photo-out" in out  # not a terminal: no image
    photo = env / "photo.jpg"
    out = cli.ok(cli_people.app, "show", str(app_id), "--photo-out", str(photo), "--full-id",
                 "--as", "r1")  # fmt: skip
    assert cid in out and photo.read_bytes() == JPEG_FIXTURE
    res = cli.invoke(cli_people.app, "show", "999", "--as", "r1")
    assert res.exit_code != 0 and "no application 999" in str(res.exception)


def test_inline_image_sequences() -> None:
    import io

    from PIL import Image

    from issuance import termimage

    buf = io.BytesIO()
    Image.new("RGB", (4, 5), "white").save(buf, format="JPEG")
    jpeg = buf.getvalue()
    assert termimage.protocol({"TERM_PROGRAM": "iTerm.app"}) == "iterm2"
    assert termimage.protocol({"TERM": "xterm-kitty"}) == "kitty"
    assert termimage.protocol({"TERM": "xterm-256color"}) is None
    seq = termimage.sequence(jpeg, "iterm2")
    assert seq.startswith("\x1b]1337;File=inline=1;") and f"size={len(jpeg)}" in seq
    kitty = termimage.sequence(jpeg, "kitty")
    import base64

    payload = "".join(p.split(";", 1)[1] for p in kitty.strip().split("\x1b\\") if p)
    png = base64.b64decode(payload)
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size == (4, 5)
    assert not termimage.show_inline(jpeg, io.StringIO(), {"TERM_PROGRAM": "iTerm.app"})


def test_places_and_staff(env: Path) -> None:
    from yikatong.cli import places as cli_places

    cli.ok(cli_db.app, "upgrade")
    cli.staff({**STAFF, "s1": "supervisor", "au": "auditor"})
    assert "no collection points yet" in cli.ok(cli_places.app, "list")
    out = cli.ok(cli_places.app, "add", "ICBC-XH", "--name", "中国工商银行杭州西湖支行",
                 "--kind", "bank", "--region", "330106", "--as", "s1")  # fmt: skip
    assert "collection point ICBC-XH (bank)" in out
    cli.ok(cli_places.app, "add", "WS-01", "--name", "文三社区服务中心", "--kind", "community",
           "--region", "330106", "--as", "admin0")  # fmt: skip
    listed = cli.ok(cli_places.app, "list")
    assert "ICBC-XH" in listed and "WS-01" in listed and "community" in listed
    res = cli.invoke(cli_places.app, "add", "X1", "--name", "x", "--kind", "bank",
                     "--region", "330106", "--as", "c1")  # fmt: skip
    assert res.exit_code != 0 and "may not create collection points" in str(res.exception)
    res = cli.invoke(cli_places.app, "add", "bad code", "--name", "", "--kind", "hospital",
                     "--region", "330106", "--as", "s1")  # fmt: skip
    problems = {p.field for p in res.exception.problems}  # type: ignore[union-attr]
    assert problems == {"code", "name", "kind"}
    res = cli.invoke(cli_places.app, "add", "WS-01", "--name", "again", "--kind", "community",
                     "--region", "330106", "--as", "s1")  # fmt: skip
    assert res.exit_code != 0 and "already exists" in str(res.exception)

    staff = cli.ok(cli_db.app, "list-staff", "--as", "au")
    for user in ("admin0", "c1", "r1", "a1", "s1", "au"):
        assert user in staff
    assert "scrypt" not in staff and "DISABLED" not in staff
    assert "c1" in cli.ok(cli_db.app, "list-staff", "--role", "clerk", "--as", "s1")
    assert "r1" not in cli.ok(cli_db.app, "list-staff", "--role", "clerk", "--as", "s1")
    res = cli.invoke(cli_db.app, "list-staff", "--as", "c1")
    assert res.exit_code != 0 and "may not list staff" in str(res.exception)
    # a password reset by the supervisor: generated, shown once, audited; the old one is gone
    out = cli.ok(cli_db.app, "set-password", "c1", "--as", "s1")
    new = out.split("new password (shown once): ")[1].split()[0]
    res = cli.invoke(cli_places.app, "add", "Y1", "--name", "y", "--kind", "bank",
                     "--region", "330106", "--as", "c1")  # fmt: skip
    assert "wrong password" in str(res.exception)
    cli.passwords["c1"] = new
    assert "nobody found" in cli.ok(cli_residents.app, "find", "--id", make_cid(), "--as", "c1")


def test_a_counter_visit_by_id_number_only(env: Path) -> None:
    """The resident gives an ID number; the clerk finds the card, reports it lost, issues a
    temporary card (deposit), applies for the replacement (fee) and sees it all in one view,
    in the issuer's time zone and in yuan."""
    from issuance import services
    from yikatong.cli.db import session_scope

    cli.ok(cli_db.app, "upgrade")
    cli.staff(STAFF)
    cid = make_cid(birth=date(2021, 6, 1))
    cli.ok(cli_people.app, "submit", "--id", cid, "--name", "陈建国", "--phone", "13900000000",
           "--ethnicity", "01", "--as", "c1")  # fmt: skip
    cli.ok(cli_people.app, "process", "1", "--as", "c1")
    cli.ok(cli_people.app, "review", "1", "--as", "r1")
    cli.ok(cli_people.app, "approve", "1", "--as", "a1")
    with session_scope() as s:  # production, shipping, collection, activation
        card = services.find_card(s, card_number=services.get_person(s, citizen_id=cid)
                                  .cards[0].card_number)  # fmt: skip
        actor = services.actor_for(s, "c1")
        for step in ("start_production", "personalise", "ship"):
            services.advance_production(s, get_settings(), card.id, step, actor,
                                        chip_serial=bytes.fromhex("A1B2C3D4E5F60718"))  # fmt: skip
        services.collect_card(s, card.id, actor)
        services.activate_card(s, card.id, actor)

    # the visit: the ID number only
    found = cli.ok(cli_residents.app, "find", "--id-file", "-", "--as", "c1", input=cid + "\n")
    number = next(w for w in found.split() if len(w) == 9 and w.startswith("A"))
    lost = cli.ok(cli_cards.app, "report-loss", number, "--identity-checked", "--as", "c1")
    assert "reported lost (formal); until found or replaced" in lost and "None" not in lost
    temp = cli.ok(cli_cards.app, "temporary", "--id-file", "-", "--as", "c1", input=cid + "\n")
    assert "deposit taken: 5.00 yuan" in temp
    new = cli.ok(cli_cards.app, "replace", number, "--as", "c1")
    assert "(fee 20.00 yuan)" in new and "fen" not in new
    shown = cli.ok(cli_residents.app, "show", "--id-file", "-", "--as", "c1", input=cid + "\n")
    assert f"{number} formal replaced" in shown and "temporary" in shown
    assert "deposits (held 5.00 yuan)" in shown and "fees (total 20.00 yuan)" in shown
    assert "formal replaced via counter" in shown  # the loss report, closed by the replacement
    assert "None" not in shown and "+08:00" in shown
    for action in ("card.created", "deposit.taken"):
        assert action in shown
    # receipts: numbered per counter, written as PDF; the day balances to the fen
    from yikatong.cli import cash as cli_cash

    assert "receipt CENTRE-00000001 (deposit 5.00 yuan)" in temp
    assert "receipt CENTRE-00000002 (fee 20.00 yuan)" in new
    temp_number = temp.split("temporary card ")[1].split()[0]
    assert "deposit 5.00 yuan (held)" in cli.ok(cli_cards.app, "show", temp_number)
    back = cli.ok(cli_cards.app, "hand-back", temp_number, "--as", "c1")
    assert "receipt CENTRE-00000003 (refund 5.00 yuan)" in back
    assert "deposit 5.00 yuan (refunded " in cli.ok(cli_cards.app, "show", temp_number)
    pdfs = sorted((env / "receipts").glob("*.pdf"))
    assert [p.name for p in pdfs] == [f"CENTRE-0000000{i}.pdf" for i in (1, 2, 3)]
    assert all(p.read_bytes().startswith(b"%PDF") for p in pdfs)
    day = cli.ok(cli_cash.app, "day", "--as", "c1")
    assert "balanced" in day and "NOT BALANCED" not in day and "20.00 yuan net" in day
    listed = cli.ok(cli_cash.app, "receipts", "--as", "c1")
    assert all(f"CENTRE-0000000{i}" in listed for i in (1, 2, 3))
    again = env / "again.pdf"
    cli.ok(cli_cash.app, "receipt", "centre-00000002", "--out", str(again), "--as", "c1")
    assert again.read_bytes() == pdfs[1].read_bytes()
    res = cli.invoke(cli_cash.app, "day", "--as", "r1")
    assert res.exit_code != 0 and "may not see the day's cash" in str(res.exception)
