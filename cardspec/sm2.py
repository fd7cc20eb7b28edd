"""SM2 digital signatures (GB/T 32918.2-2016) in plain Python, for the emulated chip and for
checking a chip's signatures.

pyca/cryptography has no SM2. The issuer's SM2 key lives in the HSM (``hsm.service``
``sign_sm2``); this module is what a *chip* computes (the card emulator stands in for a chip)
and what a verifier needs to check a chip's or the issuer's signature: public data only, so
the plain (not constant-time) arithmetic is no leak there. The emulated chip's private key is
a test chip's. Checked against the standard's worked example (``tests/cardspec/vectors``)
and against gmssl, a second implementation.

* curve: GB/T 32918.5-2017 recommended 256-bit prime curve (the example curve of
  GB/T 32918.2 Annex A can be given for the vector test);
* ``Z_A = SM3(ENTL || ID || a || b || x_G || y_G || x_A || y_A)``, ``e = SM3(Z_A || M)``;
  the default user identity ``1234567812345678`` (GM/T 0009-2012);
* signature ``r || s``, 2 x 32 bytes big-endian; public keys ``04 || x || y`` (65 bytes).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import hashes

from cardspec import tlv
from cardspec.errors import TlvError

DEFAULT_ID = b"1234567812345678"


@dataclass(frozen=True)
class Curve:
    p: int
    a: int
    b: int
    n: int
    gx: int
    gy: int


SM2_P256 = Curve(
    p=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF,
    a=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC,
    b=0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93,
    n=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123,
    gx=0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
    gy=0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0,
)

_Point = tuple[int, int] | None


def _add(c: Curve, p1: _Point, p2: _Point) -> _Point:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2:
        if (y1 + y2) % c.p == 0:
            return None
        lam = (3 * x1 * x1 + c.a) * pow(2 * y1, -1, c.p) % c.p
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, c.p) % c.p
    x3 = (lam * lam - x1 - x2) % c.p
    return x3, (lam * (x1 - x3) - y1) % c.p


def _mul(c: Curve, k: int, point: _Point) -> _Point:
    result: _Point = None
    while k:
        if k & 1:
            result = _add(c, result, point)
        point = _add(c, point, point)
        k >>= 1
    return result


def _b32(v: int) -> bytes:
    return v.to_bytes(32, "big")


def _sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def _on_curve(c: Curve, x: int, y: int) -> bool:
    return 0 <= x < c.p and 0 <= y < c.p and (y * y - x * x * x - c.a * x - c.b) % c.p == 0


def _point(public: bytes, c: Curve) -> tuple[int, int]:
    if len(public) != 65 or public[0] != 4:
        raise ValueError("an SM2 public key is 04 || x || y (65 bytes)")
    x, y = int.from_bytes(public[1:33], "big"), int.from_bytes(public[33:], "big")
    if not _on_curve(c, x, y):
        raise ValueError("the SM2 public key is not on the curve")
    return x, y


def public_key(private: int, c: Curve = SM2_P256) -> bytes:
    q = _mul(c, private, (c.gx, c.gy))
    assert q is not None
    return b"\x04" + _b32(q[0]) + _b32(q[1])


def generate(c: Curve = SM2_P256) -> tuple[int, bytes]:
    """A new key pair: (d in [1, n-2], 04 || x || y)."""
    d = 1 + secrets.randbelow(c.n - 2)
    return d, public_key(d, c)


def za(public: bytes, user_id: bytes = DEFAULT_ID, c: Curve = SM2_P256) -> bytes:
    """GB/T 32918.2 5.5: the hash of the signer's identity and public key."""
    if len(user_id) * 8 > 0xFFFF:
        raise ValueError("SM2 user identity too long")
    fields = b"".join(_b32(v) for v in (c.a, c.b, c.gx, c.gy))
    return _sm3((len(user_id) * 8).to_bytes(2, "big") + user_id + fields + public[1:])


