"""``ykt cards``: the card lifecycle at the counter and from feeds."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from issuance.cli_db import AS_HELP, acting, session_scope, settings
from issuance.models import Card

app = typer.Typer(no_args_is_help=True)
out = Console()

CHANNEL_HELP = "counter, phone, web, app, bank, kiosk ..."


def _card(s: Session, ref: str) -> Card:
    from issuance import services

    if len(ref) == 32:
        return services.find_card(s, card_identification_code=ref)
    if ref.isdigit() and len(ref) < 9:
        return services.find_card(s, card_id=int(ref))
    return services.find_card(s, card_number=ref)


@app.command("show")
def show(card: str = typer.Argument(..., help="card number, identification code or id")) -> None:
    """Status of a card (holder ID masked)."""
    from issuance import services

    with session_scope() as s:
        c = _card(s, card)
        v = services.card_status(s, card_id=c.id)
    out.print(f"card {v.card_number} ({v.kind}) status {v.status} [code {v.province_code}]")
    out.print(
        f"holder {v.holder_name} {v.holder_citizen_id_masked}; "
        f"valid {v.issue_date} – {v.expiry_date}"
    )
    for kind, status in v.chip_apps.items():
        out.print(f"  {kind:16} {status}")


@app.command("report-loss")
def report_loss(
    card: str,
    channel: str = typer.Option("counter", help=CHANNEL_HELP),
    identity_checked: bool = typer.Option(False, "--identity-checked"),
    note: str | None = typer.Option(None),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Report a card lost (phone/web/app: provisional; counter: formal)."""
    from issuance import services

    with session_scope() as s:
        c = _card(s, card)
        r = services.report_loss(
            s,
            settings(),
            c.id,
            acting(s, as_, channel),
            identity_checked=identity_checked,
            note=note,
        )
        out.print(f"card {c.card_number} reported lost ({r.kind}); lapses at {r.lapses_at}")


