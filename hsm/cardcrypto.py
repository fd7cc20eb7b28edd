"""One card's cryptography in the HSM: :class:`HsmCardCrypto` (the :class:`CardCrypto` port of
:class:`hsm.service.Pkcs11KeyService`).

Design notes: ``docs/design/hsm.md`` (section ``hsm.cardcrypto``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pkcs11 import Attribute

from cardspec import emv, keyscheme
from cardspec.keyscheme import Algorithm, KeySlot
from hsm import p11fast
from hsm import pkcs11 as p11
from hsm.chain import CardData, KeyChain, chip_data, derivation_data
from hsm.errors import MechanismUnavailable
from hsm.ports import KCV_BLOCK, CardKeyRef, Pkcs11Keys, bank_use, centre_use


@dataclass(frozen=True)
class KeyTemplate:
    """What a derived session object may do: sensitive, public session object (see
    ``hsm.service``), exactly ``usage``, extractable or not."""

    usage: tuple[Attribute, ...]
    extractable: bool


#: Card keys encrypt (cryptograms, MACs, KCVs) and derive (INTERNAL AUTHENTICATE session keys);
#: they never wrap (key loading wraps under the KLK). Extractable: only to be wrapped.
CARD_KEY = KeyTemplate((Attribute.ENCRYPT, Attribute.DERIVE), True)
#: An issuer script's session key (SK-SMI, SK-SMC, or SK-SMI's left half twice): encrypts only.
SESSION_KEY = KeyTemplate((Attribute.ENCRYPT,), False)
#: The card's key-loading key for personalisation: wraps card keys, never leaves the HSM.
KLK = KeyTemplate((Attribute.WRAP,), False)
#: The KLK for the blank chip's maker: extractable only to be wrapped under a transport key.
KLK_EXPORT = KeyTemplate((Attribute.WRAP,), True)
#: The KLK for a bureau file: wrapped under the file KEK, CKA_ENCRYPT for its KCV.
KLK_BUREAU = KeyTemplate((Attribute.ENCRYPT,), True)
#: An SM4 card's KLK for the blank chip's maker: leaves wrapped with its KCV (CKA_ENCRYPT for
#: it), the SM4 key-loading form (``keyscheme.wrap_card_key``).
KLK_EXPORT_SM4 = KeyTemplate((Attribute.ENCRYPT,), True)
#: The KLK for its KCV only (checking a chip supplier's delivery): encrypts, never leaves.
KLK_CHECK = KeyTemplate((Attribute.ENCRYPT,), False)


_FAST_TEMPLATES: dict[tuple[Algorithm, KeyTemplate], p11fast.Template] = {}


def _fast_template(alg: Algorithm, tmpl: KeyTemplate) -> p11fast.Template:
    built = _FAST_TEMPLATES.get((alg, tmpl))
    if built is None:
        built = _FAST_TEMPLATES[(alg, tmpl)] = p11fast.key_template(
            alg, *tmpl.usage, extractable=tmpl.extractable
        )
    return built


class _FastKeyOps:
    """Keys are integer handles; calls through :mod:`hsm.p11fast`."""

    def __init__(self, fast: p11fast.FastOps, session_handle: int) -> None:
        self._fast = fast
        self._sh = session_handle

    def handle(self, obj: Any) -> Any:
        return obj.handle

    def derive(self, base: Any, alg: Algorithm, data: bytes, tmpl: KeyTemplate) -> Any:
        return self._fast.derive(self._sh, base, alg, data, _fast_template(alg, tmpl))

    def destroy(self, key: Any) -> None:
        self._fast.destroy(self._sh, key)

    def ecb(self, key: Any, alg: Algorithm, data: bytes) -> bytes:
        return self._fast.encrypt_ecb(self._sh, key, alg, data)

    def cbc(self, key: Any, alg: Algorithm, data: bytes, iv: bytes) -> bytes:
        return self._fast.encrypt_cbc(self._sh, key, alg, data, iv)

    def wrap(self, wrapping: Any, key: Any) -> bytes:
        return self._fast.wrap_kwp(self._sh, wrapping, key)

    def wrap_sm4(self, wrapping: Any, key: Any) -> bytes:
        return self._fast.wrap_with(self._sh, int(p11.ECB[Algorithm.SM4]), wrapping, key)


#: INTERNAL AUTHENTICATE's session key: encrypts only (the card IRK above it is an intermediate
#: level of the chain, :func:`hsm.chain.intermediate_template`: derives only).
_IA_SESSION = KeyTemplate((Attribute.ENCRYPT,), False)
#: Its template per algorithm (the verification hot path: one look-up, no template hashing).
_IA_SESSION_TEMPLATES: dict[Algorithm, p11fast.Template] = {}


def expected_response(service: Pkcs11Keys, ref: CardKeyRef, factor: bytes, random: bytes) -> bytes:
    """The card's answer to INTERNAL AUTHENTICATE(``factor || random``), computed in the HSM
    (the steps of :mod:`hsm.internal_auth`'s docstring): the one implementation, used by
    :meth:`HsmCardCrypto.internal_auth_response`, :func:`hsm.internal_auth.check_internal_auth`
    and :meth:`hsm.service.Pkcs11KeyService.verify_internal_auth`. Through
    :class:`ctypes.PyDLL` (the GIL held, see :mod:`hsm.internal_auth`)."""
    fast = p11fast.fast_ops(str(service.token.config.module), hold_gil=True)
    if len(random) != 8:
        raise ValueError("random must be 8 bytes")
    alg = ref.algorithm
    p11.check_algorithm(alg, service.token.config)
    # the card's IRK (its factors), then the session key (the challenge's factor): one chain
    data = (
        *derivation_data(ref, KeySlot.IRK, service.region_code, alg),
        keyscheme.diversification_data(factor, alg),
    )
    block = random if alg is Algorithm.DES3 else random + factor
    session_tmpl = _IA_SESSION_TEMPLATES.get(alg)
    if session_tmpl is None:
        session_tmpl = _IA_SESSION_TEMPLATES[alg] = _fast_template(alg, _IA_SESSION)
    with service.token.use("INTERNAL AUTHENTICATE check") as session:
        service.sync(service.token.generation)
        keys = KeyChain(fast, session.handle)
        base = service.master_synced(KeySlot.IRK, alg, ref.key_version).handle
        try:
            session_key = keys.derive(base, alg, data, session_tmpl)
            try:
                return fast.encrypt_ecb(keys.session, session_key, alg, block)
            finally:
                keys.destroy(session_key)
        finally:
            service.objects_destroyed(keys.destroyed)


def _wrap_for_chip(ops: _FastKeyOps, wrapping: Any, key: Any, alg: Algorithm) -> bytes:
    """``keyscheme.wrap_card_key`` in the HSM (LOCK held): the key object ``key`` of algorithm
    ``alg`` wrapped under ``wrapping`` (a KLK, or a transport key to a chip's maker, of
    ``keyscheme.klk_algorithm(alg)``): ``C_WrapKey(CKM_AES_KEY_WRAP_PAD)``; SM4 keys
    ``C_WrapKey(SM4-ECB)`` followed by their KCV, computed on the key object."""
    if alg is Algorithm.SM4:
        check = ops.ecb(key, alg, KCV_BLOCK[alg])[:3]
        return ops.wrap_sm4(wrapping, key) + check
    return ops.wrap(wrapping, key)


def _cmac_double(block: bytes) -> bytes:
    """The CMAC subkey step (NIST SP 800-38B 6.1): ``block << 1``, XOR ``R128 = 0x87`` when the
    top bit was set."""
    n = int.from_bytes(block, "big") << 1
    if n >> 128:
        n = (n & ((1 << 128) - 1)) ^ 0x87
    return n.to_bytes(16, "big")


class HsmCardCrypto:
    """:class:`CardCrypto` for one card with keys derived in the HSM (session objects)."""

    def __init__(self, service: Pkcs11Keys, ref: CardKeyRef) -> None:
        p11.check_algorithm(ref.algorithm, service.token.config)
        self.algorithm = ref.algorithm
        self.ref = ref
        self._service = service
        self._keys: dict[KeySlot, Any] = {}
        self._klk: Any = None
        #: objects made and destroyed inside an operation, counted at close (recycling the
        #: module in the middle of an operation would void the handles it still uses)
        self._destroyed_inside = 0
        self._generation = -1
        self._ops: _FastKeyOps | None = None
        #: the card's derivations (:mod:`hsm.chain`), bound to the session by :meth:`_sync`;
        #: its count of destroyed intermediates is reported at close, as the one above
        self._chain: KeyChain | None = None
        self._data = CardData(ref, service.region_code)

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
            keys = [*self._keys.values(), *([self._klk] if self._klk is not None else [])]
            if (
                keys
                and self._ops is not None
                and self._generation == self._service.token.generation
            ):
                for key in keys:
                    self._ops.destroy(key)
                destroyed = len(keys)
            self._keys.clear()
            self._klk = None
            destroyed, self._destroyed_inside = destroyed + self._destroyed_inside, 0
            if self._chain is not None:
                destroyed, self._chain.destroyed = destroyed + self._chain.destroyed, 0
            self._service.objects_destroyed(destroyed)

    # derivation (LOCK held) --------------------------------------------------------------
    def _sync(self) -> _FastKeyOps:
        """Drop handles of a previous module initialisation (fork, recycling) and bind the
        calls to this session; once per operation, LOCK held."""
        token = self._service.token
        generation = token.generation
        if generation != self._generation:
            self._keys.clear()  # handles of a previous initialisation are void
            self._klk = None
            self._generation = generation
            sh = token.session().handle
            self._ops = _FastKeyOps(self._service.fast, sh)
            if self._chain is None:
                self._chain = KeyChain(self._service.fast)
            self._chain.session = sh
        self._service.sync(generation)
        return self._live()

    def _live(self) -> _FastKeyOps:
        """The calls bound by :meth:`_sync` (LOCK held)."""
        assert self._ops is not None, "call _sync first"
        return self._ops

    def _derive(
        self, master: Any, alg: Algorithm, data: tuple[bytes, ...], tmpl: KeyTemplate
    ) -> Any:
        """A new key of this card (:meth:`hsm.chain.KeyChain.derive`), LOCK held."""
        assert self._chain is not None, "call _sync first"
        return self._chain.derive(self._live().handle(master), alg, data, _fast_template(alg, tmpl))

    def _key_synced(self, slot: KeySlot) -> Any:
        key = self._keys.get(slot)
        if key is None:
            maker = self.ref.chip_maker
            if slot is KeySlot.KMC and maker is not None:
                master = self._service.supplier_master_synced(
                    maker[0], "kmc", self.algorithm, maker[1]
                )
                data = chip_data(self.ref, self.algorithm)
            else:
                master = self._service.card_master_synced(self.ref, slot)
                data = self._data.of(slot, self.algorithm)
            key = self._keys[slot] = self._derive(master, self.algorithm, data, CARD_KEY)
        return key

    def _key(self, slot: KeySlot) -> Any:
        self._sync()
        return self._key_synced(slot)

    def _derive_klk(self, tmpl: KeyTemplate) -> Any:
        """A new KLK of this card (LOCK held, :meth:`_sync` called): AES diversification of
        ``ykt:klk:aes:v<key_version>`` by the card factors (never the EMV ones); a
        supplier-made chip's from its supplier's KLK master by the chip serial."""
        maker = self.ref.chip_maker
        alg = keyscheme.klk_algorithm(self.algorithm)
        if maker is not None:  # AES; SM4 for SM4 chips (ykt:supplier:<name>:klk:<alg>:v<n>)
            master = self._service.supplier_master_synced(maker[0], "klk", self.algorithm,
                                                          maker[1])  # fmt: skip
            return self._derive(master, alg, chip_data(self.ref, alg), tmpl)
        master = self._service.klk_master_synced(self.ref.key_version, self.algorithm)
        return self._derive(master, alg, self._data.of(KeySlot.KMC, alg), tmpl)

    def _with_klk(self, tmpl: KeyTemplate, use: Any) -> Any:
        """``use(ops, klk)`` with a KLK made for it and destroyed after (LOCK held)."""
        klk = self._derive_klk(tmpl)
        try:
            return use(self._live(), klk)
        finally:
            self._live().destroy(klk)
            self._destroyed_inside += 1

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
            key = self._key(slot)
            return self._live().ecb(key, self.algorithm, KCV_BLOCK[self.algorithm])[:3]

    def external_auth(self, slot: KeySlot, challenge: bytes) -> bytes:
        if len(challenge) != 8:
            raise ValueError("challenge must be 8 bytes")
        centre_use(slot)
        block = challenge if self.algorithm is Algorithm.DES3 else challenge + b"\x80" + bytes(7)
        with self._service.token.use("EXTERNAL AUTHENTICATE cryptogram"):
            key = self._key(slot)
            return self._live().ecb(key, self.algorithm, block)

    def mac_block(self, slot: KeySlot, data: bytes, iv: bytes) -> bytes:
        """ISO/IEC 9797-1 MAC algorithm 1 (SoftHSM2 has no CKM_DES3_MAC): C_Encrypt(CBC, IV)
        of the padded data, keeping the last block - the definition of the algorithm."""
        centre_use(slot)
        size = self.algorithm.block_size
        iv_full = (iv + bytes(size))[:size]
        padded = keyscheme.pad_method2(data, size)
        with self._service.token.use("secure-messaging MAC"):
            key = self._key(slot)
            return self._live().cbc(key, self.algorithm, padded, iv_full)[-size:]

    def encrypt(self, slot: KeySlot, plaintext: bytes) -> bytes:
        if len(plaintext) > 255:
            raise ValueError("sensitive data longer than 255 bytes")
        centre_use(slot)
        padded = keyscheme.pad_method2(
            bytes([len(plaintext)]) + plaintext, self.algorithm.block_size
        )
        with self._service.token.use("encrypting sensitive data"):
            key = self._key(slot)
            return self._live().ecb(key, self.algorithm, padded)

    def wrapped_card_key(self, slot: KeySlot) -> bytes:
        """WRITE KEY payload: ``C_WrapKey(CKM_AES_KEY_WRAP_PAD)`` of the card key object under
        the card's KLK object (both derived here, both sensitive)."""
        with self._service.token.use("wrapping a card key under the KLK"):
            ops = self._sync()
            key = self._key_synced(slot)
            if self._klk is None:
                self._klk = self._derive_klk(KLK)
            return _wrap_for_chip(ops, self._klk, key, self.algorithm)

    def klk_kcv(self) -> bytes:
        """KCV of the card's KLK (``keyscheme.kcv``, AES), computed in the HSM on a KLK object
        made for it (CKA_ENCRYPT only) and destroyed at once: checks a delivery's KCVs."""
        with self._service.token.use("key-loading key KCV"):
            self._sync()
            alg = keyscheme.klk_algorithm(self.algorithm)
            block = KCV_BLOCK[alg]
            kcv = self._with_klk(KLK_CHECK, lambda o, klk: o.ecb(klk, alg, block))
            return bytes(kcv[:3])

    def export_klk(self, transport: Any) -> bytes:
        """The card's KLK wrapped under ``transport`` for the blank chip's maker, in the
        key-loading form (``keyscheme.wrap_card_key``: RFC 5649; an SM4 card's KLK under an SM4
        transport key, ``SM4-ECB || KCV``)."""
        alg = keyscheme.klk_algorithm(self.algorithm)
        tmpl = KLK_EXPORT_SM4 if alg is Algorithm.SM4 else KLK_EXPORT
        with self._service.token.use("exporting the key-loading key"):
            ops = self._sync()
            wrapping = ops.handle(transport)
            return bytes(self._with_klk(tmpl, lambda o, klk: _wrap_for_chip(o, wrapping, klk, alg)))

    # the bank's issuer scripts (EMV Book 2 9.2-9.3; cardspec.emv is the reference) ------------
    def _session_blocks(self, slot: KeySlot, ac: bytes, halves: str) -> Any:
        """A session-key object of the card's ``slot`` (MK-SMI / MK-SMC, the bank's domain) for
        the application cryptogram ``ac`` (common session key derivation, Book 2 A1.3.1:
        3DES ``SK = DES3(MK)[R0 R1 F0 R3..R7] || DES3(MK)[R0 R1 0F R3..R7]``; AES and SM4
        ``SK = ALG(MK)[AC || 00 * 8]``), as a new object of ``halves``: ``LR`` the session
        key, ``LL`` (3DES only) its left half twice (single DES under K1: the chaining of MAC
        algorithm 3). CKA_ENCRYPT only, never extractable; LOCK held."""
        bank_use(slot)
        if len(ac) != emv.AC_LENGTH:
            raise MechanismUnavailable("issuer scripts: an 8-byte application cryptogram")
        alg = self.algorithm
        if alg is Algorithm.DES3:
            left, right = ac[:2] + b"\xf0" + ac[3:], ac[:2] + b"\x0f" + ac[3:]
            data = left + (right if halves == "LR" else left)
        else:
            data = emv.sm_diversifier(ac, alg)
        ops = self._live()
        return ops.derive(self._key_synced(slot), alg, data, SESSION_KEY)

    def _mac_in_hsm(self, sk: Any, message: bytes) -> bytes:
        """:func:`cardspec.emv.mac` of an AES or SM4 card under the session-key object ``sk``,
        with encryptions only (LOCK held): SM4 MAC algorithm 1 (the last CBC block of the data
        padded with method 2); AES-CMAC from its definition (NIST SP 800-38B 6.1-6.2): the
        subkeys from ``L = AES(SK)[0]``, the last block masked with K1 (whole) or K2 (padded),
        CBC under SK. ``L`` and the subkeys are of this transaction's session key only."""
        ops, alg = self._live(), self.algorithm
        if alg is Algorithm.SM4:
            padded = keyscheme.pad_method2(message, 16)
            return bytes(ops.cbc(sk, alg, padded, bytes(16)))[-16:]
        k1 = _cmac_double(bytes(ops.ecb(sk, alg, bytes(16))))
        if message and len(message) % 16 == 0:
            mask, padded = k1, message
        else:
            mask, padded = _cmac_double(k1), keyscheme.pad_method2(message, 16)
        last = bytes(a ^ b for a, b in zip(padded[-16:], mask, strict=True))
        return bytes(ops.cbc(sk, alg, padded[:-16] + last, bytes(16)))[-16:]

    def issuer_script_mac(self, header: bytes, atc: int, ac: bytes, data: bytes) -> bytes:
        """:func:`cardspec.emv.script_mac` computed in the HSM: 3DES MAC algorithm 3 under
        SK-SMI (single-DES CBC under K1, then the last block 3DES under K1 K2 - the definition
        of the algorithm, with encryptions only), AES-CMAC or SM4 MAC algorithm 1
        (:meth:`_mac_in_hsm`); the session-key objects destroyed at once."""
        message = emv.script_message(header, atc, ac, data)
        with self._service.token.use("issuer script MAC"):
            ops = self._sync()
            if self.algorithm is not Algorithm.DES3:
                sk = self._session_blocks(KeySlot.FIN_SMI, ac, "LR")
                try:
                    return self._mac_in_hsm(sk, message)[: emv.MAC_LENGTH]
                finally:
                    ops.destroy(sk)
                    self._destroyed_inside += 1
            message = keyscheme.pad_method2(message, 8)
            k1 = self._session_blocks(KeySlot.FIN_SMI, ac, "LL")
            sk = self._session_blocks(KeySlot.FIN_SMI, ac, "LR")
            try:
                chain = bytes(8)
                if len(message) > 8:
                    chain = ops.cbc(k1, Algorithm.DES3, message[:-8], bytes(8))[-8:]
                last = bytes(a ^ b for a, b in zip(message[-8:], chain, strict=True))
                return bytes(ops.ecb(sk, Algorithm.DES3, last))[: emv.MAC_LENGTH]
            finally:
                for key in (k1, sk):
                    ops.destroy(key)
                self._destroyed_inside += 2

    def encipher_pin_block(self, ac: bytes, pin_block: bytes) -> bytes:
        """:func:`cardspec.emv.encrypt_pin_block` computed in the HSM: the PIN block (the
        holder's PIN, in this call only) padded and enciphered CBC (zero IV) under SK-SMC."""
        alg = self.algorithm
        padded = keyscheme.pad_method2(pin_block, alg.block_size)
        with self._service.token.use("issuer script PIN encipherment"):
            ops = self._sync()
            sk = self._session_blocks(KeySlot.FIN_SMC, ac, "LR")
            try:
                return bytes(ops.cbc(sk, alg, padded, bytes(alg.block_size)))
            finally:
                ops.destroy(sk)
                self._destroyed_inside += 1

    def internal_auth_response(self, factor: bytes, random: bytes) -> bytes:
        """The card's INTERNAL AUTHENTICATE answer (:func:`expected_response`)."""
        return expected_response(self._service, self.ref, factor, random)

    def export(self, slots: Iterable[KeySlot], transport: Any) -> dict[KeySlot, bytes]:
        """Card keys wrapped under ``transport`` (a blank chip's maker) in the key-loading form
        (``keyscheme.wrap_card_key``; SM4 cards: under an SM4 transport key)."""
        alg = self.algorithm
        with self._service.token.use("exporting card keys"):
            ops = self._sync()
            wrapping = ops.handle(transport)
            return {
                slot: _wrap_for_chip(ops, wrapping, self._key_synced(slot), alg) for slot in slots
            }