def sign(
    private: int, message: bytes, user_id: bytes = DEFAULT_ID, *, k: int | None = None,
    c: Curve = SM2_P256,
) -> bytes:  # fmt: skip
    """GB/T 32918.2 6.1: ``r || s`` over ``e = SM3(Z_A || M)``; ``k`` only for the standard's
    worked example (a fresh random ``k`` otherwise)."""
    e = int.from_bytes(_sm3(za(public_key(private, c), user_id, c) + message), "big")
    while True:
        kk = k if k is not None else 1 + secrets.randbelow(c.n - 1)
        point = _mul(c, kk, (c.gx, c.gy))
        assert point is not None
        r = (e + point[0]) % c.n
        if r == 0 or r + kk == c.n:
            if k is not None:
                raise ValueError("k gives r = 0 or r + k = n")
            continue
        s = pow(1 + private, -1, c.n) * (kk - r * private) % c.n
        if s == 0:
            if k is not None:
                raise ValueError("k gives s = 0")
            continue
        return _b32(r) + _b32(s)


def verify(
    public: bytes, message: bytes, signature: bytes, user_id: bytes = DEFAULT_ID,
    c: Curve = SM2_P256,
) -> bool:  # fmt: skip
    """GB/T 32918.2 7.1: True if ``signature`` (``r || s``) is ``public``'s over ``message``."""
    if len(signature) != 64:
        return False
    try:
        q = _point(public, c)
    except ValueError:
        return False
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (1 <= r < c.n and 1 <= s < c.n):
        return False
    t = (r + s) % c.n
    if t == 0:
        return False
    e = int.from_bytes(_sm3(za(public, user_id, c) + message), "big")
    point = _add(c, _mul(c, s, (c.gx, c.gy)), _mul(c, t, q))
    return point is not None and (e + point[0]) % c.n == r


# --- The chip's SM2 key and certificates (CHOICE: LD/T 32.4/32.5, which would define them, are
# not public) ----------------------------------------------------------------------------------
# * An SM4 (third-generation) card generates its SM2 key pair at personalisation:
#   GENERATE ASYMMETRIC KEY PAIR ``84 46 00 81`` (ISO/IEC 7816-8 INS 46, key reference 81) in
#   the KMC channel, MAC'd; the answer is ``7F49 { 86 04||x||y }``. The private key never
#   leaves the chip; generating twice is refused (6985).
# * The issuer signs the card certificate with its SM2 key in the HSM and writes it, and the
#   issuer's certificate, with PUT DATA ``84 DA DF 20`` / ``84 DA DF 21`` (MAC'd, during
#   personalisation only); anyone reads them with GET DATA ``00 CA DF 20`` / ``DF 21``.
# * Certificate (a card-verifiable certificate in the ISO/IEC 7816-8 / BSI TR-03110 shape):
#   ``7F21 { 7F4E { 5F20 subject, 7F49 { 86 04||x||y } }, 5F37 r||s }``, the signature by the
#   issuer's SM2 key with SM3 and the default identity over the whole ``7F4E`` TLV. Subject:
#   the card identification code (16 bytes) for the card, the issuer's region code + name for
#   the issuer's own (self-signed) certificate.
# * INTERNAL AUTHENTICATE ``00 88 00 81`` with 1-64 bytes: the chip's SM2/SM3 signature over
#   them (default identity), the second proof next to the SM4 answer (``00 88 00 00``).

SM2_KEY_REF = 0x81
DO_CARD_CERTIFICATE = 0xDF20
DO_ISSUER_CERTIFICATE = 0xDF21


@dataclass(frozen=True)
class Certificate:
    subject: bytes
    public: bytes
    body: bytes
    signature: bytes


def certificate_body(subject: bytes, public: bytes) -> bytes:
    _point(public, SM2_P256)
    return tlv.encode(
        0x7F4E, tlv.encode(0x5F20, subject) + tlv.encode(0x7F49, tlv.encode(0x86, public))
    )


def certificate(body: bytes, signature: bytes) -> bytes:
    if len(signature) != 64:
        raise ValueError("an SM2 signature is 64 bytes (r || s)")
    return tlv.encode(0x7F21, body + tlv.encode(0x5F37, signature))


