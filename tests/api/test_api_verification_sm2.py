"""The SM2 second proof fields of POST /v1/verifications: both or neither, and a proof that does
not verify makes the card not genuine (end to end on the API's HSM, which holds no issuer SM2
key here: the check runs and refuses). The proof that verifies is checked against the SM test
module in tests/hsm/test_hsm_sm.py (check_chip_sm2)."""

from __future__ import annotations

import os

import pytest
from api_helpers import ApiEnv
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.client import YktClient
from api.schemas import VerificationIn
from cardspec.cardops import internal_authenticate, read_card_public
from cardspec.reader import InProcessReader
from issuance.models import Card

pytestmark = pytest.mark.softhsm

BODY = {
    "challenge_id": "00" * 16,
    "card_identification_code": "330182D156000005" + "01" * 8,
    "card_number": "A00000011",
    "response": "00" * 8,
}


def test_sm2_fields_come_together() -> None:
    cert, sig = "7F" * 80, "AB" * 64
    assert VerificationIn.model_validate(BODY).sm2_signature is None
    both = VerificationIn.model_validate({**BODY, "sm2_card_certificate": cert,
                                          "sm2_signature": sig})  # fmt: skip
    assert both.sm2_signature == sig
    for extra in ({"sm2_signature": sig}, {"sm2_card_certificate": cert}):
        with pytest.raises(ValidationError, match="together"):
            VerificationIn.model_validate({**BODY, **extra})
    with pytest.raises(ValidationError):
        VerificationIn.model_validate({**BODY, "sm2_card_certificate": cert,
                                       "sm2_signature": "AB" * 63})  # fmt: skip


def test_a_failing_sm2_proof_makes_a_genuine_cryptogram_not_enough(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader]
) -> None:
    card, chip = card_and_chip
    client = YktClient(TestClient(api_env.client.app, headers=api_env.auth("hospital")))
    public = read_card_public(chip)
    ch = client.challenge()
    challenge = bytes.fromhex(ch["challenge"])
    answer = internal_authenticate(chip, challenge[:8], challenge[8:])
    chip.disconnect()
    v = client.verify(ch["challenge_id"], public.card_identification_code, public.card_number,
                      answer, sm2_proof=(os.urandom(90), os.urandom(64)))  # fmt: skip
    assert v["valid"] is False and v["reason"] == "not_genuine"
    # the same card without the optional proof verifies
    public = read_card_public(chip)
    ch = client.challenge()
    challenge = bytes.fromhex(ch["challenge"])
    answer = internal_authenticate(chip, challenge[:8], challenge[8:])
    chip.disconnect()
    v = client.verify(ch["challenge_id"], public.card_identification_code, public.card_number,
                      answer)  # fmt: skip
    assert v["valid"] is True and v["card_number"] == card.card_number
