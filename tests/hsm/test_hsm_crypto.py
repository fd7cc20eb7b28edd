"""Card keys derived in SoftHSM and every cryptogram, checked against two oracles: the reference
software (cardspec.keyscheme / SoftwareCardCrypto) and an independent computation written here
with ``cryptography`` (and ``pyemv`` for the EMV derivation)."""

from __future__ import annotations

import os

import pyemv.kd
import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hsm_helpers import REGION, HsmEnv

from cardspec import keyscheme
from cardspec.crypto import SoftwareCardCrypto
from cardspec.keyscheme import Algorithm, KeySlot
from hsm.errors import CryptogramMismatch, MechanismUnavailable
from hsm.service import CardKeyRef, Pkcs11KeyService

pytestmark = pytest.mark.softhsm

CIC = "330182D156000005" + "0123456789ABCDEF"
PAN, PSN = "6212263602001234567", "01"


def _cipher(key: bytes, alg: Algorithm, mode: modes.Mode) -> Cipher:  # type: ignore[type-arg]
    if alg is Algorithm.DES3:
        return Cipher(TripleDES(key + key[:8]), mode)
    return Cipher(algorithms.AES(key), mode)


def _ecb(key: bytes, alg: Algorithm, data: bytes, decrypt: bool = False) -> bytes:
    c = _cipher(key, alg, modes.ECB())
    ctx = c.decryptor() if decrypt else c.encryptor()
    return ctx.update(data) + ctx.finalize()


def _indep_diversify(key: bytes, factor: bytes, alg: Algorithm) -> bytes:
    inv = bytes(b ^ 0xFF for b in factor)
    if alg is Algorithm.DES3:
        return _ecb(key, alg, factor) + _ecb(key, alg, inv)
    return _ecb(key, alg, factor + inv)


def _indep_kcv(key: bytes, alg: Algorithm) -> bytes:
    return _ecb(key, alg, bytes(8) if alg is Algorithm.DES3 else b"\x01" * 16)[:3]


def _indep_card_key(env: HsmEnv, ref: CardKeyRef, slot: KeySlot) -> bytes:
    master = env.masters[(slot, ref.algorithm, ref.key_version)]
    if slot.financial:
        if ref.algorithm is Algorithm.DES3:
            return pyemv.kd.derive_icc_mk_a(master, PAN, PSN)
        y = bytes.fromhex((PAN + PSN)[-16:])
        return _indep_diversify(master, y, ref.algorithm)
    key = master
    if ref.region_factor:
        key = _indep_diversify(key, bytes.fromhex(REGION) + b"\xff" * 5, ref.algorithm)
    return _indep_diversify(key, bytes.fromhex(CIC[16:]), ref.algorithm)


def _software(env: HsmEnv, ref: CardKeyRef) -> SoftwareCardCrypto:
    masters = {slot: env.masters[(slot, ref.algorithm, ref.key_version)] for slot in KeySlot}
    emv = ref.factors(KeySlot.FIN_AC, REGION) if ref.pan else ()
    return SoftwareCardCrypto(masters, ref.factors(KeySlot.IRK, REGION), ref.algorithm, emv)


REFS = [
    pytest.param(
        CardKeyRef(CIC, 1, alg, pan=PAN, psn=PSN, region_factor=region),
        id=f"{alg.value}-{'province' if region else 'city'}",
    )
    for alg in (Algorithm.DES3, Algorithm.AES)
    for region in (False, True)
]


@pytest.mark.parametrize("ref", REFS)
def test_derived_card_keys_match_both_oracles(hsm_env: HsmEnv, ref: CardKeyRef) -> None:
    soft = _software(hsm_env, ref)
    with hsm_env.service.card_crypto(ref) as crypto:
        kcvs = {slot: crypto.kcv(slot) for slot in KeySlot}
    for slot in KeySlot:
        indep = _indep_card_key(hsm_env, ref, slot)
        assert kcvs[slot] == keyscheme.kcv(soft.card_key(slot), ref.algorithm), slot
        assert kcvs[slot] == _indep_kcv(indep, ref.algorithm), slot
    # keys differ per slot (each from its own master)
    assert len(set(kcvs.values())) == len(KeySlot)


