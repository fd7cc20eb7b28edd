"""``ykt stock``: blank chips delivered by chip suppliers (``[stock] backend = "delivered"``).

    ykt hsm import kmc --supplier NAME [--algorithm 3des] -c A -c B   the delivery key set,
    ykt hsm import klk --supplier NAME -c A -c B                      once per supplier
    ykt stock import FILE --supplier NAME [--lot L] [--algorithm 3des] [--key-version 1]
                                       --as USER     a delivery file (CSV or JSON) into stock;
                                                     all or nothing, every problem listed
    ykt stock import FILE --supplier NAME --check    the same checks, nothing written
    ykt stock status [--supplier NAME] [--refused N] chips by lot and state, refused chips

See :mod:`issuance.batches.blanks` (the key model) and :mod:`issuance.batches.deliveries`
(the delivery file). Exit codes: 0 done, 2 refused (the reasons are printed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from issuance.models import StockChipStatus
from yikatong.cli.db import AS_HELP, acting, session_scope, settings

app = typer.Typer(no_args_is_help=True, help="Blank chips delivered by chip suppliers.")
out = Console()
err = Console(stderr=True)


@app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="Delivery file (.csv or .json).", dir_okay=False)],
    supplier: Annotated[str, typer.Option("--supplier", help="The chip supplier (its key set).")],
    lot: Annotated[str | None, typer.Option("--lot", help="Lot, if the file has none.")] = None,
    algorithm: Annotated[
        str | None, typer.Option("--algorithm", help="3des or aes, if the file says not.")
    ] = None,
    key_version: Annotated[
        int | None, typer.Option("--key-version", min=1, help="Supplier key set version.")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Check the file against stock and HSM only.")
    ] = False,
    as_: Annotated[str | None, typer.Option("--as", help=AS_HELP)] = None,
) -> None:
    """Import a supplier's delivery of blank chips (serials; optional KMC/KLK check values,
    verified in the HSM against the supplier's key set). Audited; nothing is written unless
    the whole file is good."""
    from issuance.batches.deliveries import import_delivery, parse_delivery
    from issuance.errors import ValidationError
    from yikatong.wiring import key_service_from_settings

    cfg = settings()
    try:
        delivery = parse_delivery(file, supplier.strip(), lot=lot, algorithm=algorithm,
                                  key_version=key_version)  # fmt: skip
        keys = key_service_from_settings(cfg)
        with session_scope() as s:
            result = import_delivery(
                s, keys, cfg.issuer.region_code, delivery, acting(s, as_), write=not check
            )
    except ValidationError as exc:
        err.print(f"[red]refused:[/red] {exc.message}")
        for problem in exc.problems:
            err.print(f"  {problem.field}: {problem.reason}")
        raise typer.Exit(2) from None
    verb = "checked" if check else "imported"
    out.print(
        f"{verb} {result.chips} chip(s) of lot(s) {', '.join(result.lots)} from {result.supplier} "
        f"({result.algorithm.value}, key set v{result.key_version}); "
        f"{result.kcvs_checked} check value(s) verified in the HSM"
    )
    if check:
        out.print("nothing written: run again without --check to import")
    else:
        out.print("next: ykt stock status; stations take these chips with \\[stock] backend "
                  '= "delivered" and \\[readers] backend = "pcsc"')  # fmt: skip


@app.command("status")
def status(
    supplier: Annotated[str | None, typer.Option("--supplier", help="Only this supplier.")] = None,
    refused: Annotated[
        int, typer.Option("--refused", min=0, help="List the latest N refused chips.")
    ] = 10,
) -> None:
    """Chips in stock by supplier and lot: available, used (bound to a card), spoiled; and the
    chips stations refused (unknown, already used or spoiled, wrong algorithm, unreadable)."""
    from issuance.batches.deliveries import stock_status

    with session_scope() as s:
        st = stock_status(s, supplier=supplier, recent=refused)
    states = list(StockChipStatus)
    table = Table("supplier", "lot", "algorithm", "key set", *[x.value for x in states], "total",
                  title="blank chip stock")  # fmt: skip
    for lot in st.lots:
        table.add_row(lot.supplier, lot.lot, lot.algorithm, f"v{lot.key_version}",
                      *[str(lot.counts.get(x, 0)) for x in states], str(lot.total))  # fmt: skip
    if st.lots:
        table.add_row("all", "", "", "", *[str(st.total(x)) for x in states],
                      str(sum(lot.total for lot in st.lots)), style="bold")  # fmt: skip
    out.print(table)
    if not st.lots:
        out.print("no delivery imported yet: ykt stock import FILE --supplier NAME --as USER")
    total_refused = sum(st.refused.values())
    out.print(f"refused at the stations: {total_refused}" + (
        " (" + ", ".join(f"{n} {r.value}" for r, n in sorted(st.refused.items())) + ")"
        if total_refused else ""))  # fmt: skip
    if st.recent_refusals:
        rt = Table("when (UTC)", "chip", "reason", "station", "batch", "detail",
                   title=f"latest {len(st.recent_refusals)} refused chip(s)")  # fmt: skip
        for r in st.recent_refusals:
            rt.add_row(f"{r.at:%Y-%m-%d %H:%M:%S}", r.chip_serial or "?", r.reason.value,
                       r.station or "", str(r.batch_id or ""), (r.detail or "")[:70])  # fmt: skip
        out.print(rt)
