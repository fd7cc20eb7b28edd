"""The bank data-exchange files: the request the card centre sends, the response the bank
returns (checked line by line: Luhn, BIN, the request's cards), loaded and audited; the PAN on
the card comes from there and nowhere else (a card without it waits)."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa
from issuance_helpers import submit

from cardspec.ids import luhn_digit
from devstack.bank import answer_request, new_pan
from issuance import bank, services
from issuance.audit import Actor
from issuance.errors import PermissionDenied, ValidationError
from issuance.models import AgencyKind, AuditEvent, BankAccount, Card
from issuance.settings import BankSettings
from yikatong.settings import Settings

BANK = "ICBC-0571"
BIN = "621226"


@pytest.fixture
def bank_settings(settings: Settings) -> Settings:
    conf = BankSettings(key_domain="icbc-hz", bins=(BIN,))
    return settings.model_copy(update={"banks": {BANK: conf}})


def _cards(session, settings, actors, n: int) -> list[Card]:
    out = []
    for _ in range(n):
        app = submit(session, settings, actors["clerk"])
        services.process_application(session, app.id, actors["clerk"])  # type: ignore[attr-defined]
        services.review_application(session, app.id, actors["reviewer"])  # type: ignore[attr-defined]
        out.append(services.approve_application(session, settings, app.id, actors["approver"]))  # type: ignore[attr-defined]
    return out


def _agency(session) -> None:
    services.create_agency(session, BANK, "ICBC Hangzhou", AgencyKind.BANK, "330100")


def test_request_answer_load_and_audit(session, bank_settings, actors) -> None:
    _agency(session)
    cards = _cards(session, bank_settings, actors, 3)
    clerk: Actor = actors["clerk"]
    req = bank.request_file(session, bank_settings, BANK, clerk)
    lines = req.text.splitlines()
    assert lines[0].startswith(f"H|YKTBANK|1|REQ|{req.request_id}|{BANK}|") and lines[-1] == "T|3"
    person = cards[0].person
    assert person.citizen_id not in req.text  # masked by default (first 4, last 4)
    assert f"|{person.citizen_id[:4]}" in lines[1] and person.citizen_id[-4:] in lines[1]
    assert set(req.card_ids) == {c.id for c in cards}
    # every card is bound to the bank and waits
    assert all(c.chip_app("financial").bank_agency_id is not None for c in cards)
    waiting = bank.bank_data(session, bank_settings, req.card_ids)
    assert waiting == {}
    with pytest.raises(ValidationError):  # asked once: nothing more to ask
        bank.request_file(session, bank_settings, BANK, clerk)

    response = answer_request(req.text, BIN, skip=[cards[2].card_number])
    result = bank.load_response(session, bank_settings, BANK, response, clerk,
                                file_name="resp.txt", today=date(2026, 12, 6))  # fmt: skip
    assert (result.loaded, result.already, result.waiting, result.problems) == (2, 0, 1, [])
    assert result.kept_as is not None and result.kept_as.read_text() == response
    data = bank.bank_data(session, bank_settings, req.card_ids)
    assert set(data) == {cards[0].id, cards[1].id}
    pan = data[cards[0].id].pan
    assert pan.startswith(BIN) and luhn_digit(pan[:-1]) == pan[-1]
    assert data[cards[0].id].key_domain == "icbc-hz"
    # again: nothing changes
    again = bank.load_response(session, bank_settings, BANK, response, clerk,
                               today=date(2026, 12, 6))  # fmt: skip
    assert (again.loaded, again.already) == (0, 2)
    events = session.scalars(sa.select(AuditEvent).where(AuditEvent.action.like("bank.%"))).all()
    actions = [e.action for e in events]
    assert actions.count("bank.account_opened") == 2 and "bank.accounts_requested" in actions
    dump = " ".join(str(e.details) for e in events)
    assert pan not in dump and bank.mask_pan(pan) in dump  # audited masked, never in full


def test_every_bad_line_is_reported_and_nothing_is_lost(session, bank_settings, actors) -> None:
    _agency(session)
    cards = _cards(session, bank_settings, actors, 2)
    clerk = actors["clerk"]
    req = bank.request_file(session, bank_settings, BANK, clerk)
    good = new_pan(BIN)
    bad_luhn = good[:-1] + str((int(good[-1]) + 1) % 10)
    other_bin = "622848" + good[6:-1]
    other_bin += luhn_digit(other_bin)
    a, b = cards[0].card_number, cards[1].card_number
    body = [
        f"D|1|{a}|{bad_luhn}|00|3612|220|AC1",  # Luhn
        f"D|2|{b}|{other_bin}|00|3612|220|AC2",  # another bank's BIN
        f"D|3|{a}|{good}|0|3613|220|AC3",  # PSN, expiry month
        "D|4|not-a-card|x",  # malformed
        f"D|5|{b}|{good}|00|2001|220|AC5",  # expiry in the past
    ]
    text = "\n".join([f"H|YKTBANK|1|RSP|{req.request_id}|{BANK}|2026-12-06T00:00:00Z|5",
                      *body, "T|5"]) + "\n"  # fmt: skip
    with pytest.raises(bank.BankFileInvalid) as err:
        bank.load_response(session, bank_settings, BANK, text, clerk, today=date(2026, 12, 6))
    reasons = {p.field: p.reason for p in err.value.problems}
    assert set(reasons) == {f"line {n}" for n in range(2, 7)}  # every line, none hidden
    assert "Luhn" in reasons["line 2"] and "BIN" in reasons["line 3"]
    assert "sequence number" in reasons["line 4"] or "expiry" in reasons["line 4"]
    assert "8 fields" in reasons["line 5"] and "past" in reasons["line 6"]
    assert bad_luhn not in str(err.value) and good not in str(err.value)  # PANs masked
    assert (
        session.scalars(sa.select(BankAccount.pan).where(BankAccount.pan.is_not(None))).all() == []
    )
    # a truncated file (no trailer / wrong count) is refused as a whole
    with pytest.raises(bank.BankFileInvalid, match="trailer"):
        bank.load_response(session, bank_settings, BANK, text.rsplit("T|", 1)[0], clerk)
    with pytest.raises(bank.BankFileInvalid, match="another bank"):
        bank.load_response(session, bank_settings, BANK, text.replace(f"|{BANK}|", "|X|"), clerk)
    # --partial loads the good lines and lists the rest
    partial = "\n".join([f"H|YKTBANK|1|RSP|{req.request_id}|{BANK}|2026-12-06T00:00:00Z|2",
                         f"D|1|{a}|{good}|01|3612|220|AC1", f"D|2|{b}|{bad_luhn}|00|3612|220|AC2",
                         "T|2"]) + "\n"  # fmt: skip
    result = bank.load_response(session, bank_settings, BANK, partial, clerk, partial=True,
                                today=date(2026, 12, 6))  # fmt: skip
    assert result.loaded == 1 and [p.line for p in result.problems] == [3]
    # the same PAN for the other card is refused: a PAN is one card's
    dup = partial.replace(f"D|2|{b}|{bad_luhn}", f"D|2|{b}|{good}")
    with pytest.raises(bank.BankFileInvalid, match="1 line"):
        bank.load_response(session, bank_settings, BANK, dup, clerk, today=date(2026, 12, 6))


def test_who_may_and_unknown_banks(session, bank_settings, actors, settings) -> None:
    _agency(session)
    _cards(session, bank_settings, actors, 1)
    with pytest.raises(PermissionDenied):
        bank.request_file(session, bank_settings, BANK, actors["bank_teller"])
    with pytest.raises(Exception, match=r"\[banks\.ICBC-0571\]"):
        bank.request_file(session, settings, BANK, actors["clerk"])  # not configured
    with pytest.raises(ValueError, match=r"bins"):
        BankSettings(key_domain="x", bins=("62",))
