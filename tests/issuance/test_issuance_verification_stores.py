"""A verification's decisions and audit event have one implementation
(:func:`issuance.services.verification._verify`) over two stores: the Session of
:func:`verify_card` (:class:`SessionStore`) and the asyncio pool of :func:`verify_card_async`
(:class:`VerificationStore`, PostgreSQL). Proved here over random cards, holders and requests
(Hypothesis): on the same database the two give the same verdict and write the same audit event,
byte for byte, and record the challenge's use alike."""

from __future__ import annotations

import asyncio
import os
from datetime import date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from cardspec.ids import citizen_id_check_char
from hsm.errors import CryptogramMismatch
from hsm.service import CardKeyRef
from issuance import audit
from issuance.audit import Actor
from issuance.db import make_engine
from issuance.db_async import AsyncPgPool, RowsInsert, dsn_from_url
from issuance.models import (
    AuditEvent,
    Card,
    CardAlgorithm,
    CardKind,
    CardStatus,
    Channel,
    ChipAppKind,
    ChipApplication,
    ChipAppStatus,
    Person,
    StaffRole,
    UsedChallenge,
)
from issuance.services import credentials
from issuance.services import verification as v

pytestmark = pytest.mark.postgres
CIC = "330106D156000005" + "00A1B2C3D4E5F607"
NUMBER = "B00000013"
NOW = datetime(2026, 5, 6, 7, 8, 9, 123456)
GOOD = b"\x5a" * 8
_cjk = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5)
_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30
)


@st.composite
def holders(draw: st.DrawFn) -> dict[str, Any]:
    birth = draw(st.dates(date(1900, 1, 1), date(2020, 12, 31)))
    first17 = f"{draw(st.sampled_from(['110105', '330106', '440305']))}{birth:%Y%m%d}"
    first17 += f"{draw(st.integers(0, 999)):03d}"
    return {
        "name": draw(st.text(_cjk, min_size=1, max_size=30) | _text),
        "citizen_id": first17 + citizen_id_check_char(first17),
        "sex": draw(st.sampled_from("129")),
        "birth_date": birth,
    }


#: a request: the challenge (fresh, used before, expired, garbage), the card asked for (this
#: one, another number, an unknown code), the answer (right, wrong), what the caller asks to see
_often = st.sampled_from
requests = st.fixed_dictionaries(
    {
        "challenge": _often(["fresh", "fresh", "fresh", "reused", "expired", "garbage"]),
        "card": _often(["this", "this", "this", "other_number", "unknown"]),
        "genuine": _often([True, True, True, False]),
        "application": st.sampled_from(list(ChipAppKind)),
        "with_holder": st.booleans(),
        "full_citizen_id": st.booleans(),
        "with_photo": st.booleans(),
        "actor": st.builds(
            Actor,
            _text,
            st.sampled_from(list(StaffRole)),
            st.sampled_from(list(Channel)),
            st.none(),
        ),
    }
)
_app_status = st.just(ChipAppStatus.ACTIVE) | st.sampled_from(list(ChipAppStatus))
cards = st.fixed_dictionaries(
    {
        "status": st.just(CardStatus.ACTIVE)
        | st.sampled_from([s for s in CardStatus if s is not CardStatus.LOST_PROVISIONAL]),
        "kind": st.sampled_from(list(CardKind)),
        "algorithm": st.sampled_from([CardAlgorithm.DES3, CardAlgorithm.AES]),
        "key_version": st.integers(1, 5),
        "expiry_date": st.none() | st.dates(date(2020, 1, 1), date(2040, 1, 1)),
        "apps": st.fixed_dictionaries({}, optional={k: _app_status for k in ChipAppKind}),
    }
)
_VALID_CARD = {
    "status": CardStatus.ACTIVE,
    "kind": CardKind.FORMAL,
    "algorithm": CardAlgorithm.DES3,
    "key_version": 2,
    "expiry_date": None,
    "apps": {ChipAppKind.MEDICAL: ChipAppStatus.ACTIVE},
}
_VALID_REQUEST = {
    "challenge": "fresh",
    "card": "this",
    "genuine": True,
    "application": ChipAppKind.MEDICAL,
    "with_holder": True,
    "full_citizen_id": False,
    "with_photo": True,
    "actor": Actor("hospital-7", StaffRole.SYSTEM, Channel.SYSTEM),
}
_HOLDER = {
    "name": "欧阳" + "明" * 28,
    "citizen_id": "11010519491231002X",
    "sex": "2",
    "birth_date": date(1949, 12, 31),
}


