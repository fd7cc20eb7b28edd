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
* Key loading (``wrapped_card_key``): C_WrapKey(CKM_DES3_ECB) / C_WrapKey(CKM_AES_CBC, zero IV,
  = ECB for one block) of the card key object under the loading key object; the format is
  ``keyscheme.wrap_card_key`` (CHOICE changed for this: ECB of the 16-byte key, no LD framing).
  **SoftHSM2 cannot wrap under a DES3 key at all.** For 3DES cards on SoftHSM the adapter falls
  back (only when the token is SoftHSM, or when explicitly allowed) to a *clear card-key
  window*: a non-sensitive twin of the card key being loaded is derived, read, encrypted under
  the loading key inside the HSM and destroyed. Issuer master keys and the loading key never
  leave the HSM; the loaded card key is briefly in memory. A production HSM offering
  CKM_DES3_ECB wrapping never takes this path (``clear_des3_key_loading=False`` enforces it).
* Export for a bureau: C_WrapKey(CKM_AES_KEY_WRAP_PAD) under an AES transport key
  (SoftHSM's 0x210A is RFC 5649, i.e. ``cryptography``'s ``aes_key_wrap_with_padding``).
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
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pkcs11.exceptions as p11x
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from pkcs11 import Attribute, Mechanism, ObjectClass

from cardspec import keyscheme
from cardspec.crypto import CardCrypto, SoftwareCardCrypto
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import ceremony, p11fast
from hsm import pkcs11 as p11
from hsm.config import HsmConfig
from hsm.errors import (
    CryptogramMismatch,
    HsmError,
    KeyNotFound,
    MechanismUnavailable,
    SignatureInvalid,
)
from hsm.export import _KCV_BLOCK, BureauExport, BureauExporter
from hsm.pkcs11 import LOCK, Pkcs11Token

if TYPE_CHECKING:
    from hsm.export import HsmBureauExporter, SoftwareBureauExporter

log = logging.getLogger(__name__)

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

_CARD_KEY_USAGE = (Attribute.ENCRYPT, Attribute.DERIVE, Attribute.WRAP)
#: Card keys and intermediate keys: session objects, public (see the module docstring), sensitive.
_CARD_KEY_TEMPLATE: dict[Attribute, Any] = {
    Attribute.PRIVATE: False,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: True,
    **p11.capabilities(*_CARD_KEY_USAGE),
}
_INTERMEDIATE_TEMPLATE: dict[Attribute, Any] = {
    Attribute.PRIVATE: False,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    **p11.capabilities(Attribute.DERIVE),
}


