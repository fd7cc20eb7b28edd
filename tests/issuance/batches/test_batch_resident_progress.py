"""A resident follows their new card through a real batch (pcscd + vpcd, SoftHSM): approved,
in production, ready for pick-up at the branch it was shipped to, collected
(:func:`issuance.services.resident.progress`, after the one-time code from the outbox)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from batch_helpers import HsmRoot, batch_settings, hsm_root, populate
from sqlalchemy.engine import Engine

from issuance.batches.pipeline import RunOptions
from issuance.batches.shipping import issue_card, ship_batch
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import Card, OutboxMessage, Person
from issuance.services import otp
from issuance.services import resident as rsv
from yikatong.demo import BRANCH_CODE
from yikatong.settings import Settings
from yikatong.wiring import runner_for

pytestmark = pytest.mark.pcsc


@pytest.fixture(scope="session")
def rp_hsm(tmp_path_factory: pytest.TempPathFactory) -> HsmRoot:
    return hsm_root(tmp_path_factory.mktemp("rp-hsm"))


@pytest.fixture
def env(tmp_path: Path, fresh_db_url: str, rp_hsm: HsmRoot) -> Iterator[tuple[Settings, Engine]]:
    # four looks, each with its own code: more than the default codes per person and hour
    settings = batch_settings(tmp_path / "data", fresh_db_url, rp_hsm,
                              {"YKT_RESIDENT__CODES_PER_PERSON_PER_HOUR": "6"})  # fmt: skip
    engine = make_engine(settings)
    yield settings, engine
    engine.dispose()


def test_a_resident_sees_their_card_go_from_approval_to_the_branch(
    env: tuple[Settings, Engine],
) -> None:
    settings, engine = env
    pop = populate(engine, settings, 1, name="resident-progress")
    factory = make_sessionmaker(engine)

    def look() -> rsv.Progress:
        with transaction(factory) as s:
            card = s.scalars(sa.select(Card).where(Card.card_number == pop.card_numbers[0])).one()
            person = s.get(Person, card.person_id)
            assert person is not None
            started = otp.start_challenge(s, settings, person.citizen_id, person.name,
                                          otp.Purpose.CARD_PROGRESS, "203.0.113.5")  # fmt: skip
            text = s.scalars(sa.select(OutboxMessage.payload["text"].as_string())
                             .where(OutboxMessage.topic == otp.TOPIC)
                             .order_by(OutboxMessage.id.desc()).limit(1)).one()  # fmt: skip
        code = re.search(r"验证码 (\d{6})", text)
        assert code is not None
        with transaction(factory) as s:
            proven = otp.confirm(s, settings, started.challenge_id, code.group(1),
                                 otp.Purpose.CARD_PROGRESS)  # fmt: skip
            assert isinstance(proven, otp.ProvenResident)
            _, rs = rsv.open_session(s, settings, proven, "203.0.113.5")
            return rsv.progress(s, rs)

    before = look()
    assert (before.step, before.card_number) == ("in_production", pop.card_numbers[0])
    with runner_for(settings, pop.batch_id, engine=engine, options=RunOptions(readers=1)) as r:
        assert r.run().checked == 1
    assert look().step == "in_production"  # personalised, printed, checked: not shipped yet

    def txn(fn):  # type: ignore[no-untyped-def]
        with transaction(factory) as s:
            return fn(s)

    ship_batch(txn, settings, pop.batch_id, BRANCH_CODE, pop.actors["demo-operator"])
    ready = look()
    assert (ready.step, ready.collection_point) == ("ready", "中国工商银行杭州西湖支行")
    txn(lambda s: issue_card(s, pop.card_numbers[0], pop.actors["demo-teller"]))
    assert look().step == "collected"
