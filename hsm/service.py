"""The key service: every use of the issuer's keys goes through this port.

``KeyService`` is the port; :class:`Pkcs11KeyService` the product adapter (keys derived inside a
PKCS#11 HSM, default SoftHSM2), :class:`SoftwareKeyService` the in-memory twin for tests and
throwaway demos (clear master keys: never for real cards).

Per-card keys follow ``cardspec.keyscheme``: each card key is diversified from the issuer master
key of the same :class:`KeySlot` (version and algorithm from the card record) by the card factor
(province: region factor first), ``FIN_*`` keys by the EMV factor. Inside the HSM each step is a
``C_DeriveKey(CKM_DES3_ECB_ENCRYPT_DATA / CKM_AES_ECB_ENCRYPT_DATA)`` giving a session object;
the objects of one card live for one ``with service.card_crypto(ref) as crypto:`` block and are
destroyed after it.

Mechanisms used (all computed in the HSM, results compared with keyscheme in the tests):

* MAC (ISO/IEC 9797-1 alg. 1): SoftHSM2 has no CKM_DES3_MAC, so C_Encrypt(CKM_DES3_CBC / AES_CBC,
  IV) of the padded data, keeping the last block - the definition of MAC algorithm 1.
* Secure-messaging session keys: none by CHOICE - MACs use the card's own key with the card's
  challenge as initial value (the reasons are in ``cardspec.keyscheme``); the per-challenge
  session key of INTERNAL AUTHENTICATE is derived here (C_DeriveKey, destroyed at once).
* Per-card calls (:mod:`hsm.cardcrypto`, :mod:`hsm.prep`, :mod:`hsm.export`,
  :mod:`hsm.internal_auth`) go straight to the module's entry points (:mod:`hsm.p11fast`).
* Key loading (``wrapped_card_key``, the WRITE KEY payload): the card's key-loading key KLK is
  derived in the HSM (``C_DeriveKey(CKM_AES_ECB_ENCRYPT_DATA)`` from the AES master
  ``ykt:klk:aes:v<n>`` by the card factor; a sensitive, non-extractable session object with
  CKA_WRAP only) and every card key, 3DES or AES, is wrapped under it with
  ``C_WrapKey(CKM_AES_KEY_WRAP_PAD)`` (RFC 5649; format ``keyscheme.wrap_card_key``). No card
  key value is ever read out of the HSM: every object this module creates for a card is
  CKA_SENSITIVE. (An AES KLK, not the 3DES KMC, because SoftHSM2 and many HSMs cannot wrap
  under a DES3 key.) The blank chip's KLK itself travels like its KMC: wrapped under the chip
  maker's transport key (:meth:`Pkcs11KeyService.export_key_loading_key`).
* Key sets: a card's keys all come from masters of version ``CardKeyRef.key_version``;
  :meth:`Pkcs11KeyService.current_key_version` is the newest *complete* version in the token
  (:func:`hsm.ceremony.current_version`), which data preparation records on each new card.
* Export for a bureau: C_WrapKey(CKM_AES_KEY_WRAP_PAD) under an AES transport key
  (SoftHSM's 0x210A is RFC 5649, i.e. ``cryptography``'s ``aes_key_wrap_with_padding``, for
  keys of a multiple of 8 bytes - every key wrapped here is 16 bytes; for other lengths
  SoftHSM2 zero-pads first, see tests/hsm/test_hsm_vectors.py; PKCS#11 v3.0 names the strict
  RFC 5649 mechanism CKM_AES_KEY_WRAP_KWP).
* Bureau files (:meth:`Pkcs11KeyService.bureau_exporter`): card keys wrapped under a file KEK
  that is wrapped under the transport key, one call per card, see :mod:`hsm.export`.
* Per-card key objects are session objects with CKA_PRIVATE=False (still CKA_SENSITIVE, never
  readable, visible only to this process's sessions, destroyed after the card): SoftHSM2
  encrypts the value of every *private* object in memory under the token key, which costs an
  extra AES pass on each derivation and each use of the key (measured ~15 % of the per-card
  time in ``bench/dataprep.py``). Issuer master keys stay private token objects.
* Signing: ECDSA P-256 over SHA-256 (SoftHSM has no CKM_ECDSA_SHA256: the digest is computed
  here, the signature in the HSM), DER-encoded.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from pkcs11 import Mechanism, ObjectClass

from cardspec import keyscheme
from cardspec.crypto import CardCrypto, SoftwareCardCrypto
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import ceremony, p11fast
from hsm import pkcs11 as p11
from hsm.cardcrypto import HsmCardCrypto
from hsm.config import HsmConfig
from hsm.errors import (
    CryptogramMismatch,
    HsmError,
    KeyNotFound,
    SignatureInvalid,
)
from hsm.export import BureauExporter
from hsm.pkcs11 import LOCK, Pkcs11Token

if TYPE_CHECKING:
    from hsm.export import HsmBureauExporter, SoftwareBureauExporter

#: How long :meth:`Pkcs11KeyService.current_key_version` trusts its last look-up (seconds).
KEY_SET_CACHE_S = 5.0
#: Destroyed session objects after which the SoftHSM2 module is re-initialised (see
#: :meth:`Pkcs11KeyService.objects_destroyed`): ~4 MiB of SoftHSM garbage, 2,000 cards of 11
SOFTHSM_RECYCLE_AFTER = 22_000


@dataclass(frozen=True)
class CardKeyRef:
    """Which keys a card has: what the card record stores about its keys."""

    card_identification_code: str
    key_version: int = 1
    algorithm: Algorithm = Algorithm.DES3
    pan: str | None = field(default=None, repr=False)
    psn: str | None = None
    region_factor: bool = False
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
            return (keyscheme.emv_factor(self.pan, self.psn or "00"),)
        card = keyscheme.card_factor(self.card_identification_code)
        if self.region_factor:
            return (keyscheme.region_factor(region_code), card)
        return (card,)


@runtime_checkable
class CardCryptoSession(CardCrypto, Protocol):
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

    def sign(self, data: bytes) -> bytes: ...

    def public_key_pem(self) -> bytes: ...


def verify_signature(public_pem: bytes, data: bytes, signature: bytes) -> None:
    """Verify an ECDSA P-256 / SHA-256 DER signature; raise :class:`SignatureInvalid`."""
    key = serialization.load_pem_public_key(public_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureInvalid("not an EC public key")
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureInvalid("signature does not verify") from exc


def _check_cryptogram(expected: bytes, response: bytes) -> None:
    if not hmac.compare_digest(expected, response):
        raise CryptogramMismatch("INTERNAL AUTHENTICATE answer does not match the card's key")


# --- PKCS#11 adapter -------------------------------------------------------------------------


class Pkcs11KeyService:
    """:class:`KeyService` on a PKCS#11 token (product default)."""

    def __init__(
        self,
        token: Pkcs11Token,
        region_code: str = "330100",
        *,
        signing_label: str = ceremony.SIGNING_LABEL,
        recycle_after: int | None = None,
    ) -> None:
        self.token = token
        #: Re-initialise the module after this many destroyed card-key objects (None: the
        #: default, 20,000 on SoftHSM2 and never on other HSMs; 0: never).
        self._recycle_after = recycle_after
        self._destroyed = 0
        self.region_code = region_code
        self.signing_label = signing_label
        self._masters: dict[tuple[KeySlot, Algorithm, int], Any] = {}
        self._klk_masters: dict[int, Any] = {}
        self._supplier_masters: dict[str, Any] = {}
        self._masters_generation = -1
        self._transports: dict[str, Any] = {}
        self._transports_generation = -1
        self._current: dict[Algorithm, tuple[float, int]] = {}

    @classmethod
    def from_config(cls, config: HsmConfig, **kwargs: Any) -> Pkcs11KeyService:
        return cls(p11.open_token(config), config.region_code, **kwargs)

    @property
    def fast(self) -> p11fast.FastOps:
        """The module's direct PKCS#11 calls (:mod:`hsm.p11fast`): every per-card call."""
        return p11fast.fast_ops(str(self.token.config.module))

    @property
    def recycle_after(self) -> int:
        if self._recycle_after is None:
            self._recycle_after = SOFTHSM_RECYCLE_AFTER if self.token.is_softhsm else 0
        return self._recycle_after

    def objects_destroyed(self, count: int) -> None:
        """Count destroyed session objects; past :attr:`recycle_after`, re-initialise the
        module (LOCK held by the caller).

        SoftHSM2 keeps the memory of every destroyed session object until C_Finalize (about
        200 bytes each, measured: 2.2 KiB per card of 11 keys, i.e. > 2 GiB for a
        1,000,000-card batch). Re-initialising (C_Finalize, C_Initialize, login) frees it;
        every cached handle in the process is then refreshed through
        :attr:`Pkcs11Token.generation`, as after a fork.
        """
        self._destroyed += count
        limit = self.recycle_after
        if limit and self._destroyed >= limit:
            self._destroyed = 0
            self.token.reinitialise()

    def sync(self, generation: int) -> None:
        """Forget cached handles of a previous module initialisation (LOCK held)."""
        if generation != self._masters_generation:
            self._masters.clear()
            self._klk_masters.clear()
            self._supplier_masters.clear()
            self._masters_generation = generation
        if generation != self._transports_generation:
            self._transports.clear()
            self._transports_generation = generation

    def master_synced(self, slot: KeySlot, alg: Algorithm, version: int) -> Any:
        """The master key object; the caller holds LOCK and called :meth:`sync`."""
        key = self._masters.get((slot, alg, version))
        if key is None:
            label = ceremony.master_label(slot, alg, version)
            key = self._masters[(slot, alg, version)] = p11.find_one(self.token.session(), label)
        return key

    def klk_master_synced(self, version: int) -> Any:
        """The KLK master of key set ``version``; the caller holds LOCK and called :meth:`sync`."""
        key = self._klk_masters.get(version)
        if key is None:
            label = ceremony.klk_label(version)
            key = self._klk_masters[version] = p11.find_one(self.token.session(), label)
        return key

    def supplier_master_synced(self, supplier: str, kind: str, alg: Algorithm, version: int) -> Any:
        """A master of a chip supplier's delivery key set (``kind`` ``kmc`` or ``klk``); the
        caller holds LOCK and called :meth:`sync`."""
        label = ceremony.supplier_label(supplier, kind, alg, version)
        key = self._supplier_masters.get(label)
        if key is None:
            key = self._supplier_masters[label] = p11.find_one(self.token.session(), label)
        return key

    def current_key_version(self, algorithm: Algorithm) -> int:
        """The newest complete key set version of ``algorithm`` in the token (what new cards
        get; see :mod:`hsm.ceremony`). Looked up again after :data:`KEY_SET_CACHE_S` seconds,
        so a rotation done by ``ykt hsm rotate`` in another process is seen by a running
        pipeline within that time."""
        now = time.monotonic()
        cached = self._current.get(algorithm)
        if cached is not None and now - cached[0] < KEY_SET_CACHE_S:
            return cached[1]
        version = ceremony.current_version(self.token, algorithm)
        if version is None:
            raise KeyNotFound(
                f"no complete {algorithm.value} key set in the HSM (ykt hsm init / rotate)"
            )
        self._current[algorithm] = (now, version)
        return version

    def master(self, slot: KeySlot, alg: Algorithm, version: int) -> Any:
        """The master key object (LOCK held by the caller, or taken here)."""
        with LOCK:
            self.sync(self.token.generation)
            key = self._masters.get((slot, alg, version))
            if key is None:
                label = ceremony.master_label(slot, alg, version)
                with self.token.use(f"looking up {label}") as session:
                    key = p11.find_one(session, label)
                self._masters[(slot, alg, version)] = key
            return key

    def transport(self, transport_label: str) -> Any:
        """The transport key object (cached per module initialisation)."""
        label = ceremony.transport_label(transport_label)
        with self.token.use(f"looking up {label}") as session:
            self.sync(self.token.generation)
            key = self._transports.get(label)
            if key is None:
                key = self._transports[label] = p11.find_one(session, label)
            return key

    def card_crypto(self, ref: CardKeyRef) -> HsmCardCrypto:
        return HsmCardCrypto(self, ref)

    def verify_internal_auth(
        self, ref: CardKeyRef, factor: bytes, random: bytes, response: bytes
    ) -> None:
        from hsm.internal_auth import expected_response

        _check_cryptogram(expected_response(self, ref, factor, random), response)

    def external_auth(self, ref: CardKeyRef, slot: KeySlot, challenge: bytes) -> bytes:
        with self.card_crypto(ref) as crypto:
            return crypto.external_auth(slot, challenge)

    def export_card_keys(
        self, ref: CardKeyRef, slots: Iterable[KeySlot], transport_label: str
    ) -> dict[KeySlot, bytes]:
        transport = self.transport(transport_label)
        with self.card_crypto(ref) as crypto:
            return crypto.export(slots, transport)

    def export_key_loading_key(self, ref: CardKeyRef, transport_label: str) -> bytes:
        transport = self.transport(transport_label)
        with self.card_crypto(ref) as crypto:
            return crypto.export_klk(transport)

    def bureau_exporter(self, transport_label: str) -> HsmBureauExporter:
        """Exports for one bureau file (see "Bureau files" in :mod:`hsm.export`)."""
        from hsm.export import HsmBureauExporter

        return HsmBureauExporter(self, transport_label)

    def sign(self, data: bytes) -> bytes:
        from pkcs11.util.ec import encode_ecdsa_signature

        digest = hashlib.sha256(data).digest()
        with self.token.use("signing") as session:
            key = p11.find_one(session, self.signing_label, ObjectClass.PRIVATE_KEY)
            raw = key.sign(digest, mechanism=Mechanism.ECDSA)
        return bytes(encode_ecdsa_signature(raw))

    def public_key_pem(self) -> bytes:
        from pkcs11.util.ec import encode_ec_public_key

        with self.token.use("reading the signing public key") as session:
            key = p11.find_one(session, self.signing_label, ObjectClass.PUBLIC_KEY)
            der = encode_ec_public_key(key)
        public = serialization.load_der_public_key(der)
        return public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


