"""Bulk data preparation in the HSM: every per-card key derived, used and exported in one go.

Design notes: ``docs/design/hsm.md`` (section ``hsm.prep``).
"""

from __future__ import annotations

import contextlib
import hmac
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from pkcs11 import Attribute, KeyType

from cardspec import keyscheme
from cardspec.keyscheme import KLK_ALGORITHM, Algorithm, KeySlot
from hsm import ceremony, p11fast
from hsm import pkcs11 as p11
from hsm.chain import KeyChain, PrepData, prep_data
from hsm.errors import HsmError, KcvMismatch, KeyNotFound, MechanismUnavailable
from hsm.ports import KCV_BLOCK, BureauExport, CardKeyRef, FileKek, KeyService, Pkcs11Keys

#: Destroyed session objects between two module re-initialisations in a preparing process
#: (~200 bytes of SoftHSM2 garbage each: ~50 MiB; about 20,000 cards of 12 keys). Larger than
#: the per-card path's ``SOFTHSM_RECYCLE_AFTER``: a re-initialisation (log in, masters looked
#: up again, a new file KEK) costs ~50-100 ms, paid once per chunk boundary past the limit.
PREP_RECYCLE_AFTER = 240_000

#: The card algorithms bulk preparation handles: its file KEKs and perso keys are AES keys and
#: card keys leave under them by RFC 5649, which an HSM with SM4 need not offer (and an SM4 key
#: set should not depend on). SM4 cards are prepared card by card and personalised in house
#: (``issuance.batches.pipeline``); bureau files (``ykt-bureau-perso/2``) cannot carry them.
ALGORITHMS = (Algorithm.DES3, Algorithm.AES)

PUK = KeySlot.PUK

_CARD = {
    alg: p11fast.key_template(alg, extractable=True) for alg in (Algorithm.DES3, Algorithm.AES)
}
"""A card key that only leaves the HSM wrapped under the chip's KLK (no other use)."""
_CARD_ENC = {
    alg: p11fast.key_template(alg, Attribute.ENCRYPT, extractable=True)
    for alg in (Algorithm.DES3, Algorithm.AES)
}
"""A card key also used here: KMC (PIN payloads), PUK (the natural PIN), KCVs (bureau)."""
_KLK_WRAP = p11fast.key_template(KLK_ALGORITHM, Attribute.WRAP, extractable=False)
"""The chip's KLK for in-house preparation: wraps the card keys, never leaves the HSM."""
_KLK_EXPORT = p11fast.key_template(KLK_ALGORITHM, Attribute.ENCRYPT, extractable=True)
"""The chip's KLK for a bureau file: wrapped under the file KEK, CKA_ENCRYPT for its KCV."""
_KMC_AT_STATION = {
    alg: p11fast.key_template(alg, Attribute.ENCRYPT, extractable=False, unwrap=True)
    for alg in (Algorithm.DES3, Algorithm.AES)
}
"""KMC unwrapped at the station: cryptograms and MACs of the secure channel, nothing else."""
_KEK_AT_STATION = p11fast.key_template(Algorithm.AES, Attribute.UNWRAP, Attribute.ENCRYPT,
                                       extractable=False, unwrap=True)  # fmt: skip
"""A file KEK unwrapped at the station: unwraps KMC, encrypts its KCV block (checked)."""
#: A file KEK: session object, wraps card keys, encrypts its KCV block; extractable (so that
#: it can be wrapped under the long-term key) but sensitive (never in clear).
_KEK_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: False,
    Attribute.PRIVATE: False,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: True,
    **p11.capabilities(Attribute.WRAP, Attribute.ENCRYPT),
}


def perso_key_label(batch_id: int) -> str:
    """Label of a batch's in-house perso key (``ykt:transport:perso-batch-<id>``: it carries
    card keys from data preparation to the stations of this card centre)."""
    return ceremony.transport_label(f"perso-batch-{batch_id}")


