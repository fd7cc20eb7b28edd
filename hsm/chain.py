"""The one derivation of a card's keys in the HSM: the derivation data of the card's factors
for a slot, and the chain of ``C_DeriveKey`` calls from a master, intermediates destroyed.

Design notes: ``docs/design/hsm.md`` (section ``hsm.chain``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pkcs11 import Attribute

from cardspec import keyscheme
from cardspec.keyscheme import KLK_ALGORITHM, Algorithm, KeySlot
from hsm import p11fast
from hsm.ports import CardKeyRef

#: An intermediate level's key per algorithm (built on first use: SM4's once the vendor's
#: numbers are registered, ``hsm.pkcs11.register_vendor``).
_INTERMEDIATE: dict[Algorithm, p11fast.Template] = {}


def intermediate_template(alg: Algorithm) -> p11fast.Template:
    """A level of a chain below the last (a province card's region-level key; the card IRK
    under INTERNAL AUTHENTICATE's session key): derives the next level and nothing else,
    sensitive, never extractable."""
    tmpl = _INTERMEDIATE.get(alg)
    if tmpl is None:
        tmpl = _INTERMEDIATE[alg] = p11fast.key_template(alg, Attribute.DERIVE, extractable=False)
    return tmpl


def derivation_data(
    ref: CardKeyRef, slot: KeySlot, region_code: str, alg: Algorithm
) -> tuple[bytes, ...]:
    """The derivation data of the card's factors for ``slot`` (:meth:`CardKeyRef.factors`,
    outermost first), one block per level, for a derivation in ``alg``: the card's algorithm
    for its keys; the key-loading key's (``keyscheme.klk_algorithm``) for its KLK, by the
    factors of KMC."""
    return tuple([keyscheme.diversification_data(f, alg) for f in ref.factors(slot, region_code)])


def chip_data(ref: CardKeyRef, alg: Algorithm) -> tuple[bytes, ...]:
    """The derivation data of a supplier-made chip's KMC and KLK (``CardKeyRef.chip_maker``,
    from that supplier's delivery key set): the chip serial is the only factor."""
    chip = keyscheme.card_factor(ref.card_identification_code)
    return (keyscheme.diversification_data(chip, alg),)


#: The slots whose factor is the EMV one (:meth:`CardKeyRef.factors`: ``KeySlot.financial``).
_FINANCIAL = frozenset(slot for slot in KeySlot if slot.financial)


class CardData:
    """The derivation data of one card's keys (:func:`derivation_data`), computed once per
    kind of slot and algorithm: :meth:`CardKeyRef.factors` depends on the slot only through
    ``KeySlot.financial`` (the card factor(s), or the EMV factor of the bank's keys). The
    card's own algorithm is the common case (one look-up); others (the KLK's) in a dict."""

    __slots__ = ("_alg", "_card", "_emv", "_other", "_ref", "_region")

    def __init__(self, ref: CardKeyRef, region_code: str) -> None:
        self._ref = ref
        self._region = region_code
        self._alg = ref.algorithm
        self._card: tuple[bytes, ...] | None = None
        self._emv: tuple[bytes, ...] | None = None
        self._other: dict[tuple[bool, Algorithm], tuple[bytes, ...]] = {}

    def of(self, slot: KeySlot, alg: Algorithm) -> tuple[bytes, ...]:
        financial = slot in _FINANCIAL
        if alg is self._alg:
            data = self._emv if financial else self._card
            if data is None:
                data = derivation_data(self._ref, slot, self._region, alg)
                if financial:
                    self._emv = data
                else:
                    self._card = data
            return data
        key = (financial, alg)
        data = self._other.get(key)
        if data is None:
            data = self._other[key] = derivation_data(self._ref, slot, self._region, alg)
        return data


#: The derivation data data preparation needs of one card (:func:`prep_data`): the KLK's
#: (KMC's factors in ``KLK_ALGORITHM``), the card-centre keys' and the EMV keys' (None: the
#: card's profile has no EMV key), each one block per level.
PrepData = tuple[tuple[bytes, ...], tuple[bytes, ...], tuple[bytes, ...] | None]


def prep_data(ref: CardKeyRef, region_code: str, emv_slot: KeySlot | None) -> PrepData:
    """The derivation data of one card's keys for data preparation (:class:`CardData`, the
    one rule): made where the card's records are (the worker), so that the HSM pass gets
    them ready (``hsm.prep.PrepOps.in_house``'s ``data``). ``emv_slot``: a financial slot
    of the card's profile (None: the profile has none)."""
    data = CardData(ref, region_code)
    alg = ref.algorithm
    return (
        data.of(KeySlot.KMC, KLK_ALGORITHM),
        data.of(KeySlot.KMC, alg),
        None if emv_slot is None else data.of(emv_slot, alg),
    )


class KeyChain:
    """Card keys derived from masters in one PKCS#11 session through the direct calls
    (:mod:`hsm.p11fast`; the caller holds :data:`hsm.pkcs11.LOCK`).

    :meth:`derive` is ``keyscheme.derive_card_key`` in the HSM: one
    ``C_DeriveKey(CKM_*_ECB_ENCRYPT_DATA)`` per block of data; every level but the last is an
    intermediate key (:func:`intermediate_template`) destroyed as soon as its child exists (or
    when a later level fails), the last is made with the caller's template and returned.
    ``destroyed`` counts the intermediates destroyed (and what :meth:`destroy` destroys), for
    the owner to report (SoftHSM2 keeps every destroyed object's memory until the module is
    re-initialised, ``Pkcs11KeyService.objects_destroyed``); ``derived`` counts the keys
    returned. ``session`` may be rebound (a new module initialisation)."""

    __slots__ = ("derived", "destroyed", "fast", "session")

    def __init__(self, fast: p11fast.FastOps, session: int = 0) -> None:
        self.fast = fast
        self.session = session
        self.derived = 0
        self.destroyed = 0

    def derive(
        self, base: int, alg: Algorithm, data: Sequence[bytes], last: p11fast.Template
    ) -> int:
        """The key derived from the master ``base`` by ``data`` (one block per level,
        :class:`CardData`), made with ``last``: its handle."""
        if len(data) == 1:  # one factor (a city card's key, a bank's key, a chip's): one call
            handle = self.fast.derive(self.session, base, alg, data[0], last)
        else:
            handle = self._levels(base, alg, data, last)
        self.derived += 1
        return handle

    def _levels(
        self, base: int, alg: Algorithm, data: Sequence[bytes], last: p11fast.Template
    ) -> int:
        if not data:
            raise ValueError("a card key is derived by at least one factor")
        fast, sh = self.fast, self.session
        step = _INTERMEDIATE.get(alg) or intermediate_template(alg)
        handle = base
        try:
            for block in data[:-1]:
                child = fast.derive(sh, handle, alg, block, step)
                if handle != base:
                    fast.destroy(sh, handle)
                    self.destroyed += 1
                handle = child
            return fast.derive(sh, handle, alg, data[-1], last)
        finally:
            if handle != base:
                fast.destroy(sh, handle)
                self.destroyed += 1

    def destroy(self, handle: int) -> None:
        """Destroy a key this chain made (counted in ``destroyed``)."""
        self.fast.destroy(self.session, handle)
        self.destroyed += 1


__all__ = [
    "CardData",
    "KeyChain",
    "PrepData",
    "chip_data",
    "derivation_data",
    "intermediate_template",
    "prep_data",
]