def parse_certificate(data: bytes) -> Certificate:
    """The parts of a certificate; ValueError if it is not one."""
    try:
        outer = tlv.decode_one(data)
        if outer.tag != 0x7F21:
            raise ValueError("not a certificate (7F21)")
        children = {c.tag: c for c in outer.children()}
        body, sig = children[0x7F4E], children[0x5F37].value
        fields = {c.tag: c for c in body.children()}
        subject = fields[0x5F20].value
        public = tlv.find(fields[0x7F49].value, 0x86)
    except (KeyError, TlvError) as exc:
        raise ValueError(f"malformed certificate: {exc}") from None
    if public is None or len(sig) != 64:
        raise ValueError("malformed certificate: key or signature")
    _point(public, SM2_P256)
    return Certificate(subject, public, body.to_bytes(), sig)


def check_certificate(data: bytes, issuer_public: bytes) -> Certificate:
    """The certificate if ``issuer_public`` signed it; ValueError otherwise."""
    cert = parse_certificate(data)
    if not verify(issuer_public, cert.body, cert.signature):
        raise ValueError("the certificate's signature does not verify under the issuer's key")
    return cert


class Sm2Signer(Protocol):
    """The issuer's SM2 key: ``hsm.service.Pkcs11KeyService`` (in the HSM), or
    :class:`SoftwareSm2Signer` for tests."""

    def sign_sm2(self, data: bytes, user_id: bytes = DEFAULT_ID) -> bytes: ...

    def sm2_public_key(self) -> bytes: ...


class SoftwareSm2Signer:
    """An SM2 key in memory: tests and throwaway demos only."""

    def __init__(self, private: int | None = None) -> None:
        self._d = private if private is not None else generate()[0]

    def sign_sm2(self, data: bytes, user_id: bytes = DEFAULT_ID) -> bytes:
        return sign(self._d, data, user_id)

    def sm2_public_key(self) -> bytes:
        return public_key(self._d)


def issuer_certificate(signer: Sm2Signer, subject: bytes) -> bytes:
    """The issuer's self-signed certificate (its public key under its own signature)."""
    body = certificate_body(subject, signer.sm2_public_key())
    return certificate(body, signer.sign_sm2(body))


def card_certificate(signer: Sm2Signer, card_identification_code: str, public: bytes) -> bytes:
    """The card certificate: the chip's SM2 key bound to its card identification code."""
    body = certificate_body(bytes.fromhex(card_identification_code), public)
    return certificate(body, signer.sign_sm2(body))


def verify_chip(
    card_certificate: bytes, issuer_public: bytes, card_identification_code: str,
    challenge: bytes, signature: bytes,
) -> None:  # fmt: skip
    """The second proof of a genuine SM4 card: ``card_certificate`` is the issuer's for this
    card and the chip signed ``challenge`` with the certified key. ValueError if not."""
    cert = check_certificate(card_certificate, issuer_public)
    if cert.subject != bytes.fromhex(card_identification_code):
        raise ValueError("the card certificate is for another card")
    if not verify(cert.public, challenge, signature):
        raise ValueError("the chip's SM2 signature does not verify")


# --- SM2 public keys in PEM (SubjectPublicKeyInfo: id-ecPublicKey with the SM2 curve OID
# 1.2.156.10197.1.301, GB/T 35276 / GM/T 0010) - pyca/cryptography cannot load them ---------
_SPKI_PREFIX = bytes.fromhex("3059301306072A8648CE3D020106082A811CCF5501822D034200")


def spki_der(public: bytes) -> bytes:
    """``04 || x || y`` as a DER SubjectPublicKeyInfo."""
    _point(public, SM2_P256)
    return _SPKI_PREFIX + public


def public_key_pem(public: bytes) -> bytes:
    """``04 || x || y`` as a PEM SubjectPublicKeyInfo."""
    import base64

    b64 = base64.encodebytes(spki_der(public)).replace(b"\n", b"")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return b"-----BEGIN PUBLIC KEY-----\n" + b"\n".join(lines) + b"\n-----END PUBLIC KEY-----\n"


def public_from_pem(pem: bytes | str) -> bytes | None:
    """The ``04 || x || y`` of an SM2 public key PEM; None if ``pem`` is not an SM2 key."""
    import base64
    import binascii

    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    body = "".join(line for line in text.strip().splitlines() if not line.startswith("-----"))
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(der) != len(_SPKI_PREFIX) + 65 or not der.startswith(_SPKI_PREFIX):
        return None
    return der[len(_SPKI_PREFIX) :]
