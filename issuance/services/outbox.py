"""Notifications through an outbox: rows written in the business transaction, drained by a
worker into a :class:`Sink` (an SMS or e-mail gateway; :class:`LogSink` by default)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance.audit import scrub
from issuance.models import OutboxMessage, utcnow

log = logging.getLogger("issuance.outbox")


class Sink(Protocol):
    def send(self, message: OutboxMessage) -> None:
        """Deliver one message or raise."""


def mask_phone(phone: str | None) -> str:
    if not phone:
        return "-"
    return phone[:3] + "*" * max(0, len(phone) - 7) + phone[-4:] if len(phone) > 7 else "***"


class LogSink:
    """Writes each notification to the log (no full ID numbers; phone masked)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or log
        self.sent: list[int] = []

    def send(self, message: OutboxMessage) -> None:
        self.logger.info(
            "notify %s to %s: %s",
            message.topic,
            mask_phone(message.recipient),
            scrub(message.payload),
        )
        self.sent.append(message.id)


def enqueue(
    session: Session,
    topic: str,
    *,
    payload: dict[str, Any],
    person_id: int | None = None,
    recipient: str | None = None,
) -> OutboxMessage:
    msg = OutboxMessage(
        topic=topic, payload=scrub(payload), person_id=person_id, recipient=recipient
    )
    session.add(msg)
    return msg


def drain_outbox(
    session: Session, sink: Sink | None = None, *, limit: int = 100, max_attempts: int = 10
) -> int:
    """Send pending messages (oldest first); rows locked with SKIP LOCKED so several drainers
    can run. Returns how many were sent; failures are counted and retried later."""
    sink = sink or LogSink()
    stmt = (
        sa.select(OutboxMessage)
        .where(OutboxMessage.sent_at.is_(None), OutboxMessage.attempts < max_attempts)
        .order_by(OutboxMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    sent = 0
    for msg in session.scalars(stmt).all():
        msg.attempts += 1
        try:
            sink.send(msg)
        except Exception as exc:  # a gateway failure must not stop the others
            msg.last_error = str(exc)[:500]
            continue
        msg.sent_at = utcnow()
        sent += 1
    session.flush()
    return sent
