"""Loss reports through the web console's channel: the clerk says which kind (a call taken at
the desk or the holder in person), the identity check is required either way, and every other
channel keeps the kind its channel gives."""

from __future__ import annotations

import pytest

from issuance import services
from issuance.errors import ValidationError
from issuance.models import CardStatus, Channel, LossKind, LossStatus


def test_console_must_say_the_kind_and_check_identity(session, settings, actors, new_card):
    console = actors["clerk"].via(Channel.CONSOLE)
    card = new_card("active")
    with pytest.raises(ValidationError) as exc:
        services.report_loss(session, settings, card.id, console, identity_checked=True)
    assert exc.value.problems[0].field == "kind"
    with pytest.raises(ValidationError) as exc:
        services.report_loss(session, settings, card.id, console, kind="provisional")
    assert exc.value.problems[0].field == "identity_checked"
    assert card.status == CardStatus.ACTIVE


def test_console_provisional_then_formal_then_unreport(session, settings, actors, new_card):
    console = actors["clerk"].via(Channel.CONSOLE)
    card = new_card("active")
    first = services.report_loss(
        session, settings, card.id, console, identity_checked=True, kind="provisional"
    )
    assert first.kind == LossKind.PROVISIONAL and first.lapses_at is not None
    assert card.status == CardStatus.LOST_PROVISIONAL and first.channel == Channel.CONSOLE
    formal = services.report_loss(
        session, settings, card.id, console, identity_checked=True, kind="formal"
    )
    assert formal.kind == LossKind.FORMAL and card.status == CardStatus.LOST_FORMAL
    assert first.status == LossStatus.FORMALISED
    services.unreport_loss(session, card.id, console, identity_checked=True)
    assert card.status == CardStatus.ACTIVE


def test_other_channels_keep_their_kind(session, settings, actors, new_card):
    card = new_card("active")
    with pytest.raises(ValidationError) as exc:
        services.report_loss(session, settings, card.id, actors["clerk"].via(Channel.PHONE),
                             kind="formal")  # fmt: skip
    assert "phone is provisional" in exc.value.problems[0].reason
    report = services.report_loss(
        session, settings, card.id, actors["clerk"], identity_checked=True, kind="formal"
    )
    assert report.kind == LossKind.FORMAL and report.channel == Channel.COUNTER
