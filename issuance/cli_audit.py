"""``ykt audit``: seal the hash chain and verify it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from issuance.cli_db import session_scope

app = typer.Typer(no_args_is_help=True)
out = Console()


@app.command("seal")
def seal(
    delay: float = typer.Option(2.0, help="leave events younger than this many seconds"),
    checkpoint_every: int = typer.Option(1000),
) -> None:
    """Chain the unsealed events and write a checkpoint (unsigned from the CLI)."""
    from datetime import timedelta

    from issuance import audit

    with session_scope() as s:
        r = audit.seal(s, None, delay=timedelta(seconds=delay), checkpoint_every=checkpoint_every)
    out.print(f"sealed {r.sealed} events; chain at {r.last_seq}; checkpoints {r.checkpoints}")


@app.command("verify")
def verify(
    public_key: Path | None = typer.Option(
        None,
        "--public-key",
        exists=True,
        help="PEM key every checkpoint must be signed by",
    ),
    seal_first: bool = typer.Option(True, "--seal/--no-seal"),
) -> None:
    """Recompute the whole chain; exit 1 naming the first bad event if anything was edited."""
    from datetime import timedelta

    from issuance import audit
    from issuance.errors import IntegrityError

    with session_scope() as s:
        if seal_first:
            audit.seal(s, None, delay=timedelta(seconds=0))
        try:
            r = audit.verify_chain(s, public_key.read_bytes() if public_key else None)
        except IntegrityError as exc:
            out.print(f"[red]FAILED:[/red] {exc.message}")
            raise typer.Exit(1) from exc
    out.print(
        f"audit chain OK: {r.events} events, {r.checkpoints} checkpoints "
        f"({r.signed_checkpoints} signed), {r.unsealed} not yet sealed"
    )