@pytest.mark.parametrize("ref", REFS)
def test_cryptograms_match_both_oracles(hsm_env: HsmEnv, ref: CardKeyRef) -> None:
    alg, soft = ref.algorithm, _software(hsm_env, ref)
    size = alg.block_size
    with hsm_env.service.card_crypto(ref) as crypto:
        for slot in (KeySlot.EAK, KeySlot.UK_IDENT, KeySlot.PUK, KeySlot.FIN_SMI):
            key = _indep_card_key(hsm_env, ref, slot)
            challenge = os.urandom(8)
            ext = crypto.external_auth(slot, challenge)
            block = challenge if alg is Algorithm.DES3 else challenge + b"\x80" + bytes(7)
            assert ext == soft.external_auth(slot, challenge) == _ecb(key, alg, block)

            data = os.urandom(37)
            mac = crypto.mac_block(slot, data, challenge)
            padded = data + b"\x80" + bytes(-(len(data) + 1) % size)
            enc = _cipher(key, alg, modes.CBC((challenge + bytes(8))[:size])).encryptor()
            assert mac == soft.mac_block(slot, data, challenge)
            assert mac == (enc.update(padded) + enc.finalize())[-size:]
            # chained: next IV = previous full MAC block
            nxt = crypto.mac_block(slot, b"\x04\xdc\x01\x2c\x08", mac)
            assert nxt == keyscheme.sm_mac_block(
                soft.card_key(slot), b"\x04\xdc\x01\x2c\x08", mac, alg
            )

            secret = b"123456"
            ct = crypto.encrypt(slot, secret)
            assert ct == soft.encrypt(slot, secret)
            plain = _ecb(key, alg, ct, decrypt=True)
            assert plain == bytes([6]) + secret + b"\x80" + bytes(len(plain) - 8)

        factor, random = os.urandom(8), os.urandom(8)
        answer = crypto.internal_auth_response(factor, random)
        irk = _indep_card_key(hsm_env, ref, KeySlot.IRK)
        session = _indep_diversify(irk, factor, alg)
        expected = _ecb(session, alg, random if alg is Algorithm.DES3 else random + factor)
        assert answer == soft.internal_auth_response(factor, random) == expected


@pytest.mark.parametrize("ref", REFS)
def test_key_loading_payload(hsm_env: HsmEnv, ref: CardKeyRef) -> None:
    """wrapped_card_key = keyscheme.wrap_card_key: ECB of the key value (DES: odd parity)."""
    alg, soft = ref.algorithm, _software(hsm_env, ref)
    kmc = _indep_card_key(hsm_env, ref, KeySlot.KMC)
    with hsm_env.service.card_crypto(ref) as crypto:
        for slot in (KeySlot.IRK, KeySlot.DMK, KeySlot.FIN_AC):
            wrapped = crypto.wrapped_card_key(slot, KeySlot.KMC)
            assert wrapped == soft.wrapped_card_key(slot, KeySlot.KMC)
            key = _ecb(kmc, alg, wrapped, decrypt=True)
            assert _indep_kcv(key, alg) == _indep_kcv(_indep_card_key(hsm_env, ref, slot), alg)
            assert keyscheme.unwrap_card_key(kmc, wrapped, alg) == key
            if alg is Algorithm.DES3:
                assert all(bin(b).count("1") % 2 == 1 for b in key)


def test_internal_auth_verification_raises_on_mismatch(hsm_env: HsmEnv) -> None:
    ref = CardKeyRef(CIC)
    soft = _software(hsm_env, ref)
    factor, random = os.urandom(8), os.urandom(8)
    good = soft.internal_auth_response(factor, random)
    assert hsm_env.service.verify_internal_auth(ref, factor, random, good) is None
    bad = bytes([good[0] ^ 1]) + good[1:]
    with pytest.raises(CryptogramMismatch):
        hsm_env.service.verify_internal_auth(ref, factor, random, bad)
    with pytest.raises(CryptogramMismatch):
        hsm_env.service.verify_internal_auth(ref, factor, random, good[:4])
    other = CardKeyRef("330182D156000005" + "0123456789ABCDEE")
    with pytest.raises(CryptogramMismatch):
        hsm_env.service.verify_internal_auth(other, factor, random, good)
    assert hsm_env.service.external_auth(ref, KeySlot.EAK, random) == soft.external_auth(
        KeySlot.EAK, random
    )


def test_card_keys_are_destroyed_after_the_block(hsm_env: HsmEnv) -> None:
    from pkcs11 import Attribute, ObjectClass

    def session_keys() -> int:
        with hsm_env.token.use() as session:
            return sum(
                1
                for _ in session.get_objects(
                    {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: False}
                )
            )

    before = session_keys()
    with hsm_env.service.card_crypto(CardKeyRef(CIC, region_factor=True)) as crypto:
        crypto.derive_all([KeySlot.IRK, KeySlot.EAK, KeySlot.KMC])
        crypto.wrapped_card_key(KeySlot.IRK, KeySlot.KMC)
        assert session_keys() == before + 3
    assert session_keys() == before


def test_des3_key_loading_without_clear_window_refuses(hsm_env: HsmEnv) -> None:
    """SoftHSM2 cannot wrap under a 3DES key: with the clear window disallowed it says so."""
    strict = Pkcs11KeyService(hsm_env.token, REGION, clear_des3_key_loading=False)
    with strict.card_crypto(CardKeyRef(CIC)) as crypto, pytest.raises(MechanismUnavailable):
        crypto.wrapped_card_key(KeySlot.IRK, KeySlot.KMC)
    # AES cards never need it
    with strict.card_crypto(CardKeyRef(CIC, algorithm=Algorithm.AES)) as crypto:
        assert len(crypto.wrapped_card_key(KeySlot.IRK, KeySlot.KMC)) == 16


def test_sm4_is_refused_clearly(hsm_env: HsmEnv) -> None:
    with pytest.raises(MechanismUnavailable, match="SM4"):
        hsm_env.service.card_crypto(CardKeyRef(CIC, algorithm=Algorithm.SM4))
