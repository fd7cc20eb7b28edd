"""The e-card's dynamic code: a COSE_Sign1 (RFC 9052) over CBOR claims, in base45 (RFC 9285).

Design notes: ``docs/design/ecard.md`` (section ``issuance.services.ecard_token``).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import base45
import cbor2
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from cardspec import sm2
from hsm.errors import SignatureInvalid
from hsm.ports import public_key_sha256
from hsm.service import verify_signature
from issuance.errors import IssuanceError
from issuance.models import CardStatus
from issuance.services.verification import CARD_STATUS_REASONS

PREFIX = "YKTEC1:"
#: COSE algorithm ES256 (RFC 9053 §2.1)
ALG_ES256 = -7
#: SM2 signature with SM3 (GB/T 32918.2, default identity): a private-use value (< -65536)
ALG_SM2 = -65537
COSE_SIGN1_TAG = 18
#: CWT claim keys (RFC 8392 §3.1.4, 3.1.6, 3.1.7)
K_EXP, K_IAT, K_CTI = 4, 6, 7
#: private-use claim keys (RFC 8392 §4: integers below -65536)
K_ECARD, K_CARD, K_LOSS = -65537, -65538, -65539
#: the purpose of a signed resident-page link (never a code: a link carries this claim)
K_PURPOSE = -65540
NONCE_BYTES = 12
#: the longest code text accepted before anything is decoded (a code is about 260 characters)
MAX_TEXT = 1024
#: how far a code's issue time may be ahead of the verifier's clock (clocks differ)
CLOCK_SKEW_SECONDS = 30


class CodeReason(StrEnum):
    """Why a code itself is refused (stable codes, part of the API); a card's state refuses
    with :class:`issuance.services.verification.Reason` (``lost``, ``cancelled`` ...)."""

    MALFORMED = "code_malformed"
    UNKNOWN_KEY = "unknown_key"
    NOT_GENUINE = "not_genuine"
    EXPIRED = "code_expired"
    NOT_YET_VALID = "code_not_yet_valid"
    REUSED = "code_reused"
    UNKNOWN_ECARD = "unknown_ecard"


class MalformedCode(IssuanceError):
    """The text is not an e-card code (prefix, base45, CBOR or structure)."""


@dataclass(frozen=True)
class Claims:
    ecard_id: bytes
    card_ref: bytes
    issued_at: int
    expires_at: int
    nonce: bytes
    loss_authorised: bool = False


@dataclass(frozen=True)
class Decoded:
    """A code taken apart (nothing checked but its structure)."""

    alg: int
    kid: bytes
    claims: Claims
    #: what the signature signs (the Sig_structure)
    to_be_signed: bytes
    signature: bytes


def card_ref(card_number: str) -> bytes:
    """The card's pseudonym in codes (see the module docstring)."""
    return hashlib.sha256(b"ykt-ecard-card/1\n" + card_number.upper().encode("ascii")).digest()[:16]


@functools.lru_cache(maxsize=8)
def key_id(public_key_pem: bytes) -> bytes:
    """The COSE kid of the issuer's key: SHA-256 of its SubjectPublicKeyInfo, first 8 bytes."""
    return public_key_sha256(public_key_pem)[:8]


@functools.lru_cache(maxsize=8)
def algorithm_of(public_key_pem: bytes) -> int:
    return ALG_SM2 if sm2.public_from_pem(public_key_pem) is not None else ALG_ES256


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return bytes(cbor2.dumps(["Signature1", protected, b"", payload]))


#: ``sign(message) -> signature`` as the key service gives it (ECDSA: DER; SM2: r || s)
Signer = Callable[[bytes], bytes]


def sign_cose(payload_map: Mapping[int, Any], public_key_pem: bytes, sign: Signer) -> bytes:
    """The COSE_Sign1 (tagged) of a claims map, signed by ``sign`` (the HSM)."""
    alg = algorithm_of(public_key_pem)
    protected = bytes(cbor2.dumps({1: alg, 4: key_id(public_key_pem)}))
    payload = bytes(cbor2.dumps(dict(payload_map)))
    signature = sign(_sig_structure(protected, payload))
    if alg == ALG_ES256:  # the key service gives DER; COSE wants r || s (RFC 9053 §2.1)
        r, s = decode_dss_signature(signature)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return bytes(cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature])))


def claims_map(claims: Claims) -> dict[int, Any]:
    out: dict[int, Any] = {
        K_EXP: claims.expires_at,
        K_IAT: claims.issued_at,
        K_CTI: claims.nonce,
        K_ECARD: claims.ecard_id,
        K_CARD: claims.card_ref,
    }
    if claims.loss_authorised:
        out[K_LOSS] = True
    return out


def encode(claims: Claims, public_key_pem: bytes, sign: Signer) -> str:
    """The code's text (what the QR code holds)."""
    return PREFIX + base45.b45encode(sign_cose(claims_map(claims), public_key_pem, sign)).decode()


def open_cose(data: bytes) -> tuple[int, bytes, Mapping[Any, Any], bytes, bytes]:
    """(alg, kid, payload map, to-be-signed, signature) of a tagged COSE_Sign1; raise
    MalformedCode."""
    try:
        obj = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError) as exc:
        raise MalformedCode("not CBOR") from exc
    if not isinstance(obj, cbor2.CBORTag) or obj.tag != COSE_SIGN1_TAG:
        raise MalformedCode("not a tagged COSE_Sign1")
    parts = obj.value
    if not isinstance(parts, list | tuple) or len(parts) != 4:
        raise MalformedCode("a COSE_Sign1 has four parts")
    protected, unprotected, payload, signature = parts
    if not all(isinstance(x, bytes) for x in (protected, payload, signature)):
        raise MalformedCode("protected header, payload and signature are byte strings")
    if not isinstance(unprotected, Mapping):
        raise MalformedCode("the unprotected header is a map")
    try:
        header, body = cbor2.loads(protected), cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError) as exc:
        raise MalformedCode("header or payload is not CBOR") from exc
    if not isinstance(header, Mapping) or not isinstance(body, Mapping):
        raise MalformedCode("header and payload are maps")
    alg, kid = header.get(1), header.get(4)
    if alg not in (ALG_ES256, ALG_SM2) or not isinstance(kid, bytes):
        raise MalformedCode("unknown algorithm or no key id")
    return alg, kid, body, _sig_structure(protected, payload), signature


