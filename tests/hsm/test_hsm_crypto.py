"""Card keys derived in SoftHSM and every cryptogram, checked against two oracles: the reference
software (cardspec.keyscheme / SoftwareCardCrypto) and an independent computation written here
with ``cryptography`` (and ``pyemv`` for the EMV derivation)."""

from __future__ import annotations

import os
from typing import Any

import pkcs11.exceptions as p11x
import pyemv.kd
import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding
from hsm_helpers import REGION, TEST_BANK, TRANSPORT_KEY, HsmEnv
from pkcs11 import Attribute, KeyType, ObjectClass

from cardspec import keyscheme
from cardspec.crypto import SoftwareCardCrypto
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.reader import InProcessReader
from hsm.errors import CryptogramMismatch, KeyNotFound, MechanismUnavailable
from hsm.service import CardKeyRef, Pkcs11KeyService

pytestmark = pytest.mark.softhsm

CIC = "330182D156000005" + "0123456789ABCDEF"
PAN, PSN = "6212263602001234566", "01"


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
        # AES: EMV 4.3 Book 2 A1.4.3 option C, Y = PAN || PSN zero-filled to 16 bytes
        return _ecb(master, ref.algorithm, bytes.fromhex((PAN + PSN).rjust(32, "0")))
    key = master
    if ref.region_factor:
        key = _indep_diversify(key, bytes.fromhex(REGION) + b"\xff" * 5, ref.algorithm)
    return _indep_diversify(key, bytes.fromhex(CIC[16:]), ref.algorithm)


def _software(env: HsmEnv, ref: CardKeyRef) -> SoftwareCardCrypto:
    masters = {slot: env.masters[(slot, ref.algorithm, ref.key_version)] for slot in KeySlot}
    emv = ref.factors(KeySlot.FIN_AC, REGION) if ref.pan else ()
    return SoftwareCardCrypto(
        masters, ref.factors(KeySlot.IRK, REGION), ref.algorithm, emv,
        klk_master=env.klk_masters[ref.key_version],
    )  # fmt: skip


def _indep_klk(env: HsmEnv, ref: CardKeyRef) -> bytes:
    key = env.klk_masters[ref.key_version]
    if ref.region_factor:
        key = _indep_diversify(key, bytes.fromhex(REGION) + b"\xff" * 5, Algorithm.AES)
    return _indep_diversify(key, bytes.fromhex(CIC[16:]), Algorithm.AES)