class HsmCardCrypto:
    """:class:`CardCrypto` for one card with keys derived in the HSM (session objects)."""

    def __init__(self, service: Pkcs11KeyService, ref: CardKeyRef) -> None:
        p11.check_algorithm(ref.algorithm)
        self.algorithm = ref.algorithm
        self.ref = ref
        self._service = service
        self._keys: dict[KeySlot, Any] = {}
        self._generation = -1
        #: diversification data blocks per kind of slot (card / financial), computed once
        self._data: dict[bool, tuple[bytes, ...]] = {}

    # lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> HsmCardCrypto:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Destroy this card's derived key objects."""
        with self._service.token.use("destroying card keys"):
            destroyed = 0
            if self._generation == self._service.token.generation:
                for key in self._keys.values():
                    key.destroy()
                destroyed = len(self._keys)
            self._keys.clear()
            self._service.objects_destroyed(destroyed)

    # derivation (LOCK held) --------------------------------------------------------------
    def _derive_chain(self, slot: KeySlot, template: dict[Attribute, Any]) -> Any:
        base = self._service.master_synced(slot, self.algorithm, self.ref.key_version)
        blocks = self._data.get(slot.financial)
        if blocks is None:
            blocks = self._data[slot.financial] = tuple(
                keyscheme.diversification_data(factor, self.algorithm)
                for factor in self.ref.factors(slot, self._service.region_code)
            )
        key = base
        for n, data in enumerate(blocks, start=1):
            last = n == len(blocks)
            child = p11.derive(
                key,
                self.algorithm,
                data,
                template=template if last else _INTERMEDIATE_TEMPLATE,
            )
            if key is not base:
                key.destroy()
            key = child
        return key

    def _sync(self) -> None:
        """Drop handles of a previous module initialisation (fork, recycling); once per
        operation, LOCK held."""
        generation = self._service.token.generation
        if generation != self._generation:
            self._keys.clear()  # handles of a previous initialisation are void
            self._generation = generation
        self._service.sync(generation)

    def _key(self, slot: KeySlot) -> Any:
        self._sync()
        return self._key_synced(slot)

    def _key_synced(self, slot: KeySlot) -> Any:
        key = self._keys.get(slot)
        if key is None:
            key = self._keys[slot] = self._derive_chain(slot, _CARD_KEY_TEMPLATE)
        return key

    def derive_all(self, slots: Iterable[KeySlot]) -> None:
        """Derive the given slots now (e.g. at the start of a personalisation)."""
        with self._service.token.use("deriving card keys"):
            self._sync()
            for slot in slots:
                self._key_synced(slot)

    # CardCrypto --------------------------------------------------------------------------
    def kcv(self, slot: KeySlot) -> bytes:
        """KCV of the card key (``keyscheme.kcv``), computed in the HSM: one C_Encrypt of the
        KCV block under the card key object (card keys have CKA_ENCRYPT; masters do not and
        use :func:`hsm.pkcs11.kcv`)."""
        with self._service.token.use("card key KCV"):
            return self._kcv(slot)

    def _kcv(self, slot: KeySlot) -> bytes:
        block = _KCV_BLOCK[self.algorithm]
        return bytes(self._key(slot).encrypt(block, mechanism=p11.ECB[self.algorithm]))[:3]

    def external_auth(self, slot: KeySlot, challenge: bytes) -> bytes:
        if len(challenge) != 8:
            raise ValueError("challenge must be 8 bytes")
        block = challenge if self.algorithm is Algorithm.DES3 else challenge + b"\x80" + bytes(7)
        with self._service.token.use("EXTERNAL AUTHENTICATE cryptogram"):
            return bytes(self._key(slot).encrypt(block, mechanism=p11.ECB[self.algorithm]))

    def mac_block(self, slot: KeySlot, data: bytes, iv: bytes) -> bytes:
        size = self.algorithm.block_size
        iv_full = (iv + bytes(size))[:size]
        padded = keyscheme.pad_method2(data, size)
        with self._service.token.use("secure-messaging MAC"):
            out = self._key(slot).encrypt(
                padded, mechanism=p11.CBC[self.algorithm], mechanism_param=iv_full
            )
        return bytes(out[-size:])

    def encrypt(self, slot: KeySlot, plaintext: bytes) -> bytes:
        if len(plaintext) > 255:
            raise ValueError("sensitive data longer than 255 bytes")
        padded = keyscheme.pad_method2(
            bytes([len(plaintext)]) + plaintext, self.algorithm.block_size
        )
        with self._service.token.use("encrypting sensitive data"):
            return bytes(self._key(slot).encrypt(padded, mechanism=p11.ECB[self.algorithm]))

    def wrapped_card_key(self, slot: KeySlot, under: KeySlot) -> bytes:
        with self._service.token.use("wrapping a card key"):
            wrapping, key = self._key(under), self._key(slot)
            if self.algorithm is Algorithm.AES:
                return bytes(
                    wrapping.wrap_key(key, mechanism=Mechanism.AES_CBC, mechanism_param=bytes(16))
                )
            if self._service.des3_wrap_supported is not False:
                try:
                    out = bytes(wrapping.wrap_key(key, mechanism=Mechanism.DES3_ECB))
                    self._service.des3_wrap_supported = True
                    return out
                except (
                    p11x.MechanismInvalid,
                    p11x.FunctionNotSupported,
                    p11x.KeyTypeInconsistent,
                    p11x.WrappingKeyTypeInconsistent,
                ):
                    self._service.des3_wrap_supported = False
            if not self._service.clear_des3_key_loading:
                raise MechanismUnavailable(
                    "the HSM cannot wrap under a 3DES key (CKM_DES3_ECB) and the clear "
                    "card-key window is not allowed",
                    ckr="CKR_MECHANISM_INVALID",
                )
            return self._clear_window_wrap(slot, wrapping)

    def _clear_window_wrap(self, slot: KeySlot, wrapping: Any) -> bytes:
        twin = self._derive_chain(
            slot, {Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True, **p11.capabilities()}
        )
        try:
            value = bytearray(twin[Attribute.VALUE])
            try:
                clear = keyscheme.odd_parity(bytes(value))
                return bytes(wrapping.encrypt(clear, mechanism=Mechanism.DES3_ECB))
            finally:
                value[:] = bytes(len(value))
        finally:
            twin.destroy()

    def internal_auth_response(self, factor: bytes, random: bytes) -> bytes:
        if len(random) != 8:
            raise ValueError("random must be 8 bytes")
        data = keyscheme.diversification_data(factor, self.algorithm)
        block = random if self.algorithm is Algorithm.DES3 else random + factor
        with self._service.token.use("INTERNAL AUTHENTICATE check"):
            session_key = p11.derive(
                self._key(KeySlot.IRK),
                self.algorithm,
                data,
                template={
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    **p11.capabilities(Attribute.ENCRYPT),
                },
            )
            try:
                return bytes(session_key.encrypt(block, mechanism=p11.ECB[self.algorithm]))
            finally:
                session_key.destroy()

    def export(self, slots: Iterable[KeySlot], transport: Any) -> dict[KeySlot, bytes]:
        with self._service.token.use("exporting card keys"):
            return {
                slot: bytes(
                    transport.wrap_key(self._key(slot), mechanism=Mechanism.AES_KEY_WRAP_PAD)
                )
                for slot in slots
            }

    def bureau_export(
        self, slots: Iterable[KeySlot], kek: Any, sensitive: Sequence[bytes], under: KeySlot
    ) -> BureauExport:
        """Keys wrapped under ``kek``, KCVs and encrypted sensitive data (caller holds LOCK)."""
        wrapped: dict[KeySlot, bytes] = {}
        kcvs: dict[KeySlot, bytes] = {}
        wrap = Mechanism.AES_KEY_WRAP_PAD
        ecb = p11.ECB[self.algorithm]
        block = _KCV_BLOCK[self.algorithm]
        size = self.algorithm.block_size
        with self._service.token.use("exporting card keys for a bureau"):
            self._sync()
            for slot in slots:
                key = self._key_synced(slot)
                wrapped[slot] = bytes(kek.wrap_key(key, mechanism=wrap))
                kcvs[slot] = bytes(key.encrypt(block, mechanism=ecb))[:3]
            encrypted: list[bytes] = []
            if sensitive:
                key = self._key_synced(under)
                for data in sensitive:
                    if len(data) > 255:
                        raise ValueError("sensitive data longer than 255 bytes")
                    padded = keyscheme.pad_method2(bytes([len(data)]) + data, size)
                    encrypted.append(bytes(key.encrypt(padded, mechanism=ecb)))
        return BureauExport(wrapped, kcvs, tuple(encrypted))


