"""The EMV / PBOC debit application's computations, shared by the card and the bank's side.

Reference definitions (EMV 4.3 Book 2, Book 3; JR/T 0025 follows them for PBOC 3.0 debit), per
algorithm of the card profile (``keyscheme.Algorithm``). 3DES is checked against the
independent oracle ``pyemv``, AES against pycryptodome's CMAC and AES and the published
vectors, SM4 against gmssl's SM4 (tests/cardspec/test_cardspec_emv.py,
tests/cardspec/test_cardspec_emv_algorithms.py).

3DES (double length; the EMV / PBOC 2.0 debit application):

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

AES-128 (EMV 4.3 Book 2 with the 16-byte block cipher, ``n = 16``, ``k = 128``):

* ICC master keys: option C (Book 2 A1.4.3): ``Y`` = PAN || PSN zero-filled on the left to 32
  digits (16 bytes), ``MK = AES(IMK)[Y]`` (``keyscheme.emv_factor(PAN, PSN, AES)``).
* Session keys: A1.3.1 with ``k = 8n``: ``SK = AES(MK)[R]``, no F0/0F bytes; ``R`` = ``ATC ||
  00 * 14`` (cryptogram), ``AC || 00 * 8`` (secure messaging) - ``R`` is ``n`` bytes.
* MACs (A1.2.2, the 16-byte block cipher): AES-CMAC (NIST SP 800-38B, ISO/IEC 9797-1 MAC
  algorithm 5) over the data as they are (CMAC pads internally), the leftmost 8 bytes for the
  cryptogram and 4 for the script MAC (same message as 3DES).
* PIN encipherment: the format 2 PIN block padded with method 2 to one 16-byte block, AES-CBC
  with a zero IV under SK-SMC (Book 2 9.3 with ``n = 16``).

SM4 (PBOC 3.0 national-algorithm debit application, JR/T 0025.17). CHOICE, the text of
JR/T 0025.17 not being public (none of the searched public sources gives its SM4 formulas):

* ICC master keys: the PBOC shape of option A in one SM4 block: ``MK = SM4(IMK)[Y || not Y]``
  with the 8-byte option A ``Y`` - the diversification every other SM4 card key of the profile
  uses (``keyscheme.diversify``), so the HSM derives it by the same one mechanism.
* Session keys: as AES (A1.3.1 with ``n = 16``, ``k = 128``): ``SK = SM4(MK)[R]``, the same
  ``R``.
* MACs: ISO/IEC 9797-1 MAC algorithm 1 with SM4 (CBC-MAC, zero IV, padding method 2), the MAC
  of the national secure messaging (GM/T and the profile's own, ``keyscheme.sm_mac_block``), the
  leftmost 8 bytes for the cryptogram, 4 for the script MAC.
* PIN encipherment: as AES with SM4 (SM4-CBC, zero IV, one block).
"""

from __future__ import annotations

from datetime import date
from enum import IntEnum

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from cardspec import keyscheme
from cardspec.keyscheme import Algorithm

DES3 = Algorithm.DES3
MAC_LENGTH = 4
"""Issuer script MAC length (CHOICE, see module docstring)."""
AC_LENGTH = 8
"""Application cryptogram length (Book 3, tag 9F26)."""


# --- keys and cryptograms ----------------------------------------------------------------------


def common_session_key(icc_mk: bytes, r: bytes, alg: Algorithm = DES3) -> bytes:
    """EMV 4.3 Book 2 A1.3.1 common session key derivation: 3DES with an 8-byte diversifier
    ``r`` (two blocks, F0 / 0F), AES and SM4 with a 16-byte ``r`` (``SK = ALG(MK)[R]``)."""
    if len(icc_mk) != 16 or len(r) != alg.block_size:
        raise ValueError(f"a 16-byte ICC master key and a {alg.block_size}-byte diversifier")
    if alg is not DES3:
        return keyscheme.cbc_mac(icc_mk, r, alg)  # one block: ALG(MK)[R]
    left = r[:2] + b"\xf0" + r[3:]
    right = r[:2] + b"\x0f" + r[3:]
    sk = keyscheme.cbc_mac(icc_mk, left, DES3) + keyscheme.cbc_mac(icc_mk, right, DES3)
    return keyscheme.odd_parity(sk)  # DES ignores the parity bits; set them as A1.3.1 does


