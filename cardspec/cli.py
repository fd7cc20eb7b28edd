"""``ykt card``: the card profile, demo blank cards, reading a card.

Blank card stock in production comes from the card manufacturer with its transport key (KMC)
loaded under the issuer's key ceremony; ``new-blank`` makes an *emulated* blank chip for demos
and tests from a KMC given in hex.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from cardspec import cardops, ids
from cardspec.errors import CardSpecError
from cardspec.keyscheme import Algorithm
from cardspec.profile import CardProfile, social_security_profile
from cardspec.reader import Reader

app = typer.Typer(no_args_is_help=True, help="Cards and readers: profile, blank cards, reading.")
console = Console()


def _profile(generation: int, algorithm: str | None, financial: bool = True) -> CardProfile:
    alg = Algorithm(algorithm) if algorithm else None
    return social_security_profile(generation=generation, algorithm=alg, financial=financial)


def profile_tree(profile: CardProfile) -> Tree:
    """The profile as a Rich tree: DFs, EFs with their elements and access conditions, keys
    and PINs."""
    root = Tree(f"[bold]{profile.name}[/bold] — {profile.description}")
    nodes: dict[str, Tree] = {}
    for path, df in profile.walk():
        parent = nodes.get(path.rsplit("/", 1)[0]) if "/" in path else root
        assert parent is not None
        name = f" name={df.df_name.hex().upper()}" if df.df_name else ""
        node = parent.add(f"[cyan]DF {df.name}[/cyan] fid={df.fid:04X}{name} {df.label}")
        nodes[path] = node
        for key in df.keys:
            node.add(f"[magenta]key[/magenta] {key.slot.value} id={key.key_id:02X} "
                     f"v{key.version} — {key.usage}")  # fmt: skip
        for pin in df.pins:
            node.add(f"[magenta]PIN[/magenta] {pin.name} ref={pin.ref:02X} tries={pin.tries} "
                     f"{pin.fmt.value}" + (" initial-must-change" if pin.initial_must_change
                                          else ""))  # fmt: skip
        for ef in df.files:
            sfi = f" sfi={ef.sfi:02X}" if ef.sfi else ""
            ef_node = node.add(
                f"[green]EF {ef.name}[/green] fid={ef.fid:04X}{sfi} {ef.structure.value} "
                f"({ef.label}) read: {ef.read}; write: {ef.write}"
            )
            for el in ef.elements:
                ef_node.add(f"{el.tag:02X} {el.name} {el.fmt.value} {el.length}"
                            f"{' var' if el.variable else ''} — {el.description}")  # fmt: skip
    return root


@app.command("profile")
def show_profile(
    generation: Annotated[int, typer.Option(help="Card generation: 2 or 3.")] = 2,
    algorithm: Annotated[
        str | None, typer.Option(help="3des or aes (default by generation).")
    ] = None,
) -> None:
    """Print the card profile (file system, access conditions, keys, PINs)."""
    console.print(profile_tree(_profile(generation, algorithm)))


@app.command("new-blank")
def new_blank(
    serial: Annotated[str, typer.Option(help="8-byte chip serial, 16 hex characters.")],
    out: Annotated[Path, typer.Option(help="Where to write the card image (JSON).")],
    kmc: Annotated[str, typer.Option(help="The card's transport key KMC, 32 hex characters.")],
    generation: Annotated[int, typer.Option(help="Card generation: 2 or 3.")] = 2,
    algorithm: Annotated[str | None, typer.Option(help="3des or aes.")] = None,
) -> None:
    """Create an emulated blank card image (demos; real blank stock comes from the maker)."""
    from cardspec.emulator import blank_card

    try:
        serial_b = bytes.fromhex(serial)
        kmc_b = bytes.fromhex(kmc)
    except ValueError:
        raise typer.BadParameter("serial and kmc must be hexadecimal") from None
    prof = _profile(generation, algorithm)
    if out.exists():
        raise typer.BadParameter(f"{out} exists; refusing to overwrite a card image")
    try:
        blank_card(serial_b, kmc_b, prof.algorithm, profile=prof, path=out)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(f"blank card {serial_b.hex().upper()} ({prof.name}) written to {out}")


def _open_reader(image: Path | None, reader_name: str | None) -> Reader:
    if (image is None) == (reader_name is None):
        raise typer.BadParameter("give exactly one of --image or --reader")
    if image is not None:
        from cardspec.emulator import Card
        from cardspec.reader import InProcessReader

        return InProcessReader(Card.load(image), name=f"image {image.name}")
    try:
        pcsc = importlib.import_module("cardspec.pcsc")
    except ModuleNotFoundError as exc:
        raise typer.BadParameter("PC/SC support (cardspec.pcsc) is not available") from exc
    reader: Reader = pcsc.PcscReader(reader_name)
    return reader


@app.command("read")
def read(
    image: Annotated[
        Path | None, typer.Option(help="Read an emulated card image in-process.")
    ] = None,
    reader: Annotated[str | None, typer.Option("--reader", help="PC/SC reader name.")] = None,
    generation: Annotated[int, typer.Option(help="Card generation: 2 or 3.")] = 2,
    algorithm: Annotated[str | None, typer.Option(help="3des or aes.")] = None,
    full: Annotated[bool, typer.Option(help="Show the full social security number.")] = False,
) -> None:
    """Read a card's public data (EF05, EF06) and its life cycle."""
    prof = _profile(generation, algorithm)
    rd = _open_reader(image, reader)
    try:
        atr = rd.connect()
        state = cardops.life_cycle(rd)
        table = Table(title=f"card in {rd.name}", show_header=False)
        table.add_row("ATR", atr.hex(" ").upper())
        table.add_row("life cycle", state.value)
        table.add_row("chip serial", cardops.chip_serial(rd).hex().upper())
        if state.value == "secured":
            public = cardops.read_card_public(rd, prof, connect=False)
            ci = public.card_identification
            table.add_row("card identification code", ci.card_identification_code)
            table.add_row("card number", ci.card_number)
            table.add_row("spec version", ci.spec_version)
            table.add_row("issued / expires", f"{ci.issue_date} / {ci.expiry_date}")
            if public.holder is not None:
                h = public.holder
                table.add_row("name", h.full_name)
                table.add_row("sex", h.sex)
                table.add_row("social security number",
                              h.ssn if full else ids.mask_citizen_id(h.ssn))  # fmt: skip
            else:
                table.add_row("holder", "protected (needs the read key)")
        console.print(table)
    except CardSpecError as exc:
        console.print(f"[red]card error:[/red] {exc}")
        raise typer.Exit(1) from None
    finally:
        rd.disconnect()


def _mount_optional() -> None:
    """Commands of the PC/SC part (``cardspec.virtual.cli``), when present."""
    try:
        module = importlib.import_module("cardspec.virtual.cli")
    except ModuleNotFoundError as exc:
        if exc.name in ("cardspec.virtual", "cardspec.virtual.cli"):
            return
        raise
    sub = getattr(module, "app", None)
    if isinstance(sub, typer.Typer):
        app.add_typer(sub, name="virtual")


_mount_optional()