def decode(text: str) -> Decoded:
    """Take a code's text apart; raise MalformedCode (nothing is verified here)."""
    if len(text) > MAX_TEXT or not text.startswith(PREFIX):
        raise MalformedCode(f"an e-card code starts with {PREFIX} and is short")
    try:
        data = base45.b45decode(text[len(PREFIX) :])
    except (ValueError, KeyError) as exc:
        raise MalformedCode("not base45") from exc
    alg, kid, body, tbs, signature = open_cose(bytes(data))
    try:
        claims = Claims(
            ecard_id=body[K_ECARD],
            card_ref=body[K_CARD],
            issued_at=body[K_IAT],
            expires_at=body[K_EXP],
            nonce=body[K_CTI],
            loss_authorised=body.get(K_LOSS) is True,
        )
    except KeyError as exc:
        raise MalformedCode("a claim is missing") from exc
    ok = (
        isinstance(claims.ecard_id, bytes) and len(claims.ecard_id) == 16
        and isinstance(claims.card_ref, bytes) and len(claims.card_ref) == 16
        and isinstance(claims.nonce, bytes) and len(claims.nonce) == NONCE_BYTES
        and type(claims.issued_at) is int and type(claims.expires_at) is int
        and 0 < claims.issued_at < claims.expires_at < 2**32
        and K_PURPOSE not in body
    )  # fmt: skip
    if not ok:
        raise MalformedCode("a claim has the wrong type or size")
    return Decoded(alg, kid, claims, tbs, signature)


def check_signature(alg: int, kid: bytes, tbs: bytes, signature: bytes, public_pem: bytes) -> None:
    """Raise SignatureInvalid unless the issuer's key (``public_pem``) signed ``tbs`` under
    ``alg``; ``kid`` must name that key (else :class:`UnknownKey`)."""
    if kid != key_id(public_pem):
        raise UnknownKey("the code names another key")
    if alg != algorithm_of(public_pem):
        raise SignatureInvalid("the code's algorithm is not the key's")
    if len(signature) != 64:
        raise SignatureInvalid("a signature is r || s, 64 bytes")
    if alg == ALG_ES256:
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        signature = encode_dss_signature(r, s)
    verify_signature(public_pem, tbs, signature)


class UnknownKey(IssuanceError):
    """The code's kid is not the issuer's key."""


def check_code(
    text: str, public_pem: bytes, now: int, clock_skew: int = CLOCK_SKEW_SECONDS
) -> Claims | CodeReason:
    """The claims of a genuine code valid at ``now`` (Unix seconds), else why not: the checks
    an online and an offline verifier share (structure, key, signature, time)."""
    try:
        d = decode(text)
    except MalformedCode:
        return CodeReason.MALFORMED
    try:
        check_signature(d.alg, d.kid, d.to_be_signed, d.signature, public_pem)
    except UnknownKey:
        return CodeReason.UNKNOWN_KEY
    except SignatureInvalid:
        return CodeReason.NOT_GENUINE
    if d.claims.issued_at > now + clock_skew:
        return CodeReason.NOT_YET_VALID
    if d.claims.expires_at <= now:
        return CodeReason.EXPIRED
    return d.claims


def card_refusal(status: CardStatus | str, loss_authorised: bool) -> str | None:
    """Why a code of a card in ``status`` is refused (None: accepted). The one rule, online
    (the card's status now, the authorisation recorded) and offline (the status feed's
    status, the code's loss claim): an active card's codes are accepted, a provisionally lost
    card's only with the holder's authorisation (the national rule), every other state
    refuses with the chip verification's reason."""
    st = CardStatus(status)
    if st == CardStatus.ACTIVE:
        return None
    if st == CardStatus.LOST_PROVISIONAL and loss_authorised:
        return None
    return str(CARD_STATUS_REASONS[st])


# --- the signed link to the resident page --------------------------------------------------


def encode_link(ecard_id: bytes, expires_at: int, public_key_pem: bytes, sign: Signer) -> str:
    """A link token (base64url of a COSE_Sign1 with the purpose claim ``page``): opens the
    e-card's page until ``expires_at``. Never a code (a code has no purpose claim)."""
    import base64

    data = sign_cose({K_EXP: expires_at, K_ECARD: ecard_id, K_PURPOSE: "page"}, public_key_pem,
                     sign)  # fmt: skip
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def open_link(token: str, public_pem: bytes, now: int) -> bytes | None:
    """The e-card id a link token opens, None if it is not genuine or expired."""
    import base64

    if len(token) > MAX_TEXT:
        return None
    try:
        data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        alg, kid, body, tbs, signature = open_cose(data)
        check_signature(alg, kid, tbs, signature, public_pem)
    except (ValueError, MalformedCode, UnknownKey, SignatureInvalid):
        return None
    ecard_id, exp = body.get(K_ECARD), body.get(K_EXP)
    if body.get(K_PURPOSE) != "page" or not isinstance(ecard_id, bytes):
        return None
    if type(exp) is not int or exp <= now:
        return None
    return ecard_id
