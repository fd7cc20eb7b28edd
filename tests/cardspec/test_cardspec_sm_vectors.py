"""The national algorithms' published worked examples (``vectors/sm_national.json``, with their
sources) and the SM4 card's cryptograms recomputed from their definitions with
pyca/cryptography's SM4 primitives; SM2 through gmssl (pure Python), a second implementation
tested here on the GB/T 32918.2 example."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from gmssl import sm2
from hypothesis import given, settings
from hypothesis import strategies as st

from cardspec import keyscheme
from cardspec import sm2 as csm2
from cardspec.keyscheme import Algorithm

VECTORS = json.loads(
    (Path(__file__).resolve().parent / "vectors" / "sm_national.json").read_text("utf-8")
)
SM4 = Algorithm.SM4


def sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def sm4_ecb(key: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


@pytest.mark.parametrize("v", VECTORS["sm4"], ids=lambda v: str(v["iterations"]))
def test_sm4_gbt32907(v: dict[str, Any]) -> None:
    key, block = bytes.fromhex(v["key"]), bytes.fromhex(v["plaintext"])
    if v["iterations"] == 1:
        # the key scheme's own primitive: a one-block CBC-MAC with a zero IV is one encryption
        assert keyscheme.cbc_mac(key, block, SM4) == bytes.fromhex(v["ciphertext"])
    enc = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    for _ in range(v["iterations"]):
        block = enc.update(block)
    assert block == bytes.fromhex(v["ciphertext"])


@pytest.mark.parametrize("v", VECTORS["sm3"], ids=lambda v: v["document"][-9:])
def test_sm3_gbt32905(v: dict[str, Any]) -> None:
    assert sm3(v["message_ascii"].encode()) == bytes.fromhex(v["digest"])


def za(curve: dict[str, str], user_id: bytes, x: str, y: str) -> bytes:
    """GB/T 32918.2 5.5: Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA)."""
    fields = b"".join(bytes.fromhex(curve[k]) for k in ("a", "b", "xG", "yG"))
    return sm3((len(user_id) * 8).to_bytes(2, "big") + user_id + fields + bytes.fromhex(x + y))


def test_sm2_gbt32918_example_with_gmssl() -> None:
    """gmssl reproduces the standard's signature from its k (so it is fit to check ours)."""
    v = VECTORS["sm2_sign"][0]
    curve = v["curve"]
    z = za(curve, v["id_ascii"].encode(), v["xA"], v["yA"])
    assert z == bytes.fromhex(v["ZA"])
    e = sm3(z + v["message_ascii"].encode())
    assert e == bytes.fromhex(v["e"])
    table = {"n": curve["n"], "p": curve["p"], "g": curve["xG"] + curve["yG"],
             "a": curve["a"], "b": curve["b"]}  # fmt: skip
    signer = sm2.CryptSM2(v["private_key"], v["xA"] + v["yA"], ecc_table=table)
    assert signer.sign(e, v["k"]).upper() == v["r"] + v["s"]
    assert signer.verify(v["r"] + v["s"], e)
    assert not signer.verify(v["r"] + v["s"], bytes(32))


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8),
       st.binary(min_size=8, max_size=8))  # fmt: skip
def test_sm4_card_cryptograms_from_their_definitions(
    key: bytes, factor: bytes, random: bytes
) -> None:
    """INTERNAL/EXTERNAL AUTHENTICATE, MAC, KCV and key loading of an SM4 card, recomputed
    from the keyscheme's definitions with pyca/cryptography's SM4."""
    inv = bytes(b ^ 0xFF for b in factor)
    session = sm4_ecb(key, factor + inv)
    assert keyscheme.diversify(key, factor, SM4) == session
    assert keyscheme.internal_auth_response(key, factor, random, SM4) == sm4_ecb(
        session, random + factor
    )
    assert keyscheme.external_auth_cryptogram(key, random, SM4) == sm4_ecb(
        key, random + b"\x80" + bytes(7)
    )
    data = factor + random + b"\x01\x02"
    padded = data + b"\x80" + bytes(-(len(data) + 1) % 16)
    iv = random + bytes(8)
    cbc = Cipher(algorithms.SM4(key), modes.CBC(iv)).encryptor()
    assert (
        keyscheme.sm_mac_block(key, data, random, SM4)
        == (cbc.update(padded) + cbc.finalize())[-16:]
    )
    assert keyscheme.kcv(key, SM4) == sm4_ecb(key, bytes(16))[:3]
    klk = os.urandom(16)
    wrapped = keyscheme.wrap_card_key(klk, key, SM4)
    assert wrapped == sm4_ecb(klk, key) + sm4_ecb(key, bytes(16))[:3]
    assert keyscheme.unwrap_card_key(klk, wrapped, SM4) == key
    with pytest.raises(ValueError, match="does not unwrap"):
        keyscheme.unwrap_card_key(bytes(a ^ 1 for a in klk), wrapped, SM4)