def ensure_perso_key(service: Pkcs11Keys, label: str) -> bool:
    """Generate the perso key ``label`` in the HSM if missing (AES-128 token object,
    sensitive, never extractable, CKA_WRAP + CKA_UNWRAP only). Returns True if created. The
    caller serialises concurrent callers (a database lock on the batch row)."""
    token = service.token
    with token.use(f"generating {label}") as session:
        if p11.exists(session, label):
            return False
        session.generate_key(
            KeyType.AES, 128,
            template={
                Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False, Attribute.MODIFIABLE: False,
                Attribute.LABEL: label, Attribute.ID: label.encode(),
                **p11.capabilities(Attribute.WRAP, Attribute.UNWRAP),
            },
        )  # fmt: skip
        return True


def destroy_perso_key(service: Pkcs11Keys, label: str) -> bool:
    """Destroy a batch's perso key (its perso files become unusable). True if it existed."""
    with service.token.use(f"destroying {label}") as session:
        found = list(session.get_objects({Attribute.LABEL: label}))
        for obj in found:
            obj.destroy()
        return bool(found)


# --- outputs ----------------------------------------------------------------------------------


class PinPolicy(Protocol):
    """The initial-PIN rules of data preparation (``issuance.batches.dataprep``)."""

    def pin(self, card_identification_code: str, mac: Callable[[bytes], bytes]) -> str:
        """The card's initial PIN from ``mac(data)`` (MAC algorithm 1 under the card's PUK)."""
        ...

    def blocks(
        self, pin: str, card_identification_code: str, mac: Callable[[bytes], bytes]
    ) -> Sequence[bytes]:
        """The PIN blocks of the profile's PINs (each becomes a SET PIN payload under KMC):
        ``pin`` for the first, others (a bank PIN) from their own ``mac``."""
        ...


@dataclass(frozen=True)
class InHouseCard:
    """One card's keys for in-house personalisation (see the module docstring)."""

    kek_id: int
    kmc_wrapped: bytes = field(repr=False)
    """RFC 5649 of KMC (3DES: as the HSM holds it, odd parity) under the file KEK."""
    write_keys: dict[KeySlot, bytes] = field(repr=False)
    """The WRITE KEY payload of each card key but KMC: RFC 5649 under the chip's KLK."""
    pin_payloads: tuple[bytes, ...] = field(repr=False)
    """``keyscheme.encrypt_sensitive(KMC, block)`` of each PIN block, in profile order."""
    pin: str = field(repr=False)
    """The initial PIN (never stored: the caller only needs it to check its own records)."""


class KekEnvelope:
    """The current file KEK of this process (LOCK held by every caller)."""

    def __init__(self, service: Pkcs11Keys, wrapping_label: str) -> None:
        self._service = service
        self.label = ceremony.transport_label(wrapping_label)
        self._handle = 0
        self._generation = -1
        self.kek_id = 0
        self.current: FileKek | None = None

    def handle(self, fast: p11fast.FastOps) -> int:
        """The KEK of this module initialisation, generated and wrapped if new."""
        token = self._service.token
        generation = token.generation
        if self._handle and generation == self._generation:
            return self._handle
        self._service.sync(generation)
        wrapping = self._service.transport(self.label)
        session = token.session()
        kek = session.generate_key(KeyType.AES, 128, template=_KEK_TEMPLATE)
        wrapped = fast.wrap_kwp(session.handle, wrapping.handle, kek.handle)
        check = fast.encrypt_ecb(session.handle, kek.handle, Algorithm.AES,
                                 KCV_BLOCK[Algorithm.AES])  # fmt: skip
        self._handle, self._generation = kek.handle, generation
        self.kek_id += 1
        self.current = FileKek(self.kek_id, wrapped, check[:3])
        return self._handle

    def close(self, fast: p11fast.FastOps) -> None:
        if self._handle and self._generation == self._service.token.generation:
            fast.destroy(self._service.token.session().handle, self._handle)
        self._handle = 0


