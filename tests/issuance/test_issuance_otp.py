"""The one-time code and the resident session as services (``issuance.services.otp``,
``issuance.services.resident``): time limits, single use, one purpose, the silent per-person
limit, and what the web channel may not do. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance import services
from issuance.audit import Actor
from issuance.errors import PermissionDenied
from issuance.models import (
    AuditEvent,
    Card,
    Channel,
    OutboxMessage,
    Person,
    ResidentChallenge,
    StaffRole,
    utcnow,
)
from issuance.services import otp
from issuance.services import resident as rsv
from yikatong.settings import Settings

P = otp.Purpose


def _person(session: Session, card: Card) -> Person:
    person = session.get(Person, card.person_id)
    assert person is not None and person.phone
    return person


def _sent(session: Session) -> list[str]:
    """The codes in the outbox, oldest first (what the phone gets)."""
    rows = session.scalars(sa.select(OutboxMessage).where(OutboxMessage.topic == otp.TOPIC)
                           .order_by(OutboxMessage.id)).all()  # fmt: skip
    return [str(r.payload["code"]) for r in rows]


def test_a_code_expires_is_used_once_and_proves_its_purpose_only(
    session: Session, settings: Settings, new_card: Callable[[str], Card]
) -> None:
    person = _person(session, new_card("active"))
    t0 = utcnow()
    ttl = timedelta(seconds=settings.resident.code_ttl_seconds)
    late = otp.start_challenge(session, settings, person.citizen_id, person.name,
                               P.REPORT_LOSS, "203.0.113.1", now=t0)  # fmt: skip
    code = _sent(session)[-1]
    assert otp.confirm(session, settings, late.challenge_id, code, P.REPORT_LOSS,
                       now=t0 + ttl) == otp.CodeRefused("expired")  # fmt: skip
    ok = otp.start_challenge(session, settings, person.citizen_id, person.name, P.REPORT_LOSS,
                             "203.0.113.1", now=t0)  # fmt: skip
    code = _sent(session)[-1]
    # another purpose: refused, and the try not spent
    assert otp.confirm(session, settings, ok.challenge_id, code, P.WITHDRAW_LOSS,
                       now=t0) == otp.CodeRefused("expired")  # fmt: skip
    proven = otp.confirm(session, settings, ok.challenge_id, f" {code[:3]} {code[3:]} ",
                         P.REPORT_LOSS, now=t0 + ttl - timedelta(seconds=1))  # fmt: skip
    assert isinstance(proven, otp.ProvenResident)
    assert (proven.person_id, proven.purpose) == (person.id, P.REPORT_LOSS)
    assert proven.actor.channel == "web" and proven.actor.username == f"resident:{person.id}"
    assert otp.confirm(session, settings, ok.challenge_id, code, P.REPORT_LOSS,
                       now=t0) == otp.CodeRefused("expired")  # used  # fmt: skip


def test_the_person_limit_is_silent_and_the_session_short_and_single_purpose(
    session: Session, settings: Settings, new_card: Callable[[str], Card]
) -> None:
    person = _person(session, new_card("active"))
    limit = settings.resident.codes_per_person_per_hour
    answers = [
        otp.start_challenge(session, settings, person.citizen_id, person.name, P.CARD_PROGRESS,
                            f"198.51.100.{i}")
        for i in range(limit + 2)
    ]  # fmt: skip
    assert {type(a) for a in answers} == {otp.ChallengeStarted}
    assert len(_sent(session)) == limit
    first = otp.confirm(session, settings, answers[0].challenge_id, _sent(session)[0],
                        P.CARD_PROGRESS)  # fmt: skip
    assert isinstance(first, otp.ProvenResident)
    t0 = utcnow()
    token, rs = rsv.open_session(session, settings, first, "198.51.100.1", now=t0)
    assert rsv.resume_session(session, token, P.CARD_PROGRESS, now=t0) == rs
    assert rsv.resume_session(session, token, P.REPORT_LOSS, now=t0) is None
    end = t0 + timedelta(minutes=settings.resident.session_minutes)
    assert rsv.resume_session(session, token, P.CARD_PROGRESS, now=end) is None
    with pytest.raises(Exception, match="not for a loss report"):
        rsv.report_loss(session, settings, rs)


def test_a_formal_report_is_not_withdrawn_through_the_web(
    session: Session, settings: Settings, new_card: Callable[[str], Card],
    actors: dict[str, Actor],
) -> None:  # fmt: skip
    card = new_card("active")
    person = _person(session, card)
    services.report_loss(session, settings, card.id, actors["clerk"], identity_checked=True)
    assert card.status == "lost_formal"
    started = otp.start_challenge(session, settings, person.citizen_id, person.name,
                                  P.WITHDRAW_LOSS, "192.0.2.1")  # fmt: skip
    proven = otp.confirm(session, settings, started.challenge_id, _sent(session)[-1],
                         P.WITHDRAW_LOSS)  # fmt: skip
    assert isinstance(proven, otp.ProvenResident)
    _, rs = rsv.open_session(session, settings, proven, "192.0.2.1")
    with pytest.raises(PermissionDenied, match="may not unreport"):
        rsv.withdraw_loss(session, settings, rs)
    assert card.status == "lost_formal"


# --- the hotline's loss code: a card-bound purpose of the same rule (issue 13) ---------------

HOTLINE = Actor("hotline-client", StaffRole.SYSTEM, Channel.PHONE)


def _hotline_sent(session: Session) -> list[OutboxMessage]:
    return list(session.scalars(sa.select(OutboxMessage).where(OutboxMessage.topic == "loss.code")
                                .order_by(OutboxMessage.id)).all())  # fmt: skip


def test_the_hotline_code_is_a_purpose_of_the_one_rule(
    session: Session, settings: Settings, new_card: Callable[[str], Card]
) -> None:
    card, other = new_card("active"), new_card("active")
    person = _person(session, card)
    t0 = utcnow()
    ttl = timedelta(seconds=settings.resident.hotline_code_ttl_seconds)
    assert otp.send_card_code(session, settings, card.id, P.LOSS_HOTLINE, HOTLINE, now=t0)
    (msg,) = _hotline_sent(session)
    code = str(msg.payload["code"])
    assert msg.payload["card_number"] == card.card_number and msg.person_id == person.id
    assert code in msg.payload["text"] and msg.recipient == person.phone
    row = session.scalars(sa.select(ResidentChallenge).where(ResidentChallenge.card_id == card.id)
                          ).one()  # fmt: skip
    assert (row.purpose, row.person_id, row.sent) == ("loss_hotline", person.id, True)
    assert code not in (row.code_hash, row.handle)  # only its salted hash is kept
    # the residents' door opens none of it, nor another card; no try is spent there
    assert otp.confirm(session, settings, row.handle, code, P.LOSS_HOTLINE,
                       now=t0) == otp.CodeRefused("expired")  # fmt: skip
    assert otp.confirm(session, settings, row.handle, code, P.REPORT_LOSS,
                       now=t0) == otp.CodeRefused("expired")  # fmt: skip
    assert otp.confirm_card_code(session, settings, other.id, code, P.LOSS_HOTLINE, HOTLINE,
                                 now=t0) == otp.CodeRefused("expired")  # fmt: skip
    assert otp.confirm_card_code(session, settings, card.id, code, P.REPORT_LOSS, HOTLINE,
                                 now=t0) == otp.CodeRefused("expired")  # fmt: skip
    with pytest.raises(ValueError, match="by card"):
        otp.start_challenge(session, settings, person.citizen_id, person.name, P.LOSS_HOTLINE,
                            "192.0.2.7")  # fmt: skip
    with pytest.raises(ValueError, match="by the resident"):
        otp.send_card_code(session, settings, card.id, P.REPORT_LOSS, HOTLINE)
    assert row.attempts == 0
    # [resident] hotline_code_ttl_seconds, single use
    assert otp.confirm_card_code(session, settings, card.id, code, P.LOSS_HOTLINE, HOTLINE,
                                 now=t0 + ttl) == otp.CodeRefused("expired")  # fmt: skip
    proven = otp.confirm_card_code(session, settings, card.id, code, P.LOSS_HOTLINE, HOTLINE,
                                   now=t0 + ttl - timedelta(seconds=1))  # fmt: skip
    assert isinstance(proven, otp.ProvenResident)
    assert (proven.person_id, proven.purpose, proven.actor) == (person.id, P.LOSS_HOTLINE, HOTLINE)
    assert otp.confirm_card_code(session, settings, card.id, code, P.LOSS_HOTLINE, HOTLINE,
                                 now=t0) == otp.CodeRefused("expired")  # fmt: skip
    # a newer code replaces an older one
    assert otp.send_card_code(session, settings, card.id, P.LOSS_HOTLINE, HOTLINE, now=t0)
    assert otp.send_card_code(session, settings, card.id, P.LOSS_HOTLINE, HOTLINE, now=t0)
    older, newer = (str(m.payload["code"]) for m in _hotline_sent(session)[-2:])
    if older != newer:
        refused = otp.confirm_card_code(session, settings, card.id, older, P.LOSS_HOTLINE,
                                        HOTLINE, now=t0)  # fmt: skip
        assert refused == otp.CodeRefused("wrong", settings.resident.code_tries - 1)
    assert isinstance(otp.confirm_card_code(session, settings, card.id, newer, P.LOSS_HOTLINE,
                                            HOTLINE, now=t0), otp.ProvenResident)  # fmt: skip
    events = session.scalars(sa.select(AuditEvent.action).where(
        AuditEvent.actor_name == HOTLINE.username).order_by(AuditEvent.id)).all()  # fmt: skip
    assert events.count("resident.code_requested") == 3
    assert events.count("resident.code_confirmed") == 2


def test_one_phone_one_hourly_limit_through_both_doors(
    session: Session, settings: Settings, new_card: Callable[[str], Card]
) -> None:
    card = new_card("active")
    person = _person(session, card)
    limit = settings.resident.codes_per_person_per_hour
    web = otp.start_challenge(session, settings, person.citizen_id, person.name, P.REPORT_LOSS,
                              "192.0.2.8")  # fmt: skip
    assert len(_sent(session)) == 1
    sent = [otp.send_card_code(session, settings, card.id, P.LOSS_HOTLINE, HOTLINE)
            for _ in range(limit)]  # fmt: skip
    assert sent == [True] * (limit - 1) + [False]
    assert len(_hotline_sent(session)) == limit - 1
    otp.start_challenge(session, settings, person.citizen_id, person.name, P.REPORT_LOSS,
                        "192.0.2.8")  # fmt: skip
    assert len(_sent(session)) == 1  # the phone had its codes this hour, whichever door
    # the web code still proves its own purpose
    assert isinstance(otp.confirm(session, settings, web.challenge_id, _sent(session)[0],
                                  P.REPORT_LOSS), otp.ProvenResident)  # fmt: skip


def test_migration_0016_goes_down_and_up(fresh_db_url: str) -> None:
    from issuance import migrations
    from issuance.db import make_engine

    engine = make_engine(url=fresh_db_url)
    try:
        assert migrations.current_revision(engine) >= "0016"  # at the head (0016 or later)
        migrations.downgrade(engine, "0015")
        names = sa.inspect(engine).get_table_names()
        assert "loss_codes" in names
        assert "card_id" not in {c["name"] for c in sa.inspect(engine).get_columns(
            "resident_challenges")}  # fmt: skip
        migrations.upgrade(engine)
        assert "loss_codes" not in sa.inspect(engine).get_table_names()
        assert migrations.drift(engine) == []
    finally:
        engine.dispose()