@app.command("unreport")
def unreport(
    card: str,
    channel: str = typer.Option("counter", help=CHANNEL_HELP),
    identity_checked: bool = typer.Option(False, "--identity-checked"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Withdraw a loss report (card found); only before a replacement."""
    from issuance import services

    with session_scope() as s:
        c = _card(s, card)
        services.unreport_loss(s, c.id, acting(s, as_, channel), identity_checked=identity_checked)
        out.print(f"card {c.card_number} is {c.status}")


@app.command("expire-losses")
def expire_losses() -> None:
    """Loss deadlines (run periodically): lapse provisional reports whose time is up; where
    the city does so (lifecycle.formal_loss_cancel_days), cancel overdue formal ones."""
    from issuance import services

    with session_scope() as s:
        r = services.run_loss_deadlines(s, settings())
    days = settings().lifecycle.formal_loss_cancel_days
    out.print(f"{r.lapsed} provisional loss reports lapsed")
    if days:
        out.print(f"{r.cancelled} cards cancelled after {days} days formally lost")


@app.command("collect")
def collect(
    card: str,
    channel: str = typer.Option("counter", help="counter or bank"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Hand the card to its holder (still sealed); a temporary card is handed back and its
    deposit refunded."""
    from issuance import services

    with session_scope() as s:
        c = _card(s, card)
        r = services.collect_card(s, c.id, acting(s, as_, channel))
        out.print(f"card {c.card_number} issued to its holder")
        for number in r.temporary_cards_returned:
            out.print(f"temporary card {number} handed back and cancelled")
        if r.deposits_refunded_fen:
            out.print(f"deposit refunded: {r.deposits_refunded_fen / 100:.2f} yuan")


@app.command("activate")
def activate(
    card: str,
    channel: str = typer.Option("counter", help="counter, bank, kiosk, web, app"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Activate the social security function of an issued card (the holder's older cards lose
    theirs)."""
    from issuance import services

    with session_scope() as s:
        c = _card(s, card)
        services.activate_card(s, c.id, acting(s, as_, channel))
        out.print(f"card {c.card_number} is {c.status}")


@app.command("activate-financial")
def activate_financial(
    card: str,
    identity_checked: bool = typer.Option(False, "--identity-checked"),
    pin_set: bool = typer.Option(
        False, "--pin-set", help="the holder set the bank PIN on the card at the terminal"
    ),
    bank_agency: str | None = typer.Option(None, "--bank-agency", help="agency code"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Bank branch: activate the financial function (identity checked, PIN set on the card;
    the PIN itself never reaches this system)."""
    import sqlalchemy as sa

    from issuance import services
    from issuance.errors import NotFound
    from issuance.models import Agency

    with session_scope() as s:
        c = _card(s, card)
        agency_id = None
        if bank_agency is not None:
            agency_id = s.scalar(sa.select(Agency.id).where(Agency.code == bank_agency))
            if agency_id is None:
                raise NotFound(f"no agency {bank_agency!r}")
        services.activate_financial(
            s, c.id, acting(s, as_, "bank"), identity_checked=identity_checked,
            pin_set=pin_set, bank_agency_id=agency_id,
        )  # fmt: skip
        out.print(f"card {c.card_number}: financial function active")


@app.command("report-damaged")
def report_damaged(
    card: str,
    channel: str = typer.Option("counter", help="counter or bank"),
    reason: str | None = typer.Option(None, "--reason"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Record a damaged card (it then goes to replacement)."""
    from issuance import services

    with session_scope() as s:
        c = _card(s, card)
        services.report_damaged(s, c.id, acting(s, as_, channel), reason)
        out.print(f"card {c.card_number} is {c.status}")


@app.command("temporary")
def temporary(
    citizen_id: str = typer.Option(..., "--id"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Issue a temporary card (medical function only, deposit taken)."""
    from issuance import services

    with session_scope() as s:
        person = services.get_person(s, citizen_id=citizen_id)
        c = services.issue_temporary_card(s, settings(), person.id, acting(s, as_))
        out.print(f"temporary card {c.card_number} valid until {c.expiry_date}")


@app.command("replace")
def replace(
    card: str,
    reason: str = typer.Option("replacement"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Replace a formally lost / damaged card (new card number; the old one dies)."""
    from issuance import services

    with session_scope() as s:
        c = _card(s, card)
        new = services.replace_card(s, settings(), c.id, acting(s, as_), reason=reason)
        out.print(f"card {c.card_number} replaced by {new.card_number} (fee {new.fee_fen} fen)")


@app.command("suspend")
def suspend(
    card: str,
    reason: str = typer.Option(..., "--reason"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Fund supervisor: suspend a card."""
    from issuance import services

    with session_scope() as s:
        c = _card(s, card)
        services.suspend_card(s, c.id, acting(s, as_), reason)
        out.print(f"card {c.card_number} suspended")


@app.command("lift")
def lift(
    card: str,
    reason: str = typer.Option(..., "--reason"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Fund supervisor: lift a suspension."""
    from issuance import services

    with session_scope() as s:
        c = _card(s, card)
        services.lift_suspension(s, c.id, acting(s, as_), reason)
        out.print(f"card {c.card_number} active again")


@app.command("cancel-deaths")
def cancel_deaths(file: Path = typer.Argument(..., exists=True, dir_okay=False)) -> None:
    """Cancel the cards of deceased persons from a feed file (citizen_id,death_date)."""
    from issuance import services

    with session_scope() as s:
        r = services.cancel_deaths(s, file)
    for line in r.rejected:
        out.print(
            f"line {line.line}: " + "; ".join(f"{p.field}: {p.reason}" for p in line.problems)
        )
    out.print(
        f"{r.persons_recorded} deaths recorded, {r.cards_cancelled} cards cancelled, "
        f"{r.already_done} already done, {len(r.rejected)} lines rejected"
    )