@dataclass(frozen=True, slots=True)
class _Plan:
    """The master handles and templates of one key set's cards (per module initialisation):
    the KLK master, the KMC master, and (slot, master, template) of every other card key, in
    profile order (PUK among them)."""

    klk: int
    kmc: int
    keys: list[tuple[KeySlot, int, Any]]
    slots: list[KeySlot]
    """The slots of ``keys``, in order."""
    financial: list[bool]
    """``KeySlot.financial`` of each of ``slots`` (the EMV factor's derivation data)."""
    emv_slot: KeySlot | None
    """The first financial slot (None: the profile has no EMV key)."""
    kmc_at: int
    """KMC's index in the profile's slots (``keys`` are the others, in order)."""


class PrepOps:
    """Bulk preparation in one process: ``with ops.chunk(): ops.in_house(...)`` per card.

    Through the module's direct entry points (:func:`hsm.p11fast.fast_ops`)."""

    def __init__(
        self,
        service: Pkcs11Keys,
        fast: p11fast.FastOps,
        wrapping_label: str,
        *,
        recycle_after: int = PREP_RECYCLE_AFTER,
    ) -> None:
        self.service = service
        self.fast = fast
        self.envelope = KekEnvelope(service, wrapping_label)
        self.recycle_after = recycle_after if service.token.is_softhsm else 0
        #: Every per-card derivation (:mod:`hsm.chain`); counts the objects destroyed since
        #: the last re-initialisation of the module, this class's own included.
        self.chain = KeyChain(fast)
        self._sh = 0
        self._kek = 0
        self._generation = -1
        self._masters: dict[tuple[str, Algorithm, int], int] = {}
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._last_plan: (
            tuple[Sequence[KeySlot], int, Algorithm, tuple[str | None, int], _Plan] | None
        ) = None
        self._in_chunk = False

    @property
    def derived(self) -> int:
        """Per-card key objects derived so far (the figure a benchmark divides by)."""
        return self.chain.derived

    @property
    def destroyed(self) -> int:
        """Session objects destroyed since the module's last re-initialisation."""
        return self.chain.destroyed

    # chunks --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def chunk(self) -> Iterator[FileKek]:
        """Hold the PKCS#11 lock for a chunk of cards; yields the file KEK they go under (it
        stays the same for the whole chunk). Recycles the module after the chunk if due."""
        with self.service.token.use("preparing a chunk of cards"):
            self._sync()
            self._kek = self.envelope.handle(self.fast)
            assert self.envelope.current is not None
            self._in_chunk = True
            try:
                yield self.envelope.current
            finally:
                self._in_chunk = False
                if self.recycle_after and self.chain.destroyed >= self.recycle_after:
                    self.chain.destroyed = 0
                    self.service.token.reinitialise()

    def close(self) -> None:
        with self.service.token.use("destroying the file KEK"):
            self.envelope.close(self.fast)

    def __enter__(self) -> PrepOps:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _sync(self) -> None:
        token = self.service.token
        generation = token.generation
        if generation != self._generation:
            self._masters.clear()
            self._plans.clear()
            self._last_plan = None
            self._generation = generation
            self.service.sync(generation)
        self._sh = self.chain.session = token.session().handle

    def _master(self, name: str, alg: Algorithm, version: int) -> int:
        key = (name, alg, version)
        handle = self._masters.get(key)
        if handle is None:
            if name == ceremony.KLK:
                obj = self.service.klk_master_synced(version)
            else:
                obj = self.service.master_synced(KeySlot(name), alg, version)
            handle = self._masters[key] = int(obj.handle)
        return handle

    def _destroy(self, handle: int) -> None:
        self.chain.destroy(handle)

    def _check(self, ref: CardKeyRef) -> None:
        """The per-card checks (the profile's and the algorithm's are :meth:`_plan`'s, once
        per key set and profile)."""
        if not self._in_chunk:
            raise HsmError("PrepOps: call inside `with ops.chunk():`")
        if getattr(ref, "chip_maker", None) is not None:
            raise HsmError("a supplier-made chip is prepared at the station (its KMC and KLK "
                           "come from the supplier's key set)")  # fmt: skip

    @staticmethod
    def _check_plan(alg: Algorithm, slots: Sequence[KeySlot]) -> None:
        if KeySlot.PUK not in slots or KeySlot.KMC not in slots:
            raise HsmError("the card profile needs a kmc and a puk key (PIN, secure channel)")
        p11.check_algorithm(alg)
        if alg not in ALGORITHMS:
            raise MechanismUnavailable(
                f"{alg.value} cards: bulk data preparation and bureau files carry card "
                "keys under AES file keys (hsm.prep.ALGORITHMS); prepare and personalise them in "
                "house, card by card (ykt batch run)"
            )

    def _pin_and_payloads(
        self, ref: CardKeyRef, puk: int, kmc: int, pins: PinPolicy
    ) -> tuple[str, tuple[bytes, ...]]:
        fast, sh, alg = self.fast, self._sh, ref.algorithm
        size = alg.block_size
        iv = bytes(size)
        cic = ref.card_identification_code

        def mac(data: bytes) -> bytes:
            return fast.encrypt_cbc(sh, puk, alg, keyscheme.pad_method2(data, size), iv)[-size:]

        pin = pins.pin(cic, mac)
        padded = [keyscheme.pad_method2(bytes([len(b)]) + b, size)
                  for b in pins.blocks(pin, cic, mac)]  # fmt: skip
        if not padded:
            return pin, ()
        # ECB is block by block: one call encrypts every PIN block, split afterwards
        out = fast.encrypt_ecb(sh, kmc, alg, b"".join(padded))
        if len(padded) == 1:
            return pin, (out,)
        payloads, at = [], 0
        for p in padded:
            payloads.append(out[at : at + len(p)])
            at += len(p)
        return pin, tuple(payloads)

    # one card ------------------------------------------------------------------------------
    def _plan(self, ref: CardKeyRef, slots: Sequence[KeySlot]) -> _Plan:
        """The masters and templates of one key set's cards (the card centre's key set, and the
        card's bank's issuer masters for ``FIN_*``), per module initialisation (LOCK held); the
        profile and the algorithm checked when it is made."""
        alg, version = ref.algorithm, ref.key_version
        bank = (ref.bank, ref.bank_key_version)
        last = self._last_plan
        if (last is not None and last[0] is slots and last[1] == version and last[2] is alg
                and last[3] == bank):  # fmt: skip
            return last[4]  # the same profile's slots as the card before (no key to hash)
        key = (alg, version, tuple(slots), bank)
        plan = self._plans.get(key)
        if plan is None:
            self._check_plan(alg, slots)
            keys: list[tuple[KeySlot, int, Any]] = [(slot, self._card_master(ref, slot),
                     _CARD_ENC[alg] if slot is KeySlot.PUK else _CARD[alg])
                    for slot in slots if slot is not KeySlot.KMC]  # fmt: skip
            plan = self._plans[key] = _Plan(
                self._master(ceremony.KLK, KLK_ALGORITHM, version),
                self._master(KeySlot.KMC.value, alg, version),
                keys,
                [slot for slot, _, _ in keys],
                [slot.financial for slot, _, _ in keys],
                next((slot for slot, _, _ in keys if slot.financial), None),
                list(slots).index(KeySlot.KMC),
            )
        self._last_plan = (slots, version, alg, bank, plan)
        return plan

    def _card_master(self, ref: CardKeyRef, slot: KeySlot) -> int:
        """The master handle of ``slot`` (the bank's for ``FIN_*``, ``card_master_synced``)."""
        if not slot.financial:
            return self._master(slot.value, ref.algorithm, ref.key_version)
        return int(self.service.card_master_synced(ref, slot).handle)

    def _data(
        self, ref: CardKeyRef, plan: _Plan, data: PrepData | None
    ) -> tuple[tuple[bytes, ...], tuple[bytes, ...], list[tuple[bytes, ...]]]:
        """The card's derivation data (:func:`hsm.chain.prep_data`, made here unless given):
        the KLK's, KMC's, each of ``plan.keys``'s."""
        if data is None:
            data = prep_data(ref, self.service.region_code, plan.emv_slot)
        klk, card, emv = data
        if emv is None:
            if plan.emv_slot is not None:
                raise HsmError("the card's derivation data has no EMV keys' (another profile's)")
            return klk, card, [card] * len(plan.financial)
        return klk, card, [emv if financial else card for financial in plan.financial]

    def in_house(
        self,
        ref: CardKeyRef,
        slots: Sequence[KeySlot],
        pins: PinPolicy,
        data: PrepData | None = None,
    ) -> InHouseCard:
        """Every key of ``slots`` (the profile's, KMC included) and the KLK derived; the
        outputs of the module docstring ("in house"). The hot loop of data preparation: the
        card's Python first (its derivation data: ``data`` when the caller made it,
        :func:`hsm.chain.prep_data`), then its HSM calls, each key derived, wrapped under the
        KLK and destroyed at once (PUK after the PINs: MACs under PUK, payloads under KMC)."""
        self._check(ref)
        plan = self._plan(ref, slots)
        fast, sh, alg = self.fast, self._sh, ref.algorithm
        klk_data, kmc_data, key_data = self._data(ref, plan, data)
        chain = self.chain
        derive, wrap, destroy, kek = chain.derive, fast.wrap_kwp, fast.destroy, self._kek
        klk = derive(plan.klk, KLK_ALGORITHM, klk_data, _KLK_WRAP)
        kmc = live = 0
        pin = ""
        payloads: tuple[bytes, ...] = ()
        try:
            kmc = derive(plan.kmc, alg, kmc_data, _CARD_ENC[alg])
            kmc_wrapped = wrap(sh, kek, kmc)
            wrapped: list[bytes] = []
            append = wrapped.append
            for (slot, master, tmpl), blocks in zip(plan.keys, key_data, strict=True):
                live = derive(master, alg, blocks, tmpl)
                append(wrap(sh, klk, live))
                if slot is PUK:
                    pin, payloads = self._pin_and_payloads(ref, live, kmc, pins)
                destroy(sh, live)
                live = 0
            chain.destroyed += len(plan.keys)
        finally:
            for handle in (live, kmc, klk):
                if handle:
                    self._destroy(handle)
        return InHouseCard(self.envelope.kek_id, kmc_wrapped,
                           dict(zip(plan.slots, wrapped, strict=True)), payloads, pin)  # fmt: skip

    def bureau(
        self,
        ref: CardKeyRef,
        slots: Sequence[KeySlot],
        pins: PinPolicy,
        data: PrepData | None = None,
    ) -> BureauExport:
        """Every key of ``slots`` and the KLK derived, wrapped under the file KEK with their
        KCVs, the PIN payloads under KMC (bureau file format ``/2``): :meth:`bureau_and_pin`'s
        export."""
        return self.bureau_and_pin(ref, slots, pins, data)[0]

    def bureau_and_pin(
        self,
        ref: CardKeyRef,
        slots: Sequence[KeySlot],
        pins: PinPolicy,
        data: PrepData | None = None,
    ) -> tuple[BureauExport, str]:
        """:meth:`bureau`'s export and the card's initial PIN (``pins.pin``; the caller builds
        the card's records with it, it never goes into the bureau file). As :meth:`in_house`:
        the card's Python first, then its HSM calls with as little Python between them as the
        outputs need (each key's wrap and KCV appended in the plan's order, KMC first, every key
        but KMC and PUK destroyed at once; KMC and PUK after the PIN payloads)."""
        self._check(ref)
        plan = self._plan(ref, slots)
        fast, sh, alg = self.fast, self._sh, ref.algorithm
        kcv_block, tmpl, kek = KCV_BLOCK[alg], _CARD_ENC[alg], self._kek
        klk_data, kmc_data, key_data = self._data(ref, plan, data)
        chain = self.chain
        derive, wrap, encrypt, destroy = chain.derive, fast.wrap_kwp, fast.encrypt_ecb, fast.destroy
        wrapped: list[bytes] = []
        kcvs: list[bytes] = []
        kmc = puk = live = 0
        try:
            kmc = derive(plan.kmc, alg, kmc_data, tmpl)
            kmc_wrapped = wrap(sh, kek, kmc)
            kmc_kcv = encrypt(sh, kmc, alg, kcv_block)[:3]
            for (slot, master, _), blocks in zip(plan.keys, key_data, strict=True):
                live = derive(master, alg, blocks, tmpl)
                wrapped.append(wrap(sh, kek, live))
                kcvs.append(encrypt(sh, live, alg, kcv_block)[:3])
                if slot is PUK:
                    puk = live  # (the PIN payloads' MACs)
                else:
                    destroy(sh, live)
                live = 0
            chain.destroyed += len(plan.keys) - 1
            pin, payloads = self._pin_and_payloads(ref, puk, kmc, pins)
            live = derive(plan.klk, KLK_ALGORITHM, klk_data, _KLK_EXPORT)
            klk_wrapped = wrap(sh, kek, live)
            klk_kcv = encrypt(sh, live, KLK_ALGORITHM, KCV_BLOCK[KLK_ALGORITHM])[:3]
        finally:
            for handle in (live, puk, kmc):
                if handle:
                    self._destroy(handle)
        # KMC in its place among the profile's slots: both in ``slots`` order
        wrapped.insert(plan.kmc_at, kmc_wrapped)
        kcvs.insert(plan.kmc_at, kmc_kcv)
        return BureauExport(
            dict(zip(slots, wrapped, strict=True)), dict(zip(slots, kcvs, strict=True)), payloads,
            kek_id=self.envelope.kek_id, klk_wrapped=klk_wrapped, klk_kcv=klk_kcv,
        ), pin  # fmt: skip


