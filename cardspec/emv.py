"""The EMV / PBOC debit application's computations, shared by the card and the bank's side.

Reference definitions (EMV 4.3 Book 2, Book 3; JR/T 0025 follows them for PBOC 3.0 debit), each
checked against the independent oracle ``pyemv`` in tests/cardspec/test_cardspec_emv.py:

* ICC master keys (MK-AC, MK-SMI, MK-SMC) are the card's ``FIN_*`` keys: derived from the bank's
  issuer master keys by EMV option A (Book 2 A1.4.1) with ``keyscheme.emv_factor(PAN, PSN)`` and
  loaded at personalisation like every card key (``keyscheme.derive_card_key``).
* Session keys: the common session key derivation (Book 2 A1.3.1): ``R`` = ``ATC || 00 * 6``
  for the application cryptogram, ``R`` = the application cryptogram of the transaction for
  secure messaging (issuer scripts); ``SK = DES3(MK)[R0 R1 F0 R3..R7] || DES3(MK)[R0 R1 0F
  R3..R7]``.
* Application cryptogram (ARQC / TC / AAC, Book 2 8.1.2): ISO/IEC 9797-1 MAC algorithm 3 over
  the data padded with method 2, 8 bytes.
* Issuer script MAC (Book 2 9.2.3): MAC algorithm 3 under SK-SMI over
  ``CLA INS P1 P2 Lc || ATC || AC || data`` padded with method 2; CHOICE: the first 4 bytes
  (Book 2 allows 4 to 8).
* Issuer script confidentiality (Book 2 9.3): the plaintext PIN block (ISO 9564 format 2)
  padded with method 2, triple-DES CBC with a zero IV under SK-SMC.

CHOICE (the application has no SM4 / AES profile here): these computations are double-length
3DES, as the EMV / PBOC 2.0 debit applications; a card whose profile uses another algorithm has
no usable GENERATE AC (6985).
"""

from __future__ import annotations

from datetime import date
from enum import IntEnum

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from cardspec import keyscheme
from cardspec.keyscheme import Algorithm

DES3 = Algorithm.DES3
MAC_LENGTH = 4
"""Issuer script MAC length (CHOICE, see module docstring)."""


# --- keys and cryptograms ----------------------------------------------------------------------


def common_session_key(icc_mk: bytes, r: bytes) -> bytes:
    """EMV 4.3 Book 2 A1.3.1 common session key derivation (8-byte diversifier ``r``)."""
    if len(icc_mk) != 16 or len(r) != 8:
        raise ValueError("a double-length ICC master key and an 8-byte diversifier")
    left = r[:2] + b"\xf0" + r[3:]
    right = r[:2] + b"\x0f" + r[3:]
    sk = keyscheme.cbc_mac(icc_mk, left, DES3) + keyscheme.cbc_mac(icc_mk, right, DES3)
    return keyscheme.odd_parity(sk)  # DES ignores the parity bits; set them as A1.3.1 does


def ac_session_key(icc_mk_ac: bytes, atc: int) -> bytes:
    return common_session_key(icc_mk_ac, atc.to_bytes(2, "big") + bytes(6))


def sm_session_key(icc_mk_sm: bytes, ac: bytes) -> bytes:
    """SK-SMI / SK-SMC of a transaction: diversified by its application cryptogram."""
    return common_session_key(icc_mk_sm, ac)


def application_cryptogram(sk_ac: bytes, data: bytes) -> bytes:
    """ARQC / TC / AAC: MAC algorithm 3, padding method 2, 8 bytes."""
    return keyscheme.retail_mac(sk_ac, keyscheme.pad_method2(data, 8))


def script_mac(sk_smi: bytes, header: bytes, atc: int, ac: bytes, data: bytes) -> bytes:
    """Issuer script command MAC: ``header`` is CLA INS P1 P2 (CLA with the SM bits) and the
    Lc sent (data plus MAC) is computed here."""
    lc = len(data) + MAC_LENGTH
    message = header[:4] + bytes([lc]) + atc.to_bytes(2, "big") + ac + data
    return keyscheme.retail_mac(sk_smi, keyscheme.pad_method2(message, 8))[:MAC_LENGTH]


def _tdes_cbc(key: bytes) -> Cipher:
    return Cipher(TripleDES(key + key[:8]), modes.CBC(bytes(8)))


def encrypt_pin_block(sk_smc: bytes, pin_block: bytes) -> bytes:
    enc = _tdes_cbc(sk_smc).encryptor()
    return enc.update(keyscheme.pad_method2(pin_block, 8)) + enc.finalize()


def decrypt_pin_block(sk_smc: bytes, ciphertext: bytes) -> bytes:
    """Inverse of :func:`encrypt_pin_block`; ValueError on a malformed block."""
    if not ciphertext or len(ciphertext) % 8:
        raise ValueError("ciphertext is not a whole number of blocks")
    dec = _tdes_cbc(sk_smc).decryptor()
    return keyscheme.unpad_method2(dec.update(ciphertext) + dec.finalize())


# --- data objects ------------------------------------------------------------------------------


def parse_dol(dol: bytes) -> list[tuple[int, int]]:
    """A data object list (Book 3 5.4): ``[(tag, length), ...]``."""
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < len(dol):
        tag = dol[pos]
        pos += 1
        if tag & 0x1F == 0x1F:
            while True:
                if pos >= len(dol):
                    raise ValueError("truncated tag in DOL")
                tag = (tag << 8) | dol[pos]
                pos += 1
                if not dol[pos - 1] & 0x80:
                    break
        if pos >= len(dol):
            raise ValueError("DOL entry without a length")
        out.append((tag, dol[pos]))
        pos += 1
    return out


def dol_length(dol: bytes) -> int:
    return sum(n for _, n in parse_dol(dol))


SERVICE_CODE = "220"
"""CHOICE: service code of the track 2 equivalent data: 2 international interchange, IC card;
2 authorisation by the issuer (online); 0 no restriction, PIN required (ISO/IEC 7813)."""


def track2_equivalent(pan: str, expiry: date, service_code: str = SERVICE_CODE) -> str:
    """Tag 57 (Book 3 Annex A) as hex: PAN ``D`` YYMM service code, discretionary data
    (CHOICE: none), padded with ``F`` to whole bytes."""
    if not pan.isdigit() or not 12 <= len(pan) <= 19:
        raise ValueError("PAN must be 12 to 19 digits")
    text = f"{pan}D{expiry:%y%m}{service_code}"
    return (text + "F" * (len(text) % 2)).upper()


class CryptogramType(IntEnum):
    """The cryptogram information data's type bits (tag 9F27, Book 3 Table 14)."""

    AAC = 0x00
    TC = 0x40
    ARQC = 0x80
