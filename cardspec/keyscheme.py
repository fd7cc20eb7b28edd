"""The card's key scheme: diversification and cryptograms, in software.

Design notes: ``docs/design/cardspec.md`` (section ``cardspec.keyscheme``).
"""

from __future__ import annotations

import hmac
from enum import StrEnum
from typing import Any

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from cardspec.errors import CardSpecError


class Algorithm(StrEnum):
    """Algorithm family of a card application (FCI tag 9F0C, ``86 01 xx``)."""

    DES3 = "3des"
    """Double-length 3DES (FCI 86 01 01), second-generation cards."""
    AES = "aes"
    """AES-128 (CHOICE: stands in for SM4 where the HSM lacks SM4; FCI 86 01 02, no public
    source gives that value)."""
    SM4 = "sm4"
    """SM4 (GB/T 32907, FCI 86 01 03), third-generation cards: needs an HSM that offers SM4
    (``hsm.vendors``)."""

    @property
    def block_size(self) -> int:
        return 8 if self is Algorithm.DES3 else 16

    @property
    def key_length(self) -> int:
        return 16


class KeySlot(StrEnum):
    """The per-card keys of the profile. Each is diversified from an issuer master key of the
    same name (held in the HSM) by the card factor, or for ``FIN_*`` by the EMV factor."""

    KMC = "kmc"
    """Personalisation (transport) key of the blank chip: opens the personalisation channel."""
    DMK = "dmk"
    """Master/control key of the social security application (application maintenance)."""
    IRK = "irk"
    """Internal authentication: the card proves it is genuine."""
    EAK = "eak"
    """External authentication / read key: a terminal proves itself to the card."""
    UK_IDENT = "uk_ident"
    """Update key of the card-identification and holder files (EF05, EF06)."""
    UK_MEDICAL = "uk_medical"
    """Update key of the medical insurance files."""
    UK_PENSION = "uk_pension"
    """Update key of the pension / social insurance files."""
    PUK = "puk"
    """PIN unblock and reload."""
    FIN_AC = "fin_ac"
    """Financial application: application cryptogram master key (EMV MK-AC)."""
    FIN_SMI = "fin_smi"
    """Financial application: secure-messaging integrity master key (EMV MK-SMI)."""
    FIN_SMC = "fin_smc"
    """Financial application: secure-messaging confidentiality master key (EMV MK-SMC)."""

    @property
    def financial(self) -> bool:
        return self.value.startswith("fin_")


class UnsupportedAlgorithm(CardSpecError, ValueError):
    """The algorithm is declared by the profile but not available in this implementation."""


def _k24(key: bytes) -> bytes:
    """Double-length 3DES key as the 24-byte K1 K2 K1 form."""
    return key + key[:8] if len(key) == 16 else key


def _block_cipher(key: bytes, alg: Algorithm) -> Any:
    if alg is Algorithm.DES3:
        return TripleDES(_k24(key))
    if alg is Algorithm.AES:
        return algorithms.AES(key)
    if alg is Algorithm.SM4:
        return algorithms.SM4(key)
    raise UnsupportedAlgorithm(f"{alg.value} is not available in software here")


def _ecb(key: bytes, alg: Algorithm, data: bytes, decrypt: bool = False) -> bytes:
    cipher = Cipher(_block_cipher(key, alg), modes.ECB())
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    return ctx.update(data) + ctx.finalize()


def _cbc(key: bytes, alg: Algorithm, data: bytes, iv: bytes) -> bytes:
    cipher = Cipher(_block_cipher(key, alg), modes.CBC(iv))
    ctx = cipher.encryptor()
    return ctx.update(data) + ctx.finalize()


_XOR_FF = bytes(b ^ 0xFF for b in range(256))


def _xor_ff(data: bytes) -> bytes:
    return data.translate(_XOR_FF)


def diversification_data(factor: bytes, alg: Algorithm) -> bytes:
    """The data block(s) encrypted under the parent key to derive a child key (16 bytes): an
    8-byte factor ``F`` gives ``F || not F``; a 16-byte factor (the EMV option C factor of an
    AES card's ``FIN_*`` keys, :func:`emv_factor`) is one whole block of a 16-byte block
    cipher, encrypted as it is."""
    if len(factor) == 16 and alg.block_size == 16:
        return factor
    if len(factor) != 8:
        raise ValueError(f"diversification factor must be 8 bytes, got {len(factor)}")
    return factor + _xor_ff(factor)


def diversify(parent: bytes, factor: bytes, alg: Algorithm) -> bytes:
    """One diversification step: child key from parent key and an 8-byte factor."""
    if len(parent) != 16:
        raise ValueError("keys are 16 bytes")
    return _ecb(parent, alg, diversification_data(factor, alg))


