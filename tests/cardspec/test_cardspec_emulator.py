"""The reference card, command by command: right data, right status words."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cardspec_helpers import BANK_PIN, INITIAL_PIN, SERIAL, personalised_card, software_crypto
from cardspec_helpers import blank as make_blank
from smartcard.ATR import ATR

from cardspec import cardops, keyscheme, sm
from cardspec.apdu import CommandApdu
from cardspec.emulator import Card, LifeCycle, blank_card
from cardspec.errors import PinError
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import (
    DEFAULT_PROFILE,
    SOCIAL_SECURITY_DF_NAME,
    MedicalLogEntry,
    encode_log_entry,
)
from cardspec.reader import InProcessReader

SELECT_SSSE = "00A4040C0F" + SOCIAL_SECURITY_DF_NAME.hex()


def tx(card: Card, command: str | bytes | CommandApdu) -> tuple[bytes, int]:
    if isinstance(command, str):
        raw = bytes.fromhex(command.replace(" ", ""))
    elif isinstance(command, CommandApdu):
        raw = command.to_bytes()
    else:
        raw = command
    resp = card.process(raw)
    return resp[:-2], int.from_bytes(resp[-2:], "big")


@pytest.fixture
def blank() -> Card:
    card = make_blank()
    card.power_on()
    return card


@pytest.fixture(scope="module")
def shared_perso():  # type: ignore[no-untyped-def]
    return personalised_card()


@pytest.fixture
def issued():  # type: ignore[no-untyped-def]
    return personalised_card()


def test_atr_is_valid_iso7816_3(blank: Card) -> None:
    raw = blank.atr()
    atr = ATR(list(raw))
    assert atr.isT0Supported() and atr.isT1Supported()
    assert atr.getChecksum() is not None
    check = 0
    for b in raw[1:]:
        check ^= b
    assert check == 0  # TCK makes the XOR of T0..TCK zero (ISO/IEC 7816-3 8.2.5)
    assert b"YKT SSC2" in bytes(atr.getHistoricalBytes())


@pytest.mark.parametrize(
    ("command", "status"),
    [
        ("00FF0000", 0x6D00),  # unknown INS
        ("A0A40000", 0x6E00),  # CLA not supported
        ("01A4000C023F00", 0x6881),  # logical channel
        ("90A4000C023F00", 0x6884),  # b5 of a proprietary class: no chaining there
        ("00A4", 0x6700),  # malformed APDU
        ("00A4040C05A000000000", 0x6A82),  # unknown AID
        ("00A4050C023F00", 0x6A86),  # bad P1
        ("00A4000C03112233", 0x6700),  # FID of 3 bytes
        ("0084000005", 0x6700),  # GET CHALLENGE Le 5
        ("0084000100", 0x6A86),
        ("0082007F08" + "00" * 8, 0x6984),  # EXTERNAL AUTHENTICATE without challenge
        ("00B2010500", 0x6A86),  # READ RECORD with P2 not "record number in P1"
        ("00B2000C00", 0x6A86),  # record 0
        ("00B2010400", 0x6986),  # no current EF
        ("00B2014C00", 0x6A82),  # SFI 9 does not exist in the MF
        ("0020000003123456", 0x6A88),  # no PIN in the MF
        ("84D400021C" + "00" * 28, 0x6982),  # WRITE KEY without a KMC channel
        ("80D4000218" + "00" * 24, 0x6987),  # WRITE KEY without MAC
    ],
)
def test_wrong_commands(blank: Card, command: str, status: int) -> None:
    assert tx(blank, command)[1] == status


def test_select_variants(blank: Card) -> None:
    fci, status = tx(blank, "00A40400" + "0F" + SOCIAL_SECURITY_DF_NAME.hex() + "00")
    assert status == 0x9000 and fci[0] == 0x6F
    assert blank.current_df == "MF/SSSE"
    fcp, status = tx(blank, "00A4000002EF0500")
    assert status == 0x9000 and fcp[0] == 0x62 and blank.current_ef == "MF/SSSE/EF05"
    assert tx(blank, "00A4000C023F00") == (b"", 0x9000) and blank.current_df == "MF"
    assert tx(blank, "00A4080C04DDF1DF03")[1] == 0x9000 and blank.current_df == "MF/SSSE/MED"
    assert tx(blank, "00A4000C02DF02")[1] == 0x9000  # sibling by FID
    assert blank.current_df == "MF/SSSE/PEN"
    assert tx(blank, "00A4040C06D15600000503")[1] == 0x9000
    assert tx(blank, "00A4090C02EF15")[1] == 0x9000 and blank.current_ef == "MF/SSSE/MED/EF15"


def test_blank_card_state(blank: Card) -> None:
    reader = InProcessReader(blank)
    reader.connect()
    assert cardops.life_cycle(reader) is LifeCycle.PERSONALISATION
    assert cardops.chip_serial(reader) == SERIAL
    assert tx(blank, SELECT_SSSE)[1] == 0x9000
    assert tx(blank, "00B2012C00")[1] == 0x6A83  # EF05 record 1 not written yet
    assert tx(blank, "80F0800F")[1] == 0x6987  # lock needs MAC
    # KMC channel but keys not loaded: lock refused.
    crypto = software_crypto()
    channel = cardops.external_authenticate(reader, crypto, KeySlot.KMC, DEFAULT_PROFILE)
    # an extended MAC'd command cannot carry this MAC scheme: no precise diagnosis
    assert tx(blank, "84DC012C000104" + "00" * 260)[1] == 0x6F00
    channel = cardops.external_authenticate(reader, crypto, KeySlot.KMC, DEFAULT_PROFILE)
    lock = channel.wrap(CommandApdu(0x80, 0xF0, 0x80, 0x0F))
    assert tx(blank, lock)[1] == 0x6985
    # The KMC may not be overwritten.
    write_kmc = channel.wrap(CommandApdu(0x80, 0xD4, 0, 0x7F, crypto.wrapped_card_key(KeySlot.IRK)))
    assert tx(blank, write_kmc)[1] == 0x6985


def test_write_key_refuses_a_payload_that_does_not_unwrap(blank: Card) -> None:
    """WRITE KEY = RFC 5649 under the chip's KLK: another KLK, an altered or a short payload
    fail the unwrap's integrity check (6A80) and load nothing; the right one loads."""
    reader = InProcessReader(blank)
    reader.connect()
    crypto = software_crypto()
    irk = crypto.card_key(KeySlot.IRK)
    tx(blank, SELECT_SSSE)
    channel = cardops.external_authenticate(reader, crypto, KeySlot.KMC, DEFAULT_PROFILE)
    irk_id = DEFAULT_PROFILE.key(KeySlot.IRK)[1].key_id
    good = crypto.wrapped_card_key(KeySlot.IRK)
    other_klk = software_crypto(seed="other").key_loading_key()
    altered = good[:-1] + bytes([good[-1] ^ 1])
    for payload in (keyscheme.wrap_card_key(other_klk, irk, Algorithm.DES3), altered, good[:16]):
        cmd = channel.wrap(CommandApdu(0x80, 0xD4, 0, irk_id, payload))
        assert tx(blank, cmd)[1] == 0x6A80
        assert KeySlot.IRK not in blank.state.keys
    assert tx(blank, channel.wrap(CommandApdu(0x80, 0xD4, 0, irk_id, good)))[1] == 0x9000
    assert blank.state.keys[KeySlot.IRK] == keyscheme.odd_parity(irk)