def test_sm2_module_on_the_gbt32918_example_and_against_gmssl() -> None:
    """cardspec.sm2 (the chip's and the verifiers' SM2) gives the standard's key, Z_A and
    signature, and agrees with gmssl both ways on the recommended curve."""
    v = VECTORS["sm2_sign"][0]
    cv = v["curve"]
    curve = csm2.Curve(*(int(cv[k], 16) for k in ("p", "a", "b", "n", "xG", "yG")))
    d = int(v["private_key"], 16)
    public = csm2.public_key(d, curve)
    assert public[1:].hex().upper() == v["xA"] + v["yA"]
    uid, msg = v["id_ascii"].encode(), v["message_ascii"].encode()
    assert csm2.za(public, uid, curve).hex().upper() == v["ZA"]
    sig = csm2.sign(d, msg, uid, k=int(v["k"], 16), c=curve)
    assert sig.hex().upper() == v["r"] + v["s"]
    assert csm2.verify(public, msg, sig, uid, curve)
    assert not csm2.verify(public, msg + b"!", sig, uid, curve)
    d2, public2 = csm2.generate()
    ours = csm2.sign(d2, b"challenge")
    theirs = sm2.CryptSM2(private_key=format(d2, "064x"), public_key=public2[1:].hex())
    assert theirs.verify_with_sm3(ours.hex(), b"challenge")
    assert csm2.verify(public2, b"abc", bytes.fromhex(theirs.sign_with_sm3(b"abc")))
    assert not csm2.verify(public2, b"challenge", ours[:32] + bytes(32))


def test_sm4_card_sm2_key_certificate_and_second_proof() -> None:
    """At personalisation the SM4 card makes its SM2 key pair, the issuer certifies it, both
    certificates go to the card; the chip's SM2 signature over a challenge then checks out
    against the certificate read back, and gmssl agrees."""
    from cardspec_helpers import SERIAL, blank, card_code, perso_data, software_crypto

    from cardspec import cardops, perso
    from cardspec.errors import SecurityError
    from cardspec.profile import social_security_profile
    from cardspec.reader import InProcessReader

    profile = social_security_profile(generation=3, algorithm=SM4)
    card = blank(SERIAL, profile)
    reader = InProcessReader(card)
    issuer = csm2.SoftwareSm2Signer()
    perso.personalise(reader, software_crypto(SERIAL, SM4), perso_data(SERIAL, spec_version="3.00"),
                      profile, certifier=issuer)  # fmt: skip
    assert card.state.sm2_private is not None
    reader.connect()
    cardops.select_df(reader, profile, "SSSE")
    card_cert, issuer_cert = cardops.read_certificates(reader)
    own = csm2.check_certificate(issuer_cert, issuer.sm2_public_key())  # self-signed
    assert own.public == issuer.sm2_public_key()
    challenge = os.urandom(16)
    signature = cardops.sm2_internal_authenticate(reader, challenge)
    cic = card_code(SERIAL)
    cardops.verify_chip_sm2(card_cert, issuer.sm2_public_key(), cic, challenge, signature)
    chip_public = csm2.parse_certificate(card_cert).public
    assert sm2.CryptSM2(None, chip_public[1:].hex()).verify_with_sm3(signature.hex(), challenge)
    with pytest.raises(SecurityError, match="does not verify"):
        cardops.verify_chip_sm2(card_cert, issuer.sm2_public_key(), cic, challenge + b"x",
                                signature)  # fmt: skip
    with pytest.raises(SecurityError, match="another card"):
        cardops.verify_chip_sm2(card_cert, issuer.sm2_public_key(), "0" * 32, challenge, signature)
    with pytest.raises(SecurityError, match="certificate"):
        cardops.verify_chip_sm2(card_cert, csm2.SoftwareSm2Signer().sm2_public_key(), cic,
                                challenge, signature)  # fmt: skip
    # the private key never comes out; certificates are written during personalisation only
    assert card.state.sm2_private.hex().upper() not in (card_cert + issuer_cert).hex().upper()
    answer = reader.transmit(bytes.fromhex("84DADF2004") + os.urandom(4))
    assert answer[-2:] != b"\x90\x00"
