"""The one weak-PIN rule (``[pins] weak_rules``): every reason, the setting honoured, the PIN
never in an error; the bank initial PIN is its own value, never the social security PIN."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date

import pytest
from issuance_helpers import FixedPinPad, bank_account, emulated_chip

from cardspec import perso
from cardspec.errors import ProfileError
from cardspec.profile import DEFAULT_PROFILE
from issuance.batches.dataprep import natural_pin
from issuance.services.pins import (
    StrengthCheckedPad,
    WeakPin,
    check_pin_strength,
    pin_weaknesses,
    same_digit,
    step_sequence,
)
from yikatong.settings import Settings


@dataclass(frozen=True)
class Holder:
    citizen_id: str
    birth_date: date


#: The resident of the issue: born 15 March 1990.
CHEN = Holder("330106199003151236", date(1990, 3, 15))


def codes(pin: str, settings: Settings, holder: Holder | None = CHEN) -> set[str | None]:
    return {p.code for p in pin_weaknesses(pin, holder, settings)}


@pytest.mark.parametrize(
    ("pin", "code"),
    [
        ("111111", "weak_repeated"),
        ("121212", "weak_repeated"),
        ("123123", "weak_repeated"),
        ("123456", "weak_sequence"),
        ("654321", "weak_sequence"),
        ("345678", "weak_sequence"),
        ("900315", "weak_birth_date"),  # YYMMDD
        ("031590", "weak_birth_date"),  # MMDDYY
        ("150390", "weak_birth_date"),  # DDMMYY
        ("199003", "weak_birth_date"),  # YYYYMM
        ("031990", "weak_birth_date"),  # MMYYYY
        ("151236", "weak_citizen_id"),  # the ID number's last six digits
        ("301061", "weak_citizen_id"),  # a run from its region code
        ("12a456", "not_digits"),
    ],
)
def test_each_weak_pattern_is_refused_with_its_reason(pin: str, code: str, settings) -> None:  # type: ignore[no-untyped-def]
    assert code in codes(pin, settings)
    with pytest.raises(WeakPin) as err:
        check_pin_strength(pin, CHEN, settings)
    assert err.value.code == "weak_pin"
    assert pin not in str(err.value)  # the reason names the pattern, never the PIN
    assert all(pin not in p.reason for p in err.value.problems)


def test_strong_pins_pass_and_the_holders_rules_need_the_holder(settings) -> None:  # type: ignore[no-untyped-def]
    for pin in ("480159", "730264", "915038"):
        assert pin_weaknesses(pin, CHEN, settings) == []
        check_pin_strength(pin, CHEN, settings)
    # without the holder (a caller that does not know them) only the patterns apply
    assert codes("900315", settings, None) == set()
    assert codes("111111", settings, None) == {"weak_repeated"}


def test_the_rule_is_a_setting(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    only_repeated = settings.model_copy(
        update={"pins": settings.pins.model_copy(update={"weak_rules": ("repeated",)})}
    )
    assert codes("123456", only_repeated) == set()  # sequences allowed by this city
    assert codes("900315", only_repeated) == set()
    assert codes("222222", only_repeated) == {"weak_repeated"}
    from yikatong.settings import load_settings

    toml = tmp_path / "yikatong.toml"
    toml.write_text('[pins]\nweak_rules = ["sequence"]\n')
    loaded = load_settings(environ={"YKT_DATA_DIR": str(tmp_path), "YKT_CONFIG": str(toml)})
    assert loaded.pins.weak_rules == ("sequence",)
    toml.write_text('[pins]\nweak_rules = ["lucky"]\n')
    with pytest.raises(Exception, match="weak_rules"):
        load_settings(environ={"YKT_DATA_DIR": str(tmp_path), "YKT_CONFIG": str(toml)})


def test_a_pin_pad_with_the_rule_refuses_a_weak_new_pin(settings) -> None:  # type: ignore[no-untyped-def]
    class Pad:
        def __init__(self, new: str) -> None:
            self.new = new

        def current_pin(self) -> str:
            return "802413"

        def new_pin(self) -> str:
            return self.new

    assert StrengthCheckedPad(Pad("480159"), CHEN, settings).new_pin() == "480159"
    assert StrengthCheckedPad(Pad("900315"), CHEN, settings).current_pin() == "802413"
    with pytest.raises(WeakPin, match="birth date"):
        StrengthCheckedPad(Pad("900315"), CHEN, settings).new_pin()


def test_the_bank_initial_pin_never_defaults_to_the_social_security_pin() -> None:
    cic = "330100D1560000054321A1B2C3D4E5F6"

    def mac(data: bytes) -> bytes:  # stands for the MAC under the card's PUK in the HSM
        return hashlib.sha256(b"puk" + data).digest()[:8]

    ss, bank = natural_pin(cic, mac), natural_pin(cic, mac, pin_name="bank")
    assert ss != bank and len(ss) == len(bank) == 6
    for pin in (ss, bank):
        assert pin.isdigit() and not same_digit(pin) and not step_sequence(pin)
    # a card with a financial application cannot be personalised without its own bank PIN
    data = perso.sample_perso_data(cic, DEFAULT_PROFILE)
    assert data.bank_pin and data.bank_pin != data.initial_pin
    blocks = perso.initial_pin_blocks(data, DEFAULT_PROFILE)
    specs = [spec for _, spec in DEFAULT_PROFILE.pin_specs()]
    assert blocks == [s.encode(data.bank_pin if s.name == "bank" else data.initial_pin)
                      for s in specs]  # fmt: skip
    from dataclasses import replace

    with pytest.raises(ProfileError, match="never defaults"):
        perso.initial_pin_blocks(replace(data, bank_pin=None), DEFAULT_PROFILE)


def test_a_notification_gateway_never_counts_a_pin_mailer_as_sent(session, caplog) -> None:  # type: ignore[no-untyped-def]
    from issuance.services.outbox import PIN_MAILER_TOPIC, LogSink, drain_outbox, enqueue

    mailer = enqueue(session, PIN_MAILER_TOPIC, payload={"card_id": 1, "card_number": "A1"})
    note = enqueue(session, "card.ready_for_collection", payload={"card_number": "A1"})
    session.flush()
    sink = LogSink()
    assert drain_outbox(session, sink) == 1  # the notification only
    assert note.sent_at is not None and sink.sent == [note.id]
    assert mailer.sent_at is None and mailer.attempts == 1
    assert "printed, not notified" in (mailer.last_error or "")
    assert PIN_MAILER_TOPIC not in " ".join(r.getMessage() for r in caplog.records
                                            if r.levelname == "INFO")  # fmt: skip


def test_bank_activation_weak_pin_refused_and_blocked_bank_pin_shown_blocked(
    session, settings, actors, new_card
) -> None:  # type: ignore[no-untyped-def]
    from hsm.service import SoftwareKeyService

    key_service = SoftwareKeyService.random()  # with the demo bank's key domain

    from cardspec import cardops
    from cardspec.reader import InProcessReader
    from issuance import services
    from issuance.services import financial, pin_counter, pins
    from issuance.services.pins import app_status_text

    card = new_card("active")
    reader = InProcessReader(emulated_chip(card, key_service), name="desk 1")
    person = card.person
    keys = financial.script_keys(session, bank_account(session, settings, card), key_service,
                                 card)  # fmt: skip
    # the weak-PIN rule on the bank activation path (the issuer script): refused before any
    # PIN block is made, the bank PIN untouched
    pad = StrengthCheckedPad(FixedPinPad("", "111111"), person, settings)
    with pytest.raises(WeakPin, match="repeated digits"):
        services.set_financial_pin(reader, card.card_identification_code, pad, keys)
    reader.connect()
    assert cardops.pin_status(reader)["bank"].tries_left == 3
    reader.disconnect()
    # a bank terminal reported the bank PIN blocked (6983): recorded, shown blocked (never
    # "sealed") wherever the card is shown
    pins.record_pin_state(session, card, pins.BANK_PIN, 0, actors["bank_teller"])
    view = services.card_status(session, card_id=card.id)
    assert view.chip_apps["financial"] == "sealed"  # the function's own state...
    assert app_status_text("financial", view.chip_apps["financial"], view.pins) == "PIN blocked"
    assert app_status_text("social_security", view.chip_apps["social_security"], view.pins) == (
        "active"
    )  # ...the social security PIN is another PIN, untouched
    from issuance.services import people

    rec = people.person_record(session, card.person_id, actors["clerk"])
    [entry] = [c for c in rec.cards if c.card_id == card.id]
    apps = {a.kind: a for a in entry.chip_apps}
    assert apps["financial"].pin_blocked and apps["financial"].pin_tries_left == 0
    assert not apps["social_security"].pin_blocked
    # the bank PIN is the bank's to unblock: the counter refuses, with the reason
    with pytest.raises(Exception, match="by the bank"):
        pin_counter.check_can_serve(session, settings, card.id, actors["clerk"],
                                    service=pin_counter.PinService.UNBLOCK,
                                    identity_checked=True, pin_name="bank")  # fmt: skip
