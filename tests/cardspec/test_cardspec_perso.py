"""Full personalisation through the in-process reader, then read back and authenticate."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from cardspec_helpers import INITIAL_PIN, perso_data, personalised_card, software_crypto
from cardspec_helpers import blank as make_blank

from cardspec import cardops, keyscheme, perso
from cardspec import profile as P
from cardspec.emulator import LifeCycle
from cardspec.errors import CardStateError, InvalidIdentifier, ProfileError
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.reader import InProcessReader


def test_full_personalisation_and_read_back() -> None:
    issued = personalised_card()
    result = issued.result
    prof = P.DEFAULT_PROFILE
    # 1 select + challenge + ext auth + 10 keys + 7+7+4+5+1 records + 3 selects + 2 PINs + lock
    assert result.apdu_count == 3 + 10 + 24 + 3 + 2 + 1
    assert issued.card.apdu_count == result.apdu_count  # the card saw exactly these
    assert set(result.keys_loaded) == {s for _, k in prof.key_specs() for s in [k.slot]} - {
        KeySlot.KMC
    }
    # each key on the card is the diversified issuer key of its slot
    for slot in result.keys_loaded:
        assert issued.card.state.keys[slot] == keyscheme.odd_parity(issued.crypto.card_key(slot))
    assert issued.card.state.life_cycle is LifeCycle.SECURED

    reader = issued.reader
    public = cardops.read_card_public(reader, connect=False)
    assert public.card_identification == issued.data.card_identification()
    assert public.holder == issued.data.holder
    assert public.card_identification_code.startswith("330182D156000005")

    # card authentication, checked against the reference key scheme independently of the port
    factor = keyscheme.card_factor(public.card_identification_code)
    random = os.urandom(8)
    answer = cardops.internal_authenticate(reader, factor, random)
    irk = keyscheme.derive_card_key(
        _masters()[KeySlot.IRK], [keyscheme.card_factor(issued.data.card_identification_code)],
        Algorithm.DES3,
    )  # fmt: skip
    assert answer == keyscheme.internal_auth_response(irk, factor, random, Algorithm.DES3)
    cardops.check_internal_authenticate(issued.crypto, factor, random, answer)
    with pytest.raises(Exception) as err:
        cardops.check_internal_authenticate(software_crypto(seed="other"), factor, random, answer)
    assert getattr(err.value, "sw", None) == 0x6300

    # financial application: free read of the PBOC record
    cardops.select_df(reader, prof, "FIN")
    fin = P.decode_financial([cardops.read_record(reader, 1, 1, "READ RECORD")])
    assert fin == issued.data.financial
    # medical and pension data behind the PIN
    cardops.verify_pin(reader, INITIAL_PIN)
    assert P.decode_medical(cardops.read_records(reader, "EF15")) == issued.data.medical
    cardops.verify_pin(reader, INITIAL_PIN)
    assert P.decode_pension(cardops.read_records(reader, "EF16")) == issued.data.pension


def _masters() -> dict[KeySlot, bytes]:
    from cardspec_helpers import masters

    return masters()


def test_personalising_twice_is_refused() -> None:
    issued = personalised_card()
    issued.reader.disconnect()
    with pytest.raises(CardStateError) as err:
        perso.personalise(issued.reader, issued.crypto, issued.data)
    assert err.value.sw == 0x6A88  # KMC is gone: EXTERNAL AUTHENTICATE finds no key


def test_wrong_transport_key_is_refused() -> None:
    crypto = software_crypto()
    card = make_blank(seed="other")
    with pytest.raises(Exception) as err:
        perso.personalise(InProcessReader(card), crypto, perso_data())
    assert getattr(err.value, "sw", None) == 0x63C4  # the KMC error counter: 4 tries left
    assert card.state.life_cycle is LifeCycle.PERSONALISATION and len(card.state.keys) == 1


def test_inputs_checked_before_any_apdu() -> None:
    crypto = software_crypto()
    card = make_blank()
    reader = InProcessReader(card)
    with pytest.raises(InvalidIdentifier):
        perso.personalise(reader, crypto, replace(perso_data(), card_number="X00000018"))
    with pytest.raises(ProfileError, match="financial"):
        perso.personalise(reader, crypto, replace(perso_data(), financial=None))
    with pytest.raises(ProfileError, match="algorithm"):
        perso.personalise(reader, software_crypto(algorithm=Algorithm.AES), perso_data())
    assert card.apdu_count == 0
    assert "11010519491231002X" not in repr(perso_data())


def test_profile_without_financial_and_extra_application() -> None:
    housing = P.DedicatedFile(
        name="HF", fid=0xDF10, df_name=bytes.fromhex("D15600000510"), label="housing fund",
        files=(P.simple_tlv_file("EF20", 0xEF20, 0x14,
               (P.Element(0x50, "account", 12, P.Fmt.AN),), P.FREE, P.by_key(KeySlot.DMK)),),
    )  # fmt: skip
    prof = P.social_security_profile(financial=False).with_application(housing, parent="SSSE")
    crypto = software_crypto()
    card = make_blank(profile=prof)
    reader = InProcessReader(card)
    data = replace(perso_data(), financial=None, extra={"EF20": {"account": "HF0000012345"}})
    result = perso.personalise(reader, crypto, data, prof)
    assert KeySlot.FIN_AC not in result.keys_loaded
    reader.connect()
    records = cardops.read_records(reader, "EF20", profile=prof)
    assert P.decode_records(prof.ef("EF20")[1], records) == {"account": "HF0000012345"}
    # after issuance the application is updated with its own key, as data only
    cardops.update_file(reader, crypto, "EF20", {"account": "HF0000099999"}, profile=prof)
    records = cardops.read_records(reader, "EF20", profile=prof)
    assert P.decode_records(prof.ef("EF20")[1], records) == {"account": "HF0000099999"}


def test_card_misbehaviour_raises_specific_errors() -> None:
    from cardspec.errors import ResponseError

    class Truncating:
        name = "bad"

        def __init__(self, inner: InProcessReader) -> None:
            self.inner = inner

        def connect(self) -> bytes:
            return self.inner.connect()

        def transmit(self, command: bytes) -> bytes:
            resp = self.inner.transmit(command)
            if command[1] == 0xB2 and resp[-2:] == b"\x90\x00":
                return resp[:-5] + b"\x90\x00"  # truncated record
            return resp

        def disconnect(self) -> None:
            self.inner.disconnect()

    issued = personalised_card()
    with pytest.raises(ResponseError) as err:
        cardops.read_card_public(Truncating(issued.reader))
    assert err.value.sw == 0x9000 and "EF05" in str(err.value)