class Pkcs11KeyService:
    """:class:`KeyService` on a PKCS#11 token (product default)."""

    def __init__(
        self,
        token: Pkcs11Token,
        region_code: str = "330100",
        *,
        clear_des3_key_loading: bool | None = None,
        signing_label: str = ceremony.SIGNING_LABEL,
        recycle_after: int | None = None,
        fast_path: bool = True,
    ) -> None:
        self.token = token
        self._fast_path = fast_path
        #: Re-initialise the module after this many destroyed card-key objects (None: the
        #: default, 20,000 on SoftHSM2 and never on other HSMs; 0: never).
        self._recycle_after = recycle_after
        self._destroyed = 0
        self.region_code = region_code
        self.signing_label = signing_label
        self._clear_des3 = clear_des3_key_loading
        #: None = not tried yet; learnt from the first key loading.
        self.des3_wrap_supported: bool | None = None
        self._masters: dict[tuple[KeySlot, Algorithm, int], Any] = {}
        self._masters_generation = -1
        self._transports: dict[str, Any] = {}
        self._transports_generation = -1
        self._warned = False

    @classmethod
    def from_config(cls, config: HsmConfig, **kwargs: Any) -> Pkcs11KeyService:
        return cls(p11.open_token(config), config.region_code, **kwargs)

    @property
    def clear_des3_key_loading(self) -> bool:
        allowed = self.token.is_softhsm if self._clear_des3 is None else self._clear_des3
        if allowed and not self._warned:
            log.warning(
                "HSM lacks 3DES key wrapping: 3DES card keys are loaded through a clear "
                "card-key window (SoftHSM limitation; master keys stay in the HSM)"
            )
            self._warned = True
        return allowed

    @property
    def fast(self) -> p11fast.FastOps | None:
        """Direct PKCS#11 calls for bulk export (:mod:`hsm.p11fast`), if the module allows."""
        if not self._fast_path:
            return None
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
        with self.card_crypto(ref) as crypto:
            expected = crypto.internal_auth_response(factor, random)
        _check_cryptogram(expected, response)

    def external_auth(self, ref: CardKeyRef, slot: KeySlot, challenge: bytes) -> bytes:
        with self.card_crypto(ref) as crypto:
            return crypto.external_auth(slot, challenge)

    def export_card_keys(
        self, ref: CardKeyRef, slots: Iterable[KeySlot], transport_label: str
    ) -> dict[KeySlot, bytes]:
        transport = self.transport(transport_label)
        with self.card_crypto(ref) as crypto:
            return crypto.export(slots, transport)

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
    ) -> None:
        self._masters = dict(masters)
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
            {(slot, alg, 1): os.urandom(16) for slot in KeySlot for alg in algorithms}, region_code
        )

    def card_crypto(self, ref: CardKeyRef) -> SoftwareCardSession:
        masters = {}
        for slot in KeySlot:
            key = self._masters.get((slot, ref.algorithm, ref.key_version))
            if key is not None and (ref.pan or not slot.financial):
                masters[slot] = key
        if not masters:
            raise KeyNotFound(f"no {ref.algorithm.value} master keys v{ref.key_version}")
        card = ref.factors(KeySlot.IRK, self.region_code)
        emv = ref.factors(KeySlot.FIN_AC, self.region_code) if ref.pan else ()
        return SoftwareCardSession(masters, card, ref.algorithm, emv)

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
