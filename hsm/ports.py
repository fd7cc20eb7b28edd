"""The ports of the HSM package: what callers are typed against, and what its PKCS#11 adapters
(:mod:`hsm.cardcrypto`, :mod:`hsm.export`, :mod:`hsm.prep`) need of the key service.

:class:`KeyService` is the port every caller uses (card cryptograms, key export, bureau files,
the system's signature); :class:`Pkcs11Keys` is the narrower view the per-card adapters take of
:class:`hsm.service.Pkcs11KeyService` (the token, the cached master handles, object counting),
so that the adapters never import the service module that builds them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cardspec import keyscheme, sm2
from cardspec.crypto import CardCrypto
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import p11fast
from hsm.errors import HsmError, KeyDomainError, SignatureInvalid
from hsm.pkcs11 import Pkcs11Token

#: The block a key check value (KCV) encrypts under the key (first 3 bytes of the result).
KCV_BLOCK = {alg: keyscheme.kcv_block(alg) for alg in Algorithm}


@dataclass(frozen=True)
class FileKek:
    """A bureau file's key-encryption key as it travels: wrapped under the transport key."""

    kek_id: int
    wrapped: bytes = field(repr=False)
    """RFC 5649 AES key wrap (with padding) of the AES-128 KEK under the transport key."""
    kcv: bytes
    """``keyscheme.kcv(kek, Algorithm.AES)``."""


@runtime_checkable
class BureauExporter(Protocol):
    """Exports cards for one bureau file (context manager; destroys its KEK on close)."""

    def export(
        self,
        ref: CardKeyRef,
        slots: Iterable[KeySlot],
        sensitive: Sequence[bytes] = (),
        under: KeySlot = KeySlot.KMC,
    ) -> BureauExport: ...

    def kek(self, kek_id: int) -> FileKek: ...

    def close(self) -> None: ...

    def __enter__(self) -> BureauExporter: ...

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@dataclass(frozen=True)
class BureauExport:
    """One card's keys for a card bureau: wrapped under the transport key, with their KCVs,
    and sensitive data (initial PIN blocks) encrypted under the card key ``under`` (KMC)."""

    wrapped: dict[KeySlot, bytes] = field(repr=False)
    """RFC 5649 AES key wrap (with padding) of the 16-byte card key (3DES: odd parity) under
    the file KEK ``kek_id``."""
    kcvs: dict[KeySlot, bytes]
    """``keyscheme.kcv`` of each card key, computed in the HSM."""
    encrypted: tuple[bytes, ...] = field(repr=False)
    """``keyscheme.encrypt_sensitive(card key under, data)`` for each sensitive input."""
    kek_id: int = 0
    klk_wrapped: bytes = field(default=b"", repr=False)
    """The card's key-loading key KLK (AES-128), RFC 5649-wrapped under the file KEK: the
    bureau wraps each card key under it for WRITE KEY (``keyscheme.wrap_card_key``)."""
    klk_kcv: bytes = b""
    """``keyscheme.kcv(klk, AES)``."""


@dataclass(frozen=True)
class CardKeyRef:
    """Which keys a card has: what the card record stores about its keys."""

    card_identification_code: str
    key_version: int = 1
    algorithm: Algorithm = Algorithm.DES3
    pan: str | None = field(default=None, repr=False)
    psn: str | None = None
    region_factor: bool = False
    #: The key domain of the bank whose issuer master keys the card's EMV keys (``FIN_*``) come
    #: from (``ykt:bank:<bank>:imk-*:<alg>:v<bank_key_version>``, :mod:`hsm.ceremony`), with
    #: the PAN and PSN that bank gave; ``None``: the card has no EMV keys.
    bank: str | None = None
    bank_key_version: int = 1
    #: ``(supplier, version)`` when the blank chip came pre-personalised by a chip supplier:
    #: its KMC and KLK are diversified by the chip serial alone from that supplier's delivery
    #: key set (``ykt:supplier:<name>:kmc|klk:...:v<version>``, see :mod:`hsm.ceremony`);
    #: ``None``: from the issuer's own KMC/KLK masters of ``key_version`` (virtual stock).
    chip_maker: tuple[str, int] | None = None

    def factors(self, slot: KeySlot, region_code: str) -> tuple[bytes, ...]:
        """The diversification factors of ``slot``, outermost first."""
        if slot.financial:
            if not self.pan:
                raise HsmError(f"{slot.value}: financial keys need the card's PAN")
            return (keyscheme.emv_factor(self.pan, self.psn or "00", self.algorithm),)
        card = keyscheme.card_factor(self.card_identification_code)
        if self.region_factor:
            return (keyscheme.region_factor(region_code), card)
        return (card,)


def centre_use(slot: KeySlot) -> None:
    """A card-centre computation (EXTERNAL AUTHENTICATE, secure messaging, sensitive data) with
    the card key ``slot``: refused for a bank's EMV key (``FIN_*``, the bank's key domain)."""
    if slot.financial:
        raise KeyDomainError(
            f"{slot.value} is the bank's EMV key: it serves only the bank's application "
            "(issuer scripts, cryptograms), never a card-centre command", slot=slot.value,
        )  # fmt: skip


def bank_use(slot: KeySlot) -> None:
    """An issuer script of the bank's application with the card key ``slot``: refused for a
    card-centre key."""
    if not slot.financial:
        raise KeyDomainError(
            f"{slot.value} is a card-centre key: the bank's issuer scripts use only the "
            "card's EMV keys (fin_smi, fin_smc)", slot=slot.value,
        )  # fmt: skip