def prep_ops(key_service: KeyService, wrapping_label: str, **kwargs: Any) -> PrepOps | None:
    """:class:`PrepOps` for a PKCS#11 key service; None for another (the software twin)."""
    service = key_service.hsm_keys
    if service is None:
        return None
    service.transport(wrapping_label)  # fail early on an unknown key
    return PrepOps(service, service.fast, wrapping_label, **kwargs)


# --- at the station ---------------------------------------------------------------------------

_KEKS_AT_STATION: OrderedDict[tuple[int, int, str, bytes], int] = OrderedDict()
_KEK_CACHE = 8
_STATION_LOCK = threading.Lock()


class RecordCrypto:
    """The :class:`~hsm.service.CardCryptoSession` of one card at an encoding station, from
    its perso record (see the module docstring): KMC unwrapped in the HSM (sensitive, never
    extractable) under the record's file KEK, itself unwrapped under the batch's perso key
    (cached per process), the WRITE KEY payloads ready. Nothing else is available: the
    quality check verifies the card against keys the HSM derives from the masters."""

    def __init__(
        self,
        service: Pkcs11Keys,
        wrapping_label: str,
        kek: FileKek,
        kmc_wrapped: bytes,
        algorithm: Algorithm,
        write_keys: Mapping[KeySlot, bytes],
    ) -> None:
        fast = service.fast
        p11.check_algorithm(algorithm)
        self.algorithm = algorithm
        self._service = service
        self._fast = fast
        self._label = ceremony.transport_label(wrapping_label)
        self._kek = kek
        self._kmc_wrapped = kmc_wrapped
        self._write = dict(write_keys)
        self._kmc = 0
        self._generation = -1

    def __enter__(self) -> RecordCrypto:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._service.token.use("destroying the card's KMC"):
            if self._kmc and self._generation == self._service.token.generation:
                self._fast.destroy(self._service.token.session().handle, self._kmc)
                self._service.objects_destroyed(1)
            self._kmc = 0

    def _kek_handle(self, sh: int) -> int:
        generation = self._service.token.generation
        key = (id(self._service), generation, self._label, self._kek.wrapped)
        with _STATION_LOCK:
            handle = _KEKS_AT_STATION.get(key)
            if handle is not None:
                _KEKS_AT_STATION.move_to_end(key)
                return handle
        self._service.sync(generation)
        wrapping = self._service.transport(self._label)
        handle = self._fast.unwrap_kwp(sh, wrapping.handle, self._kek.wrapped, _KEK_AT_STATION)
        check = self._fast.encrypt_ecb(sh, handle, Algorithm.AES, KCV_BLOCK[Algorithm.AES])[:3]
        if not hmac.compare_digest(check, self._kek.kcv):
            self._fast.destroy(sh, handle)
            raise KcvMismatch(f"file KEK {self._kek.kek_id} does not match its KCV")
        with _STATION_LOCK:
            _KEKS_AT_STATION[key] = handle
            while len(_KEKS_AT_STATION) > _KEK_CACHE:
                (_, gen, _, _), old = _KEKS_AT_STATION.popitem(last=False)
                if gen == generation:
                    with contextlib.suppress(HsmError):
                        self._fast.destroy(sh, old)
        return handle

    def _key(self, slot: KeySlot) -> tuple[int, int]:
        """(session, KMC handle); LOCK held."""
        if slot is not KeySlot.KMC:
            raise KeyNotFound(f"the perso record carries no {slot.value} key for this use")
        token = self._service.token
        sh = token.session().handle
        if not self._kmc or self._generation != token.generation:
            self._generation = token.generation
            kek = self._kek_handle(sh)
            self._kmc = self._fast.unwrap_kwp(sh, kek, self._kmc_wrapped,
                                              _KMC_AT_STATION[self.algorithm])  # fmt: skip
        return sh, self._kmc

    def kcv(self, slot: KeySlot) -> bytes:
        with self._service.token.use("card key KCV"):
            sh, key = self._key(slot)
            return self._fast.encrypt_ecb(sh, key, self.algorithm, KCV_BLOCK[self.algorithm])[:3]

    def external_auth(self, slot: KeySlot, challenge: bytes) -> bytes:
        if len(challenge) != 8:
            raise ValueError("challenge must be 8 bytes")
        block = challenge if self.algorithm is Algorithm.DES3 else challenge + b"\x80" + bytes(7)
        with self._service.token.use("EXTERNAL AUTHENTICATE cryptogram"):
            sh, key = self._key(slot)
            return self._fast.encrypt_ecb(sh, key, self.algorithm, block)

    def mac_block(self, slot: KeySlot, data: bytes, iv: bytes) -> bytes:
        size = self.algorithm.block_size
        iv_full = (iv + bytes(size))[:size]
        padded = keyscheme.pad_method2(data, size)
        with self._service.token.use("secure-messaging MAC"):
            sh, key = self._key(slot)
            return self._fast.encrypt_cbc(sh, key, self.algorithm, padded, iv_full)[-size:]

    def encrypt(self, slot: KeySlot, plaintext: bytes) -> bytes:
        if len(plaintext) > 255:
            raise ValueError("sensitive data longer than 255 bytes")
        padded = keyscheme.pad_method2(bytes([len(plaintext)]) + plaintext,
                                       self.algorithm.block_size)  # fmt: skip
        with self._service.token.use("encrypting sensitive data"):
            sh, key = self._key(slot)
            return self._fast.encrypt_ecb(sh, key, self.algorithm, padded)

    def wrapped_card_key(self, slot: KeySlot) -> bytes:
        try:
            return self._write[slot]
        except KeyError:
            raise KeyNotFound(
                f"the perso record has no WRITE KEY payload for {slot.value}"
            ) from None

    def internal_auth_response(self, factor: bytes, random: bytes) -> bytes:
        raise KeyNotFound("the perso record carries no internal-authentication key (the "
                          "quality check derives it from the masters)")  # fmt: skip


__all__ = [
    "PREP_RECYCLE_AFTER",
    "InHouseCard",
    "KekEnvelope",
    "PinPolicy",
    "PrepOps",
    "RecordCrypto",
    "destroy_perso_key",
    "ensure_perso_key",
    "perso_key_label",
    "prep_ops",
]