def test_wrong_external_authenticate(blank: Card) -> None:
    tx(blank, SELECT_SSSE)
    tx(blank, "0084000008")
    assert tx(blank, "0082007F08" + "00" * 8)[1] == 0x63C4  # the KMC has 4 tries left
    # challenge consumed: a retry without GET CHALLENGE fails with 6984
    assert tx(blank, "0082007F08" + "00" * 8)[1] == 0x6984
    tx(blank, "0084000008")
    assert tx(blank, "0082002208" + "00" * 8)[1] == 0x6A88  # unknown key id
    assert tx(blank, "0082007F04" + "00" * 4)[1] == 0x6700


def test_read_after_personalisation(shared_perso) -> None:  # type: ignore[no-untyped-def]
    card: Card = shared_perso.card
    card.power_on()
    assert tx(card, SELECT_SSSE)[1] == 0x9000
    record, status = tx(card, "00B2072C00")
    assert status == 0x9000 and record == b"\x07\x09X00000019"
    assert tx(card, "00B2082C00")[1] == 0x6A83
    # Le shorter than the record: 6Cxx tells the right Le
    assert card.process(bytes.fromhex("00B2072C05")) == bytes([0x6C, 11])
    # medical data needs the PIN
    assert tx(card, "00A4040C06D15600000503")[1] == 0x9000
    assert tx(card, "00B201AC00")[1] == 0x6982