# --- Software twin ---------------------------------------------------------------------------


class SoftwareCardSession(SoftwareCardCrypto):
    """:class:`SoftwareCardCrypto` with the session protocol (nothing to destroy)."""

    def kcv(self, slot: KeySlot) -> bytes:
        return keyscheme.kcv(self.card_key(slot), self.algorithm)

    def close(self) -> None:
        pass

    def __enter__(self) -> SoftwareCardSession:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SoftwareKeyService:
    """The same port with master keys in memory. Tests and throwaway demos only."""

    def __init__(
        self,
        masters: Mapping[tuple[KeySlot, Algorithm, int], bytes],
        region_code: str = "330100",
        transport_keys: Mapping[str, bytes] | None = None,
        signing_key: ec.EllipticCurvePrivateKey | None = None,
        klk_masters: Mapping[int, bytes] | None = None,
    ) -> None:
        self._masters = dict(masters)
        #: KLK masters by key set version (``ykt:klk:aes:v<n>``)
        self._klk = dict(klk_masters or {})
        self.region_code = region_code
        self._transport = {
            ceremony.transport_label(k): v for k, v in (transport_keys or {}).items()
        }
        self._signing = signing_key or ec.generate_private_key(ec.SECP256R1())

    @classmethod
    def random(
        cls,
        region_code: str = "330100",
        algorithms: Iterable[Algorithm] = (Algorithm.DES3, Algorithm.AES),
    ) -> SoftwareKeyService:

        return cls(
            {(slot, alg, 1): os.urandom(16) for slot in KeySlot for alg in algorithms},
            region_code,
            klk_masters={1: os.urandom(16)},
        )

    def card_crypto(self, ref: CardKeyRef) -> SoftwareCardSession:
        if ref.chip_maker is not None:
            raise KeyNotFound("the software key service holds no chip supplier key sets")
        masters = {}
        for slot in KeySlot:
            key = self._masters.get((slot, ref.algorithm, ref.key_version))
            if key is not None and (ref.pan or not slot.financial):
                masters[slot] = key
        if not masters:
            raise KeyNotFound(f"no {ref.algorithm.value} master keys v{ref.key_version}")
        card = ref.factors(KeySlot.IRK, self.region_code)
        emv = ref.factors(KeySlot.FIN_AC, self.region_code) if ref.pan else ()
        return SoftwareCardSession(
            masters, card, ref.algorithm, emv, klk_master=self._klk.get(ref.key_version)
        )

    def current_key_version(self, algorithm: Algorithm) -> int:
        complete = [
            v
            for v in {v for (_, a, v) in self._masters if a is algorithm}
            if v in self._klk and all((s, algorithm, v) in self._masters for s in KeySlot)
        ]
        if not complete:
            raise KeyNotFound(f"no complete {algorithm.value} key set")
        return max(complete)

    def export_key_loading_key(self, ref: CardKeyRef, transport_label: str) -> bytes:
        label = ceremony.transport_label(transport_label)
        if label not in self._transport:
            raise KeyNotFound(f"no transport key {label}")
        if ref.key_version not in self._klk:
            raise KeyNotFound(f"no KLK master v{ref.key_version}")
        klk = self.card_crypto(ref).key_loading_key()
        return aes_key_wrap_with_padding(self._transport[label], klk)

    def verify_internal_auth(
        self, ref: CardKeyRef, factor: bytes, random: bytes, response: bytes
    ) -> None:
        _check_cryptogram(self.card_crypto(ref).internal_auth_response(factor, random), response)

    def external_auth(self, ref: CardKeyRef, slot: KeySlot, challenge: bytes) -> bytes:
        return self.card_crypto(ref).external_auth(slot, challenge)

    def export_card_keys(
        self, ref: CardKeyRef, slots: Iterable[KeySlot], transport_label: str
    ) -> dict[KeySlot, bytes]:
        label = ceremony.transport_label(transport_label)
        if label not in self._transport:
            raise KeyNotFound(f"no transport key {label}")
        crypto = self.card_crypto(ref)
        out = {}
        for slot in slots:
            key = crypto.card_key(slot)
            if ref.algorithm is Algorithm.DES3:
                key = keyscheme.odd_parity(key)
            out[slot] = aes_key_wrap_with_padding(self._transport[label], key)
        return out

    def bureau_exporter(self, transport_label: str) -> SoftwareBureauExporter:
        from hsm.export import SoftwareBureauExporter

        label = ceremony.transport_label(transport_label)
        if label not in self._transport:
            raise KeyNotFound(f"no transport key {label}")
        return SoftwareBureauExporter(self, self._transport[label])

    def sign(self, data: bytes) -> bytes:
        return self._signing.sign(data, ec.ECDSA(hashes.SHA256()))

    def public_key_pem(self) -> bytes:
        return self._signing.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def key_service_from_settings(settings: Any) -> KeyService:
    """The product key service for these settings (PKCS#11 on the configured module)."""
    config = HsmConfig.from_settings(settings)
    return Pkcs11KeyService.from_config(config)
