"""The key service: every use of the issuer's keys goes through this port.

Design notes: ``docs/design/hsm.md`` (section ``hsm.service``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, Mechanism, ObjectClass

from cardspec import emv as cardspec_emv
from cardspec import keyscheme, sm2
from cardspec.crypto import SoftwareCardCrypto
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import ceremony, p11fast
from hsm import pkcs11 as p11
from hsm.cardcrypto import HsmCardCrypto, expected_response
from hsm.config import HsmConfig
from hsm.errors import (
    CryptogramMismatch,
    HsmError,
    KeyNotFound,
)
from hsm.export import HsmBureauExporter, SoftwareBureauExporter
from hsm.pkcs11 import LOCK, Pkcs11Token
from hsm.ports import (
    BureauExporter,
    CardCryptoSession,
    CardKeyRef,
    KeyService,
    centre_use,
    verify_signature,
)
from hsm.vendors import DEFAULT_SM2_ID

#: The port lives in :mod:`hsm.ports`; named here too, beside its two adapters.
__all__ = [
    "BureauExporter",
    "CardCryptoSession",
    "CardKeyRef",
    "KeyService",
    "Pkcs11KeyService",
    "SoftwareCardSession",
    "SoftwareKeyService",
    "verify_signature",
]

#: How long :meth:`Pkcs11KeyService.current_key_version` trusts its last look-up (seconds).
KEY_SET_CACHE_S = 5.0
#: Destroyed session objects after which the SoftHSM2 module is re-initialised (see
#: :meth:`Pkcs11KeyService.objects_destroyed`): ~4 MiB of SoftHSM garbage, 2,000 cards of 11
SOFTHSM_RECYCLE_AFTER = 22_000


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
        signing: str = "ecdsa-p256",
    ) -> None:
        self.token = token
        #: what :meth:`sign` uses (``[hsm] signing``): ``ecdsa-p256`` (``signing_label``) or
        #: ``sm2`` (``ykt:signing:sm2:v1``, SM2 with SM3 and the default identity)
        self.signing = signing
        #: Re-initialise the module after this many destroyed card-key objects (None: the
        #: default, 20,000 on SoftHSM2 and never on other HSMs; 0: never).
        self._recycle_after = recycle_after
        self._destroyed = 0
        self.region_code = region_code
        self.signing_label = signing_label
        self._masters: dict[tuple[KeySlot, Algorithm, int], Any] = {}
        self._klk_masters: dict[str, Any] = {}
        self._supplier_masters: dict[str, Any] = {}
        self._bank_masters: dict[str, Any] = {}
        self._masters_generation = -1
        self._transports: dict[str, Any] = {}
        self._transports_generation = -1
        self._current: dict[Algorithm, tuple[float, int]] = {}

    @classmethod
    def from_config(cls, config: HsmConfig, **kwargs: Any) -> Pkcs11KeyService:
        kwargs.setdefault("signing", config.signing)
        return cls(p11.open_token(config), config.region_code, **kwargs)

    @property
    def fast(self) -> p11fast.FastOps:
        """The module's direct PKCS#11 calls (:mod:`hsm.p11fast`): every per-card call."""
        return p11fast.fast_ops(str(self.token.config.module))

    @property
    def hsm_keys(self) -> Pkcs11KeyService:
        return self

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
            self._bank_masters.clear()
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

    def card_master_synced(self, ref: CardKeyRef, slot: KeySlot) -> Any:
        """The master the card key ``slot`` of ``ref`` is derived from: the card centre's, or
        for ``FIN_*`` the card's bank's (:func:`hsm.ceremony.card_master_label`, the one rule);
        the caller holds LOCK and called :meth:`sync`."""
        if not slot.financial:
            return self.master_synced(slot, ref.algorithm, ref.key_version)
        label = ceremony.card_master_label(
            slot, ref.algorithm, ref.key_version, ref.bank, ref.bank_key_version
        )
        key = self._bank_masters.get(label)
        if key is None:
            key = self._bank_masters[label] = p11.find_one(self.token.session(), label)
        return key

    def klk_master_synced(self, version: int, alg: Algorithm = Algorithm.DES3) -> Any:
        """The KLK master of key set ``version`` of ``alg`` (AES; SM4 for SM4 sets); the caller
        holds LOCK and called :meth:`sync`."""
        label = ceremony.klk_label(version, alg)
        key = self._klk_masters.get(label)
        if key is None:
            key = self._klk_masters[label] = p11.find_one(self.token.session(), label)
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
        return HsmBureauExporter(self, transport_label)

    def sign(self, data: bytes) -> bytes:
        from pkcs11.util.ec import encode_ecdsa_signature

        if self.signing == "sm2":  # [hsm] signing: the issuer's SM2 key, SM3, r || s
            return self.sign_sm2(data)
        digest = hashlib.sha256(data).digest()
        with self.token.use("signing") as session:
            key = p11.find_one(session, self.signing_label, ObjectClass.PRIVATE_KEY)
            raw = key.sign(digest, mechanism=Mechanism.ECDSA)
        return bytes(encode_ecdsa_signature(raw))

    def sign_sm2(self, data: bytes, user_id: bytes = DEFAULT_SM2_ID) -> bytes:
        """SM2 signature ``r || s`` (64 bytes) of ``data`` with SM3 and ``user_id`` (GB/T
        32918.2: ``e = SM3(Z_A || data)``) by the issuer's SM2 key ``ykt:signing:sm2:v1``,
        inside the HSM (the vendor's SM2-with-SM3 mechanism, :mod:`hsm.vendors`)."""
        p11.sm_table()
        with self.token.use("SM2 signing") as session:
            key = p11.find_one(session, ceremony.SM2_SIGNING_LABEL, ObjectClass.PRIVATE_KEY)
            param = None if user_id == DEFAULT_SM2_ID else user_id
            return bytes(key.sign(data, mechanism=p11.SM2["sign"], mechanism_param=param))

    def sm2_public_key(self) -> bytes:
        """The issuer's SM2 public key as ``04 || x || y`` (65 bytes)."""
        with self.token.use("reading the SM2 public key") as session:
            key = p11.find_one(session, ceremony.SM2_SIGNING_LABEL, ObjectClass.PUBLIC_KEY)
            point = bytes(key[Attribute.EC_POINT])
        # CKA_EC_POINT is the DER OCTET STRING of the point (PKCS#11 v2.40 2.3.3)
        if len(point) == 67 and point[:2] == b"\x04\x41":
            point = point[2:]
        if len(point) != 65 or point[0] != 4:
            raise HsmError("the SM2 public key is not an uncompressed point")
        return point

    def public_key_pem(self) -> bytes:
        from pkcs11.util.ec import encode_ec_public_key

        if self.signing == "sm2":
            return sm2.public_key_pem(self.sm2_public_key())
        with self.token.use("reading the signing public key") as session:
            key = p11.find_one(session, self.signing_label, ObjectClass.PUBLIC_KEY)
            der = encode_ec_public_key(key)
        public = serialization.load_der_public_key(der)
        return public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


