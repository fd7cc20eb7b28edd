"""Bureau export, the signing key, fork safety and the software twin."""

from __future__ import annotations

import multiprocessing
import os

import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
from hsm_helpers import REGION, TEST_BANK, TRANSPORT_KEY, HsmEnv, twin_masters

from cardspec import keyscheme
from cardspec.keyscheme import Algorithm, KeySlot
from hsm.errors import CryptogramMismatch, KeyDomainError, KeyNotFound, SignatureInvalid
from hsm.service import (
    CardCryptoSession,
    CardKeyRef,
    KeyService,
    SoftwareKeyService,
    verify_signature,
)

pytestmark = pytest.mark.softhsm
CIC = "330182D156000005" + "FEDCBA9876543210"
PAN, PSN = "6212263602009876541", "00"


@pytest.mark.parametrize("alg", [Algorithm.DES3, Algorithm.AES])
def test_export_unwraps_to_the_card_keys(hsm_env: HsmEnv, alg: Algorithm) -> None:
    ref = CardKeyRef(CIC, algorithm=alg, pan=PAN, psn=PSN, region_factor=True, bank=TEST_BANK)
    slots = list(KeySlot)
    wrapped = hsm_env.service.export_card_keys(ref, slots, "bureau1")
    assert set(wrapped) == set(slots)
    centre, bank = twin_masters(hsm_env.masters)
    twin = SoftwareKeyService(centre, REGION, {"bureau1": TRANSPORT_KEY}, bank_masters=bank)
    soft = twin.card_crypto(ref)
    for slot in slots:
        key = aes_key_unwrap_with_padding(TRANSPORT_KEY, wrapped[slot])
        expected = soft.card_key(slot)
        if alg is Algorithm.DES3:
            expected = keyscheme.odd_parity(expected)  # the HSM normalises DES parity
        assert key == expected, slot
    assert twin.export_card_keys(ref, slots, "bureau1") == wrapped
    with pytest.raises(KeyNotFound):
        hsm_env.service.export_card_keys(ref, slots, "nobody")


def test_signature_verifies_and_tampering_fails(hsm_env: HsmEnv) -> None:
    pem = hsm_env.service.public_key_pem()
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    data = b'{"card":"A00000001","status":"lost"}'
    sig = hsm_env.service.sign(data)
    verify_signature(pem, data, sig)
    with pytest.raises(SignatureInvalid):
        verify_signature(pem, data + b" ", sig)
    with pytest.raises(SignatureInvalid):
        verify_signature(pem, data, sig[:-1] + bytes([sig[-1] ^ 1]))
    other = SoftwareKeyService.random().public_key_pem()
    with pytest.raises(SignatureInvalid):
        verify_signature(other, data, sig)


def _child(env: HsmEnv, factor: bytes, random: bytes, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        with env.service.card_crypto(CardKeyRef(CIC)) as crypto:
            queue.put(
                (
                    os.getpid(),
                    crypto.internal_auth_response(factor, random),
                    env.service.sign(b"child"),
                )
            )
    except BaseException as exc:  # report to the parent
        queue.put(("error", repr(exc), b""))


def test_forked_child_reopens_the_module(hsm_env: HsmEnv) -> None:
    factor, random = os.urandom(8), os.urandom(8)
    with hsm_env.service.card_crypto(CardKeyRef(CIC)) as crypto:
        parent_answer = crypto.internal_auth_response(factor, random)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(hsm_env, factor, random, queue))
    proc.start()
    pid, answer, sig = queue.get(timeout=60)
    proc.join(timeout=60)
    assert pid != "error", answer
    assert pid != os.getpid() and proc.exitcode == 0
    assert answer == parent_answer
    verify_signature(hsm_env.service.public_key_pem(), b"child", sig)
    # the parent still works after the child re-initialised its own copy
    hsm_env.service.verify_internal_auth(CardKeyRef(CIC), factor, random, parent_answer)


def test_software_twin_implements_the_same_port(hsm_env: HsmEnv) -> None:
    centre, bank = twin_masters(hsm_env.masters)
    twin: KeyService = SoftwareKeyService(
        centre, REGION, {"bureau1": TRANSPORT_KEY}, klk_masters=hsm_env.klk_masters,
        bank_masters=bank,
    )  # fmt: skip
    hsm: KeyService = hsm_env.service
    ref = CardKeyRef(CIC, pan=PAN, region_factor=True, bank=TEST_BANK)
    challenge, factor, random = os.urandom(8), os.urandom(8), os.urandom(8)
    for service in (twin, hsm):
        with service.card_crypto(ref) as crypto:
            assert isinstance(crypto, CardCryptoSession)
    with twin.card_crypto(ref) as a, hsm.card_crypto(ref) as b:
        for slot in KeySlot:
            assert a.kcv(slot) == b.kcv(slot)
            assert a.wrapped_card_key(slot) == b.wrapped_card_key(slot)
            if slot.financial:  # the bank's EMV keys serve no card-centre command, in both
                for crypto in (a, b):
                    with pytest.raises(KeyDomainError):
                        crypto.external_auth(slot, challenge)
            else:
                assert a.external_auth(slot, challenge) == b.external_auth(slot, challenge)
        answer = b.internal_auth_response(factor, random)
    assert twin.export_key_loading_key(ref, "bureau1") == hsm.export_key_loading_key(ref, "bureau1")
    for alg in (Algorithm.DES3, Algorithm.AES):
        assert twin.current_key_version(alg) == hsm.current_key_version(alg) == 1
    twin.verify_internal_auth(ref, factor, random, answer)
    with pytest.raises(CryptogramMismatch):
        twin.verify_internal_auth(ref, random, factor, answer)
    verify_signature(twin.public_key_pem(), b"x", twin.sign(b"x"))