def test_pin_blocking_and_unblock(issued) -> None:  # type: ignore[no-untyped-def]
    card: Card = issued.card
    reader = issued.reader
    assert tx(card, SELECT_SSSE)[1] == 0x9000
    assert tx(card, "00200000")[1] == 0x63C3  # no data: tries left
    assert tx(card, "0020000003999999")[1] == 0x63C2
    assert tx(card, "0020000003999999")[1] == 0x63C1
    assert tx(card, "0020000003999999")[1] == 0x6983
    assert tx(card, "0020000003" + INITIAL_PIN)[1] == 0x6983  # blocked even with the right PIN
    with pytest.raises(PinError) as err:
        cardops.verify_pin(reader, INITIAL_PIN)
    assert err.value.tries_left == 0 and err.value.sw == 0x6983
    # unblock needs a fresh challenge and a MAC under PUK
    assert tx(card, "8424000004AABBCCDD")[1] == 0x6984
    tx(card, "0084000008")
    assert tx(card, "8424000004AABBCCDD")[1] == 0x6988
    cardops.unblock_pin(reader, issued.crypto)
    cardops.verify_pin(reader, INITIAL_PIN)
    # reload sets a new PIN which the holder must change
    cardops.unblock_pin(reader, issued.crypto, new_pin="654321")
    cardops.verify_pin(reader, "654321")
    assert cardops.pin_status(reader)["ss"].must_change


def test_change_pin_refuses_initial(issued) -> None:  # type: ignore[no-untyped-def]
    reader = issued.reader
    assert cardops.pin_status(reader)["ss"].must_change
    cardops.change_pin(reader, INITIAL_PIN, "135790")
    assert not cardops.pin_status(reader)["ss"].must_change
    with pytest.raises(PinError) as err:
        cardops.change_pin(reader, "000000", "111111")
    assert err.value.tries_left == 2
    with pytest.raises(Exception) as err2:
        cardops.change_pin(reader, "135790", INITIAL_PIN)
    assert getattr(err2.value, "sw", None) == 0x6A80
    cardops.verify_pin(reader, "135790")
    # ISO 00 24 with the bank PIN (ISO 9564 format 2 blocks)
    cardops.change_pin(reader, BANK_PIN, "246800", pin_name="bank")
    cardops.verify_pin(reader, "246800", pin_name="bank")
    # medical data readable once the PIN is verified
    cardops.verify_pin(reader, "135790")
    records = cardops.read_records(reader, "EF15")
    assert len(records) == 5


def test_locked_card_refuses_issuer_commands(issued) -> None:  # type: ignore[no-untyped-def]
    card: Card = issued.card
    reader = issued.reader
    assert cardops.is_locked(reader)
    assert KeySlot.KMC not in card.state.keys
    assert card.state.klk is None  # the key-loading key is erased with the KMC
    tx(card, SELECT_SSSE)
    tx(card, "0084000008")
    assert tx(card, "0082007F08" + "00" * 8)[1] == 0x6A88  # KMC erased
    assert tx(card, "84D400021C" + "00" * 28)[1] == 0x6985
    assert tx(card, "84F0800F04" + "00" * 4)[1] == 0x6985
    assert tx(card, "84D4010004" + "00" * 4)[1] == 0x6985


