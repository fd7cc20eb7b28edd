"""Find the person and see their whole record (issue 16): the searches, who may search, the
person view, the audit events, and on PostgreSQL the plans (index lookups, never a scan)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pytest
import sqlalchemy as sa
from issuance_helpers import make_cid, submit
from sqlalchemy.orm import Session

from cardspec.ids import make_card_number
from issuance import services
from issuance.audit import Actor
from issuance.errors import NotFound, PermissionDenied, ValidationError
from issuance.models import AuditEvent, Card, Channel, Person, StaffRole
from issuance.services import people
from issuance.services.people import PersonQuery
from yikatong.settings import Settings


def _events(session: Session, action: str) -> list[AuditEvent]:
    return list(session.scalars(sa.select(AuditEvent).where(AuditEvent.action == action)))


def test_find_by_each_key(
    session: Session, settings: Settings, actors: dict[str, Actor], new_card: Callable[..., Card]
) -> None:
    card = new_card("active")
    person = card.person
    clerk = actors["clerk"]
    for q in (
        PersonQuery(citizen_id=person.citizen_id.lower()),
        PersonQuery(card_number=card.card_number.lower()),
        PersonQuery(phone=person.phone[:3] + " " + person.phone[3:]),
        PersonQuery(name=person.name, birth_date=person.birth_date),
        PersonQuery(name=person.name, region_code=person.region_code),
        PersonQuery(name=person.name, region_code=person.region_code[:4] + "00"),
    ):
        found = people.find_people(session, q, clerk)
        assert person.id in [m.person_id for m in found], q
        m = next(m for m in found if m.person_id == person.id)
        assert m.card_number == card.card_number and m.card_status == "active"
        assert "*" in m.citizen_id_masked and m.citizen_id_masked != person.citizen_id
    # a neighbouring region does not match
    other = PersonQuery(name=person.name, region_code="110101")
    assert person.id not in [m.person_id for m in people.find_people(session, other, clerk)]
    assert people.find_people(session, PersonQuery(citizen_id=make_cid()), clerk) == []


def test_bad_queries_are_refused_with_every_reason(
    session: Session, actors: dict[str, Actor]
) -> None:
    clerk = actors["clerk"]
    cid = make_cid()
    bad_cid = cid[:17] + ("0" if cid[17] != "0" else "1")
    good_card = make_card_number("A0000001")
    bad_card = good_card[:8] + ("0" if good_card[8] != "0" else "1")
    with pytest.raises(ValidationError) as e:
        people.find_people(session, PersonQuery(citizen_id=bad_cid), clerk)
    assert e.value.problems[0].field == "citizen_id" and "check" in e.value.problems[0].reason
    with pytest.raises(ValidationError) as e:
        people.find_people(session, PersonQuery(card_number=bad_card), clerk)
    assert [p.field for p in e.value.problems] == ["card_number"]
    with pytest.raises(ValidationError) as e:
        people.find_people(session, PersonQuery(name="王伟"), clerk)
    assert "too broad" in e.value.problems[0].reason
    with pytest.raises(ValidationError):
        people.find_people(session, PersonQuery(citizen_id=cid, phone="13800138000"), clerk)
    with pytest.raises(ValidationError):
        people.find_people(session, PersonQuery(), clerk)
    with pytest.raises(ValidationError) as e:
        people.find_people(session, PersonQuery(name="王伟", region_code="33x"), clerk)
    assert [p.field for p in e.value.problems] == ["region_code"]
    with pytest.raises(ValidationError) as e:
        people.find_people(session, PersonQuery(phone="call me"), clerk)
    assert [p.field for p in e.value.problems] == ["phone"]


def test_only_staff_of_counter_roles_search(session: Session, actors: dict[str, Actor]) -> None:
    q = PersonQuery(citizen_id=make_cid())
    for role in ("reviewer", "approver"):
        with pytest.raises(PermissionDenied):
            people.find_people(session, q, actors[role])
    agency = Actor("agency:H1", StaffRole.BANK_TELLER, Channel.BANK, None)
    with pytest.raises(PermissionDenied, match="agencies never list"):
        people.find_people(session, q, agency)
    with pytest.raises(PermissionDenied):
        people.person_record(session, 1, agency)
    for role in ("clerk", "supervisor", "admin", "fund_supervisor", "bank_teller", "auditor"):
        assert people.find_people(session, q, actors[role]) == []


def test_search_is_audited_without_the_value(session: Session, actors: dict[str, Actor]) -> None:
    cid = make_cid()
    submit(session, Settings(), actors["clerk"], citizen_id=cid, name="陈建国")
    before = len(_events(session, "person.searched"))
    found = people.find_people(session, PersonQuery(citizen_id=cid), actors["clerk"])
    evs = _events(session, "person.searched")
    assert len(evs) == before + 1
    ev = evs[-1]
    assert ev.actor_name == actors["clerk"].username
    assert '"by":"citizen_id"' in ev.details and str(found[0].person_id) in ev.details
    assert cid not in ev.details and cid[6:14] not in ev.details


def test_person_view_has_everything(
    session: Session, settings: Settings, actors: dict[str, Actor], new_card: Callable[..., Card]
) -> None:
    card = new_card("active")
    clerk = actors["clerk"]
    services.report_loss(session, settings, card.id, clerk, identity_checked=True, note="bus")
    temp = services.issue_temporary_card(session, settings, card.person_id, clerk)
    new = services.replace_card(session, settings, card.id, clerk, reason="lost")
    rec = people.person_record(session, card.person_id, clerk)
    assert rec.citizen_id == card.person.citizen_id and rec.name == card.person.name
    by_number = {c.card_number: c for c in rec.cards}
    assert by_number[card.card_number].status == "replaced"
    assert by_number[card.card_number].replaced_by == new.card_number
    assert by_number[new.card_number].status == "number_allocated"
    assert [c.card_number for c in rec.temporary_cards] == [temp.card_number]
    assert {a.kind for a in by_number[card.card_number].chip_apps} >= {"social_security",
                                                                        "financial"}  # fmt: skip
    fin = next(a for a in by_number[card.card_number].chip_apps if a.kind == "financial")
    assert fin.pin_set is False
    soc = next(a for a in by_number[card.card_number].chip_apps if a.kind == "social_security")
    assert soc.pin_set is None  # not recorded by this system
    assert [d.amount_fen for d in rec.deposits] == [settings.lifecycle.temporary_card_deposit_fen]
    assert rec.deposits_held_fen == settings.lifecycle.temporary_card_deposit_fen
    assert rec.fees_fen == new.fee_fen == settings.lifecycle.replacement_fee_fen
    assert [(r.card_number, r.kind, r.status) for r in rec.losses] == [
        (card.card_number, "formal", "replaced")
    ]
    assert len(rec.applications) == 1 and rec.applications[0].card_number == card.card_number
    actions = [e.action for e in rec.timeline]
    assert "application.received" in actions and "card.created" in actions
    assert actions.index("application.received") < actions.index("card.created")
    assert "deposit.taken" in actions
    assert not {"person.viewed", "person.searched"} & set(actions)
    times = [e.occurred_at for e in rec.timeline]
    assert times == sorted(times)
    assert _events(session, "person.viewed")[-1].entity_id == str(card.person_id)
    with pytest.raises(NotFound):
        people.person_record(session, 10**9, clerk)


def test_find_one_needs_exactly_one(session: Session, actors: dict[str, Actor]) -> None:
    clerk = actors["clerk"]
    born = date(1988, 8, 8)
    for _ in range(2):
        submit(session, Settings(), clerk, citizen_id=make_cid(born), name="王伟")
    with pytest.raises(ValidationError, match="2 people found"):
        people.find_one(session, PersonQuery(name="王伟", birth_date=born), clerk)
    with pytest.raises(NotFound):
        people.find_one(session, PersonQuery(name="王伟", birth_date=date(1901, 1, 1)), clerk)


@pytest.mark.postgres
@pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)  # plans: PostgreSQL only
def test_searches_are_index_lookups_on_postgresql(
    session: Session, db_backend: str, actors: dict[str, Actor]
) -> None:
    """EXPLAIN of every search on 100,000 people (and cards): an index scan, never a
    sequential scan (bench/people.md has the plans at ten million)."""
    assert db_backend == "postgres"
    session.execute(
        sa.text(
            "INSERT INTO persons (citizen_id, name, sex, birth_date, region_code, phone, "
            "created_at) SELECT '8' || lpad(g::text, 17, '0'), 'n' || (g % 20000), '1', "
            "date '1950-01-01' + (g % 20000), '3301' || lpad((g % 99)::text, 2, '0'), "
            "'139' || lpad(g::text, 8, '0'), now() FROM generate_series(1, 100000) g"
        )
    )
    session.execute(
        sa.text(
            "INSERT INTO cards (card_number, kind, status, status_changed_at, person_id, "
            "region_code, key_version, algorithm, fee_fen, created_at, version) "
            "SELECT 'Z' || lpad(p.id::text, 8, '0'), 'formal', 'active', now(), p.id, "
            "'330100', 1, '3des', 0, now(), 1 FROM persons p"
        )
    )
    session.execute(sa.text("ANALYZE persons"))
    session.execute(sa.text("ANALYZE cards"))
    queries = {
        "citizen_id": PersonQuery(citizen_id="330106198001010019"),
        "card_number": PersonQuery(card_number="A00000017"),
        "phone": PersonQuery(phone="13900012345"),
        "name+birth_date": PersonQuery(name="n42", birth_date=date(1950, 2, 12)),
        "name+region_code": PersonQuery(name="n42", region_code="330100"),
    }
    for by, q in queries.items():
        stmt = people.search_statement(q)
        compiled = stmt.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        plan = "\n".join(session.execute(sa.text(f"EXPLAIN {compiled}")).scalars())
        assert "Seq Scan" not in plan, (by, plan)
        assert "Index" in plan, (by, plan)
    assert session.scalar(sa.select(sa.func.count()).select_from(Person)) >= 100000


def test_application_view_for_deciders_only(session: Session, actors: dict[str, Actor]) -> None:
    from issuance.services.application_view import view_application

    a = submit(session, Settings(), actors["clerk"], ethnicity="02", address="某路1号")
    v = view_application(session, a.id, actors["reviewer"])  # type: ignore[attr-defined]
    assert v.ethnicity == "02" and v.address == "某路1号" and v.photo_jpeg is None
    assert v.received_by == actors["clerk"].username and v.status == "received"
    v = view_application(session, a.id, actors["approver"], with_photo=True)  # type: ignore[attr-defined]
    assert v.photo_jpeg is not None and v.photo_sha256 is not None
    with pytest.raises(PermissionDenied):
        view_application(session, a.id, actors["fund_supervisor"])  # type: ignore[attr-defined]
    agency = Actor("agency:B", StaffRole.BANK_TELLER, Channel.BANK, None)
    with pytest.raises(PermissionDenied):
        view_application(session, a.id, agency)  # type: ignore[attr-defined]
    with pytest.raises(NotFound):
        view_application(session, 10**9, actors["reviewer"])