def ac_diversifier(atc: int, alg: Algorithm = DES3) -> bytes:
    """``R`` of the cryptogram session key: ``ATC || 00 * (n - 2)``."""
    return atc.to_bytes(2, "big") + bytes(alg.block_size - 2)


def sm_diversifier(ac: bytes, alg: Algorithm = DES3) -> bytes:
    """``R`` of the secure messaging session keys: ``AC || 00 * (n - 8)``."""
    if len(ac) != AC_LENGTH:
        raise ValueError("the application cryptogram is 8 bytes")
    return ac + bytes(alg.block_size - AC_LENGTH)


def ac_session_key(icc_mk_ac: bytes, atc: int, alg: Algorithm = DES3) -> bytes:
    return common_session_key(icc_mk_ac, ac_diversifier(atc, alg), alg)


def sm_session_key(icc_mk_sm: bytes, ac: bytes, alg: Algorithm = DES3) -> bytes:
    """SK-SMI / SK-SMC of a transaction: diversified by its application cryptogram."""
    return common_session_key(icc_mk_sm, sm_diversifier(ac, alg), alg)


def mac(sk: bytes, message: bytes, alg: Algorithm = DES3) -> bytes:
    """The application's full MAC of ``message`` (see module docstring): 3DES MAC algorithm 3,
    AES-CMAC, SM4 MAC algorithm 1; padding method 2 except CMAC."""
    if alg is DES3:
        return keyscheme.retail_mac(sk, keyscheme.pad_method2(message, 8))
    if alg is Algorithm.AES:
        c = CMAC(algorithms.AES(sk))
        c.update(message)
        return c.finalize()
    return keyscheme.cbc_mac(sk, keyscheme.pad_method2(message, alg.block_size), alg)


def application_cryptogram(sk_ac: bytes, data: bytes, alg: Algorithm = DES3) -> bytes:
    """ARQC / TC / AAC: the leftmost 8 bytes of :func:`mac`."""
    return mac(sk_ac, data, alg)[:AC_LENGTH]


def script_message(header: bytes, atc: int, ac: bytes, data: bytes) -> bytes:
    """What the issuer script MAC covers: ``CLA INS P1 P2 Lc || ATC || AC || data`` with the
    Lc sent (data plus MAC)."""
    lc = len(data) + MAC_LENGTH
    return header[:4] + bytes([lc]) + atc.to_bytes(2, "big") + ac + data


def script_mac(
    sk_smi: bytes, header: bytes, atc: int, ac: bytes, data: bytes, alg: Algorithm = DES3
) -> bytes:
    """Issuer script command MAC: ``header`` is CLA INS P1 P2 (CLA with the SM bits) and the
    Lc sent (data plus MAC) is computed here."""
    return mac(sk_smi, script_message(header, atc, ac, data), alg)[:MAC_LENGTH]


def encrypt_pin_block(sk_smc: bytes, pin_block: bytes, alg: Algorithm = DES3) -> bytes:
    return keyscheme.cbc_encrypt(sk_smc, keyscheme.pad_method2(pin_block, alg.block_size), alg)


def decrypt_pin_block(sk_smc: bytes, ciphertext: bytes, alg: Algorithm = DES3) -> bytes:
    """Inverse of :func:`encrypt_pin_block`; ValueError on a malformed block."""
    return keyscheme.unpad_method2(keyscheme.cbc_decrypt(sk_smc, ciphertext, alg))


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
    text = f"{pan}D{expiry.year % 100:02d}{expiry.month:02d}{service_code}"  # YYMM: %y%m
    return (text + "F" * (len(text) % 2)).upper()


class CryptogramType(IntEnum):
    """The cryptogram information data's type bits (tag 9F27, Book 3 Table 14)."""

    AAC = 0x00
    TC = 0x40
    ARQC = 0x80