def test_update_after_lock_needs_uk_ident_and_mac(issued) -> None:  # type: ignore[no-untyped-def]
    card: Card = issued.card
    reader = issued.reader
    crypto = issued.crypto
    tx(card, SELECT_SSSE)
    record = b"\x07\x09B7K334774"
    assert tx(card, CommandApdu(0, 0xDC, 7, 0x2C, record))[1] == 0x6982
    # authenticated with the read key EAK: not the file's write key
    ch = cardops.external_authenticate(reader, crypto, KeySlot.EAK, DEFAULT_PROFILE)
    assert tx(card, ch.wrap(CommandApdu(0, 0xDC, 7, 0x2C, record)))[1] == 0x6982
    ch = cardops.external_authenticate(reader, crypto, KeySlot.UK_IDENT, DEFAULT_PROFILE)
    assert tx(card, CommandApdu(0, 0xDC, 7, 0x2C, record))[1] == 0x6987  # no MAC
    good = ch.wrap(CommandApdu(0, 0xDC, 7, 0x2C, record))
    tampered = good.data[:-1] + bytes([good.data[-1] ^ 1])
    assert tx(card, CommandApdu(good.cla, good.ins, good.p1, good.p2, tampered))[1] == 0x6988
    # the MAC failure closed the channel: authenticate again, then write
    ch = cardops.external_authenticate(reader, crypto, KeySlot.UK_IDENT, DEFAULT_PROFILE)
    cmd = ch.wrap(CommandApdu(0, 0xDC, 7, 0x2C, record))
    assert tx(card, cmd)[1] == 0x9000
    assert tx(card, cmd)[1] == 0x6988  # replay breaks the MAC chain
    assert tx(card, "00B2072C00")[0] == record
    # record too long for EF05 record size
    ch = cardops.external_authenticate(reader, crypto, KeySlot.UK_IDENT, DEFAULT_PROFILE)
    assert tx(card, ch.wrap(CommandApdu(0, 0xDC, 7, 0x2C, bytes(40))))[1] == 0x6700


def test_medical_update_and_cyclic_log(issued) -> None:  # type: ignore[no-untyped-def]
    reader = issued.reader
    crypto = issued.crypto
    count = cardops.update_file(
        reader, crypto, "EF15",
        {"insurance_type": "390", "insured_region": "330182", "status": "2",
         "personnel_category": "21", "start_date": issued.data.medical.start_date},
    )  # fmt: skip
    assert count == 3 + 5  # select, challenge, external auth, 5 records
    for i in range(12):
        entry = MedicalLogEntry(f"202403011015{i:02d}", 100 * i, "H33018200001", "11")
        cardops.append_record(reader, crypto, "EF18", encode_log_entry(entry))
    cardops.verify_pin(reader, INITIAL_PIN)
    log = cardops.read_records(reader, "EF18")
    assert len(log) == 10  # cyclic: ring of 10
    assert log[0][:7].hex() == "20240301101511"  # newest first
    med = cardops.read_records(reader, "EF15", select=False)
    assert med[2] == b"\x22\x012"


def test_internal_authenticate_scope_and_length(shared_perso) -> None:  # type: ignore[no-untyped-def]
    card: Card = shared_perso.card
    card.power_on()
    assert tx(card, "0088000010" + "00" * 16)[1] == 0x6A88  # IRK not in scope at MF
    tx(card, SELECT_SSSE)
    assert tx(card, "0088000008" + "00" * 8)[1] == 0x6700
    assert tx(card, "0088000510" + "00" * 16)[1] == 0x6A88
    factor, random = os.urandom(8), os.urandom(8)
    # as hospital readers send it: no Le, the card answers 61 08, then GET RESPONSE
    assert card.process(bytes.fromhex("0088000010" + (factor + random).hex())) == b"\x61\x08"
    assert tx(card, "00C0000010")[1] == 0x6C08  # Le too long: the card says 8
    answer, status = tx(card, "00C0000008")
    assert status == 0x9000
    assert tx(card, "00C0000008")[1] == 0x6985  # nothing pending any more
    cardops.check_internal_authenticate(shared_perso.crypto, factor, random, answer)


def test_persistence_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "cards" / "c1.json"
    issued = personalised_card(path)
    assert path.exists() and oct(path.stat().st_mode & 0o777) == "0o600"
    assert INITIAL_PIN not in json.dumps(json.loads(path.read_text())["pins"])
    # one wrong PIN, then a "process restart"
    with pytest.raises(PinError):
        cardops.verify_pin(issued.reader, "999999")
    reloaded = Card.load(path)
    reader = InProcessReader(reloaded)
    reader.connect()
    assert cardops.pin_status(reader)["ss"].tries_left == 2
    assert cardops.is_locked(reader)
    public = cardops.read_card_public(reader, connect=False)
    assert public.card_number == "X00000019"
    assert reloaded.state.keys == issued.card.state.keys
    # explicit save to another place
    reloaded.save(tmp_path / "copy.json")
    assert Card.load(tmp_path / "copy.json").state.records == reloaded.state.records


