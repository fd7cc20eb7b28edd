"""An EMV oracle for the AES and SM4 cards, independent of the project's code: pycryptodome's
AES and CMAC (``Cryptodome``, not OpenSSL through pyca/cryptography) and gmssl's pure-Python
SM4, with padding, CBC and the EMV constructions written here from the texts (EMV 4.3 Book 2
A1.2-A1.4 and 9.2-9.3, ISO/IEC 9797-1, ISO/IEC 10116, ISO 9564-1 format 2). What each
computation follows: the docstring of tests/cardspec/test_cardspec_emv_algorithms.py."""

from __future__ import annotations

from Cryptodome.Cipher import AES as CryptodomeAES
from Cryptodome.Hash import CMAC as CryptodomeCMAC
from gmssl.sm4 import SM4_ENCRYPT, CryptSM4

from cardspec.keyscheme import Algorithm


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def sm4_block(key: bytes, block: bytes) -> bytes:
    c = CryptSM4()
    c.set_key(key, SM4_ENCRYPT)
    return bytes(c.one_round(c.sk, list(block)))


def aes_block(key: bytes, block: bytes) -> bytes:
    return bytes(CryptodomeAES.new(key, CryptodomeAES.MODE_ECB).encrypt(block))


def block(alg: Algorithm, key: bytes, data: bytes) -> bytes:
    return aes_block(key, data) if alg is Algorithm.AES else sm4_block(key, data)


def pad2(data: bytes) -> bytes:
    """ISO/IEC 9797-1 padding method 2 to 16-byte blocks."""
    data += b"\x80"
    return data + bytes(-len(data) % 16)


def cbc(alg: Algorithm, key: bytes, data: bytes) -> bytes:
    """ISO/IEC 10116 CBC, zero IV."""
    out, chain = b"", bytes(16)
    for i in range(0, len(data), 16):
        chain = block(alg, key, xor(data[i : i + 16], chain))
        out += chain
    return out


def oracle_icc_mk(alg: Algorithm, imk: bytes, pan: str, psn: str) -> bytes:
    if alg is Algorithm.AES:  # EMV Book 2 A1.4.3 option C
        return aes_block(imk, bytes.fromhex((pan + psn).rjust(32, "0")))
    y = bytes.fromhex((pan + psn)[-16:].rjust(16, "0"))  # option A Y, PBOC one-block form
    return sm4_block(imk, y + bytes(b ^ 0xFF for b in y))


def oracle_mac(alg: Algorithm, key: bytes, message: bytes) -> bytes:
    if alg is Algorithm.AES:
        return bytes(CryptodomeCMAC.new(key, msg=message, ciphermod=CryptodomeAES).digest())
    return cbc(alg, key, pad2(message))[-16:]


def oracle_arqc(alg: Algorithm, mk_ac: bytes, atc: bytes, data: bytes) -> bytes:
    sk = block(alg, mk_ac, atc + bytes(14))
    return oracle_mac(alg, sk, data)[:8]


def oracle_script_mac(
    alg: Algorithm, mk_smi: bytes, header: bytes, atc: bytes, ac: bytes, data: bytes
) -> bytes:
    sk = block(alg, mk_smi, ac + bytes(8))
    return oracle_mac(alg, sk, header + bytes([len(data) + 4]) + atc + ac + data)[:4]


def oracle_pin(alg: Algorithm, mk_smc: bytes, ac: bytes, pin: str) -> bytes:
    sk = block(alg, mk_smc, ac + bytes(8))
    pin_block = bytes.fromhex(f"2{len(pin):X}{pin}".ljust(16, "F"))  # ISO 9564 format 2
    return cbc(alg, sk, pad2(pin_block))
