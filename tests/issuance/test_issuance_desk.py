"""The branch desk's activation requests (issuance.services.desk): checked before anything
(every reason), one open request per card, claimed by the station of the reader named only
and by one station only, finished with the outcome, expired when no station took it; audited,
never a PIN."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from issuance.errors import FieldProblem, ValidationError
from issuance.models import AuditEvent, Channel, utcnow
from issuance.services import desk


def _teller(actors):  # type: ignore[no-untyped-def]
    return actors["bank_teller"].via(Channel.BANK)


def test_request_claim_finish_and_audit(session, actors, new_card) -> None:
    card = new_card("active")
    teller = _teller(actors)
    with pytest.raises(ValidationError) as err:  # everything checked first, every reason
        desk.request_activation(session, card.id, teller, reader="desk-1", identity_checked=False)
    assert [p.field for p in err.value.problems] == ["identity_checked"]
    with pytest.raises(ValidationError) as err:  # every reason at once
        desk.request_activation(session, card.id, teller, reader="  ", identity_checked=False)
    assert [p.field for p in err.value.problems] == ["identity_checked", "reader"]
    req = desk.request_activation(
        session, card.id, teller, reader=" desk-1 ", identity_checked=True
    )
    assert req.reader == "desk-1" and desk.request_view(session, req.id).state == "waiting"
    with pytest.raises(ValidationError, match="already under way"):  # one open request per card
        desk.request_activation(session, card.id, teller, reader="desk-2", identity_checked=True)
    assert desk.claim_next(session, "desk-2", teller, "other-station") is None  # another reader
    got = desk.claim_next(session, "desk-1", teller, "station-a")
    assert got is not None and got.id == req.id and got.claimed_by == "station-a"
    assert desk.claim_next(session, "desk-1", teller, "station-b") is None  # claimed once
    assert desk.request_view(session, req.id).state == "at_desk"
    desk.finish(
        session,
        req.id,
        teller,
        outcome=desk.REFUSED,
        message="the PIN is too weak",
        problems=[FieldProblem("pin", "a PIN of one repeated digit")],
    )
    view = desk.request_view(session, req.id)
    assert (view.state, view.message) == ("refused", "the PIN is too weak")
    assert view.problems == [("pin", "a PIN of one repeated digit")]
    with pytest.raises(ValidationError, match="already finished"):
        desk.finish(session, req.id, teller, outcome=desk.ACTIVE)
    # finished: the teller may start again
    again = desk.request_activation(
        session, card.id, teller, reader="desk-1", identity_checked=True
    )
    assert again.id != req.id
    actions = [
        (e.action, json.loads(e.details))
        for e in session.scalars(
            sa.select(AuditEvent).where(AuditEvent.action.like("desk.%")).order_by(AuditEvent.id)
        )
    ]
    assert [a for a, _ in actions] == [
        "desk.activation_requested",
        "desk.activation_claimed",
        "desk.activation_finished",
        "desk.activation_requested",
    ]
    assert actions[2][1] == {"request_id": req.id, "outcome": "refused", "problems": ["pin"]}


def test_a_request_no_station_took_expires(session, actors, new_card) -> None:
    card = new_card("active")
    teller = _teller(actors)
    past = utcnow() - desk.CLAIM_WITHIN - timedelta(seconds=1)
    req = desk.request_activation(
        session, card.id, teller, reader="desk-1", identity_checked=True, now=past
    )
    assert desk.request_view(session, req.id).state == "expired"
    assert desk.claim_next(session, "desk-1", teller, "late-station") is None  # never later
    # an expired request does not block a new one
    fresh = desk.request_activation(
        session, card.id, teller, reader="desk-1", identity_checked=True
    )
    assert desk.claim_next(session, "desk-1", teller, "station").id == fresh.id  # type: ignore[union-attr]


def test_only_a_teller_through_the_bank_may_ask(session, actors, new_card) -> None:
    card = new_card("active")
    with pytest.raises(Exception, match=r"(?i)permission|may not|not allowed|role"):
        desk.request_activation(
            session, card.id, actors["clerk"], reader="desk-1", identity_checked=True
        )
