"""``ykt places``: collection points (bank branches, community service centres) — create and
list. The rules are in :mod:`issuance.services.places`."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from yikatong.cli.db import AS_HELP, acting, session_scope

app = typer.Typer(no_args_is_help=True)
out = Console(markup=False, highlight=False)


@app.command("add")
def add(
    code: str = typer.Argument(..., help="short code, used by ykt batch ship --to CODE"),
    name: str = typer.Option(..., "--name", help="e.g. 中国工商银行杭州西湖支行"),
    kind: str = typer.Option(..., "--kind", help="bank (a bank branch) or community"),
    region: str = typer.Option(..., "--region", help="6-digit region code (GB/T 2260)"),
    as_: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Create a collection point (admin or supervisor). Audited."""
    from issuance.services.places import add_collection_point

    with session_scope() as s:
        a = add_collection_point(s, code, name, kind, region, acting(s, as_))
        out.print(f"collection point {a.code} ({a.kind}) {a.name}, region {a.region_code}")


@app.command("list")
def list_() -> None:
    """Every collection point, with the number of staff users attached."""
    from issuance.services.places import list_collection_points

    with session_scope() as s:
        places = list_collection_points(s)
    if not places:
        out.print("no collection points yet: ykt places add CODE --name NAME --kind bank ...")
        return
    table = Table("code", "kind", "region", "staff", "name", box=None)
    for p in places:
        table.add_row(p.code, p.kind, p.region_code, str(p.staff), p.name)
    out.print(table)
