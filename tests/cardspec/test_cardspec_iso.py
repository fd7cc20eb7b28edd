"""ISO/IEC 7816-4 as terminals use it: SELECT forms, READ RECORD by record identifier, the
status word of every refused form, and the key error counters with the issuer's reset."""

from __future__ import annotations

import pytest
from cardspec_helpers import SSN, personalised_card

from cardspec import cardops
from cardspec.apdu import CommandApdu
from cardspec.emulator import Card
from cardspec.keyscheme import KeySlot
from cardspec.profile import DEFAULT_PROFILE, SOCIAL_SECURITY_DF_NAME

SELECT_SSSE = "00A404000F" + SOCIAL_SECURITY_DF_NAME.hex()


def tx(card: Card, command: str | CommandApdu) -> tuple[bytes, int]:
    raw = command.to_bytes() if isinstance(command, CommandApdu) else bytes.fromhex(command)
    out = card.process(raw)
    return out[:-2], int.from_bytes(out[-2:], "big")


@pytest.fixture(scope="module")
def issued():  # type: ignore[no-untyped-def]
    return personalised_card()


@pytest.fixture
def card(issued) -> Card:  # type: ignore[no-untyped-def]
    c: Card = issued.card
    c.power_on()
    return c


def test_public_reader_sequence_reads_holder_fields_by_identifier(card: Card) -> None:
    """The sequence of public reader code (tests/cardspec/conformance/ cites it): SELECT the
    DF by name, SELECT EF05 / EF06 by FID under it, READ RECORD by number and by identifier."""
    fci, status = tx(card, SELECT_SSSE)  # case 3 with an FCI: 61xx, the FCI by GET RESPONSE
    assert fci == b"" and status >> 8 == 0x61
    fci, status = tx(card, f"00C00000{status & 0xFF:02X}")
    assert status == 0x9000 and fci[0] == 0x6F and SOCIAL_SECURITY_DF_NAME in fci
    assert tx(card, "00A4020002EF05") == (b"", 0x9000)  # case 3: no FCP, 9000
    assert tx(card, "00B2070400") == (b"\x07\x09X00000019", 0x9000)  # number 7 of the current EF
    assert tx(card, "00A4020002EF06") == (b"", 0x9000)
    record, status = tx(card, "00B2080014")  # first record with identifier 08
    assert status == 0x9000 and record == b"\x08\x12" + SSN.encode()
    # the same record by next / last occurrence, none before it
    assert tx(card, "00B2080200")[1] == 0x6A83  # no next record with tag 08 after record 1
    assert tx(card, "00B2080100")[0] == record
    assert tx(card, "00B2080300")[1] == 0x6A83  # nor a previous one
    assert tx(card, "00B20D0000")[0][:2] == b"\x0d\x04"  # birth date
    assert tx(card, "00B2080000")[0] == record
    assert tx(card, "00B2FF0000")[1] == 0x6A83  # no record with that identifier
    fcp, status = tx(card, "00A4020402EF0600")  # FCP when asked for
    assert status == 0x9000 and fcp[0] == 0x62 and b"\x83\x02\xef\x06" in fcp


def test_select_forms(card: Card) -> None:
    tx(card, SELECT_SSSE)
    assert tx(card, "00A4010C02DF03")[1] == 0x9000 and card.current_df == "MF/SSSE/MED"
    assert tx(card, "00A4030C")[1] == 0x9000 and card.current_df == "MF/SSSE"  # parent
    assert tx(card, "00A4010C02EF05")[1] == 0x6A82  # P1 01 is a DF only
    assert tx(card, "00A4020C02DF03")[1] == 0x6A82  # P1 02 is an EF only
    assert tx(card, "00A4080C04DDF1EF06")[1] == 0x9000 and card.current_ef == "MF/SSSE/EF06"
    fcp, status = tx(card, "00A4000402DDF100")  # FCP of a DF: descriptor 38, FID, name
    assert status == 0x9000 and fcp.startswith(b"\x62") and b"\x82\x01\x38" in fcp
    assert tx(card, "00A4000802DDF1")[1] == 0x6A86  # FMD not offered
    for aid, df in (("D15600000500", "PUB"), ("D15600000501", "EMP"), ("D15600000504", "PER")):
        fci, status = tx(card, "00A4040006" + aid + "00")
        assert status == 0x9000 and fci[0] == 0x6F and card.current_df == f"MF/SSSE/{df}"
    # partial DF name: first and next occurrence, then none
    tx(card, "00A4000C023F00")
    seen = [tx(card, "00A4040C05D156000005")[1]]
    first = card.current_df
    seen.append(tx(card, "00A4040E05D156000005")[1])
    assert seen == [0x9000, 0x9000] and card.current_df != first
    while (status := tx(card, "00A4040E05D156000005")[1]) == 0x9000:
        pass
    assert status == 0x6A82