class IssuerScriptCrypto(Protocol):
    """The bank's issuer-script computations of one card (EMV Book 2 9.2-9.3), with the card's
    MK-SMI / MK-SMC from the bank's key domain: :class:`hsm.cardcrypto.HsmCardCrypto` in the
    HSM, the software twin with clear test keys; ``cardspec.emv`` is the reference."""

    def issuer_script_mac(self, header: bytes, atc: int, ac: bytes, data: bytes) -> bytes: ...

    def encipher_pin_block(self, ac: bytes, pin_block: bytes) -> bytes: ...


@runtime_checkable
class CardCryptoSession(CardCrypto, IssuerScriptCrypto, Protocol):
    """A :class:`CardCrypto` whose derived keys live until :meth:`close` (context manager)."""

    def kcv(self, slot: KeySlot) -> bytes: ...

    def close(self) -> None: ...

    def __enter__(self) -> CardCryptoSession: ...

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class KeyService(Protocol):
    """The port: card cryptograms, bureau export and the system's signature."""

    def card_crypto(self, ref: CardKeyRef) -> CardCryptoSession: ...

    def verify_internal_auth(
        self, ref: CardKeyRef, factor: bytes, random: bytes, response: bytes
    ) -> None: ...

    def external_auth(self, ref: CardKeyRef, slot: KeySlot, challenge: bytes) -> bytes: ...

    def export_card_keys(
        self, ref: CardKeyRef, slots: Iterable[KeySlot], transport_label: str
    ) -> dict[KeySlot, bytes]: ...

    def export_key_loading_key(self, ref: CardKeyRef, transport_label: str) -> bytes:
        """The card's key-loading key KLK (AES-128) wrapped (RFC 5649) under a transport key:
        what the blank chip's maker loads next to the KMC."""
        ...

    def current_key_version(self, algorithm: Algorithm) -> int:
        """The newest complete key set version of ``algorithm`` (new cards get it)."""
        ...

    def bureau_exporter(self, transport_label: str) -> BureauExporter: ...

    @property
    def hsm_keys(self) -> Pkcs11Keys | None:
        """This service's keys inside a PKCS#11 token, for data preparation's perso keys and
        records (:mod:`hsm.prep`); None when it keeps its keys elsewhere (the software twin:
        no perso keys, every card's keys derived at the station)."""
        ...

    def sign(self, data: bytes) -> bytes: ...

    def public_key_pem(self) -> bytes: ...


def verify_signature(public_pem: bytes, data: bytes, signature: bytes) -> None:
    """Verify an ECDSA P-256 / SHA-256 DER signature, or an SM2/SM3 one (``r || s``, default
    identity) when the key is an SM2 key (``[hsm] signing = "sm2"``); raise
    :class:`SignatureInvalid`."""
    sm2_key = sm2.public_from_pem(public_pem)
    if sm2_key is not None:
        if not sm2.verify(sm2_key, data, signature):
            raise SignatureInvalid("SM2 signature does not verify")
        return
    key = serialization.load_pem_public_key(public_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureInvalid("not an EC public key")
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureInvalid("signature does not verify") from exc


def public_key_sha256(public_pem: bytes) -> bytes:
    """SHA-256 of a signing public key's SubjectPublicKeyInfo (DER), ECDSA P-256 or SM2: the
    key's identity for those who check its signatures (the feed's ``key_id``, the e-card's
    COSE ``kid``)."""
    sm2_key = sm2.public_from_pem(public_pem)  # pyca cannot load SM2 keys
    der = (
        sm2.spki_der(sm2_key)
        if sm2_key is not None
        else serialization.load_pem_public_key(public_pem).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return hashlib.sha256(der).digest()


class HsmCardSession(CardCryptoSession, Protocol):
    """A card's keys in the HSM (:class:`hsm.cardcrypto.HsmCardCrypto`)."""

    def __enter__(self) -> HsmCardSession: ...


class Pkcs11Keys(Protocol):
    """What the PKCS#11 adapters use of :class:`hsm.service.Pkcs11KeyService` (LOCK held by
    the caller for every ``*_synced`` call, after :meth:`sync`)."""

    token: Pkcs11Token
    region_code: str

    @property
    def fast(self) -> p11fast.FastOps: ...

    def sync(self, generation: int) -> None: ...

    def objects_destroyed(self, count: int) -> None: ...

    def master_synced(self, slot: KeySlot, alg: Algorithm, version: int) -> Any: ...

    def card_master_synced(self, ref: CardKeyRef, slot: KeySlot) -> Any: ...

    def klk_master_synced(self, version: int, alg: Algorithm = Algorithm.DES3) -> Any: ...

    def supplier_master_synced(
        self, supplier: str, kind: str, alg: Algorithm, version: int
    ) -> Any: ...

    def transport(self, transport_label: str) -> Any: ...

    def card_crypto(self, ref: CardKeyRef) -> HsmCardSession: ...

    def verify_internal_auth(
        self, ref: CardKeyRef, factor: bytes, random: bytes, response: bytes
    ) -> None: ...


class ClearCardKeys(Protocol):
    """A card's keys in clear (the software twin's session, test keys only)."""

    def card_key(self, slot: KeySlot) -> bytes: ...

    def key_loading_key(self) -> bytes: ...


class ClearKeys(Protocol):
    """What the software twin's bureau exporter uses of :class:`hsm.service.SoftwareKeyService`."""

    def card_crypto(self, ref: CardKeyRef) -> ClearCardKeys: ...
