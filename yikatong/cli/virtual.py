"""``ykt readers``: virtual card readers (isolated pcscd + vpcd + the card emulator).

    ykt readers start [--count N]      run a stack in the foreground until Ctrl-C
    ykt readers insert SLOT IMAGE      load a card image into a reader (another shell)
    ykt readers remove SLOT
    ykt readers status
    ykt readers stop                   (or Ctrl-C in the ``start`` shell)
    ykt readers opensc -- -l           opensc-tool against the isolated pcscd
    ykt readers env                    the export line for other PC/SC clients

The stack lives under ``<data_dir>/run/pcsc``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from readers.pcsc import CSOCK_ENV
from readers.virtual.layout import StackLayout
from readers.virtual.pcscd import (
    DEFAULT_CARD_FACTORY,
    StackControl,
    VirtualReaderError,
    VirtualReaderStack,
)

app = typer.Typer(no_args_is_help=True, help="Virtual card readers: start, stop, status, insert.")
console = Console()


def _run_dir() -> Path:
    from yikatong.settings import get_settings

    return get_settings().run_dir / "pcsc"


def _default_count() -> int:
    from yikatong.settings import get_settings

    return get_settings().readers.count


def _control() -> StackControl:
    return StackControl(_run_dir())


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(2)


@app.command("start")
def start(
    count: Annotated[
        int | None, typer.Option("--count", "-n", help="Readers (1-16; default: settings).")
    ] = None,
    factory: Annotated[
        str, typer.Option(help="Card factory 'module:callable' taking an image path.")
    ] = DEFAULT_CARD_FACTORY,
) -> None:
    """Start an isolated pcscd with virtual readers; runs until Ctrl-C."""
    stack = VirtualReaderStack(_run_dir(), count or _default_count(), card_factory=factory)
    try:
        stack.start()
    except VirtualReaderError as exc:
        raise _fail(exc) from None
    try:
        console.print(f"{stack.readers} virtual readers up (card server pid {stack.pid}):")
        for slot, name in enumerate(stack.reader_names()):
            console.print(f"  slot {slot}: {name}")
        console.print("PC/SC clients in other shells:")
        print(f"export {CSOCK_ENV}={stack.csock}", flush=True)
        console.print("Ctrl-C stops the readers.")
        while stack.running:
            time.sleep(0.5)
        if stack.returncode == 0:
            console.print("stopped (ykt readers stop)")
            return
        console.print("[red]the virtual reader stack stopped on its own[/red]"
                      f" (see {stack.layout.server_log})")  # fmt: skip
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        stack.stop()


@app.command("insert")
def insert(
    slot: Annotated[int, typer.Argument(help="Reader slot (0-based).")],
    image: Annotated[Path, typer.Argument(help="Card image (JSON).", exists=True, dir_okay=False)],
) -> None:
    """Insert a card image into a virtual reader."""
    try:
        st = _control().insert(slot, image)
    except VirtualReaderError as exc:
        raise _fail(exc) from None
    console.print(f"slot {st.slot} ({st.reader}): {st.image}")


@app.command("remove")
def remove(slot: Annotated[int, typer.Argument(help="Reader slot (0-based).")]) -> None:
    """Take the card out of a virtual reader."""
    try:
        st = _control().remove(slot)
    except VirtualReaderError as exc:
        raise _fail(exc) from None
    console.print(f"slot {st.slot} ({st.reader}): empty")


@app.command("status")
def status() -> None:
    """Show the virtual readers and the cards in them."""
    try:
        slots = _control().status()
    except VirtualReaderError as exc:
        raise _fail(exc) from None
    table = Table(title=f"virtual readers ({_run_dir()})")
    for col in ("slot", "reader", "card image", "connected", "APDUs"):
        table.add_column(col)
    for st in slots:
        table.add_row(str(st.slot), st.reader, st.image or "-", "yes" if st.connected else "no",
                      str(st.apdus))  # fmt: skip
    console.print(table)


@app.command("stop")
def stop() -> None:
    """Stop the running virtual readers (the ``start`` process exits)."""
    try:
        _control().shutdown()
    except VirtualReaderError as exc:
        raise _fail(exc) from None
    console.print("stopping the virtual readers")


@app.command("env")
def env() -> None:
    """Print the export line selecting the isolated pcscd."""
    print(f"export {CSOCK_ENV}={StackLayout(_run_dir(), 1).csock}")


@app.command(
    "opensc",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def opensc(ctx: typer.Context) -> None:
    """Run opensc-tool against the isolated pcscd (``ykt readers opensc -- -l``)."""
    csock = StackLayout(_run_dir(), 1).csock
    if not csock.exists():
        raise _fail(VirtualReaderError(f"no virtual reader stack running ({csock} missing)"))
    proc = subprocess.run(
        ["opensc-tool", *ctx.args], env={**os.environ, CSOCK_ENV: str(csock)}, check=False
    )
    raise typer.Exit(proc.returncode)
