"""The sealed PIN mailer of a personalised card, printed when the outbox is drained.

Quality control queues ``card.initial_pin_mailer`` (card id and number only: no PIN) when a
card is good (:func:`issuance.batches.pipeline.mark_good`). Draining the outbox
(``ykt outbox drain``, the worker) hands those messages to :class:`PinMailerSink`, every other
message to the notification gateway. For each mailer, :func:`print_pin_mailer`:

1. computes the card's initial PINs **in the HSM** (:func:`issuance.batches.dataprep.
   initial_pins`: the social security PIN and, with a financial application, the bank PIN, each
   its own value), the same derivation data preparation wrote to the chip;
2. draws the letter (:func:`printers.mailer.render_pin_mailer`: holder's name and address,
   the masked card number, the PINs only in the sealed tear-off strip) as a PDF;
3. sends the PDF to the printer of ``[printer] backend`` (:func:`printers.backends.
   make_document_printer`): the owner-only directory ``<spool_dir>/pin-mailers`` (``[pins]
   mailer_dir``; directory 0700, files 0600, written atomically) or the CUPS queue ``[pins]
   mailer_queue`` (an owner-only temporary file removed once CUPS has the job; the server
   deletes its copy after printing with ``PreserveJobFiles No``). The print room removes a
   spooled mailer once printed;
4. audits ``card.pin_mailer_printed`` (the job reference, never the PIN).

The PINs live only in local variables and the PDF: never in the database, the outbox payload,
the audit trail or a log line. A failure (HSM, printer) leaves the message pending with its
error (no personal data) for the next drain: it is not counted as sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, object_session

from issuance import audit
from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.batches import dataprep
from issuance.errors import NotFound, ValidationError
from issuance.models import Card, OutboxMessage, Person
from issuance.services.outbox import PIN_MAILER_TOPIC
from issuance.services.pins import BANK_PIN, SS_PIN
from issuance.settings import IssuanceConfig
from printers.backends import make_document_printer
from printers.mailer import MailerText, mailer_pdf, mask_card_number, render_pin_mailer
from printers.spool import DocumentPrinter, PrintResult

if TYPE_CHECKING:
    from hsm.service import KeyService
    from issuance.services.outbox import Sink

MAILER_TOPIC = PIN_MAILER_TOPIC
_LABELS = {SS_PIN: "社保密码 social security PIN", BANK_PIN: "金融密码 bank PIN"}


def mailer_printer(settings: IssuanceConfig) -> DocumentPrinter:
    """The PIN mailers' printer of these settings (see the module docstring)."""
    return make_document_printer(
        settings.printer.backend, directory=settings.mailer_dir,
        cups_server=settings.printer.cups_server,
        cups_queue=settings.pins.mailer_queue or settings.printer.cups_queue,
    )  # fmt: skip


def mailer_text(
    settings: IssuanceConfig, key_service: KeyService, card: Card, reference: str
) -> MailerText:
    """The mailer of ``card`` with its initial PINs computed in the HSM."""
    if card.card_identification_code is None:
        raise ValidationError(f"card {card.card_number} has no chip: no PIN mailer")
    person: Person = card.person
    profile = dataprep.card_profile(settings, card.algorithm)
    ref = dataprep.key_ref(card, card.card_identification_code)
    pins = dataprep.initial_pins(key_service, ref, profile)
    return MailerText(
        issuer=settings.issuer.name, holder_name=person.name, address=person.address or "",
        card_number_masked=mask_card_number(card.card_number), reference=reference,
        pins=tuple((_LABELS.get(name, name), pin) for name, pin in pins.items()),
    )  # fmt: skip


def print_pin_mailer(
    session: Session,
    settings: IssuanceConfig,
    key_service: KeyService,
    printer: DocumentPrinter,
    card: Card,
    *,
    job_id: str,
    actor: Actor = SYSTEM_ACTOR,
) -> PrintResult:
    """Print the sealed PIN mailer of ``card`` (see the module docstring); audited."""
    text = mailer_text(settings, key_service, card, job_id)
    result = printer.print_document(job_id, mailer_pdf(render_pin_mailer(text), job_id))
    audit.record(
        session, actor, "card.pin_mailer_printed", "card", card.id,
        details={"job": result.job_id, "backend": result.backend, "reference": result.reference,
                 "duplicate": result.duplicate},
    )  # fmt: skip
    return result


class PinMailerSink:
    """The outbox sink that prints PIN mailers and passes every other message to ``inner``
    (the notification gateway). The key service and the printer are made on the first mailer
    (a drain with no mailer needs no HSM)."""

    prints_pin_mailers = True

    def __init__(
        self,
        settings: IssuanceConfig,
        inner: Sink,
        key_service: Callable[[], KeyService],
        printer: Callable[[], DocumentPrinter] | None = None,
    ) -> None:
        self.settings = settings
        self.inner = inner
        self._key_service_factory = key_service
        self._printer_factory = printer or (lambda: mailer_printer(settings))
        self._keys: KeyService | None = None
        self._printer: DocumentPrinter | None = None
        self.printed: list[PrintResult] = []

    def send(self, message: OutboxMessage) -> None:
        if message.topic != MAILER_TOPIC:
            self.inner.send(message)
            return
        session = object_session(message)
        payload: Any = message.payload
        card = None if session is None else session.get(Card, int(payload["card_id"]))
        if session is None or card is None:
            raise NotFound("the PIN mailer's card is gone")
        if self._keys is None:
            self._keys = self._key_service_factory()
        if self._printer is None:
            self._printer = self._printer_factory()
        self.printed.append(print_pin_mailer(
            session, self.settings, self._keys, self._printer, card,
            job_id=f"pin-mailer-{message.id}",
        ))  # fmt: skip

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()


__all__ = ["MAILER_TOPIC", "PinMailerSink", "mailer_printer", "mailer_text", "print_pin_mailer"]
