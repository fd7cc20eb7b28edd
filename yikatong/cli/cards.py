"""``ykt cards``: the card lifecycle at the counter and from feeds."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from issuance.services.temporary import TemporaryChipDesk

app = typer.Typer(no_args_is_help=True)
out = Console()

CHANNEL_HELP = "counter, phone, web, app, bank, kiosk ..."
CHIP_HELP = (
    "use the counter's desk reader and printer ([readers] backend: the virtual reader by "
    "default; [printer] backend)"
)
READER_HELP = 'the desk reader: part of its PC/SC name ([readers] backend = "pcsc")'


def _desk(
    chip: bool, reader: str | None
) -> contextlib.AbstractContextManager[TemporaryChipDesk | None]:
    """The counter's desk when ``chip`` (or a ``reader``) is asked for, else nothing."""
    if not chip and reader is None:
        return contextlib.nullcontext()
    from yikatong.wiring import counter_desk

    return counter_desk(settings(), reader=reader)


def _card(s: Session, ref: str) -> Card:
    from issuance import services

    if len(ref) == 32:
        return services.find_card(s, card_identification_code=ref)
    if ref.isdigit() and len(ref) < 9:
        return services.find_card(s, card_id=int(ref))
    return services.find_card(s, card_number=ref)


@app.command("show")
def show(card: str = typer.Argument(..., help="card number, identification code or id")) -> None:
    """Status of a card (holder ID masked), each chip function with its PIN's state as the
    card last reported it ("PIN blocked", tries left)."""
    from issuance import services
    from issuance.services.pins import app_status_text

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
        out.print(f"  {kind:16} {app_status_text(kind, status, v.pins)}")
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
    chip: bool = typer.Option(False, "--chip", help="block the returned chip: " + CHIP_HELP),
    reader: str | None = typer.Option(None, "--reader", help=READER_HELP),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Record that the holder handed a temporary card back; its deposit is refunded. With
    --chip the returned chip, in the desk reader, is blocked first by its own command."""
    from issuance import services

    with _desk(chip, reader) as desk, session_scope() as s:
        actor = acting(s, as_, channel)
        c = _card(s, card)
        amount = services.hand_back_temporary_card(s, c, actor, desk=desk)
        if desk is not None:
            out.print(f"chip of temporary card {c.card_number} blocked")
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

    def __init__(self, label: str = "bank PIN", current_hint: str = " (PIN mailer)") -> None:
        self.label, self.current_hint = label, current_hint

    def current_pin(self) -> str:
        return str(typer.prompt(f"holder: current {self.label}{self.current_hint}",
                                hide_input=True, err=True))  # fmt: skip

    def new_pin(self) -> str:
        again = f"holder: new {self.label} again"
        return str(typer.prompt(f"holder: new {self.label}", hide_input=True,
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

    from issuance.errors import NotFound
    from issuance.models import Agency
    from yikatong import branch

    with session_scope() as s:  # who acts, which card, which bank, before the holder types
        acting(s, as_, "bank")
        card_id = _card(s, card).id
        agency_id = None
        if bank_agency is not None:
            agency_id = s.scalar(sa.select(Agency.id).where(Agency.code == bank_agency))
            if agency_id is None:
                raise NotFound(f"no agency {bank_agency!r}")
    number = branch.activate_at_desk(
        settings(), session_scope, lambda s: acting(s, as_, "bank"), card_id, _PromptPinPad(),
        identity_checked=identity_checked, reader_name=reader, card_auth=card_auth,
        bank_agency_id=agency_id, announce=out.print,
    )  # fmt: skip
    out.print(f"card {number}: PIN set on the card; financial function active")


PIN_HELP = "ss (social security PIN, default) or bank (change only)"
IDENTITY_HELP = "the clerk checked the holder's ID document"
CARD_AUTH_HELP = (
    "check the card is genuine (INTERNAL AUTHENTICATE against the HSM); --no-card-auth only "
    "for cards made without this centre's HSM (development)"
)


def _serve_pin(
    card: str, service: str, pin: str, identity_checked: bool, reader: str | None,
    card_auth: bool, as_: str | None,
) -> None:  # fmt: skip
    """A PIN service at the desk reader (see issuance.services.pin_counter)."""
    from issuance.batches import dataprep
    from issuance.services import financial, pin_counter, pins
    from yikatong import branch
    from yikatong.wiring import key_service_from_settings

    cfg = settings()
    kind = pin_counter.PinService(service)
    with session_scope() as s:  # check everything before the holder types anything
        c = _card(s, card)
        target = pin_counter.check_can_serve(
            s, cfg, c.id, acting(s, as_), service=kind, identity_checked=identity_checked,
            pin_name=pin,
        )  # fmt: skip
        needs_hsm = card_auth or kind is not pin_counter.PinService.CHANGE
        keys = key_service_from_settings(cfg) if needs_hsm else None
        check = financial.hsm_card_check(keys, c) if card_auth and keys is not None else None
        ref = dataprep.key_ref(c, target.card_identification_code)
        profile = dataprep.card_profile(cfg, c.algorithm)
        number = c.card_number
    label = pins.PIN_LABELS[pin]
    pad = _PromptPinPad(label, "" if kind is not pin_counter.PinService.UNBLOCK else " (to check)")
    with branch.open_branch_reader(cfg, target.card_identification_code, reader) as desk:
        out.print(f"card {number} in {desk.name}: {service} the {label}")
        try:
            done = pin_counter.serve_pin_at_reader(
                desk, target, kind, pad, cfg, key_service=keys, key_ref=ref, profile=profile,
                authenticate=check,
            )  # fmt: skip
        except pins.PinRefused as refused:  # the card's tries left (blocked at 0) recorded
            with session_scope() as s:
                pin_counter.record_refusal(s, target.card_id, acting(s, as_), refused,
                                           service=service, reader=desk.name)  # fmt: skip
            raise
    with session_scope() as s:
        pin_counter.record_pin_service(s, done, target.card_id, acting(s, as_),
                                       identity_checked=identity_checked)  # fmt: skip
        left = pins.unblocks_left(s, cfg, target.card_id, pin)
    tries = "" if done.tries_left is None else f" ({done.tries_left} tries)"
    verb = {"change": "changed", "reset": "reset", "unblock": "unblocked"}[service]
    out.print(f"card {number}: {label} {verb} on the card{tries}")
    if kind is not pin_counter.PinService.CHANGE:
        out.print(f"counter unblocks/resets left for this PIN: {left}")


@app.command("pin-change")
def pin_change(
    card: str,
    pin: str = typer.Option("ss", "--pin", help=PIN_HELP),
    identity_checked: bool = typer.Option(False, "--identity-checked", help=IDENTITY_HELP),
    reader: str | None = typer.Option(None, "--reader", help="PC/SC reader name (backend pcsc)"),
    card_auth: bool = typer.Option(True, "--card-auth/--no-card-auth", help=CARD_AUTH_HELP),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Counter or branch: the holder changes a PIN on the card in the desk reader (types the
    current PIN, then the new one twice, at hidden prompts; weak PINs refused)."""
    _serve_pin(card, "change", pin, identity_checked, reader, card_auth, as_)


