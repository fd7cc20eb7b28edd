"""Helpers of the resident self-service tests: a person with a card, and the one-time code as
the resident gets it (the outbox drained through the product's log sink, the line read back:
what the phone would show; no backdoor into the code)."""

from __future__ import annotations

import logging
import re

import sqlalchemy as sa
from api_helpers import active_card, make_cid

from issuance.db import make_sessionmaker, transaction
from issuance.models import Card, Person
from issuance.services.outbox import LogSink, drain_outbox

_CODE = re.compile(r"notify resident\.code to (\S+): .*'code': '(\d{6})'")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def delivered_codes(env: object) -> list[tuple[str, str]]:
    """Drain the outbox through the log sink; every (masked phone, code) it delivered."""
    logger = logging.getLogger("test.resident.sms")
    logger.setLevel(logging.INFO)
    lines = _Lines()
    logger.addHandler(lines)
    try:
        with transaction(make_sessionmaker(env.engine)) as s:  # type: ignore[attr-defined]
            drain_outbox(s, LogSink(logger))
    finally:
        logger.removeHandler(lines)
    return [(m.group(1), m.group(2)) for line in lines.lines if (m := _CODE.search(line))]


def one_code(env: object) -> str:
    codes = delivered_codes(env)
    assert len(codes) == 1, codes
    return codes[0][1]


def holder(
    env: object, *, activate: bool = True, phone: str | None = "13800138000"
) -> tuple[str, str, str]:
    """A person whose card is active (or issued): (ID number, name, card number)."""
    with transaction(make_sessionmaker(env.engine)) as s:  # type: ignore[attr-defined]
        card: Card = active_card(s, env.settings, env.actors, activate=activate)  # type: ignore[attr-defined]
        person = s.get(Person, card.person_id)
        assert person is not None
        person.phone = phone
        return person.citizen_id, person.name, card.card_number


def card_status(env: object, number: str) -> str:
    with transaction(make_sessionmaker(env.engine)) as s:  # type: ignore[attr-defined]
        return str(s.scalar(sa.select(Card.status).where(Card.card_number == number)))


__all__ = ["make_cid"]
