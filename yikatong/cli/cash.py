"""``ykt cash``: receipts (PDF, numbered per counter) and the day's reconciliation per counter
and per staff member, balanced to the fen. The rules are in :mod:`issuance.services.cash`."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from yikatong.cli.db import AS_HELP, acting, session_scope, settings

app = typer.Typer(no_args_is_help=True)
out = Console(markup=False, highlight=False)


def write_receipt(session: Session, receipt: object, out_file: Path | None = None) -> Path:
    """Render ``receipt`` as PDF to ``out_file`` or ``<data_dir>/receipts/<number>.pdf``."""
    from issuance.models import Receipt
    from issuance.services.cash import receipt_pdf

    assert isinstance(receipt, Receipt)
    path = out_file or settings().data_dir / "receipts" / f"{receipt.number}.pdf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(receipt_pdf(session, receipt, settings()))
    return path


def print_latest_receipt(session: Session, card_id: int, kind: str | None = None) -> None:
    """After a command that took or gave back money: write its receipt (the card's newest,
    of ``kind`` if given) and say where."""
    from issuance import display
    from issuance.services.cash import latest_receipt

    r = latest_receipt(session, card_id)
    if r is not None and (kind is None or r.kind == kind):
        path = write_receipt(session, r)
        out.print(f"receipt {r.number} ({r.kind} {display.yuan(r.amount_fen)}): {path}")


def _day(value: datetime | None) -> date:
    from zoneinfo import ZoneInfo

    if value is not None:
        return value.date()
    return datetime.now(ZoneInfo(settings().issuer.time_zone)).date()


_DATE = typer.Option(None, "--date", formats=["%Y-%m-%d"], help="YYYY-MM-DD (default: today)")
_AS = typer.Option(None, "--as", help=AS_HELP)


@app.command("receipts")
def receipts(date_: datetime | None = _DATE, as_: str | None = _AS) -> None:
    """The day's receipts (the issuer's time zone), by counter and number."""
    from issuance import display
    from issuance.services import cash

    day = _day(date_)
    with session_scope() as s:
        cash.check_may_reconcile(acting(s, as_))
        rows = cash.receipts_of_day(s, settings(), day)
        table = Table("receipt", "time", "kind", "amount", "staff", "for", box=None)
        for r in rows:
            table.add_row(r.number, display.local_time(r.issued_at, settings())[11:],
                          r.kind, display.yuan(r.amount_fen), r.staff_name, r.what)  # fmt: skip
    out.print(table if rows else f"no receipts on {day}")


@app.command("receipt")
def receipt(
    number: str,
    out_file: Path | None = typer.Option(None, "--out", dir_okay=False, help="the PDF file"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Print one receipt again (PDF)."""
    from issuance.services import cash

    with session_scope() as s:
        cash.check_may_reconcile(acting(s, as_))
        path = write_receipt(s, cash.get_receipt(s, number), out_file)
    out.print(f"receipt {number.upper()}: {path}")


@app.command("day")
def day(date_: datetime | None = _DATE, as_: str | None = _AS) -> None:
    """The day's reconciliation per counter and per staff member (fees + deposits - refunds),
    checked against the money rows: exit 1 if anything does not balance to the fen."""
    from issuance import display
    from issuance.services import cash

    d = _day(date_)
    with session_scope() as s:
        cash.check_may_reconcile(acting(s, as_))
        rec = cash.reconcile_day(s, settings(), d)
    y = display.yuan
    table = Table("counter", "staff", "receipts", "fees", "deposits", "refunds", "net", box=None)
    for counter, t in sorted(rec.by_counter.items()):
        for (c2, staff), st in sorted(rec.by_staff.items()):
            if c2 == counter:
                table.add_row(counter, staff, str(st.receipts), y(st.fees_fen),
                              y(st.deposits_fen), y(st.refunds_fen), y(st.net_fen))  # fmt: skip
        table.add_row(counter, "(counter)", str(t.receipts), y(t.fees_fen), y(t.deposits_fen),
                      y(t.refunds_fen), y(t.net_fen))  # fmt: skip
    t = rec.total
    table.add_row("all", "", str(t.receipts), y(t.fees_fen), y(t.deposits_fen),
                  y(t.refunds_fen), y(t.net_fen))  # fmt: skip
    out.print(f"cash of {d} ({settings().issuer.time_zone})")
    out.print(table)
    if rec.balanced:
        out.print(f"balanced: counters, staff, receipts and money rows agree ({y(t.net_fen)} net)")
        return
    for p in rec.problems:
        out.print(f"NOT BALANCED: {p}")
    raise typer.Exit(1)