@app.command("pin-reset")
def pin_reset(
    card: str,
    identity_checked: bool = typer.Option(False, "--identity-checked", help=IDENTITY_HELP),
    reader: str | None = typer.Option(None, "--reader", help="PC/SC reader name (backend pcsc)"),
    card_auth: bool = typer.Option(True, "--card-auth/--no-card-auth", help=CARD_AUTH_HELP),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Counter: the holder forgot the social security PIN: they type a new one (twice); the
    card's retry counter is reset with keys from the HSM and the new PIN set."""
    _serve_pin(card, "reset", "ss", identity_checked, reader, card_auth, as_)


@app.command("pin-unblock")
def pin_unblock(
    card: str,
    identity_checked: bool = typer.Option(False, "--identity-checked", help=IDENTITY_HELP),
    reader: str | None = typer.Option(None, "--reader", help="PC/SC reader name (backend pcsc)"),
    card_auth: bool = typer.Option(True, "--card-auth/--no-card-auth", help=CARD_AUTH_HELP),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Counter: unblock the social security PIN after too many wrong tries (keys from the
    HSM); the holder then types their PIN, which the card checks."""
    _serve_pin(card, "unblock", "ss", identity_checked, reader, card_auth, as_)


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
    chip: bool = typer.Option(
        False, "--chip", help="personalise its chip and print its face: " + CHIP_HELP
    ),
    reader: str | None = typer.Option(None, "--reader", help=READER_HELP),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Issue a temporary card (medical function only, deposit taken). With --chip it is
    personalised on a chip in the desk reader (card category temporary, only the medical
    application) and its temporary face printed, in the same transaction."""
    from issuance import services

    cid = read_citizen_id(citizen_id, id_file)
    with _desk(chip, reader) as desk, session_scope() as s:
        actor = acting(s, as_)
        person = services.get_person(s, citizen_id=cid)
        c = services.issue_temporary_card(s, settings(), person.id, actor, desk=desk)
        if desk is not None:
            out.print(
                f"chip {c.card_identification_code} personalised (temporary, medical only); "
                "face printed"
            )
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
