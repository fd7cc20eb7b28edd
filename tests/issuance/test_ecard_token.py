"""The e-card code's format (issue 21), without a database: COSE_Sign1 (RFC 9052) over CBOR
claims in base45, checked here part by part against the RFCs with the ``cryptography`` library
directly (not through the module's own check), for both issuer key kinds (ECDSA P-256: ES256;
SM2: the private-use algorithm), and the refusals of a code itself."""

from __future__ import annotations

import os
import time

import base45
import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from cardspec import sm2
from issuance.services import ecard_token as t


def _p256() -> tuple[bytes, t.Signer, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, lambda m: key.sign(m, ec.ECDSA(hashes.SHA256())), key


def _claims(now: int, **kw: object) -> t.Claims:
    base = {"ecard_id": os.urandom(16), "card_ref": t.card_ref("A00000011"), "issued_at": now,
            "expires_at": now + 90, "nonce": t.new_nonce()}  # fmt: skip
    base.update(kw)
    return t.Claims(**base)  # type: ignore[arg-type]


def test_es256_code_is_a_cose_sign1_any_verifier_checks() -> None:
    pem, sign, key = _p256()
    now = int(time.time())
    claims = _claims(now)
    text = t.encode(claims, pem, sign)
    assert text.startswith("YKTEC1:") and len(text) < 300
    # base45 alphabet only (QR alphanumeric mode)
    assert set(text[7:]) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")
    tag = cbor2.loads(base45.b45decode(text[7:]))
    assert tag.tag == 18  # COSE_Sign1 (RFC 9052 §4.2)
    protected, unprotected, payload, signature = tag.value
    assert dict(cbor2.loads(protected)) == {1: -7, 4: t.key_id(pem)} and dict(unprotected) == {}
    body = dict(cbor2.loads(payload))
    assert body[4] == claims.expires_at and body[6] == claims.issued_at  # CWT exp, iat
    assert body[7] == claims.nonce and body[-65537] == claims.ecard_id
    # RFC 9052 §4.4 Sig_structure, ES256 r || s (RFC 9053 §2.1), verified by cryptography
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    assert len(signature) == 64
    der = encode_dss_signature(int.from_bytes(signature[:32]), int.from_bytes(signature[32:]))
    key.public_key().verify(der, to_be_signed, ec.ECDSA(hashes.SHA256()))
    assert t.check_code(text, pem, now) == claims


def test_sm2_code_uses_the_private_algorithm_and_verifies() -> None:
    private, public = sm2.generate()
    pem = sm2.public_key_pem(public)
    now = int(time.time())
    claims = _claims(now, loss_authorised=True)
    text = t.encode(claims, pem, lambda m: sm2.sign(private, m))
    tag = cbor2.loads(base45.b45decode(text[7:]))
    assert dict(cbor2.loads(tag.value[0]))[1] == t.ALG_SM2
    assert sm2.verify(public, cbor2.dumps(["Signature1", tag.value[0], b"", tag.value[2]]),
                      tag.value[3])  # fmt: skip
    assert t.check_code(text, pem, now) == claims
    # an ES256 verifier key for an SM2 code: another key
    other, _, _ = _p256()
    assert t.check_code(text, other, now) == t.CodeReason.UNKNOWN_KEY


def test_refusals_of_the_code_itself() -> None:
    pem, sign, _ = _p256()
    now = int(time.time())
    text = t.encode(_claims(now), pem, sign)
    assert t.check_code(text, pem, now + 90) == t.CodeReason.EXPIRED
    assert t.check_code(text, pem, now - 31) == t.CodeReason.NOT_YET_VALID
    other_pem, other_sign, _ = _p256()
    assert t.check_code(t.encode(_claims(now), other_pem, other_sign), pem, now) == \
        t.CodeReason.UNKNOWN_KEY  # fmt: skip
    # another key's signature under this key's id
    tag = cbor2.loads(base45.b45decode(text[7:]))
    forged = t.sign_cose(cbor2.loads(tag.value[2]), other_pem, other_sign)
    forged_tag = cbor2.loads(forged)
    mixed = cbor2.dumps(cbor2.CBORTag(18, [tag.value[0], {}, forged_tag.value[2],
                                           forged_tag.value[3]]))  # fmt: skip
    assert t.check_code("YKTEC1:" + base45.b45encode(mixed).decode(), pem, now) == \
        t.CodeReason.NOT_GENUINE  # fmt: skip
    for junk in (
        "",
        "YKTEC1:",
        "YKTEC1:abc",
        "HC1:" + text[7:],
        text + "::",
        "YKTEC1:" + "A" * 2000,
    ):
        assert t.check_code(junk, pem, now) == t.CodeReason.MALFORMED, junk
    # a link to the resident page is never a code (and a code never a link)
    link = t.encode_link(os.urandom(16), now + 600, pem, sign)
    import base64

    as_code = "YKTEC1:" + base45.b45encode(base64.urlsafe_b64decode(link + "==")).decode()
    assert t.check_code(as_code, pem, now) == t.CodeReason.MALFORMED
    assert t.open_link(link, pem, now + 601) is None
    code_as_link = base64.urlsafe_b64encode(base45.b45decode(text[7:])).decode().rstrip("=")
    assert t.open_link(code_as_link, pem, now) is None


_ANY_PEM = _p256()[0]


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_any_bytes_are_refused_never_crash(data: bytes) -> None:
    text = "YKTEC1:" + base45.b45encode(data).decode()
    assert t.check_code(text, _ANY_PEM, int(time.time())) == t.CodeReason.MALFORMED


@pytest.mark.parametrize("status, authorised, reason", [
    ("active", False, None), ("lost_provisional", False, "lost"),
    ("lost_provisional", True, None), ("lost_formal", True, "lost"),
    ("cancelled", False, "cancelled"), ("replaced", False, "replaced"),
    ("suspended", False, "suspended"), ("issued", False, "not_activated"),
])  # fmt: skip
def test_the_one_card_rule(status: str, authorised: bool, reason: str | None) -> None:
    assert t.card_refusal(status, authorised) == reason
