"""Independent oracles for the card's cryptography.

* EMV 4.3 Book 2 A1.4.1 option A, as implemented by ``pyemv.kd.derive_icc_mk_a``, must equal
  :func:`cardspec.keyscheme.diversify` when option A's Y equals the card factor (pyemv sets odd
  DES parity: compare with parity bits cleared, and by KCV which DES ignores parity for).
* MAC, encryption and cryptograms are recomputed here with ``cryptography`` directly and
  compared with what the terminal side (:mod:`cardspec.sm`) sends and the emulator accepts.
"""

from __future__ import annotations

import os

import pyemv.kd
import pytest
from cardspec_helpers import card_code, masters, rfc5649_unwrap, software_crypto
from cardspec_helpers import klk_master as masters_klk
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from cardspec import keyscheme, sm
from cardspec.apdu import CommandApdu
from cardspec.keyscheme import Algorithm, KeySlot, odd_parity


def _clear_parity(key: bytes) -> bytes:
    return bytes(b & 0xFE for b in key)


@given(st.binary(min_size=16, max_size=16), st.text("0123456789", min_size=16, max_size=16))
@settings(max_examples=50)
def test_diversification_equals_emv_option_a(master: bytes, digits: str) -> None:
    # Choose PAN and PSN so that Y = rightmost 16 digits of PAN || PSN = the card factor.
    pan, psn = "62" + digits[:14], digits[14:]
    factor = bytes.fromhex(digits)
    assert keyscheme.emv_factor(pan, psn) == factor
    ours = keyscheme.diversify(master, factor, Algorithm.DES3)
    theirs = pyemv.kd.derive_icc_mk_a(master, pan, psn)
    assert _clear_parity(ours) == _clear_parity(theirs)
    assert keyscheme.kcv(ours, Algorithm.DES3) == keyscheme.kcv(theirs, Algorithm.DES3)


def test_financial_keys_follow_emv_option_a() -> None:
    crypto = software_crypto()
    from cardspec_helpers import PAN, PSN

    for slot in (KeySlot.FIN_AC, KeySlot.FIN_SMI, KeySlot.FIN_SMC):
        expected = pyemv.kd.derive_icc_mk_a(masters()[slot], PAN, PSN)
        assert _clear_parity(crypto.card_key(slot)) == _clear_parity(expected)


def _3des(key: bytes, mode: modes.Mode) -> Cipher:  # type: ignore[type-arg]
    return Cipher(TripleDES(key + key[:8]), mode)


def _retail_like_full_mac(key: bytes, data: bytes, iv: bytes) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 1 (full 3DES CBC), padding method 2, written out."""
    padded = data + b"\x80" + b"\x00" * ((8 - (len(data) + 1) % 8) % 8)
    enc = _3des(key, modes.CBC(iv)).encryptor()
    return (enc.update(padded) + enc.finalize())[-8:]


def test_mac_chain_matches_independent_computation() -> None:
    crypto = software_crypto()
    key = crypto.card_key(KeySlot.UK_IDENT)
    challenge = os.urandom(8)
    channel = sm.TerminalChannel(crypto, KeySlot.UK_IDENT, challenge)
    first = channel.wrap(CommandApdu(0x00, 0xDC, 0x07, 0x2C, b"\x07\x09X00000019"))
    assert first.cla == 0x04
    # MAC input: CLA' INS P1 P2 Lc' || data, Lc' counting the 4 MAC bytes
    block1 = _retail_like_full_mac(key, bytes.fromhex("04DC072C0F") + b"\x07\x09X00000019",
                                   challenge)  # fmt: skip
    assert first.data[-4:] == block1[:4]
    second = channel.wrap(CommandApdu(0x00, 0xDC, 0x01, 0x2C, b"\x01\x02AB"))
    block2 = _retail_like_full_mac(key, bytes.fromhex("04DC012C08") + b"\x01\x02AB", block1)
    assert second.data[-4:] == block2[:4]  # chained: IV = previous full MAC block
    # the card side accepts exactly this chain
    body, blk = sm.unwrap_command(key, Algorithm.DES3, first.header, first.data, challenge)
    assert body == b"\x07\x09X00000019" and blk == block1
    with pytest.raises(Exception) as err:
        sm.unwrap_command(key, Algorithm.DES3, second.header, second.data, challenge)
    assert getattr(err.value, "sw", None) == 0x6988


def test_sensitive_encryption_and_cryptograms() -> None:
    crypto = software_crypto()
    irk = crypto.card_key(KeySlot.IRK)
    wrapped = crypto.wrapped_card_key(KeySlot.IRK)
    # key loading payload: RFC 5649 KWP under the card's KLK of the 16-byte key, DES odd
    # parity; unwrapped here by an implementation written from the RFC (not cryptography's)
    klk = crypto.key_loading_key()
    e = Cipher(algorithms.AES(masters_klk()), modes.ECB()).encryptor()
    factor = keyscheme.card_factor(card_code())
    assert klk == e.update(factor + bytes(b ^ 0xFF for b in factor)) + e.finalize()
    assert len(wrapped) == 24
    plain = rfc5649_unwrap(klk, wrapped)
    assert plain == odd_parity(irk)
    assert all(bin(b).count("1") % 2 == 1 for b in plain)
    assert bytes(b & 0xFE for b in plain) == bytes(b & 0xFE for b in irk)
    challenge = os.urandom(8)
    enc = _3des(crypto.card_key(KeySlot.EAK), modes.ECB()).encryptor()
    assert crypto.external_auth(KeySlot.EAK, challenge) == enc.update(challenge) + enc.finalize()
    # internal authentication: session key = diversify(IRK, factor), answer = 3DES(SK, random)
    factor, random = os.urandom(8), os.urandom(8)
    e = _3des(irk, modes.ECB()).encryptor()
    session = e.update(factor + bytes(b ^ 0xFF for b in factor)) + e.finalize()
    e2 = _3des(session, modes.ECB()).encryptor()
    assert crypto.internal_auth_response(factor, random) == e2.update(random) + e2.finalize()


def test_aes_mac_independent() -> None:
    crypto = software_crypto(algorithm=Algorithm.AES)
    key = crypto.card_key(KeySlot.UK_MEDICAL)
    challenge = os.urandom(8)
    cmd = sm.TerminalChannel(crypto, KeySlot.UK_MEDICAL, challenge).wrap(
        CommandApdu(0x00, 0xDC, 1, 0xAC, b"\x20\x03310")
    )
    data = bytes.fromhex("04DC01AC09") + b"\x20\x03310"
    padded = data + b"\x80" + b"\x00" * ((16 - (len(data) + 1) % 16) % 16)
    enc = Cipher(algorithms.AES(key), modes.CBC(challenge + bytes(8))).encryptor()
    assert cmd.data[-4:] == (enc.update(padded) + enc.finalize())[-16:][:4]
