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
* Signing: ECDSA P-256 over SHA-256 (SoftHSM has no CKM_ECDSA_SHA256: the digest is computed
  here, the signature in the HSM), DER-encoded.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import pkcs11.exceptions as p11x
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from pkcs11 import Attribute, Mechanism, ObjectClass

from cardspec import keyscheme
from cardspec.crypto import CardCrypto, SoftwareCardCrypto
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import ceremony
from hsm import pkcs11 as p11
from hsm.config import HsmConfig
from hsm.errors import (
    CryptogramMismatch,
    HsmError,
    KeyNotFound,
    MechanismUnavailable,
    SignatureInvalid,
)
from hsm.pkcs11 import LOCK, Pkcs11Token

log = logging.getLogger(__name__)


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


class HsmCardCrypto:
    """:class:`CardCrypto` for one card with keys derived in the HSM (session objects)."""

    def __init__(self, service: Pkcs11KeyService, ref: CardKeyRef) -> None:
        p11.check_algorithm(ref.algorithm)
        self.algorithm = ref.algorithm
        self.ref = ref
        self._service = service
        self._keys: dict[KeySlot, Any] = {}
        self._generation = -1

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
            if self._generation == self._service.token.generation:
                for key in self._keys.values():
                    key.destroy()
            self._keys.clear()

    # derivation (LOCK held) --------------------------------------------------------------
    def _derive_chain(self, slot: KeySlot, template: dict[Attribute, Any]) -> Any:
        base = self._service.master(slot, self.algorithm, self.ref.key_version)
        factors = self.ref.factors(slot, self._service.region_code)
        key = base
        for n, factor in enumerate(factors, start=1):
            last = n == len(factors)
            data = keyscheme.diversification_data(factor, self.algorithm)
            child = p11.derive(
                key,
                self.algorithm,
                data,
                template=template
                if last
                else {
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    **p11.capabilities(Attribute.DERIVE),
                },
            )
            if key is not base:
                key.destroy()
            key = child
        return key

    def _key(self, slot: KeySlot) -> Any:
        generation = self._service.token.generation
        if generation != self._generation:
            self._keys.clear()  # handles of a previous initialisation (fork) are void
            self._generation = generation
        key = self._keys.get(slot)
        if key is None:
            key = self._keys[slot] = self._derive_chain(
                slot,
                {
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: True,
                    **p11.capabilities(*_CARD_KEY_USAGE),
                },
            )
        return key

    def derive_all(self, slots: Iterable[KeySlot]) -> None:
        """Derive the given slots now (e.g. at the start of a personalisation)."""
        with self._service.token.use("deriving card keys"):
            for slot in slots:
                self._key(slot)

    # CardCrypto --------------------------------------------------------------------------
    def kcv(self, slot: KeySlot) -> bytes:
        """KCV of the card key, computed in the HSM."""
        with self._service.token.use("card key KCV"):
            return p11.kcv(self._key(slot), self.algorithm)

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


class Pkcs11KeyService:
    """:class:`KeyService` on a PKCS#11 token (product default)."""

    def __init__(
        self,
        token: Pkcs11Token,
        region_code: str = "330100",
        *,
        clear_des3_key_loading: bool | None = None,
        signing_label: str = ceremony.SIGNING_LABEL,
    ) -> None:
        self.token = token
        self.region_code = region_code
        self.signing_label = signing_label
        self._clear_des3 = clear_des3_key_loading
        #: None = not tried yet; learnt from the first key loading.
        self.des3_wrap_supported: bool | None = None
        self._masters: dict[tuple[KeySlot, Algorithm, int], Any] = {}
        self._masters_generation = -1
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

    def master(self, slot: KeySlot, alg: Algorithm, version: int) -> Any:
        """The master key object (LOCK held by the caller, or taken here)."""
        with LOCK:
            generation = self.token.generation
            if generation != self._masters_generation:
                self._masters.clear()
                self._masters_generation = generation
            key = self._masters.get((slot, alg, version))
            if key is None:
                label = ceremony.master_label(slot, alg, version)
                with self.token.use(f"looking up {label}") as session:
                    key = p11.find_one(session, label)
                self._masters[(slot, alg, version)] = key
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
        label = ceremony.transport_label(transport_label)
        with self.token.use(f"looking up {label}") as session:
            transport = p11.find_one(session, label)
        with self.card_crypto(ref) as crypto:
            return crypto.export(slots, transport)

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
        import os

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
