"""``ykt bank ...``: the data-exchange files with a co-operating bank (:mod:`issuance.bank`).

    ykt bank request-file BANK -o FILE [--limit N]     ask the bank to open accounts for the
                                                       cards that need one (written to FILE)
    ykt bank load-response BANK FILE [--partial]       check the bank's response file line by
                                                       line and load the accounts (PAN, PSN,
                                                       expiry, service code, account reference);
                                                       exit 1 if a line is refused

The format is in ``docs/reference/bank-files.md``; the bank's settings are
``[banks.<agency code>]``. The bank's issuer master keys are imported with ``ykt hsm import
fin_ac|fin_smi|fin_smc --bank <key domain>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from yikatong.cli.db import AS_HELP

app = typer.Typer(no_args_is_help=True, help="Bank data exchange: account request and response.")
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)

_As = Annotated[str | None, typer.Option("--as", help=AS_HELP)]


@app.command("request-file")
def request_file(
    bank: Annotated[str, typer.Argument(help="The bank agency's code ([banks.<code>]).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the file.")],
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N cards.")] = None,
    as_: _As = None,
) -> None:
    """Write the request file asking BANK to open an account for every card that needs one
    (formal, not yet personalised, financial application bound to BANK or to none); the
    cards then wait for the bank's response. Audited (``bank.accounts_requested``)."""
    from issuance import bank as bank_files
    from yikatong.cli.db import acting, session_scope, settings

    if output.exists():
        raise typer.BadParameter(f"{output} exists: a request file is never overwritten")
    with session_scope() as session:
        actor = acting(session, as_)
        made = bank_files.request_file(session, settings(), bank, actor, limit=limit)
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("x", encoding="utf-8", newline="\n") as fh:
            fh.write(made.text)  # before the commit: no recorded request without its file
    out.print(f"request {made.request_id}: {len(made.card_ids)} card(s) -> {output}")


@app.command("load-response")
def load_response(
    bank: Annotated[str, typer.Argument(help="The bank agency's code ([banks.<code>]).")],
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    partial: Annotated[
        bool, typer.Option("--partial", help="Load the good lines even if some are refused.")
    ] = False,
    as_: _As = None,
) -> None:
    """Check BANK's response file (every line: card of the request, PAN Luhn check and BIN,
    PSN, expiry, service code, account reference) and load the accounts. A refused line:
    nothing loaded unless ``--partial``; exit code 1. Loading a file again changes nothing."""
    from issuance import bank as bank_files
    from yikatong.cli.db import acting, session_scope, settings

    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        err.print("[red]refused[/red]: the response file is not UTF-8 text")
        raise typer.Exit(1) from None
    try:
        with session_scope() as session:
            actor = acting(session, as_)
            result = bank_files.load_response(
                session, settings(), bank, text, actor, file_name=file.name, partial=partial
            )
    except bank_files.BankFileInvalid as exc:
        err.print(f"[red]refused[/red]: {exc.message}")
        for field_problem in exc.problems:
            err.print(f"  {field_problem.field}: {field_problem.reason}")
        raise typer.Exit(1) from None
    out.print(
        f"request {result.request_id}: {result.loaded} account(s) loaded, {result.already} "
        f"already loaded, {result.waiting} card(s) still waiting; kept as {result.kept_as}"
    )
    for problem in result.problems:
        who = f"card {problem.card_number}: " if problem.card_number else ""
        err.print(f"[red]refused[/red] line {problem.line}: {who}{problem.reason}")
    if result.problems:
        raise typer.Exit(1)
