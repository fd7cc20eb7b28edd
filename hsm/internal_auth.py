"""The INTERNAL AUTHENTICATE check of the verification hot path, through direct PKCS#11 calls.

Design notes: ``docs/design/hsm.md`` (section ``hsm.internal_auth``).
"""

from __future__ import annotations

import hashlib
import hmac

from pkcs11 import Attribute, ObjectClass

from cardspec import sm2
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import ceremony
from hsm import pkcs11 as p11
from hsm.cardcrypto import expected_response
from hsm.errors import CryptogramMismatch, KeyNotFound
from hsm.service import CardKeyRef, KeyService, Pkcs11KeyService, SoftwareKeyService


def check_internal_auth(
    service: KeyService, ref: CardKeyRef, factor: bytes, random: bytes, response: bytes
) -> None:
    """Raise :class:`CryptogramMismatch` unless ``response`` is the card's answer to
    INTERNAL AUTHENTICATE(``factor || random``). Call it from the HSM owner thread."""
    if not isinstance(service, Pkcs11KeyService):
        service.verify_internal_auth(ref, factor, random, response)
        return
    if not hmac.compare_digest(expected_response(service, ref, factor, random), response):
        raise CryptogramMismatch("INTERNAL AUTHENTICATE answer does not match the card's key")


def check_chip_sm2(
    service: KeyService, ref: CardKeyRef, challenge: bytes, certificate: bytes, signature: bytes
) -> None:
    """The SM2 second proof of an SM4 card (``cardspec.sm2.verify_chip``): its certificate
    signed by the issuer's SM2 key (public key read from the HSM) and the chip's signature over
    the challenge. Raise :class:`CryptogramMismatch` if it fails. Call it from the HSM owner
    thread."""
    public = getattr(service, "sm2_public_key", None)
    if public is None:
        raise CryptogramMismatch("this key service holds no issuer SM2 key")
    try:
        issuer_public = public()
    except KeyNotFound as exc:
        raise CryptogramMismatch("no issuer SM2 key in the HSM") from exc
    try:
        sm2.verify_chip(certificate, issuer_public, ref.card_identification_code, challenge,
                        signature)  # fmt: skip
    except ValueError as exc:
        raise CryptogramMismatch(f"SM2 second proof: {exc}") from None


# --- the key of the stateless verification challenges --------------------------------------
#
# Challenge ids are MAC'd (issuance.services.verification.ChallengeCodec) under a key every API
# node must share, so it comes from the HSM every node uses: at a worker's start, derived
# inside the HSM from the issuer's IRK master key - the lowest complete key-set version, 3DES
# before AES, so every node picks the same one - by derivation data no card key is derived
# from (a card's or a region's diversification data is f || ~f; these two halves are not
# complements), then the derived object (sensitive, non-extractable, encrypt-only, destroyed
# at once) encrypts a fixed label: 16 bytes leave the HSM, hashed with the key's name into
# the 32-byte challenge key. It lives in the API workers' memory; it can stretch a challenge's
# expiry or mint challenges, never answer one (that needs the card's key, in the card and the
# HSM only). Retiring that key-set version (deleting its IRK master) changes the key: restart
# the API workers; challenges issued in the minute before are then refused as unknown.
CHALLENGE_KEY_DATA = b"YKT-CHAL" + b"LENGE-K1"
CHALLENGE_KEY_LABEL = b"ykt-challenge-k1"


def challenge_key(service: KeyService) -> bytes:
    """The 32-byte challenge key (see above). Call it from the HSM owner thread."""
    # 3DES before AES before SM4 (an HSM with only SM4 keys: the SM4 IRK master)
    for alg in (Algorithm.DES3, Algorithm.AES, Algorithm.SM4):
        if alg is Algorithm.SM4 and alg not in p11.KEY_TYPES:
            continue
        versions = _irk_versions(service, alg)
        if versions:
            secret = _challenge_secret(service, alg, versions[0])
            name = f"yikatong-challenge-key/1:irk:{alg.value}:v{versions[0]}:".encode()
            return hashlib.sha256(name + secret).digest()
    raise KeyNotFound("no IRK master key in the HSM to derive the challenge key from")


def _irk_versions(service: KeyService, alg: Algorithm) -> list[int]:
    """Versions of the IRK master of ``alg`` the service holds, ascending."""
    if isinstance(service, Pkcs11KeyService):
        prefix = ceremony.master_label(KeySlot.IRK, alg, 0)[:-1]  # "ykt:irk:3des:v"
        with service.token.use("listing the IRK masters") as session:
            labels = [
                obj.label or ""
                for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
            ]
        return sorted(
            int(label[len(prefix) :])
            for label in labels
            if label.startswith(prefix) and label[len(prefix) :].isdigit()
        )
    if isinstance(service, SoftwareKeyService):  # tests and demos: the masters are in memory
        return service.master_versions(KeySlot.IRK, alg)
    raise KeyNotFound(f"{type(service).__name__} offers no challenge key")


def _challenge_secret(service: KeyService, alg: Algorithm, version: int) -> bytes:
    if isinstance(service, SoftwareKeyService):
        master = service.master_key(KeySlot.IRK, alg, version)
        child = _software_ecb(master, alg, CHALLENGE_KEY_DATA)
        return _software_ecb(child, alg, CHALLENGE_KEY_LABEL)
    assert isinstance(service, Pkcs11KeyService)
    template = {
        **p11.capabilities(Attribute.ENCRYPT),
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
    }
    mechanism = p11.ECB[alg]
    with service.token.use("deriving the challenge key"):
        service.sync(service.token.generation)
        master = service.master_synced(KeySlot.IRK, alg, version)
        key = p11.derive(master, alg, CHALLENGE_KEY_DATA, template=template)
        try:
            return bytes(key.encrypt(CHALLENGE_KEY_LABEL, mechanism=mechanism))
        finally:
            key.destroy()


def _software_ecb(key: bytes, alg: Algorithm, data: bytes) -> bytes:
    """ECB encryption in software: the software key service's masters (tests, demos)."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if alg is Algorithm.DES3:
        cipher = Cipher(TripleDES(key + key[:8] if len(key) == 16 else key), modes.ECB())
    elif alg is Algorithm.SM4:
        cipher = Cipher(algorithms.SM4(key), modes.ECB())
    else:
        cipher = Cipher(algorithms.AES(key), modes.ECB())
    enc = cipher.encryptor()
    return enc.update(data) + enc.finalize()
