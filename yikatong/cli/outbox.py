"""``ykt outbox``: deliver the queued notifications (card ready for collection ...).

The gateway is chosen by ``[notify] backend`` (:func:`yikatong.wiring.sink_from_settings`):
``log`` (default: phone numbers masked, no full ID numbers), ``smtp`` or ``http``. PIN mailers
(``card.initial_pin_mailer``) are printed instead, their PINs computed in the HSM, on the
printer of ``[printer] backend`` (:mod:`issuance.batches.mailers`).
"""

from __future__ import annotations

import logging

import typer
from rich.console import Console

from yikatong.cli.db import session_scope, settings

app = typer.Typer(no_args_is_help=True)
out = Console()


@app.command("drain")
def drain(
    limit: int = typer.Option(100, "--limit", min=1, help="messages per run"),
    max_attempts: int = typer.Option(10, "--max-attempts", min=1),
) -> None:
    """Send pending notifications (oldest first) through the configured gateway
    ([notify] backend) and print pending PIN mailers (HSM, [printer] backend); failures are
    retried later."""
    import sqlalchemy as sa

    from issuance import services
    from issuance.models import OutboxMessage
    from yikatong.wiring import outbox_sink

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    sink = outbox_sink(settings())
    try:
        with session_scope() as s:
            sent = services.drain_outbox(s, sink, limit=limit, max_attempts=max_attempts)
    finally:
        from issuance.services.outbox import close_sink

        close_sink(sink)
    with session_scope() as s:
        left = s.scalar(
            sa.select(sa.func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.sent_at.is_(None))
        )
    out.print(f"{sent} notifications sent, {left} pending")


@app.command("status")
def status() -> None:
    """Pending, sent and failing notifications."""
    import sqlalchemy as sa

    from issuance.models import OutboxMessage

    m = OutboxMessage
    with session_scope() as s:
        sent = s.scalar(sa.select(sa.func.count()).where(m.sent_at.is_not(None)))
        pending = s.scalar(sa.select(sa.func.count()).where(m.sent_at.is_(None)))
        failing = s.scalar(
            sa.select(sa.func.count()).where(m.sent_at.is_(None), m.last_error.is_not(None))
        )
    out.print(f"{pending} pending ({failing} with delivery errors), {sent} sent")
