"""The PBOC 3.0 / EMV debit application as a bank terminal and the bank's host use it, every
cryptogram and MAC checked with the independent oracle pyemv (key derivation option A,
common session keys, ARQC / TC / AAC, issuer script MAC and PIN encipherment) and every
response parsed with pyemv's TLV decoder."""

from __future__ import annotations

from datetime import date

import pytest
from cardspec_helpers import INITIAL_PIN, PAN, PSN, masters, personalised_card
from hypothesis import given
from hypothesis import strategies as st
from pyemv import ac as emv_ac
from pyemv import kd, sm
from pyemv import tlv as emv_tlv

from cardspec import emv, ids
from cardspec.apdu import CommandApdu
from cardspec.emulator import Card
from cardspec.keyscheme import KeySlot
from cardspec.profile import AID_PBOC_DEBIT

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

# terminal data: PDOL (EC indicator, amount, currency CNY) and CDOL1 in profile order
AMOUNT = "000000012345"
PDOL_DATA = bytes.fromhex("00" + AMOUNT + "0156")
CDOL1_DATA = bytes.fromhex(
    AMOUNT
    + "000000000000"
    + "0156"
    + "0000000000"
    + "0156"
    + "261206"
    + "00"
    + "1A2B3C4D"
    + "103000"
) + "城市医院".encode("gbk").ljust(20, b"\x00")
ICC_MK = {
    slot: kd.derive_icc_mk_a(masters()[slot], PAN, PSN)
    for slot in (KeySlot.FIN_AC, KeySlot.FIN_SMI, KeySlot.FIN_SMC)
}


def tx(card: Card, command: str | CommandApdu) -> tuple[bytes, int]:
    raw = command.to_bytes() if isinstance(command, CommandApdu) else bytes.fromhex(command)
    out = card.process(raw)
    return out[:-2], int.from_bytes(out[-2:], "big")


def ok(card: Card, command: str | CommandApdu) -> dict:  # type: ignore[type-arg]
    data, status = tx(card, command)
    assert status == 0x9000, f"{status:04X}"
    return emv_tlv.decode(data) if data else {}


@pytest.fixture
def card() -> Card:
    c = personalised_card().card
    c.power_on()
    return c


def select_app(card: Card) -> dict:  # type: ignore[type-arg]
    return ok(card, CommandApdu(0x00, 0xA4, 0x04, 0x00, AID_PBOC_DEBIT, le=256))


def gpo(card: Card) -> dict:  # type: ignore[type-arg]
    """Format 1: AIP and AFL in template 80."""
    resp = ok(card, CommandApdu(0x80, 0xA8, 0, 0, b"\x83" + bytes([len(PDOL_DATA)]) + PDOL_DATA,
                                le=256))["80"]  # fmt: skip
    return {"82": resp[:2], "94": resp[2:]}


def gen_ac(card: Card, p1: int, data: bytes) -> dict:  # type: ignore[type-arg]
    """Format 1: CID, ATC, AC, IAD in template 80."""
    resp = ok(card, CommandApdu(0x80, 0xAE, p1, 0, data, le=256))["80"]
    return {"9F27": resp[:1], "9F36": resp[1:3], "9F26": resp[3:11], "9F10": resp[11:]}


def first_ac(card: Card, p1: int = 0x80) -> dict:  # type: ignore[type-arg]
    return gen_ac(card, p1, CDOL1_DATA)


def check_ac(resp: dict, data: bytes, aip: bytes) -> None:  # type: ignore[type-arg]
    """The bank host's check: pyemv derives the session key and recomputes the cryptogram."""
    atc = resp["9F36"]
    sk = kd.derive_common_sk(ICC_MK[KeySlot.FIN_AC], atc + bytes(6))
    cvr = resp["9F10"][3:]
    assert resp["9F10"][:3] == b"\x06\x01\x01" and len(cvr) == 4
    assert resp["9F26"] == emv_ac.generate_ac(sk, data + aip + atc + cvr, emv_ac.PaddingType.EMV)