REFS = [
    pytest.param(
        CardKeyRef(CIC, 1, alg, pan=PAN, psn=PSN, region_factor=region, bank=TEST_BANK),
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
        for slot in (KeySlot.EAK, KeySlot.UK_IDENT, KeySlot.PUK):
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
    """WRITE KEY payload = C_WrapKey(CKM_AES_KEY_WRAP_PAD) under the card's KLK: unwrapped
    independently (cryptography's RFC 5649 with a KLK diversified here) to the card key, by KCV
    (DES: odd parity), and byte-equal to the software reference."""
    alg, soft = ref.algorithm, _software(hsm_env, ref)
    klk = _indep_klk(hsm_env, ref)
    with hsm_env.service.card_crypto(ref) as crypto:
        for slot in (KeySlot.IRK, KeySlot.DMK, KeySlot.PUK, KeySlot.FIN_AC):
            wrapped = crypto.wrapped_card_key(slot)
            assert len(wrapped) == 24
            assert wrapped == soft.wrapped_card_key(slot)
            key = aes_key_unwrap_with_padding(klk, wrapped)
            assert _indep_kcv(key, alg) == _indep_kcv(_indep_card_key(hsm_env, ref, slot), alg)
            assert _indep_kcv(key, alg) == crypto.kcv(slot)
            assert keyscheme.unwrap_card_key(klk, wrapped, alg) == key
            if alg is Algorithm.DES3:
                assert all(bin(b).count("1") % 2 == 1 for b in key)
            else:
                assert key == _indep_card_key(hsm_env, ref, slot)
            with pytest.raises(InvalidUnwrap):  # another card's KLK does not unwrap it
                aes_key_unwrap_with_padding(_indep_diversify(klk, bytes(8), alg.AES), wrapped)


@pytest.mark.parametrize("alg", [Algorithm.DES3, Algorithm.AES])
def test_klk_export_for_the_chip_maker(hsm_env: HsmEnv, alg: Algorithm) -> None:
    ref = CardKeyRef(CIC, 1, alg)
    wrapped = hsm_env.service.export_key_loading_key(ref, "bureau1")
    assert aes_key_unwrap_with_padding(TRANSPORT_KEY, wrapped) == _indep_klk(hsm_env, ref)
    with pytest.raises(KeyNotFound):
        hsm_env.service.export_key_loading_key(CardKeyRef(CIC, 99, alg), "bureau1")


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


def _session_keys(env: HsmEnv) -> list[dict[str, Any]]:
    """Every session secret key of this process, with its protection attributes."""
    with env.token.use() as session:
        out = []
        for key in session.get_objects(
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: False}
        ):
            try:
                key[Attribute.VALUE]
                readable = True
            except p11x.AttributeSensitive:
                readable = False
            out.append({
                "handle": key.handle, "sensitive": key[Attribute.SENSITIVE],
                "extractable": key[Attribute.EXTRACTABLE], "wrap": key[Attribute.WRAP],
                "readable": readable,
            })  # fmt: skip
        return out


def test_card_keys_are_destroyed_after_the_block(hsm_env: HsmEnv) -> None:
    before = len(_session_keys(hsm_env))
    with hsm_env.service.card_crypto(CardKeyRef(CIC, region_factor=True)) as crypto:
        crypto.derive_all([KeySlot.IRK, KeySlot.EAK, KeySlot.KMC])
        crypto.wrapped_card_key(KeySlot.IRK)
        assert len(_session_keys(hsm_env)) == before + 4  # 3 card keys + the KLK
    assert len(_session_keys(hsm_env)) == before


class _WatchingReader:
    """A reader that lists the HSM's session objects before every APDU (the test's eyes)."""

    def __init__(self, inner: InProcessReader, env: HsmEnv) -> None:
        self.inner, self.env, self.name = inner, env, inner.name
        self.seen: list[dict[str, Any]] = []

    def connect(self) -> bytes:
        return self.inner.connect()

    def disconnect(self) -> None:
        self.inner.disconnect()

    def transmit(self, command: bytes) -> bytes:
        self.seen.extend(_session_keys(self.env))
        return self.inner.transmit(command)


def test_3des_personalisation_creates_no_readable_key(
    hsm_env: HsmEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole 3DES personalisation on SoftHSM (which cannot wrap under 3DES keys): every
    object the HSM makes is sensitive (its value never readable: checked on every derived
    object as it is made, and on every live object before each APDU); only card keys are
    extractable (C_WrapKey needs it) and only wrapped under the non-extractable KLK; nothing
    is left behind, no token object is added. The card then proves itself genuine."""
    from cardspec import cardops, perso
    from cardspec.emulator import blank_card
    from cardspec.profile import social_security_profile
    from hsm import p11fast
    from hsm import pkcs11 as p11

    profile = social_security_profile(financial=True)
    ref = CardKeyRef(CIC, 1, Algorithm.DES3, pan=PAN, psn=PSN, bank=TEST_BANK)
    soft = _software(hsm_env, ref)
    card = blank_card(bytes.fromhex(CIC[16:]), soft.card_key(KeySlot.KMC), Algorithm.DES3,
                      klk=soft.key_loading_key(), profile=profile)  # fmt: skip
    reader = _WatchingReader(InProcessReader(card), hsm_env)
    derived: list[Any] = []
    real_derive = p11.derive

    def watched_derive(*args: Any, **kwargs: Any) -> Any:
        key = real_derive(*args, **kwargs)
        derived.append((key[Attribute.SENSITIVE], key[Attribute.EXTRACTABLE],
                        key[Attribute.KEY_TYPE], key[Attribute.WRAP]))  # fmt: skip
        return key

    monkeypatch.setattr(p11, "derive", watched_derive)
    real_fast_derive = p11fast.FastOps.derive

    def watched_fast_derive(self: p11fast.FastOps, session: int, *args: Any) -> int:
        handle = real_fast_derive(self, session, *args)
        with hsm_env.token.use() as s:  # the new object, found by its handle
            (key,) = [k for k in s.get_objects({Attribute.TOKEN: False}) if k.handle == handle]
            derived.append((key[Attribute.SENSITIVE], key[Attribute.EXTRACTABLE],
                            key[Attribute.KEY_TYPE], key[Attribute.WRAP]))  # fmt: skip
        return handle

    monkeypatch.setattr(p11fast.FastOps, "derive", watched_fast_derive)
    service = Pkcs11KeyService(hsm_env.token, REGION)

    def token_objects() -> list[tuple[str, bool, bool]]:
        with hsm_env.token.use() as session:
            return sorted((o.label or "", o[Attribute.SENSITIVE], o[Attribute.EXTRACTABLE])
                          for o in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                                        Attribute.TOKEN: True}))  # fmt: skip

    tokens_before, session_before = token_objects(), len(_session_keys(hsm_env))
    with service.card_crypto(ref) as crypto:
        result = perso.personalise(reader, crypto, _perso_data(), profile)
    assert set(result.keys_loaded) == {s.slot for _, s in profile.key_specs()} - {KeySlot.KMC}
    assert len(derived) >= len(result.keys_loaded) + 2 and reader.seen  # KMC, KLK: all seen
    assert all(sensitive for sensitive, _, _, _ in derived)
    for obj in reader.seen:
        # (CKA_ALWAYS_SENSITIVE follows the master: False here, the test masters were imported)
        assert obj["sensitive"] and not obj["readable"], obj
        if obj["wrap"]:  # the KLK: wraps, never leaves
            assert not obj["extractable"], obj
    klks = [d for d in derived if d[3]]
    assert klks and all(kt == KeyType.AES and not ex for _, ex, kt, _ in klks)
    assert len(_session_keys(hsm_env)) == session_before
    assert token_objects() == tokens_before
    assert all(sensitive and not extractable for _, sensitive, extractable in tokens_before)

    # the card holds the keys: genuine for the HSM (INTERNAL AUTHENTICATE) and it accepts the
    # terminal's EXTERNAL AUTHENTICATE computed in the HSM
    reader.connect()
    cardops.select_df(reader, profile, "SSSE")
    factor, random = os.urandom(8), os.urandom(8)
    answer = cardops.internal_authenticate(reader, factor, random)
    hsm_env.service.verify_internal_auth(ref, factor, random, answer)
    with hsm_env.service.card_crypto(ref) as crypto:
        cardops.external_authenticate(reader, crypto, KeySlot.EAK, profile)
    assert card.state.klk is None and KeySlot.KMC not in card.state.keys


def _perso_data() -> Any:
    from datetime import date

    from cardspec import perso
    from cardspec.profile import social_security_profile

    return perso.sample_perso_data(CIC, social_security_profile(), issue_date=date(2025, 1, 2))


def test_sm4_is_refused_clearly(hsm_env: HsmEnv) -> None:
    with pytest.raises(MechanismUnavailable, match="SM4"):
        hsm_env.service.card_crypto(CardKeyRef(CIC, algorithm=Algorithm.SM4))