def test_session_state_is_volatile(issued) -> None:  # type: ignore[no-untyped-def]
    card: Card = issued.card
    cardops.verify_pin(issued.reader, INITIAL_PIN)
    assert "ss" in card.verified
    card.power_off()
    card.power_on()
    assert card.verified == {} and card.current_df == "MF"
    # leaving the application drops its security state
    cardops.verify_pin(issued.reader, INITIAL_PIN)
    assert tx(card, "00A4040C08A000000333010101")[1] == 0x9000
    assert "ss" not in card.verified


@pytest.mark.parametrize("alg", [Algorithm.AES, Algorithm.SM4])
def test_aes_card_and_sm_with_aes(alg: Algorithm) -> None:
    from cardspec.profile import social_security_profile

    prof = social_security_profile(generation=3, algorithm=alg)
    issued = personalised_card(profile=prof)
    public = cardops.read_card_public(issued.reader, prof, connect=False)
    assert public.holder is None  # generation 3: EF06 needs the read key
    public = cardops.read_card_public(issued.reader, prof, crypto=issued.crypto, connect=False)
    assert public.holder is not None and public.holder.ssn == issued.data.holder.ssn
    factor, random = os.urandom(8), os.urandom(8)
    answer = cardops.internal_authenticate(issued.reader, factor, random)
    assert len(answer) == 16
    key = issued.crypto.card_key(KeySlot.IRK)
    assert answer == keyscheme.internal_auth_response(key, factor, random, alg)
    assert sm.is_sm(0x84) and not sm.is_sm(0x80)


def test_transparent_file_and_get_response_in_parts() -> None:
    from cardspec import profile as P

    photo_index = P.DedicatedFile(
        name="PUB", fid=0xDF00, df_name=bytes.fromhex("D15600000500"), label="public data",
        files=(P.ElementaryFile("EF0A", 0xEF0A, 0x0A, P.FileStructure.TRANSPARENT,
                                P.RecordLayout.FIXED, (P.Element(1, "blob", 300, P.Fmt.B),),
                                P.FREE, P.by_key(KeySlot.DMK)),),
    )  # fmt: skip
    prof = P.social_security_profile(financial=False).with_application(photo_index, "SSSE")
    crypto = software_crypto()
    from dataclasses import replace

    from cardspec_helpers import perso_data

    from cardspec import perso

    card = make_blank(profile=prof)
    reader = InProcessReader(card)
    perso.personalise(reader, crypto, replace(perso_data(), financial=None), prof)
    reader.connect()
    cardops.select_df(reader, prof, "PUB")
    assert tx(card, "00D68A0003010203")[1] == 0x6982  # write needs DMK + MAC
    channel = cardops.external_authenticate(reader, crypto, KeySlot.DMK, prof)
    blob = bytes(range(200))
    assert tx(card, channel.wrap(CommandApdu(0, 0xD6, 0x8A, 0x00, blob)))[1] == 0x9000
    assert tx(card, channel.wrap(CommandApdu(0, 0xD6, 0x01, 0x2C, b"\xff" * 10)))[1] == 0x6B00
    data, status = tx(card, "00B0000010")  # current EF, offset 0, 16 bytes
    assert status == 0x9000 and data == blob[:16]
    data, status = tx(card, "00B08A6400")  # by SFI 0A, offset 100
    assert status == 0x9000 and data[:100] == blob[100:]
    assert tx(card, "00B2010C00")[1] == 0x6A82  # no record file with SFI 1 here
    assert tx(card, "00B2015400")[1] == 0x6981  # READ RECORD on a transparent EF
    # GET RESPONSE in parts: no Le -> 61xx; a short Le leaves the rest pending (61xx again)
    assert card.process(bytes.fromhex("00B08A00")) == b"\x61\x00"
    part, status = tx(card, "00C0000080")
    assert part == bytes(range(128)) and status == 0x6180
    rest, status = tx(card, "00C0000080")
    assert status == 0x9000 and rest[:72] == blob[128:]


def test_card_is_a_card_handler(blank: Card) -> None:
    from cardspec.reader import CardHandler

    assert isinstance(blank, CardHandler)
    with pytest.raises(ValueError):
        blank_card(b"\x01", bytes(16), klk=bytes(16))
    with pytest.raises(ValueError):
        blank_card(SERIAL, bytes(8), klk=bytes(16))
    with pytest.raises(ValueError, match="KLK"):
        blank_card(SERIAL, bytes(16), klk=bytes(8))


