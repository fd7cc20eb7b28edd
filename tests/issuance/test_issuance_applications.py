"""Counter intake (one veto, every reason listed) and maker–checker approval."""

from __future__ import annotations

from datetime import date

import pytest
from issuance_helpers import JPEG_FIXTURE, make_cid, submit

from issuance import services
from issuance.errors import PermissionDenied, ValidationError
from issuance.models import ApplicationStatus, AuditEvent, CardStatus


def test_one_veto_lists_every_problem(session, settings, actors):
    cid = make_cid(male=True)
    bad_check = cid[:17] + ("0" if cid[17] != "0" else "1")
    with pytest.raises(ValidationError) as err:
        submit(
            session,
            settings,
            actors["clerk"],
            citizen_id=bad_check,
            name="张3",
            phone="12345",
            region_code="990000",
            photo=b"GIF89a",
        )
    fields = sorted(p.field for p in err.value.problems)
    assert fields == ["citizen_id", "name", "phone", "photo", "region_code"]
    with pytest.raises(ValidationError) as err:
        submit(
            session,
            settings,
            actors["clerk"],
            citizen_id=cid,
            sex="2",
            birth_date=date(1999, 1, 1),
            photo=None,
        )
    reasons = {p.field: p.reason for p in err.value.problems}
    assert set(reasons) == {"sex", "birth_date", "photo"}
    assert cid not in str(err.value)  # personal data never in messages


def test_names_and_photo_exemption(session, settings, actors):
    child = make_cid(birth=date.today().replace(year=date.today().year - 3))
    app = submit(session, settings, actors["clerk"], citizen_id=child, name="欧阳·娜娜", photo=None)
    assert app.photo_exempt and app.status == ApplicationStatus.RECEIVED
    ok = submit(session, settings, actors["clerk"], name="John SMITH")
    assert ok.photo_sha256 and ok.photo_jpeg == JPEG_FIXTURE


def test_no_second_live_application_or_card(session, settings, actors, new_card):
    cid = make_cid()
    submit(session, settings, actors["clerk"], citizen_id=cid)
    with pytest.raises(ValidationError, match="application in progress"):
        submit(session, settings, actors["clerk2"], citizen_id=cid)
    card = new_card("active")
    with pytest.raises(ValidationError, match="live card"):
        submit(
            session,
            settings,
            actors["clerk"],
            citizen_id=card.person.citizen_id,
            name=card.person.name,
        )


def test_maker_checker(session, settings, actors):
    clerk = actors["clerk"]
    app = submit(session, settings, clerk)
    services.process_application(session, app.id, clerk)
    with pytest.raises(PermissionDenied):  # a clerk cannot review
        services.review_application(session, app.id, clerk)
    services.review_application(session, app.id, actors["reviewer"])
    # the receiving clerk cannot approve even with a supervisor role: use a receiving supervisor
    sup_app = submit(session, settings, actors["supervisor"])
    services.process_application(session, sup_app.id, actors["clerk"])
    services.review_application(session, sup_app.id, actors["reviewer"])
    with pytest.raises(PermissionDenied, match="maker-checker"):
        services.approve_application(session, settings, sup_app.id, actors["supervisor"])
    card = services.approve_application(session, settings, app.id, actors["approver"])
    assert app.status == ApplicationStatus.APPROVED
    assert app.approved_by_id == actors["approver"].staff_id
    assert card.status == CardStatus.NUMBER_ALLOCATED and app.card_id == card.id
    assert len(card.card_number) == 9 and card.kind == "formal"
    events = (
        session.query(AuditEvent).filter_by(entity_type="application", entity_id=str(app.id)).all()
    )
    assert [e.action for e in events] == [
        "application.received",
        "application.processed",
        "application.reviewed",
        "application.approved",
    ]
    assert all(len(e.details) < 2000 and card.person.citizen_id not in e.details for e in events)


def test_reject(session, settings, actors):
    app = submit(session, settings, actors["clerk"])
    services.reject_application(session, app.id, actors["reviewer"], "photo is of someone else")
    assert app.status == ApplicationStatus.REJECTED
    again = submit(
        session, settings, actors["clerk"], citizen_id=app.person.citizen_id, name=app.person.name
    )
    assert again.person_id == app.person_id
