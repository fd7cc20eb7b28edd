"""``ykt audit``: seal the hash chain (checkpoints signed by the HSM's signing key), verify it,
export the public key for offline auditors.

Trust: ``verify`` checks every checkpoint's signature against a key it trusts — the HSM's own
public key, or a PEM file given with ``--public-key`` — never against the key stored beside the
checkpoint (whoever can edit the table could store their own). A signed checkpoint covers every
event up to its sequence number (each hash chains all earlier ones), so rewriting events and
recomputing the hashes is detected as a bad signature; deleting checkpoints is detected because
the newest must cover the head. What the database alone cannot show - its newest events deleted
with their checkpoints and the head rewound - an auditor catches by keeping the newest checkpoint
outside it: ``ykt audit seal --export FILE``, later ``ykt audit verify --expect-checkpoint FILE``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from issuance.audit import Signer
from yikatong.cli.db import session_scope, settings

app = typer.Typer(no_args_is_help=True)
out = Console()


def hsm_signer() -> Signer:
    """The HSM key service of the configured settings (its signing key signs checkpoints)."""
    from yikatong.wiring import key_service_from_settings

    return key_service_from_settings(settings())


@app.command("seal")
def seal(
    delay: float = typer.Option(2.0, help="leave events younger than this many seconds"),
    checkpoint_every: int = typer.Option(10_000, min=1),
    unsigned: bool = typer.Option(
        False, "--unsigned", help="write unsigned checkpoints (development without an HSM)"
    ),
    export: Path | None = typer.Option(
        None,
        "--export",
        dir_okay=False,
        help="write the newest checkpoint to this file (keep it outside the database; "
        "verify --expect-checkpoint checks the chain still reaches it)",
    ),
) -> None:
    """Chain the unsealed events and write checkpoints signed by the HSM's signing key."""
    from datetime import timedelta

    from issuance import audit

    signer = None if unsigned else hsm_signer()
    with session_scope() as s:
        r = audit.seal(s, signer, delay=timedelta(seconds=delay), checkpoint_every=checkpoint_every)
        pin = audit.last_checkpoint(s)
    how = "unsigned" if signer is None else "signed by the HSM"
    out.print(
        f"sealed {r.sealed} events; chain at {r.last_seq}; "
        f"{len(r.checkpoints)} checkpoints written ({how})"
    )
    if export is not None:
        if pin is None:
            out.print("[red]no checkpoint to export yet[/red] (nothing was ever sealed)")
            raise typer.Exit(1)
        export.write_text(pin.to_json() + "\n", encoding="ascii")
        out.print(f"checkpoint at sequence {pin.chain_seq} written to {export}")


@app.command("verify")
def verify(
    public_key: Path | None = typer.Option(
        None,
        "--public-key",
        exists=True,
        dir_okay=False,
        help="PEM key every checkpoint must be signed by (default: the HSM's signing key)",
    ),
    chain_only: bool = typer.Option(
        False,
        "--chain-only",
        help="check the hash chain's consistency only (signatures against the keys stored "
        "with them): proves nothing against someone who can rewrite the tables",
    ),
    seal_first: bool = typer.Option(
        True,
        "--seal/--no-seal",
        help="seal and sign pending events with the HSM first (not with --public-key or "
        "--chain-only: an offline check changes nothing)",
    ),
    expect_checkpoint: Path | None = typer.Option(
        None,
        "--expect-checkpoint",
        exists=True,
        dir_okay=False,
        help="a checkpoint exported earlier (seal --export): the chain must still reach it "
        "and agree with it (detects a deleted tail)",
    ),
) -> None:
    """Recompute the whole chain; exit 1 naming the first bad event if anything was edited,
    deleted or re-hashed."""
    from datetime import timedelta

    from issuance import audit
    from issuance.errors import IntegrityError

    pin = None
    if expect_checkpoint is not None:
        try:
            pin = audit.PinnedCheckpoint.from_json(expect_checkpoint.read_text(encoding="ascii"))
        except (IntegrityError, UnicodeDecodeError) as exc:
            out.print(f"[red]FAILED:[/red] {exc}")
            raise typer.Exit(1) from exc
    trusted: bytes | None = None
    signer: Signer | None = None
    if not chain_only:
        if public_key is not None:
            trusted = public_key.read_bytes()
        else:
            signer = hsm_signer()
            pem = signer.public_key_pem()
            trusted = pem.encode("ascii") if isinstance(pem, str) else pem
    with session_scope() as s:
        if seal_first and signer is not None:
            audit.seal(s, signer, delay=timedelta(seconds=0))
        try:
            r = audit.verify_chain(s, trusted, expect=pin)
        except IntegrityError as exc:
            out.print(f"[red]FAILED:[/red] {exc.message}")
            raise typer.Exit(1) from exc
    pinned = "" if r.pinned_seq is None else f"; reaches the pinned checkpoint {r.pinned_seq}"
    out.print(
        f"audit chain OK: {r.events} events, {r.checkpoints} checkpoints "
        f"({r.signed_checkpoints} signed), {r.unsealed} not yet sealed{pinned}"
    )
    if chain_only:
        out.print(
            "[yellow]consistency only:[/yellow] no trusted key was used; whoever can write "
            "the audit tables can re-hash and re-sign them with a key of their own. Run "
            "without --chain-only to verify against the HSM's signing key (or --public-key)."
        )


@app.command("public-key")
def public_key(
    output: Path | None = typer.Option(None, "--output", "-o", help="write the PEM here"),
) -> None:
    """Export the HSM's signing public key (PEM) for auditors who verify offline."""
    pem = hsm_signer().public_key_pem()
    text = pem.decode("ascii") if isinstance(pem, bytes) else pem
    if output is None:
        print(text, end="")
    else:
        output.write_text(text, encoding="ascii")
        out.print(f"public key written to {output}")