def script(resp: dict, cla: int, ins: int, p2: int, data: bytes = b"") -> CommandApdu:  # type: ignore[type-arg]
    """The bank host's issuer script command, MAC'd by pyemv."""
    sk_smi = kd.derive_common_sk(ICC_MK[KeySlot.FIN_SMI], resp["9F26"])
    header = bytes([cla, ins, 0, p2, len(data) + 4])
    mac = sm.generate_command_mac(sk_smi, header + resp["9F36"] + resp["9F26"] + data, 4)
    return CommandApdu(cla, ins, 0, p2, data + mac)


def test_card_keys_are_emv_option_a_of_the_bank_master_keys(card: Card) -> None:
    for slot, icc_mk in ICC_MK.items():
        assert card.state.keys[slot] == icc_mk  # both with odd parity


def test_terminal_flow_ppse_pse_gpo_records_arqc_tc(card: Card) -> None:
    # PPSE (contactless directory) and PSE (contact directory) both list the application
    ppse = ok(card, "00A404000E325041592E5359532E444446303100")["6F"]
    entry = ppse["A5"]["BF0C"]["61"]
    assert entry["4F"] == AID_PBOC_DEBIT and entry["87"] == b"\x01"
    pse = ok(card, "00A404000E315041592E5359532E444446303100")["6F"]
    sfi = pse["A5"]["88"][0]
    directory = ok(card, f"00B201{sfi << 3 | 4:02X}00")
    assert directory["70"]["61"]["4F"] == AID_PBOC_DEBIT
    # the application: FCI with PDOL, GPO with AIP and AFL
    fci = select_app(card)["6F"]
    assert fci["84"] == AID_PBOC_DEBIT and fci["A5"]["9F38"] == bytes.fromhex("9F7A019F02065F2A02")
    opts = gpo(card)
    aip, afl = opts["82"], opts["94"]
    records: dict[str, bytes] = {}
    for i in range(0, len(afl), 4):
        sfi, first, last = afl[i] >> 3, afl[i + 1], afl[i + 2]
        for n in range(first, last + 1):
            records.update(ok(card, CommandApdu(0, 0xB2, n, sfi << 3 | 4, le=256))["70"])
    assert records["5A"].hex().upper().rstrip("F") == PAN
    assert records["57"].hex().upper().startswith(f"{PAN}D3403220")
    assert records["5F24"] == bytes.fromhex("340331") and records["5F34"] == bytes.fromhex(PSN)
    for tag in ("8C", "8D", "8E", "9F0D", "9F0E", "9F0F"):
        assert records[tag]
    assert emv.dol_length(records["8C"]) == len(CDOL1_DATA)
    # first GENERATE AC: the terminal asks a TC, the online-only card answers an ARQC
    arqc = first_ac(card, 0x40)
    assert arqc["9F27"] == b"\x80" and int.from_bytes(arqc["9F36"], "big") == card.state.atc
    check_ac(arqc, CDOL1_DATA, aip)
    # second GENERATE AC after the host approved (ARC "00"): a TC
    cdol2 = b"00" + CDOL1_DATA
    assert emv.dol_length(records["8D"]) == len(cdol2)
    tc = gen_ac(card, 0x40, cdol2)
    assert tc["9F27"] == b"\x40" and tc["9F36"] == arqc["9F36"]
    check_ac(tc, cdol2, aip)
    assert tx(card, CommandApdu(0x80, 0xAE, 0x40, 0, cdol2))[1] == 0x6985  # transaction over
    # the ATC counts transactions and survives the power cycle
    atc = card.state.atc
    card.power_on()
    select_app(card)
    gpo(card)
    assert ok(card, "80CA9F3600")["9F36"] == (atc + 1).to_bytes(2, "big")
    assert ok(card, "80CA9F1300")["9F13"] == atc.to_bytes(2, "big")  # the last online one


