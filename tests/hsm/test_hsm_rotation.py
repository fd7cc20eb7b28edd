"""Key rotation end to end: whole key sets, data preparation on the newest complete one, cards
of older versions still genuine. Its own SoftHSM token (rotation changes what new cards get)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec import cardops, keyscheme, perso
from cardspec.emulator import Card as EmulatedCard
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.reader import InProcessReader
from hsm import ceremony, softhsm
from hsm.errors import CryptogramMismatch, KeyNotFound
from hsm.pkcs11 import Pkcs11Token, open_token
from hsm.service import CardKeyRef
from issuance.bank import bank_data
from issuance.batches import dataprep
from issuance.batches.selection import BatchFilter, create_batch
from issuance.batches.stock import VirtualBlankStock, ensure_manufacturer_key
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import BatchItem, Card
from yikatong.demo import (
    create_residents,
    ensure_bank_keys,
    ensure_branch,
    ensure_hsm,
    ensure_staff,
    open_demo_accounts,
    with_demo_bank,
)
from yikatong.settings import Settings, load_settings
from yikatong.wiring import hsm_config, key_service_from_settings

pytestmark = pytest.mark.softhsm


@dataclass(frozen=True)
class Token:
    root: Path
    settings: Settings
    token: Pkcs11Token


@pytest.fixture(scope="module")
def rot(tmp_path_factory: pytest.TempPathFactory) -> Token:
    root = tmp_path_factory.mktemp("rotation-hsm")
    settings = load_settings(environ={"YKT_DATA_DIR": str(root)})
    ensure_hsm(settings)  # = ykt hsm init: 3DES key set v1 with its KLK master
    ensure_manufacturer_key(settings)
    return Token(root, settings, open_token(hsm_config(settings)))


def test_complete_versions_and_rotation_of_whole_sets(rot: Token) -> None:
    alg = Algorithm.DES3
    assert ceremony.current_version(rot.token, alg) == 1
    assert ceremony.current_version(rot.token, Algorithm.AES) is None  # no AES set yet
    # a lone master of a later version (an import under way) makes no complete set
    ceremony.generate_master(rot.token, KeySlot.IRK, alg, 5)
    assert ceremony.complete_versions(rot.token, alg) == [1]
    created = ceremony.rotate_key_set(rot.token, alg)  # v6: above every version present
    assert {k.label for k in created} == set(ceremony.key_set_labels(alg, 6))
    assert ceremony.complete_versions(rot.token, alg) == [1, 6]
    assert ceremony.current_version(rot.token, alg) == 6
    # the AES set of the same version shares the KLK master of v1 made by init
    aes = ceremony.rotate_key_set(rot.token, Algorithm.AES)
    assert {k.label for k in aes} == {
        ceremony.master_label(s, Algorithm.AES, 1) for s in ceremony.CENTRE_SLOTS
    }
    assert ceremony.current_version(rot.token, Algorithm.AES) == 1
    listed = {k.label: k for k in ceremony.list_keys(rot.token)}
    assert listed[ceremony.klk_label(6)].kind == "klk" and listed[ceremony.klk_label(6)].kcv
    for label in ceremony.key_set_labels(alg, 6):
        assert listed[label].sensitive and not listed[label].extractable


def test_init_adds_the_klk_to_tokens_made_before_it(tmp_path: Path) -> None:
    """``ykt hsm init --if-missing`` on a token whose key sets have no KLK master yet."""
    settings = load_settings(environ={"YKT_DATA_DIR": str(tmp_path)})
    config = hsm_config(settings)
    softhsm.ensure_token(config)
    token = open_token(config)
    for version in (1, 2):
        for slot in ceremony.CENTRE_SLOTS:
            ceremony.generate_master(token, slot, Algorithm.DES3, version)
    assert ceremony.current_version(token, Algorithm.DES3) is None  # no KLK: incomplete
    created = ceremony.init_keys(token)
    assert ceremony.klk_label(1) in created and ceremony.klk_label(2) in created
    assert ceremony.complete_versions(token, Algorithm.DES3) == [1, 2]
    assert ceremony.init_keys(token) == []  # idempotent


def _populate(settings: Settings, engine: sa.Engine, n: int) -> tuple[int, object]:
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        actors = ensure_staff(s)
        ensure_branch(s, settings)
        create_residents(s, settings, actors, n)
    ensure_bank_keys(settings)  # the bank's IMKs (key ceremony), its accounts (bank files)

    def txn(fn):  # type: ignore[no-untyped-def]
        with transaction(factory) as s:
            return fn(s)

    assert open_demo_accounts(txn, settings, actors["demo-operator"]) == n
    with transaction(factory) as s:
        batch = create_batch(s, actors["demo-operator"], "rot", BatchFilter(region_code="3301"))
        return batch.id, actors["demo-operator"]


def _items(s: Session, batch_id: int) -> list[BatchItem]:
    return list(
        s.scalars(sa.select(BatchItem).where(BatchItem.batch_id == batch_id).order_by(BatchItem.id))
    )


def test_cards_of_v1_and_v2_both_verify(rot: Token, tmp_path: Path, fresh_db_url: str) -> None:
    """Data preparation records the newest complete key set on each new card; a card
    personalised under v1 before ``rotate`` and one under v2 after it both prove themselves
    (INTERNAL AUTHENTICATE verified in the HSM) and both accept the terminal's EXTERNAL
    AUTHENTICATE, each with its own version's keys only."""
    env = {"YKT_DATA_DIR": str(tmp_path), "YKT_DATABASE__URL": fresh_db_url,
           "YKT_HSM__SOFTHSM_CONF": str(rot.settings.softhsm_conf)}  # fmt: skip
    settings = with_demo_bank(load_settings(environ=env))
    (settings.data_dir / "stock").mkdir(parents=True)
    (settings.data_dir / "stock" / "manufacturer.key").write_bytes(
        (rot.root / "stock" / "manufacturer.key").read_bytes()
    )
    engine = make_engine(settings)
    batch_id, actor = _populate(settings, engine, 2)
    factory = make_sessionmaker(engine)
    alg = Algorithm.DES3
    made: list[tuple[int, CardKeyRef]] = []
    before = ceremony.current_version(rot.token, alg)
    assert before is not None
    for n in range(2):
        if n == 1:  # the key ceremony between the two cards
            ceremony.rotate_key_set(rot.token, alg)
        keys = key_service_from_settings(settings)  # a new process's service
        stock = VirtualBlankStock(settings, keys)
        with transaction(factory) as s:
            item = _items(s, batch_id)[n]
            prepared = dataprep.assign_chip(s, settings, keys, stock, item, actor)  # type: ignore[arg-type]
            card = s.get(Card, item.card_id)
            assert card is not None
            assert card.key_version == prepared.key_ref.key_version == before + n
        profile = dataprep.card_profile(settings, alg)
        chip = EmulatedCard.load(stock.image(prepared.chip_serial))
        with keys.card_crypto(prepared.key_ref) as crypto:
            perso.personalise(InProcessReader(chip), crypto, prepared.perso, profile)
        made.append((item.card_id, prepared.key_ref))
    assert made[0][1].key_version != made[1][1].key_version

    keys = key_service_from_settings(settings)
    profile = dataprep.card_profile(settings, alg)
    with transaction(factory) as s:
        refs = []
        for card_id, _ in made:
            card = s.get(Card, card_id)
            assert card is not None and card.card_identification_code is not None
            bank = bank_data(s, settings, [card.id]).get(card.id)
            refs.append(
                (
                    card.card_identification_code,
                    dataprep.key_ref(card, card.card_identification_code, bank),
                )
            )
    for (code, ref), (_, other) in zip(refs, [refs[1], refs[0]], strict=True):
        chip = EmulatedCard.load(VirtualBlankStock(settings, keys).image(code[16:]))
        reader = InProcessReader(chip)
        reader.connect()
        cardops.select_df(reader, profile, "SSSE")
        factor, random = keyscheme.card_factor(code), os.urandom(8)
        answer = cardops.internal_authenticate(reader, factor, random)
        keys.verify_internal_auth(ref, factor, random, answer)  # genuine under its version
        wrong = CardKeyRef(code, other.key_version, alg, ref.pan, ref.psn)
        with pytest.raises(CryptogramMismatch):  # ... and only under it
            keys.verify_internal_auth(wrong, factor, random, answer)
        with keys.card_crypto(ref) as crypto:
            cardops.external_authenticate(reader, crypto, KeySlot.EAK, profile)
        public = cardops.read_card_public(reader, profile, connect=False)
        assert public.card_identification_code == code
        reader.disconnect()
    with pytest.raises(KeyNotFound):
        keys.verify_internal_auth(CardKeyRef(refs[0][0], 99, alg), bytes(8), bytes(8), bytes(8))
    engine.dispose()
