"""Financial activation at a bank branch on a real emulated chip: the holder's PIN set on the
card by the bank's issuer script (enciphered and MACed with the card's keys from the bank's
issuer master keys) through the reader port, the card checked genuine, and the PIN in no row,
log or audit."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import sqlalchemy as sa
from issuance_helpers import BANK_PAN, INITIAL_BANK_PIN, FixedPinPad, bank_account, emulated_chip

from cardspec import cardops
from cardspec.errors import PinError
from cardspec.keyscheme import KeySlot
from cardspec.reader import InProcessReader
from hsm.service import DEMO_BANK, SoftwareKeyService
from issuance import services
from issuance.audit import Actor
from issuance.db import Base
from issuance.errors import FieldProblem, PermissionDenied, ValidationError
from issuance.models import AgencyKind, Channel, ChipAppStatus, StaffRole
from issuance.services import financial

NEW_PIN = "480159"


@pytest.fixture(scope="module")
def key_service() -> SoftwareKeyService:
    return SoftwareKeyService.random()


def _all_text(session) -> str:
    """Every value of every row of every table, as text (what a database dump would show)."""
    parts = []
    for table in Base.metadata.sorted_tables:
        for row in session.execute(sa.select(table)).all():
            parts.extend("" if v is None else repr(v) for v in row)
    return "\n".join(parts)


def test_pin_set_on_the_card_then_function_activated(
    session, settings, actors, new_card, key_service, caplog
):
    card = new_card("active")
    chip = emulated_chip(card, key_service)
    reader = InProcessReader(chip, name="branch desk 1")
    teller = actors["bank_teller"].via(Channel.BANK)
    bank = services.create_agency(session, "ICBC-0571", "ICBC Hangzhou", AgencyKind.BANK, "330100")
    with_bank = bank_account(session, settings, card)
    with caplog.at_level(logging.DEBUG):
        financial.check_can_activate(session, card.id, teller, identity_checked=True)
        keys = financial.script_keys(session, with_bank, key_service, card)
        assert keys.ref.bank == DEMO_BANK and keys.ref.pan == BANK_PAN  # the bank's domain
        pad = FixedPinPad(INITIAL_BANK_PIN, NEW_PIN)
        checked: list[int] = []
        evidence = services.set_financial_pin(
            reader, card.card_identification_code, pad, keys,
            authenticate=financial.hsm_card_check(key_service, card),
            pin_check=lambda pin: checked.append(len(pin)),
        )  # fmt: skip
        services.activate_financial(
            session, card.id, teller, identity_checked=True, pin=evidence,
            bank_agency_id=bank.id,
        )  # fmt: skip
        session.flush()
    # the holder typed only the new PIN (the bank sets it with its authority); the PIN rules
    # saw it once; the card counted no wrong MAC
    assert pad.asked == 1 and checked == [6] and KeySlot.FIN_SMI not in chip.state.key_tries
    assert evidence.card_authenticated and evidence.tries_left == 3
    assert not evidence.application_unblocked
    fin = card.chip_app("financial")
    assert fin.status == ChipAppStatus.ACTIVE and fin.pin_set and fin.bank_agency_id == bank.id
    # the chip holds the new PIN: it verifies, the initial one no longer does
    reader.connect()
    cardops.verify_pin(reader, NEW_PIN, pin_name="bank")
    with pytest.raises(PinError):
        cardops.verify_pin(reader, INITIAL_BANK_PIN, pin_name="bank")
    # ...and nothing else does: no row (audit events included), no log line
    dump = _all_text(session)
    assert "issuer_script" in dump  # the audit records how it happened...
    for pin in (NEW_PIN, INITIAL_BANK_PIN):
        assert pin not in dump and pin not in caplog.text  # ...never the PIN


def test_wrong_card_wrong_keys_weak_pin_and_forgery_are_refused(
    session, settings, actors, new_card, key_service
):
    card, other = new_card("active"), new_card("active")
    chip = emulated_chip(card, key_service)
    reader = InProcessReader(chip)
    keys = financial.script_keys(session, bank_account(session, settings, card), key_service,
                                 card)  # fmt: skip
    pad = FixedPinPad(INITIAL_BANK_PIN, NEW_PIN)
    with pytest.raises(ValidationError, match="wrong card"):
        services.set_financial_pin(reader, other.card_identification_code, pad, keys)
    assert pad.asked == 0  # refused before the holder typed anything
    # keys of another bank (or a made-up PAN): the card refuses the MAC (6988) and counts it
    wrong = financial.ScriptKeys(key_service, replace(keys.ref, pan="6212260000000000018"))
    with pytest.raises(ValidationError) as err:
        services.set_financial_pin(reader, card.card_identification_code, pad, wrong)
    assert "6988" in str(err.value) and NEW_PIN not in str(err.value)
    assert err.value.__cause__ is None  # no APDU trail with PIN blocks chained on
    assert chip.state.key_tries[KeySlot.FIN_SMI] == 4
    # the PIN rules refuse a PIN: nothing is sent to the card
    atc = chip.state.atc

    def weak(pin: str) -> None:
        raise ValidationError("weak PIN", [FieldProblem("pin", "too simple")])

    with pytest.raises(ValidationError, match="weak PIN"):
        services.set_financial_pin(reader, card.card_identification_code,
                                   FixedPinPad("", "111111"), keys, pin_check=weak)  # fmt: skip
    assert chip.state.key_tries[KeySlot.FIN_SMI] == 4 and chip.state.atc == atc + 1
    # a chip personalised under other issuer keys (a copy) fails internal authentication
    forged = InProcessReader(emulated_chip(card, SoftwareKeyService.random()))
    with pytest.raises(ValidationError, match="not genuine"):
        services.set_financial_pin(
            forged, card.card_identification_code, FixedPinPad(INITIAL_BANK_PIN, NEW_PIN), keys,
            authenticate=financial.hsm_card_check(key_service, card),
        )  # fmt: skip
    # the right keys: accepted, and the good MAC resets the script key's count
    ev = services.set_financial_pin(reader, card.card_identification_code,
                                    FixedPinPad(INITIAL_BANK_PIN, NEW_PIN), keys)  # fmt: skip
    assert KeySlot.FIN_SMI not in chip.state.key_tries
    # evidence for another card does not activate this one
    teller = actors["bank_teller"].via(Channel.BANK)
    with pytest.raises(ValidationError, match="another card"):
        services.activate_financial(session, other.id, teller, identity_checked=True, pin=ev)
    assert other.chip_app("financial").status == ChipAppStatus.SEALED


def test_a_blocked_application_is_unblocked_by_the_script(session, settings, new_card,
                                                           key_service):  # fmt: skip
    card = new_card("active")
    chip = emulated_chip(card, key_service)
    chip.state.blocked_apps.append(next(p for p, df in chip.profile.walk() if df.emv))
    keys = financial.script_keys(session, bank_account(session, settings, card), key_service,
                                 card)  # fmt: skip
    reader = InProcessReader(chip)
    ev = services.set_financial_pin(reader, card.card_identification_code,
                                    FixedPinPad("", NEW_PIN), keys)  # fmt: skip
    assert ev.application_unblocked and chip.state.blocked_apps == []
    reader.connect()
    cardops.verify_pin(reader, NEW_PIN, pin_name="bank")


def test_who_may_activate_and_bank_attestation(session, settings, actors, new_card):
    card = new_card("active")
    clerk = actors["clerk"].via(Channel.BANK)
    with pytest.raises(PermissionDenied):  # only a bank teller, through the bank channel
        financial.check_can_activate(session, card.id, clerk, identity_checked=True)
    with pytest.raises(PermissionDenied):
        financial.check_can_activate(session, card.id, actors["bank_teller"], identity_checked=True)
    # a bank's own system (an API agency credential, no staff user) attests its terminal did it
    bank = services.create_agency(session, "BOC-1", "Bank of China", AgencyKind.BANK, "330100")
    hospital = services.create_agency(session, "H-1", "Hospital", AgencyKind.HOSPITAL, "330100")
    system = Actor("agency:BOC-1", StaffRole.BANK_TELLER, Channel.BANK, None)  # as the API has it
    with pytest.raises(ValidationError, match="only a bank"):
        services.activate_financial(session, card.id, system, identity_checked=True,
                                    pin_set=True, bank_agency_id=hospital.id)  # fmt: skip
    # issue 15: a bank's system activates only a card issued for that bank
    with pytest.raises(ValidationError, match="not this bank's"):
        services.activate_financial(session, card.id, system, identity_checked=True,
                                    pin_set=True, bank_agency_id=bank.id)  # fmt: skip
    financial.bind_bank(session, card.id, "BOC-1", actors["clerk"])
    services.activate_financial(session, card.id, system, identity_checked=True, pin_set=True,
                                bank_agency_id=bank.id)  # fmt: skip
    assert card.chip_app("financial").status == ChipAppStatus.ACTIVE
    assert "bank_attestation" in _all_text(session)
