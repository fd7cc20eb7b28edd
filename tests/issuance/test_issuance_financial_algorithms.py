"""Financial activation at a bank branch on AES and SM4 cards (``[issuer] card_algorithm``): the
bank's issuer script for the holder's PIN, built with the card's EMV keys of the bank's IMKs of
that algorithm (AES: EMV option C, AES-CMAC; SM4: the PBOC CHOICEs of ``cardspec.emv``),
accepted by a third-generation chip of that algorithm, and the new PIN verified on the chip."""

from __future__ import annotations

from pathlib import Path

import pytest
from issuance_helpers import INITIAL_BANK_PIN, FixedPinPad, bank_account, emulated_chip

from cardspec import cardops
from cardspec.errors import PinError
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import social_security_profile
from cardspec.reader import InProcessReader
from hsm.service import DEMO_BANK, SoftwareKeyService
from issuance import services
from issuance.models import AgencyKind, Channel, ChipAppStatus
from issuance.services import financial
from yikatong.settings import Settings, load_settings

NEW_PIN = "480159"


@pytest.fixture(params=[Algorithm.AES, Algorithm.SM4], ids=["aes", "sm4"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The centre's settings with the cards made from now on of the parameter's algorithm."""
    return load_settings(environ={"YKT_DATA_DIR": str(tmp_path),
                                  "YKT_ISSUER__CARD_ALGORITHM": request.param.value})  # fmt: skip


def test_pin_set_by_issuer_script_on_aes_and_sm4_cards(session, settings, actors, new_card):
    alg = Algorithm(settings.issuer.card_algorithm)
    key_service = SoftwareKeyService.random(algorithms=(alg,))
    card = new_card("active")
    assert str(card.algorithm) == alg.value
    profile = social_security_profile(generation=3, algorithm=alg)
    chip = emulated_chip(card, key_service, profile=profile)
    reader = InProcessReader(chip, name="branch desk 2")
    teller = actors["bank_teller"].via(Channel.BANK)
    bank = services.create_agency(session, "ICBC-0572", "ICBC Xihu", AgencyKind.BANK, "330100")
    with_bank = bank_account(session, settings, card)
    financial.check_can_activate(session, card.id, teller, identity_checked=True)
    keys = financial.script_keys(session, with_bank, key_service, card)
    assert keys.ref.bank == DEMO_BANK and keys.ref.algorithm is alg
    pad = FixedPinPad(INITIAL_BANK_PIN, NEW_PIN)
    evidence = services.set_financial_pin(
        reader, card.card_identification_code, pad, keys, profile=profile,
        authenticate=financial.hsm_card_check(key_service, card),
    )  # fmt: skip
    services.activate_financial(
        session, card.id, teller, identity_checked=True, pin=evidence, bank_agency_id=bank.id
    )
    session.flush()
    assert evidence.card_authenticated and KeySlot.FIN_SMI not in chip.state.key_tries
    assert card.chip_app("financial").status == ChipAppStatus.ACTIVE
    reader.connect()
    cardops.verify_pin(reader, NEW_PIN, pin_name="bank")
    with pytest.raises(PinError):
        cardops.verify_pin(reader, INITIAL_BANK_PIN, pin_name="bank")
