"""Helpers of the batch tests (importable: ``from batch_helpers import ...``).

* :func:`hsm_root`: a SoftHSM token with fresh master keys and the ``manufacturer`` transport
  key, made once per test session in a tmp dir (never the project's var/);
* :func:`batch_settings`: settings for one test: its own data dir and database, that token;
* :func:`populate`: staff, residents with the shipped photos, approvals, a batch;
* :func:`assert_batch_invariants`: what must hold after any run, interrupted or not.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from cardspec.emulator.image import LifeCycle, read_image
from devstack.bank import demo_bank_toml
from issuance import audit
from issuance.audit import Actor
from issuance.batches.selection import BatchFilter, create_batch
from issuance.batches.stock import ensure_manufacturer_key, manufacturer_key_path
from issuance.db import make_sessionmaker, transaction
from issuance.models import (
    AuditEvent,
    BatchItem,
    BatchStage,
    BlankChip,
    Card,
    CardNumberSeries,
    CardStatus,
    ChipStatus,
)
from yikatong.demo import (
    BRANCH_CODE,
    DEMO_BANK_DOMAIN,
    create_residents,
    ensure_bank_keys,
    ensure_branch,
    ensure_hsm,
    ensure_staff,
    open_demo_accounts,
    with_demo_bank,
)
from yikatong.settings import Settings, load_settings


@dataclass(frozen=True)
class HsmRoot:
    root: Path
    conf: Path

    def environ(self) -> dict[str, str]:
        return {"YKT_HSM__SOFTHSM_CONF": str(self.conf)}


def hsm_root(root: Path) -> HsmRoot:
    settings = with_demo_bank(load_settings(environ={"YKT_DATA_DIR": str(root)}))
    ensure_hsm(settings)
    ensure_bank_keys(settings)  # the demo bank's issuer master keys, by key ceremony
    ensure_manufacturer_key(settings)
    return HsmRoot(root, settings.softhsm_conf)


def batch_settings(
    data_dir: Path, db_url: str, hsm: HsmRoot, extra: dict[str, str] | None = None
) -> Settings:
    """Settings of one test (``extra``: more ``YKT_*`` variables); the blank-stock maker's
    transport key copied in."""
    stock = manufacturer_key_path(load_settings(environ={"YKT_DATA_DIR": str(hsm.root)}))
    env = {"YKT_DATA_DIR": str(data_dir), "YKT_DATABASE__URL": db_url, **hsm.environ(),
           **(extra or {})}  # fmt: skip
    config = data_dir / "yikatong.toml"  # the demo bank, for this process and the CLI's
    data_dir.mkdir(parents=True, exist_ok=True)
    if not config.exists():
        config.write_text(demo_bank_toml(BRANCH_CODE, DEMO_BANK_DOMAIN), encoding="utf-8")
    settings = load_settings(environ=env)
    target = manufacturer_key_path(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(stock, target)
    return settings


def subprocess_env(settings: Settings, hsm: HsmRoot) -> dict[str, str]:
    return {
        "YKT_DATA_DIR": str(settings.data_dir),
        "YKT_DATABASE__URL": settings.database_url,
        **hsm.environ(),
    }


@dataclass(frozen=True)
class Populated:
    batch_id: int
    batch_name: str
    card_numbers: tuple[str, ...]
    actors: dict[str, Actor]


#: The CLI password of the demo staff in the batch tests (``YKT_STAFF_PASSWORD``).
STAFF_PASSWORD = "batch-test-password-1"


def set_staff_passwords(session: Session) -> None:
    from issuance.audit import SYSTEM_ACTOR
    from issuance.services.staff import set_password
    from yikatong.demo import DEMO_STAFF

    for username, _, _ in DEMO_STAFF:
        set_password(session, username, STAFF_PASSWORD, SYSTEM_ACTOR)


def populate(
    engine: Engine, settings: Settings, residents: int, name: str = "b1", region: str = "3301"
) -> Populated:
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        actors = ensure_staff(s)
        set_staff_passwords(s)
        ensure_branch(s, settings)
        create_residents(s, settings, actors, residents)

    def txn(fn):  # type: ignore[no-untyped-def]
        with transaction(factory) as s:
            return fn(s)

    open_demo_accounts(txn, settings, actors["demo-operator"])  # the bank's response file
    with transaction(factory) as s:
        batch = create_batch(s, actors["demo-operator"], name, BatchFilter(region_code=region))
        numbers = tuple(
            s.scalars(
                sa.select(Card.card_number)
                .join(BatchItem, BatchItem.card_id == Card.id)
                .where(BatchItem.batch_id == batch.id)
                .order_by(Card.card_number)
            )
        )
        return Populated(batch.id, batch.name, numbers, actors)


def assert_batch_invariants(
    session: Session, settings: Settings, batch_id: int, card_numbers: tuple[str, ...]
) -> dict[str, int]:
    """Every application accounted for, no number reused, no half-made card counted good,
    every chip accounted for, audit chain intact. Returns counts for further checks."""
    items = session.scalars(sa.select(BatchItem).where(BatchItem.batch_id == batch_id)).all()
    assert len(items) == len(card_numbers)
    assert len({i.application_id for i in items}) == len(items)
    # card numbers: unchanged, unique, and the series has no gap before them
    cards = {c.id: c for c in session.scalars(
        sa.select(Card).where(Card.id.in_([i.card_id for i in items])))}  # fmt: skip
    assert tuple(sorted(c.card_number for c in cards.values())) == card_numbers
    all_numbers = list(session.scalars(sa.select(Card.card_number)))
    assert len(all_numbers) == len(set(all_numbers))
    series = session.scalars(sa.select(CardNumberSeries)).all()
    assert sum(s.next_value - 1 for s in series) == len(all_numbers)
    chips = session.scalars(sa.select(BlankChip).where(BlankChip.batch_id == batch_id)).all()
    by_serial = {c.chip_serial: c for c in chips}
    assert len(by_serial) == len(chips)
    good_stages = (BatchStage.CHECKED, BatchStage.SHIPPED, BatchStage.ISSUED)
    for item in items:
        card = cards[item.card_id]
        mine = [c for c in chips if c.item_id == item.id]
        good = [c for c in mine if c.status == ChipStatus.GOOD]
        if item.stage in good_stages:
            assert len(good) == 1, f"item {item.id} has {len(good)} good chips"
            assert item.chip_serial == good[0].chip_serial
            assert card.card_identification_code is not None
            assert card.card_identification_code.endswith(good[0].chip_serial)
            assert card.status in (CardStatus.PERSONALISED, CardStatus.SHIPPED, CardStatus.ISSUED)
            image = read_image(settings.cards_dir / f"{good[0].chip_serial}.json")
            assert image.life_cycle is LifeCycle.SECURED
        else:
            assert not good, f"item {item.id} ({item.stage}) has a good chip"
            if item.stage == BatchStage.WITHDRAWN:
                assert card.status == CardStatus.CANCELLED
            else:
                assert card.status == CardStatus.IN_PRODUCTION
        for chip in mine:
            if chip.status == ChipStatus.SPOILED:
                assert chip.reason and chip.chip_serial != item.chip_serial
    audit.seal(session, delay=__import__("datetime").timedelta(0))
    audit.verify_chain(session)
    return {
        "good": sum(1 for i in items if i.stage in good_stages),
        "failed": sum(1 for i in items if i.stage == BatchStage.FAILED),
        "spoiled": sum(1 for c in chips if c.status == ChipStatus.SPOILED),
        "assigned": sum(1 for c in chips if c.status == ChipStatus.ASSIGNED),
        "events": int(session.scalar(sa.select(sa.func.count()).select_from(AuditEvent)) or 0),
    }


def bureau_blank(settings: Settings, keys: object, line: object) -> Path:
    """The blank chip of a bureau file line, as the chip maker delivers it to the bureau (the
    virtual stock makes blanks when they are first needed, see ``VirtualBlankStock.
    ensure_blank``)."""
    from cardspec.profile import get_profile
    from hsm.service import CardKeyRef
    from issuance.batches.stock import VirtualBlankStock

    ref = CardKeyRef(line.card_identification_code, line.key_version,  # type: ignore[attr-defined]
                     line.algorithm)  # type: ignore[attr-defined]  # fmt: skip
    stock = VirtualBlankStock(settings, keys)  # type: ignore[arg-type]
    return stock.ensure_blank(line.chip_serial, ref,
                              get_profile(line.profile_name))  # type: ignore[attr-defined]  # fmt: skip


def audit_details(session: Session, action: str) -> list[dict[str, object]]:
    return [json.loads(d) for d in session.scalars(
        sa.select(AuditEvent.details).where(AuditEvent.action == action))]  # fmt: skip
