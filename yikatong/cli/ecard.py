"""``ykt ecard``: the electronic card at a counter (issue, codes, the holder's authorisation
during a provisional loss, the link to the e-card page) and the offline check of a code."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from yikatong.cli.db import AS_HELP, acting, session_scope, settings

app = typer.Typer(no_args_is_help=True)
out = Console()
PROOF_HELP = "how the holder was identified: counter_identity_check (default) or resident_otp"


def _signer() -> tuple[bytes, object]:
    from yikatong.wiring import key_service_from_settings

    service = key_service_from_settings(settings())
    return service.public_key_pem(), service.sign


@app.command("issue")
def issue(
    card: str = typer.Argument(..., help="card number"),
    proof: str = typer.Option("counter_identity_check", help=PROOF_HELP),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Issue an e-card bound to an active card and its holder (identity checked at the
    counter)."""
    from issuance import services
    from issuance.services import ecard

    with session_scope() as s:
        actor = acting(s, as_)
        c = services.find_card(s, card_number=card)
        e = ecard.issue_ecard(s, settings(), c.id, actor, proof)
        out.print(f"e-card {e.public_id} issued for card {c.card_number}")


@app.command("show")
def show(ecard_id: str = typer.Argument(..., help="the e-card's id (32 hex characters)")) -> None:
    """An e-card: its card, live or ended, the holder's authorisation during a loss."""
    from issuance.models import Card
    from issuance.services import ecard

    with session_scope() as s:
        e = ecard.find_ecard(s, ecard_id)
        c = s.get(Card, e.card_id)
        assert c is not None
        state = f"ended {e.end_reason}" if e.ended_at else "live"
        authorised = e.ended_at is None and ecard.loss_authorised(s, e, c)
        out.print(f"e-card {e.public_id} {state}; card {c.card_number} {c.status}"
                  + ("; authorised during the loss" if authorised else ""))  # fmt: skip


@app.command("code")
def code(
    ecard_id: str = typer.Argument(..., help="the e-card's id"),
    png: Path | None = typer.Option(None, "--png", help="write the QR code as PNG here"),
    svg: Path | None = typer.Option(None, "--svg", help="write the QR code as SVG here"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Make a fresh code (signed in the HSM); print its text, write it as PNG / SVG."""
    from issuance.services import ecard

    pem, sign = _signer()
    with session_scope() as s:
        actor = acting(s, as_)
        c = ecard.make_code(s, settings(), ecard_id, pem, sign, actor)  # type: ignore[arg-type]
    if png is not None:
        png.write_bytes(ecard.render_png(c.text))
    if svg is not None:
        svg.write_bytes(ecard.render_svg(c.text))
    typer.echo(c.text)


@app.command("authorise-loss")
def authorise_loss(
    ecard_id: str = typer.Argument(..., help="the e-card's id"),
    withdraw: bool = typer.Option(False, "--withdraw", help="take the authorisation back"),
    proof: str = typer.Option("counter_identity_check", help=PROOF_HELP),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Record the holder's authorisation of the e-card while the card is provisionally lost
    (without it its codes are refused), or take it back."""
    from issuance.services import ecard

    with session_scope() as s:
        actor = acting(s, as_)
        e = ecard.authorise_during_loss(s, ecard_id, actor, proof, withdraw=withdraw)
        out.print(f"e-card {e.public_id}: " + ("authorisation withdrawn" if withdraw
                                               else "authorised during the loss"))  # fmt: skip


@app.command("link")
def link(
    ecard_id: str = typer.Argument(..., help="the e-card's id"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """A signed link to the e-card page (``/console/ecard/r/...``) to hand the holder; it
    opens the page for ``[ecard] link_minutes``."""
    from issuance.services import ecard

    pem, sign = _signer()
    with session_scope() as s:
        actor = acting(s, as_)
        token, expires = ecard.hand_out_link(s, settings(), ecard_id, actor, pem, sign)  # type: ignore[arg-type]
    typer.echo(f"/console/ecard/r/{token}")
    out.print(f"valid until {expires.isoformat(timespec='seconds')}Z")


@app.command("verify-offline")
def verify_offline(
    code: str = typer.Argument(..., help="the scanned code's text ('-' = standard input)"),
    public_key: Path = typer.Option(
        ..., "--public-key", exists=True, dir_okay=False, help="the issuer's key (PEM), pinned"
    ),
    feed: list[Path] = typer.Option(
        [],
        "--feed",
        exists=True,
        dir_okay=False,
        help="a saved signed status feed (a full one, then deltas in order)",
    ),
    max_age_hours: float = typer.Option(1.0, help="refuse a feed older than this"),
) -> None:
    """Verify an e-card code with no network: the issuer's public key and the signed status
    feed only (a replay within the code's life is not detected offline)."""
    from datetime import timedelta

    from api.client import OfflineEcardVerifier

    text = sys.stdin.readline().strip() if code == "-" else code
    verifier = OfflineEcardVerifier(public_key.read_bytes())
    for path in feed:
        with path.open("rb") as f:
            verifier.load_feed(f, max_age=timedelta(hours=max_age_hours))
    v = verifier.verify(text)
    typer.echo("VALID" if v.valid else f"INVALID ({v.reason})")
    raise typer.Exit(0 if v.valid else 1)
