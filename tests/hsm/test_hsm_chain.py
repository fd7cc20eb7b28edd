"""``hsm.chain``, the one derivation of a card's keys in the HSM, against the software reference
(``cardspec.keyscheme``) over random cards: 3DES and AES (SoftHSM2; SM4 in test_hsm_sm.py),
city and province cards (region factor), EMV keys by PAN and PSN, chips made by a supplier
(KMC and KLK from its delivery key set by the chip serial) - every slot, by KCV, by the
INTERNAL AUTHENTICATE answer and by the exact bytes of every caller's output (the card's
crypto, the bureau exporter, bulk data preparation in house and for a bureau)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.keywrap import (
    aes_key_unwrap_with_padding,
)
from hsm_helpers import REGION, TEST_BANK, TRANSPORT_KEY, HsmEnv, components_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pkcs11 import Attribute

from cardspec import keyscheme
from cardspec.keyscheme import KLK_ALGORITHM, Algorithm, KeySlot
from hsm import ceremony, p11fast
from hsm.cardcrypto import expected_response
from hsm.chain import CardData, KeyChain, chip_data, prep_data
from hsm.errors import HsmError, KeyNotFound
from hsm.ports import KCV_BLOCK
from hsm.prep import prep_ops
from hsm.service import CardKeyRef

pytestmark = pytest.mark.softhsm

SUPPLIER = "chain-prop"
CENTRE = [slot for slot in KeySlot if not slot.financial]


@pytest.fixture(scope="module")
def suppliers(hsm_env: HsmEnv) -> dict[tuple[str, Algorithm], bytes]:
    """A chip supplier's delivery key set (KMC and KLK masters per card algorithm), random
    clear keys imported as components: the oracle of the chip-maker path."""
    masters: dict[tuple[str, Algorithm], bytes] = {}
    for alg in (Algorithm.DES3, Algorithm.AES):
        for kind in ("kmc", "klk"):
            key_alg = keyscheme.klk_algorithm(alg) if kind == "klk" else alg
            shared = next((k for (n, a), k in masters.items()
                           if n == kind and (keyscheme.klk_algorithm(a) if n == "klk" else a)
                           is key_alg), None)  # fmt: skip
            if shared is not None:  # one KLK master (AES) for 3DES and AES chips
                masters[(kind, alg)] = shared
                continue
            key = os.urandom(16)
            comps = components_of(key)
            ceremony.import_supplier_master(
                hsm_env.token, SUPPLIER, kind, comps, [keyscheme.kcv(c, key_alg) for c in comps],
                alg, expected_kcv=keyscheme.kcv(key, key_alg),
            )  # fmt: skip
            masters[(kind, alg)] = key
    return masters


@st.composite
def card_refs(draw: Callable[..., Any]) -> CardKeyRef:
    serial = draw(st.binary(min_size=8, max_size=8))
    emv = draw(st.booleans())
    pan = draw(st.from_regex(r"62[0-9]{11,17}", fullmatch=True)) if emv else None
    psn = draw(st.one_of(st.none(), st.from_regex(r"[0-9]{2}", fullmatch=True))) if emv else None
    return CardKeyRef(
        "330182D156000005" + serial.hex().upper(),
        1,
        draw(st.sampled_from([Algorithm.DES3, Algorithm.AES])),
        pan=pan,
        psn=psn,
        region_factor=draw(st.booleans()),
        bank=TEST_BANK if emv else None,
        chip_maker=(SUPPLIER, 1) if draw(st.booleans()) else None,
    )


# --- the reference, from cardspec.keyscheme alone ----------------------------------------------


def _factors(ref: CardKeyRef, slot: KeySlot) -> list[bytes]:
    if slot.financial:
        assert ref.pan
        return [keyscheme.emv_factor(ref.pan, ref.psn or "00", ref.algorithm)]
    card = keyscheme.card_factor(ref.card_identification_code)
    return [keyscheme.region_factor(REGION), card] if ref.region_factor else [card]


class Reference:
    """Every key of a card computed in software from the clear test masters."""

    def __init__(self, env: HsmEnv, suppliers: dict[tuple[str, Algorithm], bytes],
                 ref: CardKeyRef) -> None:  # fmt: skip
        self.env, self.suppliers, self.ref, self.alg = env, suppliers, ref, ref.algorithm

    def key(self, slot: KeySlot, *, chip: bool = False) -> bytes:
        if chip and slot is KeySlot.KMC and self.ref.chip_maker:
            serial = keyscheme.card_factor(self.ref.card_identification_code)
            return keyscheme.derive_card_key(self.suppliers[("kmc", self.alg)], [serial], self.alg)
        master = self.env.masters[(slot, self.alg, 1)]
        return keyscheme.derive_card_key(master, _factors(self.ref, slot), self.alg)

    def klk(self, *, chip: bool = False) -> bytes:
        if chip and self.ref.chip_maker:
            serial = keyscheme.card_factor(self.ref.card_identification_code)
            return keyscheme.derive_card_key(
                self.suppliers[("klk", self.alg)], [serial], KLK_ALGORITHM
            )
        return keyscheme.derive_klk(
            self.env.klk_masters[1], _factors(self.ref, KeySlot.KMC), self.alg
        )

    def kcv(self, slot: KeySlot, *, chip: bool = False) -> bytes:
        return keyscheme.kcv(self.key(slot, chip=chip), self.alg)

    def slots(self) -> list[KeySlot]:
        return [s for s in KeySlot if not s.financial or self.ref.pan]


def _odd(key: bytes, alg: Algorithm) -> bytes:
    return keyscheme.odd_parity(key) if alg is Algorithm.DES3 else key


class Pins:
    """An initial-PIN policy (``hsm.prep.PinPolicy``): six digits of the PUK's MAC, one block."""

    def pin(self, card_identification_code: str, mac: Callable[[bytes], bytes]) -> str:
        return "".join(str(b % 10) for b in mac(card_identification_code.encode())[:6])

    def blocks(self, pin: str, card_identification_code: str,
               mac: Callable[[bytes], bytes]) -> Sequence[bytes]:  # fmt: skip
        return [b"\x26" + bytes.fromhex(pin + "FFFFFFFFFF")[:7]]