# --- Software twin ---------------------------------------------------------------------------


class SoftwareCardSession(SoftwareCardCrypto):
    """:class:`SoftwareCardCrypto` with the session protocol (nothing to destroy) and the key
    domains of :class:`HsmCardCrypto` (a ``FIN_*`` key serves no card-centre command)."""

    def external_auth(self, slot: KeySlot, challenge: bytes) -> bytes:
        centre_use(slot)
        return super().external_auth(slot, challenge)

    def mac_block(self, slot: KeySlot, data: bytes, iv: bytes) -> bytes:
        centre_use(slot)
        return super().mac_block(slot, data, iv)

    def encrypt(self, slot: KeySlot, plaintext: bytes) -> bytes:
        centre_use(slot)
        return super().encrypt(slot, plaintext)

    def issuer_script_mac(self, header: bytes, atc: int, ac: bytes, data: bytes) -> bytes:
        """:meth:`HsmCardCrypto.issuer_script_mac` with clear keys (``cardspec.emv``)."""
        alg = self.algorithm
        sk = cardspec_emv.sm_session_key(self.card_key(KeySlot.FIN_SMI), ac, alg)
        return cardspec_emv.script_mac(sk, header, atc, ac, data, alg)

    def encipher_pin_block(self, ac: bytes, pin_block: bytes) -> bytes:
        """:meth:`HsmCardCrypto.encipher_pin_block` with clear keys (``cardspec.emv``)."""
        sk = cardspec_emv.sm_session_key(self.card_key(KeySlot.FIN_SMC), ac, self.algorithm)
        return cardspec_emv.encrypt_pin_block(sk, pin_block, self.algorithm)

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


