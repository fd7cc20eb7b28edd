"""A replacement card keeps the holder's bank account: the replacement is listed in the bank's
request file as a replacement of the old card (``R``: old card number, masked PAN, PSN, account
reference), the old card's financial application goes on the bank's hotlist (``X``), the bank
answers with the PAN/PSN of the new card and the loader refuses an answer bound to another
account (every reason listed, nothing loaded)."""

from __future__ import annotations

import json
import random
from datetime import date

import pytest
import sqlalchemy as sa
from issuance_helpers import submit

from devstack.bank import BankLedger, answer_request, new_pan
from issuance import bank, services
from issuance.errors import ValidationError
from issuance.models import AgencyKind, AuditEvent, BankAccount, Card
from issuance.settings import BankSettings
from yikatong.settings import Settings

BANK = "ICBC-0571"
BIN = "621226"
TODAY = date(2026, 12, 6)


@pytest.fixture
def bank_settings(settings: Settings) -> Settings:
    conf = BankSettings(key_domain="icbc-hz", bins=(BIN,))
    return settings.model_copy(update={"banks": {BANK: conf}})


def _approved(session, settings, actors) -> Card:
    app = submit(session, settings, actors["clerk"])
    services.process_application(session, app.id, actors["clerk"])  # type: ignore[attr-defined]
    services.review_application(session, app.id, actors["reviewer"])  # type: ignore[attr-defined]
    return services.approve_application(session, settings, app.id, actors["approver"])  # type: ignore[attr-defined]


def _to_active(session, settings, actors, card: Card) -> None:
    for step in ("start_production", "personalise", "ship"):
        services.advance_production(session, settings, card.id, step, actors["clerk"],
                                    chip_serial=random.randbytes(8))  # fmt: skip
    services.collect_card(session, card.id, actors["clerk"])
    services.activate_card(session, card.id, actors["clerk"])


def _account(session, card: Card) -> BankAccount:
    return session.scalars(sa.select(BankAccount).where(BankAccount.card_id == card.id)).one()


def _opened_and_replaced(session, settings, actors, ledger: BankLedger) -> tuple[Card, Card]:
    """A card whose account the bank opened (through the files), activated, lost, replaced."""
    services.create_agency(session, BANK, "ICBC Hangzhou", AgencyKind.BANK, "330100")
    old = _approved(session, settings, actors)
    req = bank.request_file(session, settings, BANK, actors["clerk"])
    assert req.text.splitlines()[1].startswith("D|1|") and req.replacements == ()
    bank.load_response(session, settings, BANK, answer_request(req.text, BIN, ledger=ledger),
                       actors["clerk"], today=TODAY)  # fmt: skip
    _to_active(session, settings, actors, old)
    services.report_loss(session, settings, old.id, actors["clerk"], identity_checked=True)
    new = services.replace_card(session, settings, old.id, actors["clerk"])
    return old, new


def test_replacement_journey_through_the_bank_exchange(session, bank_settings, actors) -> None:
    clerk = actors["clerk"]
    ledger = BankLedger()
    old, new = _opened_and_replaced(session, bank_settings, actors, ledger)
    old_acc = _account(session, old)
    assert old_acc.pan is not None and old_acc.psn == "00" and old_acc.hotlist_due_at is not None
    # the replacement keeps the bank: its financial application is bound to it at once
    assert new.chip_app("financial").bank_agency_id == old.chip_app("financial").bank_agency_id
    due = session.scalars(
        sa.select(AuditEvent).where(AuditEvent.action == "bank.hotlist_due")
    ).one()
    assert due.entity_id == str(old.id) and old_acc.pan not in str(due.details)

    req = bank.request_file(session, bank_settings, BANK, clerk)
    lines = req.text.splitlines()
    assert lines[0].endswith("|2") and lines[-1] == "T|2"  # R and X both counted
    masked = bank.mask_pan(old_acc.pan)
    person = new.person
    assert lines[1].split("|") == [
        "R", "1", new.card_number, person.name, lines[1].split("|")[4], new.region_code,
        old.card_number, masked, "00", old_acc.account_ref,
    ]  # fmt: skip
    assert lines[2].split("|") == ["X", "2", old.card_number, masked, "00", old_acc.account_ref,
                                   "REPLACED"]  # fmt: skip
    assert old_acc.pan not in req.text and person.citizen_id not in req.text
    assert (req.card_ids, req.replacements, req.hotlisted) == ((new.id,), (new.id,), (old.id,))
    assert _account(session, new).replaces_account_id == old_acc.id

    # a wrong answer: another account, and the old card's own PAN and PSN (its card keys)
    wrong = "\n".join([f"H|YKTBANK|1|RSP|{req.request_id}|{BANK}|2026-12-06T00:00:00Z|1",
                       f"D|1|{new.card_number}|{old_acc.pan}|00|3612|220|ACOTHER1",
                       "T|1"]) + "\n"  # fmt: skip
    with pytest.raises(bank.BankFileInvalid) as err:
        bank.load_response(session, bank_settings, BANK, wrong, clerk, today=TODAY)
    reasons = [p.reason for p in err.value.problems]
    assert len(reasons) == 3, reasons  # every reason, none hidden
    assert f"bound to account {old_acc.account_ref}" in reasons[0] and "ACOTHER1" in reasons[0]
    assert "another account" in reasons[1]
    assert "sequence number 00 is already another card's" in reasons[2]
    assert all(p.field == "line 2" for p in err.value.problems)
    assert old_acc.pan not in str(err.value)  # masked
    assert _account(session, new).pan is None  # nothing loaded

    # the bank's answer: the same account, the same PAN, the next PAN sequence number
    answer = answer_request(req.text, BIN, ledger=ledger)
    assert ledger.hotlist == [(old.card_number, masked, "00", old_acc.account_ref, "REPLACED")]
    result = bank.load_response(session, bank_settings, BANK, answer, clerk, today=TODAY)
    assert (result.loaded, result.problems) == (1, [])
    data = bank.bank_data(session, bank_settings, [new.id])[new.id]
    assert (data.pan, data.psn) == (old_acc.pan, "01")
    assert _account(session, new).account_ref == old_acc.account_ref
    opened = session.scalars(
        sa.select(AuditEvent)
        .where(AuditEvent.action == "bank.account_opened")
        .order_by(AuditEvent.id.desc())
    ).first()
    assert json.loads(opened.details)["replaces_card_id"] == old.id
    # everything was asked and reported once
    with pytest.raises(ValidationError, match="no card needs"):
        bank.request_file(session, bank_settings, BANK, clerk)


