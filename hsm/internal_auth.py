"""The INTERNAL AUTHENTICATE check of the verification hot path, through direct PKCS#11 calls.

The one implementation of the check in the HSM (:meth:`hsm.service.Pkcs11KeyService.
verify_internal_auth` and :meth:`hsm.cardcrypto.HsmCardCrypto.internal_auth_response` call it;
the tests compare it with :func:`cardspec.keyscheme.internal_auth_response`):

1. the card's IRK, derived inside the HSM from the issuer's IRK master key by the card's
   factor(s) (``C_DeriveKey(CKM_*_ECB_ENCRYPT_DATA)``; province cards: region factor first) -
   a session object, sensitive, non-extractable, usable only to derive;
2. the session key, derived from it by the challenge's process factor - sensitive,
   non-extractable, usable only to encrypt;
3. ``C_Encrypt(ECB)`` of the challenge's random (AES: random || factor) under the session key;
4. both objects destroyed; the answer compared in constant time.

No card key ever exists outside the HSM and none is cached: only the handles of the master
keys are (per module initialisation, see :meth:`Pkcs11KeyService.master_synced`). The calls
go through :mod:`hsm.p11fast` (ctypes, templates built once: 3-4x less overhead than
python-pkcs11 for the same four PKCS#11 functions), under the process-wide PKCS#11 lock; the
caller runs it on the process's one HSM thread (``api.context.HsmRunner``).

The functions are bound with :class:`ctypes.PyDLL`, i.e. *without* releasing the GIL around
each call: the check is five short in-process calls (SoftHSM2: ~20 us each), and with the GIL
released and re-acquired five times per check the HSM thread queued behind the event loop for
up to a switch interval at every re-acquisition (measured: the API capped at ~250 checks/s
per worker). Holding it, the HSM thread takes the GIL once per batch of checks
(:class:`api.context.HsmRunner` runs every queued call in one go).
"""

from __future__ import annotations

import hashlib
import hmac

from pkcs11 import Attribute, Mechanism, ObjectClass

from cardspec import keyscheme
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import ceremony, p11fast
from hsm import pkcs11 as p11
from hsm.errors import CryptogramMismatch, KeyNotFound
from hsm.service import CardKeyRef, KeyService, Pkcs11KeyService, SoftwareKeyService

_CARD_IRK = {
    alg: p11fast.key_template(alg, Attribute.DERIVE, extractable=False)
    for alg in (Algorithm.DES3, Algorithm.AES)
}
_SESSION_KEY = {
    alg: p11fast.key_template(alg, Attribute.ENCRYPT, extractable=False)
    for alg in (Algorithm.DES3, Algorithm.AES)
}


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


def expected_response(
    service: Pkcs11KeyService, ref: CardKeyRef, factor: bytes, random: bytes
) -> bytes:
    """The card's answer to INTERNAL AUTHENTICATE(``factor || random``), computed in the HSM
    (the steps of the module docstring): the one implementation, also
    :meth:`hsm.cardcrypto.HsmCardCrypto.internal_auth_response`'s."""
    fast = p11fast.fast_ops(str(service.token.config.module), hold_gil=True)
    if len(random) != 8:
        raise ValueError("random must be 8 bytes")
    alg = ref.algorithm
    p11.check_algorithm(alg)
    chain = [
        keyscheme.diversification_data(f, alg)
        for f in ref.factors(KeySlot.IRK, service.region_code)
    ]
    session_data = keyscheme.diversification_data(factor, alg)
    block = random if alg is Algorithm.DES3 else random + factor
    tmpl = _CARD_IRK[alg]
    with service.token.use("INTERNAL AUTHENTICATE check") as session:
        service.sync(service.token.generation)
        sh = session.handle
        base = handle = service.master_synced(KeySlot.IRK, alg, ref.key_version).handle
        made: list[int] = []
        try:
            for data in chain:
                handle = fast.derive(sh, handle, alg, data, tmpl)
                made.append(handle)
            session_key = fast.derive(sh, handle, alg, session_data, _SESSION_KEY[alg])
            made.append(session_key)
            return fast.encrypt_ecb(sh, session_key, alg, block)
        finally:
            for h in reversed(made):
                if h != base:
                    fast.destroy(sh, h)
            service.objects_destroyed(len(made))


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
    for alg in (Algorithm.DES3, Algorithm.AES):
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
        return sorted(v for (slot, a, v) in service._masters if slot is KeySlot.IRK and a is alg)
    raise KeyNotFound(f"{type(service).__name__} offers no challenge key")


def _challenge_secret(service: KeyService, alg: Algorithm, version: int) -> bytes:
    if isinstance(service, SoftwareKeyService):
        master = service._masters[(KeySlot.IRK, alg, version)]
        child = _software_ecb(master, alg, CHALLENGE_KEY_DATA)
        return _software_ecb(child, alg, CHALLENGE_KEY_LABEL)
    assert isinstance(service, Pkcs11KeyService)
    template = {
        **p11.capabilities(Attribute.ENCRYPT),
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
    }
    mechanism = Mechanism.DES3_ECB if alg is Algorithm.DES3 else Mechanism.AES_ECB
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
    else:
        cipher = Cipher(algorithms.AES(key), modes.ECB())
    enc = cipher.encryptor()
    return enc.update(data) + enc.finalize()
