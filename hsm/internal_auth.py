"""The INTERNAL AUTHENTICATE check of the verification hot path, through direct PKCS#11 calls.

What the HSM computes is what :meth:`hsm.service.Pkcs11KeyService.verify_internal_auth`
computes (and the tests compare both with :func:`cardspec.keyscheme.internal_auth_response`):

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
caller runs it on the process's one HSM thread (``api.context.HsmRunner``). A module without
the direct entry points falls back to the service's own method.

The functions are bound with :class:`ctypes.PyDLL`, i.e. *without* releasing the GIL around
each call: the check is five short in-process calls (SoftHSM2: ~20 us each), and with the GIL
released and re-acquired five times per check the HSM thread queued behind the event loop for
up to a switch interval at every re-acquisition (measured: the API capped at ~250 checks/s
per worker). Holding it, the HSM thread takes the GIL once per batch of checks
(:class:`api.context.HsmRunner` runs every queued call in one go).
"""

from __future__ import annotations

import ctypes
import hmac

from pkcs11 import Attribute

from cardspec import keyscheme
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import p11fast
from hsm import pkcs11 as p11
from hsm.errors import CryptogramMismatch
from hsm.service import CardKeyRef, KeyService, Pkcs11KeyService

_CARD_IRK = {
    alg: p11fast.key_template(alg, Attribute.DERIVE, extractable=False)
    for alg in (Algorithm.DES3, Algorithm.AES)
}
_SESSION_KEY = {
    alg: p11fast.key_template(alg, Attribute.ENCRYPT, extractable=False)
    for alg in (Algorithm.DES3, Algorithm.AES)
}


_GIL_HELD_OPS: dict[str, p11fast.FastOps | None] = {}


def _fast_ops(service: Pkcs11KeyService) -> p11fast.FastOps | None:
    """:class:`p11fast.FastOps` bound through :class:`ctypes.PyDLL` (see the module doc)."""
    if service.fast is None:
        return None
    path = str(service.token.config.module)
    if path not in _GIL_HELD_OPS:
        try:
            _GIL_HELD_OPS[path] = p11fast.FastOps(ctypes.PyDLL(path))
        except (OSError, AttributeError):
            _GIL_HELD_OPS[path] = None
    return _GIL_HELD_OPS[path]


def check_internal_auth(
    service: KeyService, ref: CardKeyRef, factor: bytes, random: bytes, response: bytes
) -> None:
    """Raise :class:`CryptogramMismatch` unless ``response`` is the card's answer to
    INTERNAL AUTHENTICATE(``factor || random``). Call it from the HSM owner thread."""
    if isinstance(service, Pkcs11KeyService):
        fast = _fast_ops(service)
        if fast is not None:
            expected = _expected_fast(service, fast, ref, factor, random)
            if not hmac.compare_digest(expected, response):
                raise CryptogramMismatch(
                    "INTERNAL AUTHENTICATE answer does not match the card's key"
                )
            return
    service.verify_internal_auth(ref, factor, random, response)


def _expected_fast(
    service: Pkcs11KeyService,
    fast: p11fast.FastOps,
    ref: CardKeyRef,
    factor: bytes,
    random: bytes,
) -> bytes:
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
