"""``ykt cards``: the card lifecycle at the counter and from feeds."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from issuance import display
from issuance.models import Card
from yikatong.cli.cash import print_latest_receipt
from yikatong.cli.db import (
    AS_HELP,
    ID_FILE_HELP,
    ID_HELP,
    acting,
    read_citizen_id,
    session_scope,
    settings,
)

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
        deposit = services.find_deposit(s, c.id)
    out.print(f"card {v.card_number} ({v.kind}) status {v.status} [code {v.province_code}]")
    out.print(
        f"holder {v.holder_name} {v.holder_citizen_id_masked}; "
        f"{display.validity(v.issue_date, v.expiry_date)}",
        markup=False,
    )
    for kind, status in v.chip_apps.items():
        out.print(f"  {kind:16} {status}")
    if deposit is not None:
        state = (f"refunded {display.local_time(deposit.refunded_at, settings())}"
                 if deposit.refunded_at else "held")  # fmt: skip
        out.print(f"deposit {display.yuan(deposit.amount_fen)} ({state})")


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
        actor = acting(s, as_, channel)
        c = _card(s, card)
        r = services.report_loss(
            s, settings(), c.id, actor, identity_checked=identity_checked, note=note
        )
        until = (
            f"lapses at {display.local_time(r.lapses_at, settings())}"
            if r.lapses_at
            else "until found or replaced"
        )
        out.print(f"card {c.card_number} reported lost ({r.kind}); {until}")


@app.command("unreport")
def unreport(
    card: str,
    channel: str = typer.Option("counter", help=CHANNEL_HELP),
    identity_checked: bool = typer.Option(False, "--identity-checked"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Withdraw a loss report (card found); only before a replacement, and always after
    checking the holder's identity (phone and SMS included): --identity-checked."""
    from issuance import services

    with session_scope() as s:
        actor = acting(s, as_, channel)
        c = _card(s, card)
        services.unreport_loss(s, c.id, actor, identity_checked=identity_checked)
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


@app.command("expire")
def expire() -> None:
    """Expire every card past its expiry date (run periodically; ``ykt worker`` does it)."""
    from issuance import services

    with session_scope() as s:
        n = services.expire_cards(s)
    out.print(f"{n} cards expired")