def check(ref: CardKeyRef, factor: bytes, rnd: bytes, resp: bytes) -> None:
    if ref.card_identification_code != CIC or resp != GOOD:
        raise CryptogramMismatch("not the card's answer")


async def check_async(ref: CardKeyRef, factor: bytes, rnd: bytes, resp: bytes) -> None:
    check(ref, factor, rnd, resp)


@pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)
def test_session_and_pool_stores_give_the_same_verdicts_and_events(fresh_db_url: str) -> None:
    engine = make_engine(url=fresh_db_url)
    codec = v.ChallengeCodec(os.urandom(32))
    loop = asyncio.new_event_loop()
    pool = AsyncPgPool(dsn_from_url(engine.url), 2)
    store = v.VerificationStore(pool)
    loop.run_until_complete(pool.open())
    with Session(engine) as s:
        person = Person(
            citizen_id="11010519491231002X",
            name="张三",
            sex="2",
            birth_date=date(1949, 12, 31),
            region_code="110105",
        )
        s.add(person)
        s.flush()
        card = Card(
            card_number=NUMBER,
            kind=CardKind.FORMAL,
            status=CardStatus.ACTIVE,
            person_id=person.id,
            region_code="330106",
            algorithm=CardAlgorithm.DES3,
            card_identification_code=CIC,
        )
        s.add(card)
        s.commit()
        ids = (person.id, card.id)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(holder=holders(), card=cards, request=requests)
    @example(holder=_HOLDER, card=_VALID_CARD, request=_VALID_REQUEST)
    @example(holder=_HOLDER, card=_VALID_CARD, request={**_VALID_REQUEST, "full_citizen_id": True})
    @example(holder=_HOLDER, card=_VALID_CARD, request={**_VALID_REQUEST, "challenge": "reused"})
    def same(holder: dict, card: dict, request: dict) -> None:
        with Session(engine) as s:
            s.execute(sa.update(Person).where(Person.id == ids[0]).values(**holder))
            values = {
                k: card[k] for k in ("status", "kind", "algorithm", "key_version", "expiry_date")
            }
            s.execute(sa.update(Card).where(Card.id == ids[1]).values(**values))
            s.execute(sa.delete(ChipApplication).where(ChipApplication.card_id == ids[1]))
            for kind, status in card["apps"].items():
                s.add(ChipApplication(card_id=ids[1], kind=kind, status=status))
            s.commit()
        if request["challenge"] == "expired":
            challenge_id = codec.issue(7, 60, now=NOW - timedelta(hours=1)).id
        elif request["challenge"] == "garbage":
            challenge_id = "zz" * 16
        else:
            challenge_id = codec.issue(7, 60, now=NOW).id
        cic = CIC if request["card"] != "unknown" else CIC[:-1] + "9"
        number = NUMBER if request["card"] != "other_number" else "B0000002X"
        kwargs: dict[str, Any] = dict(
            challenge_id=challenge_id,
            credential_id=7,
            card_identification_code=cic.lower(),
            card_number=number,
            response=GOOD if request["genuine"] else b"\x00" * 8,
            application=request["application"],
            actor=request["actor"],
            codec=codec,
            with_holder=request["with_holder"],
            full_citizen_id=request["full_citizen_id"],
            with_photo=request["with_photo"],
            now=NOW,
        )
        outcomes = []
        for path in ("session", "pool", "held"):
            with Session(engine) as s:  # the challenge unused or used, as the request says
                s.execute(sa.delete(UsedChallenge))
                if request["challenge"] == "reused":
                    s.add(UsedChallenge(id=v.used_key(challenge_id)))
                s.commit()
            before = _last_event(engine)
            if path == "session":
                with Session(engine) as s:
                    verdict = v.verify_card(s, check=check, **kwargs)
                    s.commit()
            else:

                async def slow() -> v.Verdict:
                    raise AssertionError("no lost card here")

                # "held": a cached token's epoch, still the current one, checked by the
                # statements (the API's hot path): the same verdict and event
                epoch = _epoch(engine) if path == "held" else None
                verdict = loop.run_until_complete(
                    v.verify_card_async(
                        store, check=check_async, slow_path=slow, epoch=epoch, **kwargs
                    )
                )
            with Session(engine) as s:
                used = s.scalar(sa.select(sa.func.count()).select_from(UsedChallenge))
            outcomes.append((verdict, _events_after(engine, before), used))
        assert outcomes[0] == outcomes[1] == outcomes[2]
        (verdict, events, _), _, _ = outcomes
        assert (
            len(events) == 1 and events[0][audit.EVENT_COLUMNS.index("action")] == "card.verified"
        )
        seen.add(verdict.reason)

    seen: set[v.Reason | None] = set()
    try:
        same()
        assert None in seen and v.Reason.CHALLENGE_REUSED in seen  # valid ones compared too
    finally:
        loop.run_until_complete(_close(pool))
        loop.close()
        engine.dispose()