def derive_card_key(
    master: bytes, factors: list[bytes] | tuple[bytes, ...], alg: Algorithm
) -> bytes:
    """Apply one diversification step per factor (city: [card]; province: [region, card])."""
    key = master
    for factor in factors:
        key = diversify(key, factor, alg)
    return key


def card_factor(card_identification_code: str) -> bytes:
    """The 8-byte card factor: the chip-unique last 16 hex characters of the code."""
    if len(card_identification_code) != 32:
        raise ValueError("card identification code must be 32 hex characters")
    return bytes.fromhex(card_identification_code[16:])


def emv_factor(pan: str, psn: str = "00", alg: Algorithm = Algorithm.DES3) -> bytes:
    """The factor of the ``FIN_*`` keys (the ICC master keys of the EMV application).

    3DES and SM4: EMV 4.3 Book 2 A1.4.1 option A: Y = rightmost 16 digits of PAN || PSN
    (zero-filled on the left if shorter), as 8 BCD bytes; MK = ALG(IMK)[Y || not Y] (for SM4,
    CHOICE: the PBOC shape of option A in one 16-byte block, :mod:`cardspec.emv`).
    AES: Book 2 A1.4.3 option C: Y = PAN || PSN zero-filled on the left to 32 digits, as 16
    BCD bytes; MK = AES(IMK)[Y] (one block, :func:`diversification_data`)."""
    if not (pan + psn).isdigit():
        raise ValueError("PAN and PSN must be digits")
    if alg is Algorithm.AES:
        return bytes.fromhex((pan + psn)[-32:].rjust(32, "0"))
    return bytes.fromhex((pan + psn)[-16:].rjust(16, "0"))


def region_factor(region_code: str) -> bytes:
    """CHOICE: the 8-byte region factor for province-level (two-step) diversification:
    the 6-digit region code BCD-packed (3 bytes) and padded with FF (cn padding)."""
    if len(region_code) != 6 or not region_code.isdigit():
        raise ValueError("region code must be 6 digits")
    return bytes.fromhex(region_code) + b"\xff" * 5


def internal_auth_response(card_irk: bytes, factor: bytes, random: bytes, alg: Algorithm) -> bytes:
    """What a genuine card answers to INTERNAL AUTHENTICATE(factor || random)."""
    if len(random) != 8:
        raise ValueError("random must be 8 bytes")
    session = diversify(card_irk, factor, alg)
    if alg is Algorithm.DES3:
        return _ecb(session, alg, random)
    return _ecb(session, alg, random + factor)


def external_auth_cryptogram(card_key: bytes, challenge: bytes, alg: Algorithm) -> bytes:
    """What a terminal sends in EXTERNAL AUTHENTICATE for the card's 8-byte challenge."""
    if len(challenge) != 8:
        raise ValueError("challenge must be 8 bytes")
    if alg is Algorithm.DES3:
        return _ecb(card_key, alg, challenge)
    return _ecb(card_key, alg, challenge + b"\x80" + b"\x00" * 7)


def pad_method2(data: bytes, block: int) -> bytes:
    """ISO/IEC 9797-1 padding method 2: 80 then 00 up to a multiple of the block size."""
    padded = data + b"\x80"
    return padded + b"\x00" * (-len(padded) % block)


def unpad_method2(data: bytes) -> bytes:
    stripped = data.rstrip(b"\x00")
    if not stripped.endswith(b"\x80"):
        raise ValueError("bad ISO/IEC 9797-1 method 2 padding")
    return stripped[:-1]


def cbc_mac(key: bytes, padded: bytes, alg: Algorithm, iv: bytes = b"") -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 1 on data already padded to whole blocks: the last block
    of the CBC encryption under ``key`` (3DES: the full double-length key on every block)."""
    block = alg.block_size
    if not padded or len(padded) % block:
        raise ValueError("MAC input must be whole blocks (pad it first)")
    return _cbc(key, alg, padded, (iv + b"\x00" * block)[:block])[-block:]


def retail_mac(key: bytes, padded: bytes) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 3 (the "retail MAC", ANSI X9.19) with a double-length DES
    key on data padded to whole 8-byte blocks: single-DES CBC under K1, then the last block
    decrypted under K2 and encrypted under K1. Not the profile's secure-messaging MAC (CHOICE:
    algorithm 1, :func:`sm_mac_block`); kept for terminals and PSAMs that compute this one
    (ICAO 9303 secure messaging uses it), checked against the published vectors."""
    if len(key) != 16:
        raise ValueError("MAC algorithm 3 takes a double-length key")
    k1, k2 = key[:8], key[8:]
    last = cbc_mac(k1 * 2, padded, Algorithm.DES3)  # K1 || K1: single DES
    return _ecb(k1 * 2, Algorithm.DES3, _ecb(k2 * 2, Algorithm.DES3, last, decrypt=True))


