"""The counter intake takes address, sex and ethnicity (issue 16); a missing ethnicity is
refused at the counter, refused at approval for a file line that lacked it, and never
defaulted on the way to the chip."""

from __future__ import annotations

import pytest
from issuance_helpers import JPEG_FIXTURE, fake_process_photo, make_cid, submit
from sqlalchemy.orm import Session

from issuance import services
from issuance.audit import Actor
from issuance.batches.dataprep import holder_ethnicity
from issuance.errors import ValidationError
from issuance.models import ApplicationChannel
from yikatong.settings import Settings


def test_counter_refuses_a_missing_ethnicity_with_every_other_problem(
    session: Session, settings: Settings, actors: dict[str, Actor]
) -> None:
    data = services.ApplicationInput(citizen_id=make_cid(), name="陈建国", phone="12",
                                      photo=JPEG_FIXTURE)  # fmt: skip
    with pytest.raises(ValidationError) as e:
        services.submit_application(session, settings, data, actors["clerk"],
                                    photo_processor=fake_process_photo)  # fmt: skip
    assert {p.field for p in e.value.problems} == {"ethnicity", "phone"}
    assert "never defaulted" in next(p.reason for p in e.value.problems if p.field == "ethnicity")


def test_address_sex_and_ethnicity_are_recorded(
    session: Session, settings: Settings, actors: dict[str, Actor]
) -> None:
    cid = make_cid(male=False)
    a = submit(session, settings, actors["clerk"], citizen_id=cid, ethnicity="05", sex="女",
               address="杭州市上城区某路2号")  # fmt: skip
    p = a.person  # type: ignore[attr-defined]
    assert (p.ethnicity, p.sex, p.address) == ("05", "2", "杭州市上城区某路2号")
    with pytest.raises(ValidationError) as e:
        submit(session, settings, actors["clerk"], citizen_id=make_cid(male=False), sex="男")
    assert [x.field for x in e.value.problems] == ["sex"]


def test_a_file_line_without_ethnicity_cannot_be_approved_nor_reach_the_chip(
    session: Session, settings: Settings, actors: dict[str, Actor]
) -> None:
    data = services.ApplicationInput(citizen_id=make_cid(), name="卫国", phone="13900000009",
                                      photo=JPEG_FIXTURE)  # fmt: skip
    a = services.submit_application(session, settings, data, actors["clerk"],
                                    channel=ApplicationChannel.EMPLOYER,
                                    photo_processor=fake_process_photo)  # fmt: skip
    services.process_application(session, a.id, actors["clerk"])
    services.review_application(session, a.id, actors["reviewer"])
    with pytest.raises(ValidationError) as e:
        services.approve_application(session, settings, a.id, actors["approver"])
    assert [p.field for p in e.value.problems] == ["ethnicity"]
    assert a.status == "reviewed" and a.card_id is None
    with pytest.raises(ValidationError, match="cannot prepare"):
        holder_ethnicity(a.person)
    a.person.ethnicity = "01"
    assert holder_ethnicity(a.person) == "01"
