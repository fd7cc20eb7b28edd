"""The temporary card's chip: the medical-only profile (card category "2") and the
application block that kills a returned temporary card (issue 16, issue 18's last bullet)."""

from __future__ import annotations

import dataclasses
import os

import pytest
from cardspec_helpers import SERIAL, blank, perso_data, software_crypto

from cardspec import cardops, perso
from cardspec.apdu import CommandApdu
from cardspec.errors import CardStateError, SecurityError
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import (
    AID_MEDICAL,
    AID_PBOC_DEBIT,
    AID_PENSION,
    AID_PUBLIC,
    decode_card_identification,
    get_profile,
    social_security_profile,
)
from cardspec.reader import InProcessReader

TEMP_PROFILES = [
    social_security_profile(temporary=True),
    social_security_profile(generation=3, algorithm=Algorithm.AES, temporary=True),
]


def _temporary(profile):  # type: ignore[no-untyped-def]
    data = dataclasses.replace(
        perso_data(SERIAL, spec_version=profile.spec_version),
        card_category="2", pension=None, financial=None,
    )  # fmt: skip
    card = blank(SERIAL, profile)
    reader = InProcessReader(card)
    crypto = software_crypto(SERIAL, profile.algorithm)
    perso.personalise(reader, crypto, data, profile)
    reader.connect()
    return card, reader, crypto, data


def _sw(reader: InProcessReader, cmd: CommandApdu) -> int:
    raw = reader.transmit(cmd.to_bytes())
    return int.from_bytes(raw[-2:], "big")


@pytest.mark.parametrize("profile", TEMP_PROFILES, ids=lambda p: p.name)
def test_temporary_profile_has_only_the_medical_application(profile) -> None:  # type: ignore[no-untyped-def]
    assert profile.name.endswith("-tmp")
    assert get_profile(profile.name).name == profile.name
    dfs = {df.name for _, df in profile.walk()}
    assert dfs == {"MF", "SSSE", "MED"}
    files = {ef.name for _, ef in profile.files()}
    assert files == {"EF05", "EF06", "EF15", "EF18"}
    slots = {spec.slot for _, spec in profile.key_specs()}
    assert KeySlot.UK_PENSION not in slots and KeySlot.FIN_AC not in slots
    assert KeySlot.UK_MEDICAL in slots and KeySlot.IRK in slots


@pytest.mark.parametrize("profile", TEMP_PROFILES, ids=lambda p: p.name)
def test_temporary_chip_says_category_2_and_selects_only_medical(profile) -> None:  # type: ignore[no-untyped-def]
    _, reader, _, data = _temporary(profile)
    cardops.select_df(reader, profile, "SSSE")
    ef05 = profile.ef("EF05")[1]
    records = [cardops.read_record(reader, ef05.sfi, n, "EF05") for n in range(1, 8)]
    ident = decode_card_identification(records, profile)
    assert ident.card_category == "2"
    assert ident.expiry_date == data.expiry_date
    for aid, want in ((AID_MEDICAL, 0x9000), (AID_PENSION, 0x6A82), (AID_PUBLIC, 0x6A82),
                      (AID_PBOC_DEBIT, 0x6A82), (b"1PAY.SYS.DDF01", 0x6A82)):  # fmt: skip
        assert _sw(reader, CommandApdu(0x00, 0xA4, 0x04, 0x0C, aid)) == want, aid.hex()


@pytest.mark.parametrize("profile", TEMP_PROFILES, ids=lambda p: p.name)
def test_application_block_kills_the_returned_chip(profile) -> None:  # type: ignore[no-untyped-def]
    card, reader, crypto, _ = _temporary(profile)
    cardops.select_df(reader, profile, "SSSE")
    factor, rnd = os.urandom(8), os.urandom(8)
    answer = cardops.internal_authenticate(reader, factor, rnd)
    cardops.check_internal_authenticate(crypto, factor, rnd, answer)
    assert cardops.application_blocked(reader, profile) is False

    # without the DMK channel the card refuses the block
    assert _sw(reader, CommandApdu(0x00, 0x1E, 0x00, 0x00)) == 0x6982
    assert card.state.blocked_apps == []

    cardops.block_application(reader, crypto, profile=profile)
    assert card.state.blocked_apps == ["MF/SSSE"]
    assert cardops.application_blocked(reader, profile) is True
    with pytest.raises(CardStateError) as refused:
        cardops.internal_authenticate(reader, factor, rnd)
    assert refused.value.sw == 0x6985
    # the files and the medical DF below are dead too; the SELECT warns 6283
    assert _sw(reader, CommandApdu(0x00, 0xB2, 0x07, 0x2C, le=256)) == 0x6985
    assert _sw(reader, CommandApdu(0x00, 0xA4, 0x04, 0x0C, AID_MEDICAL)) == 0x6283
    assert _sw(reader, CommandApdu(0x00, 0x20, 0x00, 0x00, b"\x12\x34\x56")) == 0x6985

    # the issuer (DMK) can lift it; nobody else
    cardops.block_application(reader, crypto, profile=profile, unblock=True)
    assert cardops.application_blocked(reader, profile) is False
    cardops.select_df(reader, profile, "SSSE")
    cardops.check_internal_authenticate(
        crypto, factor, rnd, cardops.internal_authenticate(reader, factor, rnd)
    )


def test_block_with_another_issuers_keys_is_refused() -> None:
    profile = TEMP_PROFILES[0]
    card, reader, _, _ = _temporary(profile)
    wrong = software_crypto(SERIAL, profile.algorithm, seed="other")
    with pytest.raises(SecurityError):
        cardops.block_application(reader, wrong, profile=profile)
    assert card.state.blocked_apps == []