def cbc_encrypt(key: bytes, data: bytes, alg: Algorithm) -> bytes:
    """CBC encryption with a zero IV of whole blocks (EMV issuer script confidentiality)."""
    if not data or len(data) % alg.block_size:
        raise ValueError("CBC input must be whole blocks (pad it first)")
    return _cbc(key, alg, data, bytes(alg.block_size))


def cbc_decrypt(key: bytes, data: bytes, alg: Algorithm) -> bytes:
    """Inverse of :func:`cbc_encrypt`."""
    if not data or len(data) % alg.block_size:
        raise ValueError("ciphertext is not a whole number of blocks")
    cipher = Cipher(_block_cipher(key, alg), modes.CBC(bytes(alg.block_size)))
    ctx = cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


def sm_mac_block(key: bytes, data: bytes, iv: bytes, alg: Algorithm) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 1, padding method 2: the full last CBC block.

    ``iv`` is the card challenge (zero-extended to the block size) for the first command of a
    secure channel; CHOICE: within a channel opened by EXTERNAL AUTHENTICATE the next command's
    IV is the previous command's full MAC block (MAC chaining, as in GlobalPlatform SCP02), so a
    personalisation needs one GET CHALLENGE, not one per command.
    """
    return cbc_mac(key, pad_method2(data, alg.block_size), alg, iv)


def sm_mac(key: bytes, data: bytes, iv: bytes, alg: Algorithm, length: int = 4) -> bytes:
    """The MAC as sent in a command: the first ``length`` bytes of :func:`sm_mac_block`."""
    return sm_mac_block(key, data, iv, alg)[:length]


def encrypt_sensitive(key: bytes, plaintext: bytes, alg: Algorithm) -> bytes:
    """``ECB(K, LD || data || 80 00..)``: how keys and PINs travel to the card."""
    if len(plaintext) > 255:
        raise ValueError("sensitive data longer than 255 bytes")
    return _ecb(key, alg, pad_method2(bytes([len(plaintext)]) + plaintext, alg.block_size))


def decrypt_sensitive(key: bytes, ciphertext: bytes, alg: Algorithm) -> bytes:
    """Inverse of :func:`encrypt_sensitive`; raises ValueError on a malformed block."""
    if not ciphertext or len(ciphertext) % alg.block_size:
        raise ValueError("ciphertext is not a whole number of blocks")
    plain = _ecb(key, alg, ciphertext, decrypt=True)
    length = plain[0]
    body = plain[1 : 1 + length]
    if len(body) != length:
        raise ValueError("bad length byte in sensitive data")
    rest = plain[1 + length :]
    if not rest.startswith(b"\x80") or rest[1:].strip(b"\x00"):
        raise ValueError("bad padding in sensitive data")
    return body


def kcv_block(alg: Algorithm) -> bytes:
    """The block whose ECB encryption gives the KCV (see module docstring)."""
    if alg is Algorithm.AES:
        return b"\x01" * 16
    return bytes(alg.block_size)


def kcv(key: bytes, alg: Algorithm) -> bytes:
    """Key check value, 3 bytes (see module docstring)."""
    return _ecb(key, alg, kcv_block(alg))[:3]


# --- Key loading (WRITE KEY) ------------------------------------------------------------------
# CHOICE (LD/T 32.4 and 32.5, which define key loading, are not public): a card key travels to
# the card as the RFC 5649 AES key wrap with padding (NIST SP 800-38F KWP) of its 16-byte value
# under the card's own *key-loading key* KLK, an AES-128 key diversified from the issuer master
# ``ykt:klk:aes:v<n>`` by the card factor (same diversification as the card keys, AES) and
# loaded into the blank chip by the manufacturer together with the transport key KMC; the card
# erases both when personalisation ends. Reasons:
#
# * it is one standard PKCS#11 call on a derived key object in every HSM, SoftHSM2 included:
#   ``C_WrapKey(CKM_AES_KEY_WRAP_PAD, KLK, card key)``, so a card key never exists outside the
#   HSM in clear (3DES cards too: SoftHSM2 and many HSMs cannot wrap under a 3DES key, which is
#   why the KLK is AES even on 3DES cards, and why it is a key of its own rather than the KMC);
# * the wrap carries an integrity check (the RFC 5649 alternative IV): a payload wrapped under
#   another key or altered in transit is refused by the card (6A80), not loaded as garbage;
# * key separation: KMC authenticates the personalisation channel and MACs it, KLK only
#   transports keys.
#
# 3DES keys are wrapped with odd DES parity (HSMs normalise the parity of derived DES keys; DES
# ignores the parity bits, so the card computes the same cryptograms). PINs and other data
# still use :func:`encrypt_sensitive` under KMC.
#
# SM4 cards (CHOICE): the national HSMs have no AES key wrap (and a third-generation key set
# should not depend on AES), so the KLK of an SM4 card is an SM4 key, diversified from the
# master ``ykt:klk:sm4:v<n>``, and WRITE KEY carries ``SM4-ECB(KLK, key) || KCV(key)``
# (16 + 3 bytes): the vendor HSMs' ``C_WrapKey`` with SM4-ECB, and the key's check value
# (computed in the HSM on the key object) as the integrity check the card verifies after
# decrypting - the GlobalPlatform PUT KEY form (key data block, then its KCV). A payload
# encrypted under another KLK or altered decrypts to a key whose KCV does not match: 6A80.
#
# The same rule carries a blank chip's own KMC and KLK from the issuer's HSM to the chip's
# maker, under the maker's transport key instead of the KLK: an AES transport key for 3DES and
# AES cards, an SM4 one for SM4 cards (:func:`klk_algorithm`); ``wrap_card_key(transport, key,
# alg)`` with ``alg`` the algorithm of the key carried.

#: The key-loading key's algorithm for 3DES and AES cards (see above; SM4 cards:
#: :func:`klk_algorithm`).
KLK_ALGORITHM = Algorithm.AES
#: Length of a WRITE KEY payload: RFC 5649 of a 16-byte key (SM4 cards: :func:`wrapped_key_length`).
WRAPPED_KEY_LENGTH = 24
#: Length of the KCV appended to an SM4 WRITE KEY payload.
SM4_WRAP_KCV_LENGTH = 3


def klk_algorithm(alg: Algorithm) -> Algorithm:
    """The algorithm of the key-loading key of a card of ``alg`` (see "Key loading")."""
    return Algorithm.SM4 if alg is Algorithm.SM4 else KLK_ALGORITHM


def key_loading_scheme(alg: Algorithm) -> str:
    """The profile's ``key_loading`` name for cards of ``alg`` (see "Key loading")."""
    return "sm4-ecb-kcv-klk" if alg is Algorithm.SM4 else "aes-kwp-klk"


