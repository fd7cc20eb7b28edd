"""``ykt``: the one command-line entry point for operators.

Each package contributes a sub-application (``ykt hsm ...``, ``ykt card ...``,
``ykt batch ...``); they are imported lazily so that ``ykt --help`` stays fast and a missing
optional device library only affects the commands that need it.
"""

from __future__ import annotations

import importlib

import typer
from rich.console import Console

app = typer.Typer(
    name="ykt",
    help="Yikatong: issue and manage multi-purpose social security cards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Yikatong: issue and manage multi-purpose social security cards."""


#: (module, attribute, command name, help). Each module defines a ``typer.Typer`` called ``app``.
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("yikatong.cli.hsm", "hsm", "Keys in the HSM: token setup, key ceremonies, listing."),
    (
        "yikatong.cli.cardspec",
        "card",
        "Cards and readers: virtual readers, read a card, the card profile.",
    ),
    ("yikatong.cli.virtual", "readers", "Virtual card readers: start, stop, status, insert cards."),
    ("yikatong.cli.db", "db", "Database: migrations and checks."),
    ("yikatong.cli.people", "app", "Applications: intake, review, approval."),
    ("yikatong.cli.residents", "people", "People: find a resident, see their whole record."),
    ("yikatong.cli.places", "places", "Collection points: bank branches, community centres."),
    ("yikatong.cli.cash", "cash", "Cash: receipts (PDF) and the day's reconciliation."),
    ("yikatong.cli.cards", "cards", "Card lifecycle: loss, un-report, temporary cards, ..."),
    ("yikatong.cli.ecard", "ecard", "Electronic cards: issue, codes, authorisation in a loss."),
    ("yikatong.cli.audit", "audit", "Audit log: verify the hash chain, checkpoints."),
    ("yikatong.cli.outbox", "outbox", "Notifications: drain the outbox to the SMS/log sink."),
    ("yikatong.cli.worker", "worker", "Periodic jobs (ykt worker)."),
    ("yikatong.cli.batch", "batch", "Production batches: create, prepare, personalise, print."),
    ("yikatong.cli.bureau", "bureau", "Card bureau: export bureau files, import their results."),
    ("yikatong.cli.bank", "bank", "Bank data exchange: account request and response files."),
    ("yikatong.cli.branch", "branch", "Bank branch desk: the reader-side station of the page."),
    ("yikatong.cli.stock", "stock", "Blank chips delivered by chip suppliers: import, status."),
    ("yikatong.cli.printers", "print", "Card faces and print spoolers."),
    ("yikatong.cli.api", "api", "The HTTP service and the verification client."),
]


def _register() -> None:
    for module_name, command, help_text in SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # that part is not built yet
            raise
        sub = getattr(module, "app", None)
        if isinstance(sub, typer.Typer):
            app.add_typer(sub, name=command, help=help_text)
        for extra_name, extra in getattr(module, "TOP_LEVEL_COMMANDS", {}).items():
            app.command(extra_name)(extra)


@app.command("info")
def info() -> None:
    """Show the settings in force (secrets hidden) and where the data lives."""
    from yikatong.settings import get_settings

    settings = get_settings()
    out = Console()
    out.print(f"data directory : {settings.data_dir}")
    out.print(f"database       : {settings.database_url}")
    out.print(f"HSM module     : {settings.hsm.module} (token {settings.hsm.token_label!r})")
    out.print(f"readers        : {settings.readers.backend} x{settings.readers.count}")
    out.print(f"printer        : {settings.printer.backend} -> {settings.spool_dir}")
    out.print(f"issuer region  : {settings.issuer.region_code} {settings.issuer.name}")


#: Root exception of every package; the CLI prints these as one clear line instead of a trace.
ERROR_ROOTS = [
    ("issuance.errors", "IssuanceError"),
    ("hsm.errors", "HsmError"),
    ("cardspec.errors", "CardSpecError"),
    ("printers.errors", "PrinterError"),
]


def _error_roots() -> tuple[type[BaseException], ...]:
    roots: list[type[BaseException]] = []
    for module_name, cls_name in ERROR_ROOTS:
        try:
            roots.append(getattr(importlib.import_module(module_name), cls_name))
        except (ModuleNotFoundError, AttributeError):
            continue
    return tuple(roots)


def main() -> None:
    _register()
    roots = _error_roots()
    try:
        app()
    except roots as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
