"""Helpers of the hsm tests (known clear test keys: the oracle).

SoftHSM fixtures: one token per xdist worker process (session scope).

SoftHSM reads SOFTHSM2_CONF when the module is initialised and python-pkcs11 loads a module
once per process, so each worker gets its own configuration + token in its own tmp dir; the
adapter (hsm.pkcs11) sets SOFTHSM2_CONF from the configuration before loading the module.
The master keys are *known test keys* imported as components: the tests use them in clear as
an oracle for the HSM's results.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cardspec.keyscheme import Algorithm, KeySlot
from hsm.config import HsmConfig
from hsm.pkcs11 import Pkcs11Token
from hsm.service import Pkcs11KeyService

REGION = "330100"
ALGS = (Algorithm.DES3, Algorithm.AES)
#: The bank key domain whose issuer master keys (the FIN_* test masters) the fixture imports.
TEST_BANK = "test-bank"


def master_key(slot: KeySlot, alg: Algorithm, version: int) -> bytes:
    """Deterministic clear test master keys (the oracle)."""
    return hashlib.sha256(f"ykt-test:{slot.value}:{alg.value}:v{version}".encode()).digest()[:16]


def klk_master_key(version: int) -> bytes:
    """Deterministic clear test master of the key-loading keys (AES), the oracle."""
    return hashlib.sha256(f"ykt-test:klk:aes:v{version}".encode()).digest()[:16]


def components_of(key: bytes, n: int = 2) -> list[bytes]:
    parts = [hashlib.sha256(key + bytes([i])).digest()[:16] for i in range(n - 1)]
    last = bytearray(key)
    for p in parts:
        for i, b in enumerate(p):
            last[i] ^= b
    return [*parts, bytes(last)]


TRANSPORT_KEY = bytes.fromhex("8899AABBCCDDEEFF0011223344556677")


@dataclass
class HsmEnv:
    root: Path
    config: HsmConfig
    token: Pkcs11Token
    service: Pkcs11KeyService
    masters: dict[tuple[KeySlot, Algorithm, int], bytes]
    klk_masters: dict[int, bytes]


def twin_masters(
    masters: dict[tuple[KeySlot, Algorithm, int], bytes],
) -> tuple[
    dict[tuple[KeySlot, Algorithm, int], bytes], dict[tuple[str, KeySlot, Algorithm, int], bytes]
]:
    """The test masters split as the software twin keeps them: the card centre's, and the
    bank's issuer masters (``FIN_*``) in :data:`TEST_BANK`'s key domain."""
    centre = {k: v for k, v in masters.items() if not k[0].financial}
    bank = {(TEST_BANK, s, a, n): v for (s, a, n), v in masters.items() if s.financial}
    return centre, bank