@app.command("collect")
def collect(
    card: str,
    channel: str = typer.Option("counter", help="counter or bank"),
    temporary_returned: bool = typer.Option(
        False,
        "--temporary-returned",
        help="the holder handed their temporary card back (its deposit is refunded)",
    ),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Hand the card to its holder (still sealed). The holder's temporary card is cancelled;
    its deposit is refunded only with --temporary-returned (or later: ykt cards hand-back)."""
    from issuance import services

    with session_scope() as s:
        actor = acting(s, as_, channel)
        c = _card(s, card)
        r = services.collect_card(s, c.id, actor, temporary_handed_back=temporary_returned)
        out.print(f"card {c.card_number} issued to its holder")
        for number in r.temporary_cards_returned:
            out.print(f"temporary card {number} handed back and cancelled")
            print_latest_receipt(s, services.find_card(s, card_number=number).id, "refund")
        if r.deposits_refunded_fen:
            out.print(f"deposit refunded: {display.yuan(r.deposits_refunded_fen)}")
        for number in r.temporary_cards_kept:
            out.print(
                f"temporary card {number} cancelled, NOT handed back: deposit kept until it is "
                f"(ykt cards hand-back {number})"
            )


@app.command("hand-back")
def hand_back(
    card: str = typer.Argument(..., help="the temporary card's number"),
    channel: str = typer.Option("counter", help="counter or bank"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Record that the holder handed a temporary card back; its deposit is refunded."""
    from issuance import services

    with session_scope() as s:
        actor = acting(s, as_, channel)
        c = _card(s, card)
        amount = services.hand_back_temporary_card(s, c, actor)
        out.print(f"temporary card {c.card_number} handed back ({c.status})")
        out.print(f"deposit refunded: {display.yuan(amount)}")
        if amount:
            print_latest_receipt(s, c.id, "refund")


@app.command("cancel")
def cancel(
    card: str,
    reason: str = typer.Option(..., "--reason", help="e.g. emigration, insurance moved away"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Cancel one card for good (every function stops)."""
    from issuance import services

    with session_scope() as s:
        actor = acting(s, as_)
        c = _card(s, card)
        services.cancel_card(s, c.id, actor, reason)
        out.print(f"card {c.card_number} cancelled")


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
        actor = acting(s, as_, channel)
        c = _card(s, card)
        services.activate_card(s, c.id, actor)
        out.print(f"card {c.card_number} is {c.status}")


class _PromptPinPad:
    """The CLI as the branch PIN pad: hidden prompts (the holder types; nothing is echoed,
    stored or logged)."""

    def current_pin(self) -> str:
        return str(typer.prompt("holder: current bank PIN (PIN mailer)", hide_input=True,
                                err=True))  # fmt: skip

    def new_pin(self) -> str:
        again = "holder: new bank PIN again"
        return str(typer.prompt("holder: new bank PIN", hide_input=True,
                                confirmation_prompt=again, err=True))  # fmt: skip


@app.command("activate-financial")
def activate_financial(
    card: str,
    identity_checked: bool = typer.Option(
        False, "--identity-checked", help="the teller checked the holder's ID document"
    ),
    reader: str | None = typer.Option(
        None, "--reader", help="PC/SC reader name (backend pcsc; default: settings)"
    ),
    card_auth: bool = typer.Option(
        True,
        "--card-auth/--no-card-auth",
        help="check the card is genuine (INTERNAL AUTHENTICATE against the HSM); "
        "--no-card-auth only for cards made without this centre's HSM (development)",
    ),
    bank_agency: str | None = typer.Option(None, "--bank-agency", help="agency code"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Bank branch: activate the financial function. The teller checks the holder's identity;
    the holder's card goes in the desk reader and the holder sets the bank PIN on it (typed
    twice at a hidden prompt), sent by the bank's issuer script (PIN enciphered and command
    MACed in the HSM with the card's keys from the bank's issuer master keys). The PIN goes to
    the chip only; the database records that it was set."""
    import sqlalchemy as sa

    from issuance import services
    from issuance.errors import NotFound
    from issuance.models import Agency
    from issuance.services import financial
    from yikatong import branch

    cfg = settings()
    with session_scope() as s:  # check everything before the holder types anything
        actor = acting(s, as_, "bank")
        c = _card(s, card)
        financial.check_can_activate(s, c.id, actor, identity_checked=identity_checked)
        agency_id = None
        if bank_agency is not None:
            agency_id = s.scalar(sa.select(Agency.id).where(Agency.code == bank_agency))
            if agency_id is None:
                raise NotFound(f"no agency {bank_agency!r}")
        from yikatong.wiring import key_service_from_settings

        keys = key_service_from_settings(cfg)
        check = financial.hsm_card_check(keys, c) if card_auth else None
        script = financial.script_keys(s, cfg, keys, c)  # the bank's keys, its PAN and PSN
        cic, card_id, number = c.card_identification_code, c.id, c.card_number
    assert cic is not None
    with branch.open_branch_reader(cfg, cic, reader) as desk:
        out.print(f"card {number} in {desk.name}: the holder sets the bank PIN")
        evidence = services.set_financial_pin(desk, cic, _PromptPinPad(), script,
                                              authenticate=check)  # fmt: skip
    with session_scope() as s:
        services.activate_financial(
            s, card_id, acting(s, as_, "bank"), identity_checked=identity_checked,
            pin=evidence, bank_agency_id=agency_id,
        )  # fmt: skip
    out.print(f"card {number}: PIN set on the card; financial function active")


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
        actor = acting(s, as_, channel)
        c = _card(s, card)
        services.report_damaged(s, c.id, actor, reason)
        out.print(f"card {c.card_number} is {c.status}")


@app.command("temporary")
def temporary(
    citizen_id: str | None = typer.Option(None, "--id", help=ID_HELP),
    id_file: Path | None = typer.Option(None, "--id-file", help=ID_FILE_HELP),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Issue a temporary card (medical function only, deposit taken)."""
    from issuance import services

    cid = read_citizen_id(citizen_id, id_file)
    with session_scope() as s:
        actor = acting(s, as_)
        person = services.get_person(s, citizen_id=cid)
        c = services.issue_temporary_card(s, settings(), person.id, actor)
        out.print(
            f"temporary card {c.card_number} valid until {display.day(c.expiry_date)}; "
            f"deposit taken: {display.yuan(settings().lifecycle.temporary_card_deposit_fen)}"
        )
        print_latest_receipt(s, c.id)


@app.command("replace")
def replace(
    card: str,
    reason: str = typer.Option("replacement"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Replace a formally lost / damaged card, or renew one (from renewal_window_days before
    expiry, or once expired): new card number; the old one dies."""
    from issuance import services

    with session_scope() as s:
        actor = acting(s, as_)
        c = _card(s, card)
        new = services.replace_card(s, settings(), c.id, actor, reason=reason)
        out.print(
            f"card {c.card_number} replaced by {new.card_number} (fee {display.yuan(new.fee_fen)})"
        )
        print_latest_receipt(s, new.id)


@app.command("suspend")
def suspend(
    card: str,
    reason: str = typer.Option(..., "--reason"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Fund supervisor: suspend a card."""
    from issuance import services

    with session_scope() as s:
        actor = acting(s, as_)
        c = _card(s, card)
        services.suspend_card(s, c.id, actor, reason)
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
        actor = acting(s, as_)
        c = _card(s, card)
        services.lift_suspension(s, c.id, actor, reason)
        out.print(f"card {c.card_number} active again")


@app.command("cancel-deaths")
def cancel_deaths(
    file: Path = typer.Argument(..., exists=True, dir_okay=False),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Cancel the cards of deceased persons from a feed file (citizen_id,death_date per line,
    YYYY-MM-DD or YYYYMMDD, header optional). Recorded as done by the operator (--as)."""
    from issuance import services
    from issuance.models import Channel

    with session_scope() as s:
        r = services.cancel_deaths(s, file, acting(s, as_).via(Channel.FEED))
    for line in r.rejected:
        out.print(
            f"line {line.line}: " + "; ".join(f"{p.field}: {p.reason}" for p in line.problems)
        )
    out.print(
        f"{r.persons_recorded} deaths recorded, {r.cards_cancelled} cards cancelled, "
        f"{r.already_done} already done, {len(r.rejected)} lines rejected"
    )