#: The bank key domain of :meth:`SoftwareKeyService.random` (tests and throwaway demos).
DEMO_BANK = "demo-bank"


class SoftwareKeyService:
    """The same port with master keys in memory. Tests and throwaway demos only.

    ``masters``: the card centre's, by (slot, algorithm, version); ``bank_masters``: the banks'
    issuer master keys by (bank key domain, ``FIN_*`` slot, algorithm, version), kept apart as
    in the HSM (:mod:`hsm.ceremony`)."""

    def __init__(
        self,
        masters: Mapping[tuple[KeySlot, Algorithm, int], bytes],
        region_code: str = "330100",
        transport_keys: Mapping[str, bytes] | None = None,
        signing_key: ec.EllipticCurvePrivateKey | None = None,
        klk_masters: Mapping[int, bytes] | None = None,
        bank_masters: Mapping[tuple[str, KeySlot, Algorithm, int], bytes] | None = None,
    ) -> None:
        for slot, _, _ in masters:
            ceremony.master_label(slot, Algorithm.DES3, 1)  # FIN_*: the bank's domain (refused)
        for bank, slot, alg, version in bank_masters or {}:
            ceremony.bank_label(bank, slot, alg, version)  # a card-centre slot: refused
        self._bank = dict(bank_masters or {})
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
        banks: Iterable[str] = (DEMO_BANK,),
    ) -> SoftwareKeyService:
        algorithms = tuple(algorithms)
        return cls(
            {(slot, alg, 1): os.urandom(16) for slot in ceremony.CENTRE_SLOTS
             for alg in algorithms},
            region_code,
            klk_masters={1: os.urandom(16)},
            bank_masters={(bank, slot, alg, 1): os.urandom(16) for bank in banks
                          for slot in ceremony.BANK_KEYS for alg in algorithms},
        )  # fmt: skip

    def card_crypto(self, ref: CardKeyRef) -> SoftwareCardSession:
        if ref.chip_maker is not None:
            raise KeyNotFound("the software key service holds no chip supplier key sets")
        masters = {}
        for slot in KeySlot:
            if slot.financial:
                key = self._bank.get((ref.bank or "", slot, ref.algorithm, ref.bank_key_version))
                if key is not None and ref.pan:
                    masters[slot] = key
            elif (key := self._masters.get((slot, ref.algorithm, ref.key_version))) is not None:
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
            if v in self._klk
            and all((s, algorithm, v) in self._masters for s in ceremony.CENTRE_SLOTS)
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
        alg = keyscheme.klk_algorithm(ref.algorithm)
        return keyscheme.wrap_card_key(self._transport[label], klk, alg)

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
        for slot in slots:  # the key-loading form (keyscheme.wrap_card_key)
            out[slot] = keyscheme.wrap_card_key(
                self._transport[label], crypto.card_key(slot), ref.algorithm
            )
        return out

    @property
    def hsm_keys(self) -> None:
        return None

    def master_versions(self, slot: KeySlot, alg: Algorithm) -> list[int]:
        """Versions of the ``slot`` master of ``alg`` held in memory, ascending."""
        return sorted(v for (s, a, v) in self._masters if s is slot and a is alg)

    def master_key(self, slot: KeySlot, alg: Algorithm, version: int) -> bytes:
        """The clear master key (this twin keeps its masters in memory: tests and demos)."""
        return self._masters[(slot, alg, version)]

    def bureau_exporter(self, transport_label: str) -> SoftwareBureauExporter:
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