EXAMPLES = settings(
    max_examples=int(os.environ.get("YKT_CHAIN_EXAMPLES", "25")), deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip


@EXAMPLES
@given(ref=card_refs())
def test_the_one_chain_gives_the_reference_keys(
    hsm_env: HsmEnv, suppliers: dict[tuple[str, Algorithm], bytes], ref: CardKeyRef
) -> None:
    """KeyChain.derive over CardData (and chip_data for a supplier's chip): the KCV of every
    slot's key and of the KLK equals the reference's; intermediates counted (one per level
    below the last) and destroyed."""
    service, alg = hsm_env.service, ref.algorithm
    oracle = Reference(hsm_env, suppliers, ref)
    fast = service.fast
    tmpl = p11fast.key_template(alg, Attribute.ENCRYPT, extractable=False)
    klk_tmpl = p11fast.key_template(KLK_ALGORITHM, Attribute.ENCRYPT, extractable=False)
    levels = 2 if ref.region_factor else 1
    with service.token.use() as session:
        service.sync(service.token.generation)
        chain = KeyChain(fast, session.handle)
        data = CardData(ref, REGION)
        expected_destroyed = 0
        for slot in oracle.slots():
            base = service.card_master_synced(ref, slot).handle
            key = chain.derive(base, alg, data.of(slot, alg), tmpl)
            try:
                assert fast.encrypt_ecb(session.handle, key, alg, KCV_BLOCK[alg])[:3] == (
                    oracle.kcv(slot)
                ), slot
            finally:
                chain.destroy(key)
            expected_destroyed += (0 if slot.financial else levels - 1) + 1
        klk_base = service.klk_master_synced(1).handle
        klk = chain.derive(klk_base, KLK_ALGORITHM, data.of(KeySlot.KMC, KLK_ALGORITHM), klk_tmpl)
        kcv = fast.encrypt_ecb(session.handle, klk, KLK_ALGORITHM, KCV_BLOCK[KLK_ALGORITHM])[:3]
        chain.destroy(klk)
        assert kcv == keyscheme.kcv(oracle.klk(), KLK_ALGORITHM)
        expected_destroyed += levels
        if ref.chip_maker:
            base = service.supplier_master_synced(SUPPLIER, "kmc", alg, 1).handle
            key = chain.derive(base, alg, chip_data(ref, alg), tmpl)
            kcv = fast.encrypt_ecb(session.handle, key, alg, KCV_BLOCK[alg])[:3]
            chain.destroy(key)
            assert kcv == oracle.kcv(KeySlot.KMC, chip=True)
            expected_destroyed += 1
        assert chain.destroyed == expected_destroyed
        assert chain.derived == len(oracle.slots()) + 1 + (1 if ref.chip_maker else 0)


@EXAMPLES
@given(ref=card_refs(), factor=st.binary(min_size=8, max_size=8),
       random=st.binary(min_size=8, max_size=8))  # fmt: skip
def test_every_caller_of_the_chain_gives_the_reference_bytes(
    hsm_env: HsmEnv,
    suppliers: dict[tuple[str, Algorithm], bytes],
    ref: CardKeyRef,
    factor: bytes,
    random: bytes,
) -> None:
    """The four users of the one chain: the card's crypto (every slot's KCV, the WRITE KEY
    payloads, the KLK's KCV; a supplier's chip's KMC and KLK), INTERNAL AUTHENTICATE's answer,
    the bureau exporter (KCVs, KLK KCV, keys unwrapped from the file KEK) and bulk data
    preparation (in house: WRITE KEY payloads byte for byte, KMC under the file KEK, the PIN
    payload; bureau: KCVs)."""
    service, alg = hsm_env.service, ref.algorithm
    oracle = Reference(hsm_env, suppliers, ref)
    slots = oracle.slots()
    # 1. HsmCardCrypto (a supplier's chip: KMC and KLK from its key set)
    with service.card_crypto(ref) as crypto:
        for slot in slots:
            assert crypto.kcv(slot) == oracle.kcv(slot, chip=True), slot
        assert crypto.klk_kcv() == keyscheme.kcv(oracle.klk(chip=True), KLK_ALGORITHM)
        klk = oracle.klk(chip=True)
        for slot in (KeySlot.IRK, KeySlot.PUK):
            assert crypto.wrapped_card_key(slot) == keyscheme.wrap_card_key(
                klk, oracle.key(slot), alg
            )
    # 2. INTERNAL AUTHENTICATE
    assert expected_response(service, ref, factor, random) == keyscheme.internal_auth_response(
        oracle.key(KeySlot.IRK), factor, random, alg
    )
    issuer = dataclasses.replace(ref, chip_maker=None)  # bureau files and bulk preparation
    # 3. the bureau exporter
    with service.bureau_exporter("bureau1") as exporter:
        out = exporter.export(issuer, slots, [b"\x26\x12\x34"], KeySlot.KMC)
        kek = aes_key_unwrap_with_padding(TRANSPORT_KEY, exporter.kek(out.kek_id).wrapped)
    for slot in slots:
        assert out.kcvs[slot] == oracle.kcv(slot), slot
        assert aes_key_unwrap_with_padding(kek, out.wrapped[slot]) == _odd(oracle.key(slot), alg)
    assert out.klk_kcv == keyscheme.kcv(oracle.klk(), KLK_ALGORITHM)
    assert aes_key_unwrap_with_padding(kek, out.klk_wrapped) == oracle.klk()
    assert out.encrypted == (
        keyscheme.encrypt_sensitive(oracle.key(KeySlot.KMC), b"\x26\x12\x34", alg),
    )
    # 4. bulk data preparation
    ops = prep_ops(service, "bureau1")
    assert ops is not None
    with ops:
        derived = ops.derived
        with ops.chunk() as file_kek:
            card = ops.in_house(issuer, slots, Pins())
            bureau = ops.bureau(issuer, slots, Pins())
            # the derivation data made by the caller (a preparing worker): the same outputs
            emv = next((s for s in slots if s.financial), None)
            given = prep_data(issuer, REGION, emv)
            assert ops.in_house(issuer, slots, Pins(), given) == card
            assert ops.bureau(issuer, slots, Pins(), given) == bureau
            # what data preparation calls: the same export and the card's initial PIN
            assert ops.bureau_and_pin(issuer, slots, Pins(), given) == (bureau, card.pin)
            # KMC elsewhere than first among the slots: the same keys, in the caller's order
            assert slots[0] is KeySlot.KMC
            moved = [*slots[1:], KeySlot.KMC]
            other = ops.bureau(issuer, moved, Pins(), given)
            assert list(other.wrapped) == list(other.kcvs) == moved
            assert other.wrapped == bureau.wrapped and other.kcvs == bureau.kcvs
            assert other.encrypted == bureau.encrypted
            if emv is not None:  # another profile's data (no EMV keys'): refused, no call made
                with pytest.raises(HsmError, match="no EMV"):
                    ops.in_house(issuer, slots, Pins(), (given[0], given[1], None))
        assert ops.derived - derived == 6 * (len(slots) + 1)
    kek = aes_key_unwrap_with_padding(TRANSPORT_KEY, file_kek.wrapped)
    klk = oracle.klk()
    assert aes_key_unwrap_with_padding(kek, card.kmc_wrapped) == _odd(oracle.key(KeySlot.KMC), alg)
    for slot in slots:
        if slot is not KeySlot.KMC:
            assert card.write_keys[slot] == keyscheme.wrap_card_key(klk, oracle.key(slot), alg)
    mac = keyscheme.cbc_mac(
        oracle.key(KeySlot.PUK),
        keyscheme.pad_method2(ref.card_identification_code.encode(), alg.block_size), alg,
    )  # fmt: skip
    assert card.pin == "".join(str(b % 10) for b in mac[:6])
    (payload,) = card.pin_payloads
    block = Pins().blocks(card.pin, "", lambda d: d)[0]
    assert keyscheme.decrypt_sensitive(oracle.key(KeySlot.KMC), payload, alg) == block
    assert bureau.encrypted == card.pin_payloads
    # the slots in the caller's order (the bureau line's template follows it)
    assert list(bureau.wrapped) == list(bureau.kcvs) == list(slots)
    for slot in slots:
        assert bureau.kcvs[slot] == oracle.kcv(slot), slot
        assert aes_key_unwrap_with_padding(kek, bureau.wrapped[slot]) == _odd(oracle.key(slot), alg)
    assert bureau.klk_kcv == keyscheme.kcv(klk, KLK_ALGORITHM)


def test_a_failing_level_destroys_the_intermediate(hsm_env: HsmEnv) -> None:
    """A chain whose last level fails (here: data of the wrong length) leaves no intermediate
    behind (destroyed and counted); no data, or a master that does not exist, is a clear error
    and destroys nothing."""
    service = hsm_env.service
    ref = CardKeyRef("330182D156000005" + "0011223344556677", region_factor=True)
    fast = service.fast
    with service.token.use() as session:
        service.sync(service.token.generation)
        chain = KeyChain(fast, session.handle)
        data = CardData(ref, REGION).of(KeySlot.IRK, Algorithm.DES3)
        base = service.card_master_synced(ref, KeySlot.IRK).handle
        with pytest.raises(ValueError):
            chain.derive(base, Algorithm.DES3, (data[0], b"short"), _template())
        assert chain.destroyed == 1 and chain.derived == 0
        with pytest.raises(ValueError):
            chain.derive(base, Algorithm.DES3, (), _template())
        with pytest.raises(KeyNotFound):
            chain.derive(0x7FFFFFF0, Algorithm.DES3, data, _template())
        assert chain.destroyed == 1


def _template() -> p11fast.Template:
    return p11fast.key_template(Algorithm.DES3, Attribute.ENCRYPT, extractable=False)


@EXAMPLES
@given(ref=card_refs(), emv=st.sampled_from([None, *(s for s in KeySlot if s.financial)]))
def test_prep_data_is_card_datas(ref: CardKeyRef, emv: KeySlot | None) -> None:
    """prep_data (made by a preparing worker for its HSM process) is CardData's derivation
    data of the KLK, the card-centre keys and the EMV keys."""
    if emv is not None and not ref.pan:
        emv = None
    klk, card, fin = prep_data(ref, REGION, emv)
    assert klk == CardData(ref, REGION).of(KeySlot.KMC, KLK_ALGORITHM)
    for slot in KeySlot:
        if not slot.financial:
            assert card == CardData(ref, REGION).of(slot, ref.algorithm)
        elif emv is not None:
            assert fin == CardData(ref, REGION).of(slot, ref.algorithm)
    assert (fin is None) is (emv is None)
