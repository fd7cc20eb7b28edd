"""Exceptions of the hsm package.

HsmError                   root; ``ckr`` keeps the PKCS#11 return value name (CKR_*) if any
├── HsmUnavailable         module cannot be loaded, token absent, login refused
├── MechanismUnavailable   the HSM lacks a mechanism this operation needs
├── KeyNotFound            no key with that label / slot / version in the token
├── KeyExists              a key with that label is already in the token
├── KcvMismatch            a key component or key does not match its check value
├── KeyDomainError         a key asked for outside its domain (the card centre's, a bank's)
├── CryptogramMismatch     a card's cryptogram (INTERNAL AUTHENTICATE) is wrong
└── SignatureInvalid       a signature does not verify
"""

from __future__ import annotations

import re
from typing import Any


class HsmError(Exception):
    """Root of every error raised by the hsm package."""

    code = "hsm_error"

    def __init__(self, message: str, *, ckr: str | None = None, **details: Any) -> None:
        super().__init__(message if ckr is None else f"{message} ({ckr})")
        self.message = message
        self.ckr = ckr
        self.details = details


class HsmUnavailable(HsmError):
    code = "hsm_unavailable"


class MechanismUnavailable(HsmError):
    code = "hsm_mechanism_unavailable"


class KeyNotFound(HsmError):
    code = "hsm_key_not_found"


class KeyExists(HsmError):
    code = "hsm_key_exists"


class KcvMismatch(HsmError):
    code = "hsm_kcv_mismatch"


class KeyDomainError(HsmError):
    """A key used outside its key domain: a bank's issuer master keys (and the per-card EMV keys
    derived from them) for a card-centre purpose, or a card-centre key for the bank's."""

    code = "hsm_key_domain"


class CryptogramMismatch(HsmError):
    code = "cryptogram_mismatch"


class SignatureInvalid(HsmError):
    code = "signature_invalid"


def ckr_name(exc: BaseException) -> str:
    """``MechanismInvalid`` -> ``CKR_MECHANISM_INVALID`` (python-pkcs11 names its exceptions
    after the return values)."""
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).upper()
    return f"CKR_{snake}"