def wrapped_key_length(alg: Algorithm) -> int:
    """Length of the WRITE KEY payload of a card of ``alg``."""
    return 16 + SM4_WRAP_KCV_LENGTH if alg is Algorithm.SM4 else WRAPPED_KEY_LENGTH


def odd_parity(key: bytes) -> bytes:
    """Set the DES parity bit (least significant bit) of each byte so the byte has odd parity."""
    out = bytearray()
    for b in key:
        high = b & 0xFE
        out.append(high | ((bin(high).count("1") + 1) & 1))
    return bytes(out)


def derive_klk(
    master: bytes, factors: list[bytes] | tuple[bytes, ...], alg: Algorithm = Algorithm.DES3
) -> bytes:
    """The key-loading key of a card of ``alg``: diversification of the KLK master by the card
    factors, AES (SM4 for SM4 cards, :func:`klk_algorithm`)."""
    return derive_card_key(master, factors, klk_algorithm(alg))


def wrap_card_key(klk: bytes, key: bytes, alg: Algorithm) -> bytes:
    """Payload of WRITE KEY: RFC 5649 ``KWP(KLK, key)`` (3DES: key with odd parity), 24 bytes;
    SM4 cards: ``SM4-ECB(KLK, key) || KCV(key)``, 19 bytes (see "Key loading")."""
    if len(key) != 16 or len(klk) != 16:
        raise ValueError("card keys and the KLK are 16 bytes")
    if alg is Algorithm.SM4:
        return _ecb(klk, alg, key) + kcv(key, alg)
    value = odd_parity(key) if alg is Algorithm.DES3 else key
    return aes_key_wrap_with_padding(klk, value)


def unwrap_card_key(klk: bytes, wrapped: bytes, alg: Algorithm) -> bytes:
    """Card side of :func:`wrap_card_key`: the 16-byte key; raises ValueError if the payload
    does not unwrap under ``klk`` (integrity check of RFC 5649) or is not a 16-byte key."""
    if len(wrapped) != wrapped_key_length(alg):
        raise ValueError(f"a wrapped card key is {wrapped_key_length(alg)} bytes")
    if alg is Algorithm.SM4:
        key = _ecb(klk, alg, wrapped[:16], decrypt=True)
        if not hmac.compare_digest(kcv(key, alg), wrapped[16:]):
            raise ValueError("the key does not unwrap under the key-loading key (KCV)")
        return key
    try:
        key = aes_key_unwrap_with_padding(klk, wrapped)
    except InvalidUnwrap:
        raise ValueError("the key does not unwrap under the key-loading key") from None
    if len(key) != alg.key_length:
        raise ValueError("the unwrapped key has the wrong length")
    return key