def _epoch(engine: sa.Engine) -> int:
    with Session(engine) as s:
        return credentials.auth_epoch(s)


def _bump_epoch(engine: sa.Engine) -> None:
    with Session(engine) as s:
        credentials.bump_auth_epoch(s)
        s.commit()


async def _close(pool: AsyncPgPool) -> None:
    close = getattr(pool, "close", None)
    if close is not None:
        await close()


def _last_event(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return int(c.scalar(sa.select(sa.func.coalesce(sa.func.max(AuditEvent.id), 0))) or 0)


def _events_after(engine: sa.Engine, after: int) -> list[tuple[Any, ...]]:
    columns = [AuditEvent.__table__.c[c] for c in audit.EVENT_COLUMNS]
    with engine.connect() as c:
        return [
            tuple(r)
            for r in c.execute(
                sa.select(*columns).where(AuditEvent.id > after).order_by(AuditEvent.id)
            )
        ]


#: a few columns of the call log's rows (api.calllog.CALLS writes them all)
_CALLS = RowsInsert(
    "api_calls",
    ("at", "caller", "method", "route", "status", "duration_us"),
    ("timestamp", "text", "text", "text", "smallint", "integer"),
)


def _use_args(codec: v.ChallengeCodec, entity_id: str) -> list[Any]:
    challenge_id = codec.issue(7, 60, now=NOW).id
    row = audit.event_values(
        Actor("hospital-7", StaffRole.SYSTEM, Channel.SYSTEM), "card.verified", "card",
        entity_id, after="valid", details={"challenge": challenge_id}, occurred_at=NOW,
    )  # fmt: skip
    return [v.used_key(challenge_id), *row, "invalid", '{"lost":true}']


def _call(route: str, method: str = "POST") -> tuple[Any, ...]:
    return (NOW, "hospital-7", method, route, 200, 1234)


@pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)
def test_riders_share_the_grouped_write_and_a_faulty_part_loses_nothing_else(
    fresh_db_url: str,
) -> None:
    """Rows carried with the verifications' grouped write (the call log's: :meth:`carry`) are
    committed by the same statement; if one part of a shared statement is refused, the other
    part's rows are still written and only the faulty part's callers get the error."""
    engine = make_engine(url=fresh_db_url)
    codec = v.ChallengeCodec(os.urandom(32))
    loop = asyncio.new_event_loop()
    pool = AsyncPgPool(dsn_from_url(engine.url), 2)
    store = v.VerificationStore(pool)

    async def burst(uses: list[list[Any]], calls: list[tuple[Any, ...]]) -> list[Any]:
        jobs = [store.use_and_audit(a) for a in uses] + [store.carry(_CALLS, c) for c in calls]
        return list(await asyncio.gather(*jobs, return_exceptions=True))

    def counts() -> tuple[int, int, int]:
        with engine.connect() as c:
            return (
                int(c.scalar(sa.text("SELECT count(*) FROM used_challenges")) or 0),
                int(c.scalar(sa.text("SELECT count(*) FROM audit_events")) or 0),
                int(c.scalar(sa.text("SELECT count(*) FROM api_calls")) or 0),
            )

    try:
        loop.run_until_complete(pool.open())
        base = counts()
        # shared: 4 verifications and 4 call records in one statement, one commit
        batches = store.uses.batches
        good = [_use_args(codec, CIC) for _ in range(4)]
        got = loop.run_until_complete(burst(good, [_call(f"/v1/r{i}") for i in range(4)]))
        assert got == [True] * 4 + [True] * 4
        assert store.uses.batches - batches == 1
        assert counts() == (base[0] + 4, base[1] + 4, base[2] + 4)
        # the same challenge again: used, its event says so, the riders are written anyway
        again = loop.run_until_complete(burst([good[0]], [_call("/v1/again")]))
        assert again == [False, True]
        assert counts() == (base[0] + 4, base[1] + 5, base[2] + 5)
        # a call record the table refuses (method longer than 8): the verifications and the
        # other record of its statement still commit, only that record's caller gets the error
        ok = [_use_args(codec, CIC) for _ in range(2)]
        mixed = loop.run_until_complete(
            burst(ok, [_call("/v1/fine"), _call("/v1/bad", method="X" * 9)])
        )
        assert mixed[:3] == [True, True, True] and isinstance(mixed[3], Exception)
        assert counts() == (base[0] + 6, base[1] + 7, base[2] + 6)
        # a verification row the table refuses (an entity id longer than 40): the other
        # verification and the call records of its statement still commit
        bad = _use_args(codec, CIC + "X" * 30)
        fine = _use_args(codec, CIC)
        mixed = loop.run_until_complete(burst([bad, fine], [_call("/v1/a"), _call("/v1/b")]))
        assert isinstance(mixed[0], Exception) and mixed[1:] == [True, True, True]
        assert counts() == (base[0] + 7, base[1] + 8, base[2] + 8)
    finally:
        loop.run_until_complete(_close(pool))
        loop.close()
        engine.dispose()


@pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)
def test_riders_held_for_an_epoch_are_written_only_while_it_is_current(
    fresh_db_url: str,
) -> None:
    """A rider that holds for an authentication epoch (the challenge call's record with a
    cached token) shares the round's statement; it is written, and answered True, only if
    its epoch is still the current one, read by that statement. A stale one is not written
    (False) and costs the others of its statement nothing; a faulty one loses no other row."""
    engine = make_engine(url=fresh_db_url)
    codec = v.ChallengeCodec(os.urandom(32))
    loop = asyncio.new_event_loop()
    pool = AsyncPgPool(dsn_from_url(engine.url), 2)
    store = v.VerificationStore(pool)

    async def burst(
        uses: list[list[Any]], calls: list[tuple[tuple[Any, ...], int | None]]
    ) -> list[Any]:
        jobs = [store.use_and_audit(a) for a in uses]
        jobs += [store.carry(_CALLS, c, epoch) for c, epoch in calls]
        return list(await asyncio.gather(*jobs, return_exceptions=True))

    def routes() -> list[str]:
        with engine.connect() as c:
            return list(c.scalars(sa.text("SELECT route FROM api_calls ORDER BY id")))

    def used() -> int:
        with engine.connect() as c:
            return int(c.scalar(sa.text("SELECT count(*) FROM used_challenges")) or 0)

    try:
        loop.run_until_complete(pool.open())
        old = _epoch(engine)
        _bump_epoch(engine)
        now = _epoch(engine)
        assert now == old + 1
        batches = store.uses.batches
        got = loop.run_until_complete(
            burst(
                [_use_args(codec, CIC) for _ in range(2)],
                [
                    (_call("/v1/stale"), old),
                    (_call("/v1/current"), now),
                    (_call("/v1/none"), None),
                    (_call("/v1/stale2"), old),
                ],
            )
        )
        assert got == [True, True, False, True, True, False]
        assert store.uses.batches - batches == 1  # one statement, one commit for all
        assert sorted(routes()) == ["/v1/current", "/v1/none"] and used() == 2
        # riders alone (no verification in the round): the same check
        got = loop.run_until_complete(burst([], [(_call("/v1/a"), now), (_call("/v1/b"), old)]))
        assert got == [True, False]
        assert sorted(routes()) == ["/v1/a", "/v1/current", "/v1/none"]
        # a faulty rider (method longer than 8) among held ones: only its caller gets the
        # error; the one-by-one retry still checks each epoch
        got = loop.run_until_complete(
            burst(
                [_use_args(codec, CIC)],
                [
                    (_call("/v1/bad", method="X" * 9), now),
                    (_call("/v1/c"), now),
                    (_call("/v1/d"), old),
                ],
            )
        )
        assert got[0] is True and isinstance(got[1], Exception) and got[2:] == [True, False]
        assert sorted(routes()) == ["/v1/a", "/v1/c", "/v1/current", "/v1/none"]
        assert used() == 3
    finally:
        loop.run_until_complete(_close(pool))
        loop.close()
        engine.dispose()


@pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)
def test_a_verification_held_for_a_stale_epoch_writes_nothing(fresh_db_url: str) -> None:
    """A verification whose caller's cached token is of an older authentication epoch stops
    with :class:`StaleEpoch` before anything is written, whatever its request: a valid one
    (the card read checks the epoch), an unknown card (the same read), a refused challenge
    (its audit event checks it). At the current epoch the same requests go through."""
    engine = make_engine(url=fresh_db_url)
    codec = v.ChallengeCodec(os.urandom(32))
    loop = asyncio.new_event_loop()
    pool = AsyncPgPool(dsn_from_url(engine.url), 2)
    store = v.VerificationStore(pool)
    with Session(engine) as s:
        person = Person(
            citizen_id="11010519491231002X", name="张三", sex="2",
            birth_date=date(1949, 12, 31), region_code="110105",
        )  # fmt: skip
        s.add(person)
        s.flush()
        card = Card(
            card_number=NUMBER, kind=CardKind.FORMAL, status=CardStatus.ACTIVE,
            person_id=person.id, region_code="330106", algorithm=CardAlgorithm.DES3,
            card_identification_code=CIC,
        )  # fmt: skip
        s.add(card)
        s.flush()
        s.add(
            ChipApplication(card_id=card.id, kind=ChipAppKind.MEDICAL, status=ChipAppStatus.ACTIVE)
        )
        s.commit()

    async def slow() -> v.Verdict:
        raise AssertionError("no lost card here")

    def verify(cic: str, challenge_id: str, epoch: int) -> v.Verdict:
        return loop.run_until_complete(
            v.verify_card_async(
                store, challenge_id=challenge_id, credential_id=7,
                card_identification_code=cic, card_number=NUMBER, response=GOOD,
                application=ChipAppKind.MEDICAL, check=check_async,
                actor=Actor("hospital-7", StaffRole.SYSTEM, Channel.SYSTEM), codec=codec,
                slow_path=slow, now=NOW, epoch=epoch,
            )
        )  # fmt: skip

    def written() -> tuple[int, int]:
        with engine.connect() as c:
            return (
                int(c.scalar(sa.text("SELECT count(*) FROM used_challenges")) or 0),
                int(c.scalar(sa.text("SELECT count(*) FROM audit_events")) or 0),
            )

    unknown = CIC[:-1] + "9"
    try:
        loop.run_until_complete(pool.open())
        old = _epoch(engine)
        _bump_epoch(engine)
        now = _epoch(engine)
        base = written()
        fresh = codec.issue(7, 60, now=NOW).id
        for cic, challenge_id in ((CIC, fresh), (unknown, fresh), (CIC, "zz" * 16)):
            with pytest.raises(v.StaleEpoch):
                verify(cic, challenge_id, old)
            assert written() == base  # nothing: no challenge used, no event
        # the same requests at the current epoch: answered and written
        assert verify(CIC, fresh, now).valid
        assert verify(unknown, codec.issue(7, 60, now=NOW).id, now).reason is v.Reason.UNKNOWN_CARD
        assert verify(CIC, "zz" * 16, now).reason is v.Reason.CHALLENGE_UNKNOWN
        assert written() == (base[0] + 2, base[1] + 3)
        # a round of card reads mixing both: each gets its own answer
        lookups = [
            store.lookup(CIC, ChipAppKind.MEDICAL, old),
            store.lookup(CIC, ChipAppKind.MEDICAL, now),
            store.lookup(unknown, ChipAppKind.MEDICAL, now),
            store.lookup(CIC, ChipAppKind.MEDICAL),
        ]
        batches = store.lookups.batches

        async def all_of() -> list[Any]:
            return list(await asyncio.gather(*lookups, return_exceptions=True))

        got = loop.run_until_complete(all_of())
        assert store.lookups.batches - batches == 1
        assert isinstance(got[0], v.StaleEpoch) and got[2] is None
        assert isinstance(got[1], v.CardRow) and got[1] == got[3] and got[1].card_number == NUMBER
    finally:
        loop.run_until_complete(_close(pool))
        loop.close()
        engine.dispose()