def test_refused_emv_forms(card: Card) -> None:
    assert tx(card, "80A8000002830000")[1] == 0x6D00  # no EMV application selected
    select_app(card)
    assert tx(card, CommandApdu(0x80, 0xAE, 0x80, 0, CDOL1_DATA))[1] == 0x6985  # before GPO
    assert tx(card, "80A8000002830000")[1] == 0x6700  # PDOL data of the wrong length
    assert tx(card, "80A80000020000")[1] == 0x6A80  # not template 83
    gpo(card)
    assert tx(card, CommandApdu(0x80, 0xA8, 0, 0, b"\x83\x09" + PDOL_DATA))[1] == 0x6985
    assert tx(card, CommandApdu(0x80, 0xAE, 0x90, 0, CDOL1_DATA))[1] == 0x6A86  # CDA asked
    assert tx(card, CommandApdu(0x80, 0xAE, 0x80, 0, CDOL1_DATA[:-1]))[1] == 0x6700
    assert tx(card, CommandApdu(0x00, 0xAE, 0x80, 0, CDOL1_DATA))[1] == 0x6E00
    first_ac(card)
    assert tx(card, CommandApdu(0x80, 0xAE, 0x80, 0, b"00" + CDOL1_DATA))[1] == 0x6985  # ARQC
    aac = gen_ac(card, 0x00, b"05" + CDOL1_DATA)  # declined
    assert aac["9F27"] == b"\x00"


def test_issuer_script_pin_change_and_unblock(card: Card) -> None:
    select_app(card)
    gpo(card)
    arqc = first_ac(card)
    # PIN change without the current PIN (84 24 00 02): format 2 block enciphered under SK-SMC
    sk_smc = kd.derive_common_sk(ICC_MK[KeySlot.FIN_SMC], arqc["9F26"])
    new_block = sm.format_iso9564_2_pin_block("654321")
    enc = sm.encrypt_command_data(sk_smc, new_block, sm.EncryptionType.EMV)
    # a wrong MAC is refused and counts on the script key
    bad = script(arqc, 0x84, 0x24, 0x02, enc)
    bad = CommandApdu(bad.cla, bad.ins, bad.p1, bad.p2, bad.data[:-1] + bytes([bad.data[-1] ^ 1]))
    assert tx(card, bad)[1] == 0x6988
    assert card.state.key_tries[KeySlot.FIN_SMI] == 4
    assert tx(card, CommandApdu(0x04, 0x24, 0, 0x02, enc))[1] == 0x6988  # no valid MAC
    # sent plain it is a CHANGE REFERENCE DATA of a PIN 02 the card does not have
    assert tx(card, CommandApdu(0x00, 0x24, 0, 0x02, enc))[1] == 0x6A88
    assert ok(card, script(arqc, 0x84, 0x24, 0x02, enc)) == {}
    assert KeySlot.FIN_SMI not in card.state.key_tries  # a good MAC resets the count
    assert ok(card, CommandApdu(0x00, 0x20, 0x00, 0x80, new_block)) == {}
    # block the PIN by wrong tries, unblock it by script (84 24 00 00)
    wrong = sm.format_iso9564_2_pin_block(INITIAL_PIN)
    statuses = [tx(card, CommandApdu(0x00, 0x20, 0x00, 0x80, wrong))[1] for _ in range(3)]
    assert statuses == [0x63C2, 0x63C1, 0x6983]
    assert ok(card, script(arqc, 0x84, 0x24, 0x00)) == {}
    assert ok(card, CommandApdu(0x00, 0x20, 0x00, 0x80, new_block)) == {}