def test_replacement_answers_the_bank_may_give_and_may_not(session, bank_settings, actors) -> None:
    """The bank decides the new card's PAN: another PAN of the same account loads; a PAN of
    another account, or the same account asked of an ordinary (new) card, is refused."""
    clerk = actors["clerk"]
    ledger = BankLedger()
    old, new = _opened_and_replaced(session, bank_settings, actors, ledger)
    old_acc = _account(session, old)
    other = _approved(session, bank_settings, actors)  # a new account asked in the same file
    req = bank.request_file(session, bank_settings, BANK, clerk)
    kinds = [line.split("|")[0] for line in req.text.splitlines()]
    assert kinds == ["H", "D", "R", "X", "T"] or kinds == ["H", "R", "D", "X", "T"]
    ref = old_acc.account_ref
    fresh = new_pan(BIN)

    def response(*body: str) -> str:
        return "\n".join([f"H|YKTBANK|1|RSP|{req.request_id}|{BANK}|2026-12-06T00:00:00Z|"
                          f"{len(body)}", *body, f"T|{len(body)}"]) + "\n"  # fmt: skip

    # the ordinary card given the replaced card's PAN (another PSN): a PAN is one account's
    bad = response(f"D|1|{new.card_number}|{fresh}|01|3612|220|{ref}",
                   f"D|2|{other.card_number}|{old_acc.pan}|05|3612|220|{ref}")  # fmt: skip
    with pytest.raises(bank.BankFileInvalid) as err:
        bank.load_response(session, bank_settings, BANK, bad, clerk, today=TODAY)
    assert [(p.field, "belongs to another card" in p.reason) for p in err.value.problems] == [
        ("line 3", True)]  # fmt: skip
    # another PAN for the same account: the bank's choice, loaded
    good = response(f"D|1|{new.card_number}|{fresh}|00|3612|220|{ref}",
                    f"D|2|{other.card_number}|{new_pan(BIN)}|00|3612|220|ACNEW2")  # fmt: skip
    result = bank.load_response(session, bank_settings, BANK, good, clerk, today=TODAY)
    assert result.loaded == 2
    assert bank.bank_data(session, bank_settings, [new.id])[new.id].pan == fresh


def test_a_card_without_a_bank_account_is_replaced_as_before(
    session, bank_settings, actors, new_card
) -> None:
    """No account opened for the old card: the replacement is asked as a new account (``D``)
    and nothing goes on a hotlist."""
    services.create_agency(session, BANK, "ICBC Hangzhou", AgencyKind.BANK, "330100")
    old = new_card("active")
    services.report_loss(session, bank_settings, old.id, actors["clerk"], identity_checked=True)
    new = services.replace_card(session, bank_settings, old.id, actors["clerk"])
    assert new.chip_app("financial").bank_agency_id is None
    req = bank.request_file(session, bank_settings, BANK, actors["clerk"])
    assert [line.split("|")[0] for line in req.text.splitlines()] == ["H", "D", "T"]
    assert (req.replacements, req.hotlisted) == ((), ())


def test_an_answer_for_a_card_replaced_meanwhile_is_refused(session, bank_settings, actors) -> None:
    """Asked of the bank, then replaced before the bank answered: no account is opened for
    the old card (the line is refused), and its replacement is asked as a new account."""
    services.create_agency(session, BANK, "ICBC Hangzhou", AgencyKind.BANK, "330100")
    old = _approved(session, bank_settings, actors)
    first = bank.request_file(session, bank_settings, BANK, actors["clerk"])
    _to_active(session, bank_settings, actors, old)
    services.report_loss(session, bank_settings, old.id, actors["clerk"], identity_checked=True)
    new = services.replace_card(session, bank_settings, old.id, actors["clerk"])
    with pytest.raises(bank.BankFileInvalid) as err:
        bank.load_response(
            session, bank_settings, BANK, answer_request(first.text, BIN), actors["clerk"],
            today=TODAY,
        )  # fmt: skip
    assert [p.reason for p in err.value.problems] == [
        f"card {old.card_number}: the card is replaced: no account is opened for it (its "
        "replacement is asked of the bank)"
    ]
    assert _account(session, old).pan is None and _account(session, old).hotlist_due_at is None
    second = bank.request_file(session, bank_settings, BANK, actors["clerk"])
    assert [line.split("|")[:3] for line in second.text.splitlines()[1:-1]] == [
        ["D", "1", new.card_number]
    ]