def _big_file_card() -> tuple[Card, InProcessReader, object]:
    """A personalised card with a 1,000-byte transparent EF (written with the DMK + MAC)."""
    from dataclasses import replace

    from cardspec_helpers import perso_data

    from cardspec import perso
    from cardspec import profile as P

    big = P.DedicatedFile(
        name="PUB", fid=0xDF00, df_name=bytes.fromhex("D15600000500"), label="public data",
        files=(P.ElementaryFile("EF0A", 0xEF0A, 0x0A, P.FileStructure.TRANSPARENT,
                                P.RecordLayout.FIXED, (P.Element(1, "blob", 1000, P.Fmt.B),),
                                P.FREE, P.FREE),),
    )  # fmt: skip
    prof = P.social_security_profile(financial=False).with_application(big, "SSSE")
    card = make_blank(profile=prof)
    reader = InProcessReader(card)
    perso.personalise(reader, software_crypto(), replace(perso_data(), financial=None), prof)
    reader.connect()
    cardops.select_df(reader, prof, "PUB")
    return card, reader, prof


def test_command_chaining_assembles_one_command() -> None:
    """ISO/IEC 7816-4 5.1.1.1: parts with CLA b5 are buffered (9000); the last one runs the
    command with all the data; a chain broken by another command is refused (6883)."""
    from cardspec import apdu

    card, _, _ = _big_file_card()
    blob = os.urandom(700)
    parts = apdu.chain(CommandApdu(0x00, 0xD6, 0x8A, 0x00, blob), max_data=200)
    assert [p.chained for p in parts] == [True, True, True, False]
    for part in parts[:-1]:
        assert tx(card, part)[1] == 0x9000
        assert card.state.binaries.get("MF/SSSE/PUB/EF0A", b"")[:700] != blob  # not yet
    assert tx(card, parts[-1])[1] == 0x9000
    assert card.state.binaries["MF/SSSE/PUB/EF0A"][:700] == blob
    # read back with one extended READ BINARY (Le = 0000: up to 65536)
    data, status = tx(card, CommandApdu(0x00, 0xB0, 0x8A, 0x00, le=65536))
    assert status == 0x9000 and data[:700] == blob and len(data) == 1000

    # another command in the middle of a chain: refused, the chain dropped
    first, *_ = apdu.chain(CommandApdu(0x00, 0xD6, 0x8A, 0x00, bytes(300)), max_data=100)
    assert tx(card, first)[1] == 0x9000
    assert tx(card, "0084000008")[1] == 0x6883
    assert tx(card, CommandApdu(0x00, 0xD6, 0x8A, 0x00, b"\x01"))[1] == 0x9000  # fresh
    # a part for another file (P1 differs) breaks the chain too
    assert tx(card, first)[1] == 0x9000
    assert tx(card, CommandApdu(0x10, 0xD6, 0x8A, 0x01, b"x"))[1] == 0x6883
    # more than the card's command buffer
    from cardspec.emulator.card import MAX_CHAINED_DATA

    too_long = apdu.chain(CommandApdu(0x00, 0xD6, 0x8A, 0x00, bytes(MAX_CHAINED_DATA + 1)))
    statuses = [tx(card, p)[1] for p in too_long]  # 16 x 255 bytes, then 17 more
    assert statuses == [0x9000] * 16 + [0x6700]
    # power loss forgets a chain
    assert tx(card, first)[1] == 0x9000
    card.power_off()
    card.power_on()
    assert tx(card, CommandApdu(0x00, 0xA4, 0x04, 0x0C, bytes.fromhex("D15600000500")))[1] == (
        0x9000
    )


def test_extended_length_update_in_one_apdu() -> None:
    card, _, _ = _big_file_card()
    blob = os.urandom(600)
    cmd = CommandApdu(0x00, 0xD6, 0x8A, 0x00, blob)
    assert cmd.is_extended and cmd.to_bytes()[4] == 0x00  # Lc on 3 bytes (00 02 58)
    assert tx(card, cmd)[1] == 0x9000
    data, status = tx(card, CommandApdu(0x00, 0xB0, 0x8A, 0x00, le=600, extended=True))
    assert status == 0x9000 and data == blob