def test_issuer_script_application_block_and_unblock(card: Card) -> None:
    select_app(card)
    gpo(card)
    arqc = first_ac(card)
    assert ok(card, script(arqc, 0x84, 0x1E, 0x00)) == {}
    # blocked: SELECT answers the FCI with 6283, the card declines (AAC) whatever is asked
    fci, status = tx(card, CommandApdu(0x00, 0xA4, 0x04, 0x00, AID_PBOC_DEBIT, le=256))
    assert status == 0x6283 and fci[0] == 0x6F
    # sent without Le (T=0): 61xx, and the warning comes with the FCI from GET RESPONSE
    assert tx(card, CommandApdu(0x00, 0xA4, 0x04, 0x00, AID_PBOC_DEBIT))[1] >> 8 == 0x61
    assert tx(card, "00C0000000") == (fci, 0x6283)
    opts = gpo(card)
    aac = first_ac(card, 0x80)
    assert aac["9F27"] == b"\x00" and aac["9F10"][4:6] == b"\x80\x01"  # CVR: AAC, blocked
    check_ac(aac, CDOL1_DATA, opts["82"])
    # the issuer unblocks it in that transaction (session keys of the AAC)
    assert ok(card, script(aac, 0x84, 0x18, 0x00)) == {}
    assert tx(card, CommandApdu(0x00, 0xA4, 0x04, 0x0C, AID_PBOC_DEBIT))[1] == 0x9000
    gpo(card)
    assert first_ac(card)["9F27"] == b"\x80"


def test_script_needs_a_cryptogram_of_this_selection(card: Card) -> None:
    select_app(card)
    gpo(card)
    arqc = first_ac(card)
    select_app(card)  # a new selection: the old cryptogram's session keys are gone
    assert tx(card, script(arqc, 0x84, 0x1E, 0x00))[1] == 0x6985


def test_luhn_check() -> None:
    # ISO/IEC 7812-1 annex B example and its neighbours
    assert ids.luhn_ok("79927398713")
    assert not any(ids.luhn_ok(f"7992739871{d}") for d in "012456789")
    assert not ids.luhn_ok("7992739871X") and not ids.luhn_ok("")
    pan = "621700001234567890"
    check = next(d for d in "0123456789" if ids.luhn_ok(pan + d))
    assert sum(ids.luhn_ok(pan + d) for d in "0123456789") == 1 and check.isdigit()


def test_track2_equivalent() -> None:
    from datetime import date

    track2 = emv.track2_equivalent("6217000012345678907", date(2034, 3, 31))
    assert track2 == "6217000012345678907D3403220F"  # 27 nibbles padded to whole bytes
    with pytest.raises(ValueError):
        emv.track2_equivalent("12345", date(2034, 3, 31))


def test_financial_record_track2_and_older_cards() -> None:
    from datetime import date

    from cardspec import tlv
    from cardspec.errors import EncodingError
    from cardspec.profile import FinancialData, decode_financial, encode_financial

    fin = FinancialData(PAN, date(2034, 3, 31), PSN, "ZHANG SAN")
    record = encode_financial(fin)[0]
    assert tlv.find(record, 0x57) == bytes.fromhex(emv.track2_equivalent(PAN, fin.expiry))
    assert decode_financial([record]) == fin
    # a card personalised before tag 57 existed still reads
    children = tlv.decode_one(record).children()
    older = tlv.encode(0x70, b"".join(t.to_bytes() for t in children if t.tag != 0x57))
    assert decode_financial([older]) == fin
    # a track 2 that contradicts the PAN or expiry is refused
    other = emv.track2_equivalent(PAN, date(2035, 3, 31))
    forged = tlv.encode(0x70, b"".join(
        tlv.encode(0x57, bytes.fromhex(other)) if t.tag == 0x57 else t.to_bytes()
        for t in children
    ))  # fmt: skip
    with pytest.raises(EncodingError):
        decode_financial([forged])


@given(
    pan=st.from_regex(r"[0-9]{12,19}", fullmatch=True),
    expiry=st.dates(),
    service=st.from_regex(r"[0-9]{3}", fullmatch=True),
)
def test_track2_equivalent_is_pan_d_yymm_service_code(pan: str, expiry: date, service: str) -> None:
    """The expiry as YYMM by arithmetic is ``strftime("%y%m")``'s, for every date."""
    text = f"{pan}D{expiry.strftime('%y%m')}{service}"
    assert emv.track2_equivalent(pan, expiry, service) == (text + "F" * (len(text) % 2)).upper()
