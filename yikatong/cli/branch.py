"""``ykt branch ...``: the bank branch desk.

    ykt branch desk --reader NAME [--once] [--poll S]   the desk station on the reader's host:
                                                         claims the financial activations the
                                                         branch page started for this reader,
                                                         has the holder type the new bank PIN
                                                         on its pad, activates, records the end

The station is the branch page's reader side (``docs/guide/bank.md``): the teller starts the
activation on the page (no PIN there), the station on the host of the desk reader claims the
request (:mod:`issuance.services.desk`), asks the holder for the PIN on its own prompt (the
PIN pad stand-in: the terminal's hidden prompt; when its input is not a terminal, one line per
entry, as a PIN pad device or a test feeds it) and runs the same activation as ``ykt cards
activate-financial`` (:func:`yikatong.branch.activate_at_desk`). The PIN goes to the chip only:
never to the database, a log or the page.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Annotated

import typer
from rich.console import Console

from yikatong.cli.db import AS_HELP

app = typer.Typer(no_args_is_help=True, help="Bank branch desk: the reader-side station.")
out = Console(emoji=False, highlight=False)
err = Console(stderr=True, emoji=False, highlight=False)


class StationPinPad:
    """The desk station as the branch PIN pad: the terminal's hidden prompt (typed twice), or,
    when standard input is not a terminal (a PIN pad device's line, a test), two lines read
    from it. Nothing is echoed, stored or logged."""

    label = "bank PIN"

    def current_pin(self) -> str:  # the issuer script sets the PIN with the bank's authority
        return ""

    def new_pin(self) -> str:
        from issuance.errors import FieldProblem, ValidationError

        if sys.stdin.isatty():
            return str(
                typer.prompt(
                    f"holder: new {self.label}",
                    hide_input=True,
                    err=True,
                    confirmation_prompt=f"holder: new {self.label} again",
                )
            )
        err.print(f"holder: new {self.label} (at the pad)")
        first, again = sys.stdin.readline(), sys.stdin.readline()
        if not first or not again:
            raise ValidationError(
                "no PIN entered", [FieldProblem("pin", "the holder entered no PIN at the pad")]
            )
        if first.rstrip("\r\n") != again.rstrip("\r\n"):
            raise ValidationError(
                "the PIN entries differ",
                [
                    FieldProblem(
                        "pin", "the two PIN entries differ: the holder types the same PIN twice"
                    )
                ],
            )
        return first.rstrip("\r\n")


_As = Annotated[str | None, typer.Option("--as", help=AS_HELP)]


@app.command("desk")
def desk(
    reader: Annotated[
        str,
        typer.Option(
            "--reader",
            help=(
                "The desk reader's name: the branch page's requests for it are claimed here; "
                "with the pcsc reader backend also the PC/SC reader used."
            ),
        ),
    ],
    once: Annotated[bool, typer.Option("--once", help="Stop after one request.")] = False,
    poll: Annotated[float, typer.Option("--poll", min=0.2, help="Seconds between looks.")] = 1.0,
    card_auth: Annotated[
        bool,
        typer.Option(
            "--card-auth/--no-card-auth",
            help="check the card is genuine (INTERNAL AUTHENTICATE against the HSM); "
            "--no-card-auth only for cards made without this centre's HSM (development)",
        ),
    ] = True,
    as_: _As = None,
) -> None:
    """The desk station of READER: claim the financial activations the branch page started
    for it, one at a time; the holder types the new bank PIN here (twice), the bank's issuer
    script sets it on the chip, the activation and its outcome are recorded and shown on the
    page. Audited (``desk.activation_claimed``, ``desk.activation_finished`` and the
    activation's own events); runs until Ctrl-C (or one request with ``--once``)."""
    from cardspec.errors import CardSpecError
    from hsm.errors import HsmError
    from issuance.errors import ConflictError, FieldProblem, IssuanceError
    from issuance.services import desk as desk_service
    from yikatong import branch
    from yikatong.cli.db import acting, session_scope, settings

    cfg = settings()
    with session_scope() as s:
        station_actor = acting(s, as_, "bank")  # signed in once, before anything is claimed
        reader = desk_service.reader_name(reader)  # checked before anything is claimed
    station = f"{station_actor.username}@{socket.gethostname()}:{os.getpid()}"
    out.print(f"desk station {station}: reader {reader}, waiting for activation requests")
    try:
        while True:
            try:
                with session_scope() as s:
                    req = desk_service.claim_next(s, reader, station_actor, station)
                    claimed = None if req is None else (req.id, req.card_id, req.identity_checked)
            except ConflictError:
                # SQLite: the claim (a read, then a write) lost the database to another write;
                # it rolled back whole, so the station looks again
                claimed = None
            if claimed is None:
                time.sleep(poll)
                continue
            rid, card_id, checked = claimed
            out.print(f"request {rid}: claimed")
            outcome, message, problems = desk_service.ACTIVE, None, []
            try:
                number = branch.activate_at_desk(
                    cfg,
                    session_scope,
                    lambda s: acting(s, as_, "bank"),
                    card_id,
                    StationPinPad(),
                    identity_checked=checked,
                    reader_name=reader,
                    card_auth=card_auth,
                    announce=out.print,
                )
                message = f"card {number}: PIN set on the card; financial function active"
            except IssuanceError as exc:
                outcome, message = desk_service.REFUSED, exc.message
                problems = list(getattr(exc, "problems", []))
            except (CardSpecError, HsmError) as exc:  # the reader, the card, the HSM
                outcome, message = desk_service.REFUSED, f"{type(exc).__name__}: {exc}"
                problems = [FieldProblem("reader", "the card or the reader failed; try again")]
            with session_scope() as s:
                desk_service.finish(
                    s, rid, station_actor, outcome=outcome, message=message, problems=problems
                )
            if outcome == desk_service.ACTIVE:
                out.print(f"request {rid}: {message}")
            else:
                err.print(f"request {rid}: refused: {message}")
                for p in problems:
                    err.print(f"  {p.field}: {p.reason}")
            if once:
                return
    except KeyboardInterrupt:
        err.print("desk station stopped")
        raise typer.Exit(130) from None
