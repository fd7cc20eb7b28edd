"""Notifications through an outbox: rows written in the business transaction, drained by a
worker into a :class:`Sink`, the notification gateway chosen by ``[notify] backend``
(:func:`yikatong.wiring.sink_from_settings`):

* ``log`` (default): :class:`LogSink`, one log line per message, phone masked;
* ``smtp``: :class:`SmtpSink`, an e-mail per message through an SMTP relay (``smtplib``; plain,
  STARTTLS or implicit TLS, optional login), addressed by ``smtp_to`` (e.g. an operator's
  e-mail-to-SMS gateway ``{recipient}@sms.example.gov.cn``);
* ``http``: :class:`HttpSink`, a JSON ``POST`` per message to an SMS gateway's webhook
  (``httpx``; optional bearer token); any answer other than 2xx is a failure.

Payloads are scrubbed when queued (no full citizen ID numbers). A failed delivery is counted on
the row (``attempts``, ``last_error`` without personal data) and retried on a later drain.
"""

from __future__ import annotations

import contextlib
import json
import logging
import smtplib
import ssl
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance.audit import scrub
from issuance.errors import ConfigError, IssuanceError
from issuance.models import OutboxMessage, utcnow

if TYPE_CHECKING:
    from issuance.settings import NotifySettings

log = logging.getLogger("issuance.outbox")

#: The topic of the sealed PIN mailer: printed (:mod:`issuance.batches.mailers`), never sent
#: to a notification gateway; a sink that prints them says so with ``prints_pin_mailers``.
PIN_MAILER_TOPIC = "card.initial_pin_mailer"


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


class DeliveryError(IssuanceError):
    """The gateway refused or could not take a message (text free of personal data)."""

    code = "delivery_failed"


def _body(message: OutboxMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "topic": message.topic,
        "recipient": message.recipient,
        "created_at": message.created_at.isoformat() if message.created_at else None,
        "payload": scrub(message.payload),
    }


def _text(message: OutboxMessage) -> str:
    payload = scrub(message.payload)
    lines = [f"{k}: {v}" for k, v in sorted(payload.items())] if isinstance(payload, dict) else []
    return f"{message.topic}\n" + "\n".join(lines) + "\n"


class SmtpSink:
    """E-mail through an SMTP relay (one connection per drain, reused for every message)."""

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        cfg = self.settings
        try:
            smtp: smtplib.SMTP
            if cfg.smtp_security == "tls":
                smtp = smtplib.SMTP_SSL(
                    cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds,
                    context=ssl.create_default_context(),
                )  # fmt: skip
            else:
                smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds)
                if cfg.smtp_security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
            if cfg.smtp_username:
                smtp.login(cfg.smtp_username, cfg.smtp_password.get_secret_value())
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP relay {cfg.smtp_host}:{cfg.smtp_port}: {exc}") from exc
        return smtp

    def send(self, message: OutboxMessage) -> None:
        if not message.recipient:
            raise DeliveryError("message has no recipient")
        mail = EmailMessage()
        mail["From"] = self.settings.smtp_from
        mail["To"] = self.settings.smtp_to.format(recipient=message.recipient)
        mail["Subject"] = message.topic
        mail["X-Yikatong-Outbox-Id"] = str(message.id)
        mail.set_content(_text(message))
        if self._smtp is None:
            self._smtp = self._connect()
        try:
            self._smtp.send_message(mail)
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError("the relay refused the recipient") from exc
        except (OSError, smtplib.SMTPException) as exc:
            self.close()  # reconnect for the next message
            raise DeliveryError(f"SMTP error: {type(exc).__name__}") from exc

    def close(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self._smtp.quit()
            self._smtp = None


class HttpSink:
    """A JSON POST per message to an SMS gateway's webhook (2xx = delivered)."""

    def __init__(self, settings: NotifySettings) -> None:
        import httpx

        if not settings.http_url:
            raise ConfigError("[notify] backend = 'http' needs http_url")
        self.url = settings.http_url
        headers = {"User-Agent": "yikatong-outbox/1"}
        token = settings.http_token.get_secret_value()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(timeout=settings.timeout_seconds, headers=headers)

    def send(self, message: OutboxMessage) -> None:
        import httpx

        try:
            r = self._client.post(
                self.url, content=json.dumps(_body(message), ensure_ascii=False).encode(),
                headers={"Content-Type": "application/json",
                         "Idempotency-Key": f"outbox-{message.id}"},
            )  # fmt: skip
        except httpx.HTTPError as exc:
            raise DeliveryError(f"gateway unreachable: {type(exc).__name__}") from exc
        if not 200 <= r.status_code < 300:
            raise DeliveryError(f"gateway answered HTTP {r.status_code}")

    def close(self) -> None:
        self._client.close()


def close_sink(sink: Sink) -> None:
    close = getattr(sink, "close", None)
    if callable(close):
        close()


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
            if msg.topic == PIN_MAILER_TOPIC and not getattr(sink, "prints_pin_mailers", False):
                # a gateway would "deliver" a letter nobody printed: left pending
                raise DeliveryError(
                    "a PIN mailer is printed, not notified: drain with "
                    "ykt outbox drain or the worker (the mailer printer)"
                )
            sink.send(msg)
        except Exception as exc:  # a gateway failure must not stop the others
            text = str(exc) if isinstance(exc, DeliveryError) else type(exc).__name__
            msg.last_error = str(scrub(text))[:500]
            log.warning("outbox message %s (%s) not delivered: %s", msg.id, msg.topic,
                        msg.last_error)  # fmt: skip
            continue
        msg.sent_at = utcnow()
        sent += 1
    session.flush()
    return sent