@pytest.mark.parametrize(
    ("command", "status"),
    [
        ("FFCA000000", 0x6E00),  # CLA FF (a PC/SC pseudo-APDU) reaches the card
        ("E0B2012C00", 0x6E00),
        ("00EE000000", 0x6D00),
        ("00A4000102EF05", 0x6A86),  # "last occurrence" with a FID
        ("00A40400", 0x6700),  # DF name of 0 bytes
        ("00B2012F00", 0x6A86),  # READ RECORD(S) modes are not offered
        ("0CB2072C00", 0x6987),  # secure messaging announced, no MAC
        ("0CB2072C0411223344", 0x6982),  # a MAC but no channel opened
        ("0C84000008", 0x6882),  # GET CHALLENGE takes no secure messaging
    ],
)
def test_refused_forms(card: Card, command: str, status: int) -> None:
    tx(card, SELECT_SSSE)
    assert tx(card, command)[1] == status


def test_read_record_with_mac_in_a_channel(issued) -> None:  # type: ignore[no-untyped-def]
    card: Card = issued.card
    card.power_on()
    tx(card, SELECT_SSSE)
    channel = cardops.external_authenticate(issued.reader, issued.crypto, KeySlot.EAK,
                                            DEFAULT_PROFILE)  # fmt: skip
    good = channel.wrap(CommandApdu(0x00, 0xB2, 7, 0x2C, le=256))
    assert tx(card, good) == (b"\x07\x09X00000019", 0x9000)
    bad = channel.wrap(CommandApdu(0x00, 0xB2, 7, 0x2C, le=256))
    bad = CommandApdu(bad.cla, bad.ins, bad.p1, bad.p2, bad.data[:-1] + b"\x00", le=256)
    assert tx(card, bad)[1] == 0x6988


def test_key_error_counter_lock_and_issuer_reset() -> None:
    issued = personalised_card()
    card, reader, crypto = issued.card, issued.reader, issued.crypto
    eak = DEFAULT_PROFILE.key(KeySlot.EAK)[1]
    tx(card, SELECT_SSSE)
    statuses = []
    for _ in range(eak.tries):
        tx(card, "0084000008")
        statuses.append(tx(card, f"00820{eak.key_id:03X}08" + "00" * 8)[1])
    assert statuses == [0x63C4, 0x63C3, 0x63C2, 0x63C1, 0x6983]
    # blocked: even the right cryptogram is refused, and the state survives a reload
    challenge = tx(card, "0084000008")[0]
    right = crypto.external_auth(KeySlot.EAK, challenge)
    assert tx(card, CommandApdu(0, 0x82, 0, eak.key_id, right))[1] == 0x6983
    assert Card(card.state, card.profile).state.key_tries[KeySlot.EAK] == 0
    # the issuer resets it in a DMK channel; a reset without MAC or under another key fails
    assert tx(card, CommandApdu(0x84, 0x2C, 0x03, eak.key_id))[1] == 0x6987
    ch = cardops.external_authenticate(reader, crypto, KeySlot.UK_IDENT, DEFAULT_PROFILE)
    assert tx(card, ch.wrap(CommandApdu(0x80, 0x2C, 0x03, eak.key_id)))[1] == 0x6982
    ch = cardops.external_authenticate(reader, crypto, KeySlot.DMK, DEFAULT_PROFILE)
    dmk_id = DEFAULT_PROFILE.key(KeySlot.DMK)[1].key_id
    assert tx(card, ch.wrap(CommandApdu(0x80, 0x2C, 0x03, dmk_id)))[1] == 0x6982  # not itself
    cardops.reset_key_counter(reader, crypto, KeySlot.EAK)
    assert KeySlot.EAK not in card.state.key_tries
    cardops.external_authenticate(reader, crypto, KeySlot.EAK, DEFAULT_PROFILE)  # works again
    # a wrong MAC under a key counts on that key, a success resets the count
    ch = cardops.external_authenticate(reader, crypto, KeySlot.UK_IDENT, DEFAULT_PROFILE)
    cmd = ch.wrap(CommandApdu(0x00, 0xDC, 7, 0x2C, b"\x07\x09X00000019"))
    forged = CommandApdu(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data[:-4] + bytes(4))
    assert tx(card, forged)[1] == 0x6988
    tries = DEFAULT_PROFILE.key(KeySlot.UK_IDENT)[1].tries
    assert card.state.key_tries[KeySlot.UK_IDENT] == tries - 1
    cardops.external_authenticate(reader, crypto, KeySlot.UK_IDENT, DEFAULT_PROFILE)
    assert KeySlot.UK_IDENT not in card.state.key_tries


def test_third_generation_card_answers_the_same_sequence_after_the_read_key() -> None:
    """Generation 3 (AES profile): the same SELECT / READ RECORD by identifier forms; EF06
    opens only after EXTERNAL AUTHENTICATE with the read key (DOMAIN.md)."""
    from cardspec.profile import social_security_profile

    prof = social_security_profile(generation=3)
    issued = personalised_card(profile=prof)
    card = issued.card
    card.power_on()
    tx(card, SELECT_SSSE)
    assert tx(card, "00A4020002EF05") == (b"", 0x9000)
    assert tx(card, "00B2030006") == (b"\x03\x043.00", 0x9000)  # spec version by identifier
    assert tx(card, "00A4020002EF06") == (b"", 0x9000)
    assert tx(card, "00B2080014")[1] == 0x6982  # holder data needs the terminal's key
    cardops.external_authenticate(issued.reader, issued.crypto, KeySlot.EAK, prof)
    assert tx(card, "00B2080014") == (b"\x08\x12" + SSN.encode(), 0x9000)
