"""``ykt card``: the card profile, demo blank cards, reading a card.

Blank card stock in production comes from the card manufacturer with its transport key (KMC)
and key-loading key (KLK) loaded under the issuer's key ceremony; ``new-blank`` makes an
*emulated* blank chip for demos and tests, its KMC and KLK derived in the HSM and handed over
wrapped under the manufacturer transport key (as ``issuance.batches.stock`` does for batches),
or given in hex. ``personalise --sample`` personalises one card with keys from the HSM and a
fictitious holder, for demos and the README.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from cardspec import cardops, ids, keyscheme, perso
from cardspec.errors import CardSpecError, InvalidIdentifier
from cardspec.keyscheme import Algorithm
from cardspec.profile import CardProfile, social_security_profile
from cardspec.reader import InProcessReader, Reader
from yikatong.wiring import hsm_config

if TYPE_CHECKING:
    from hsm.service import KeyService
    from yikatong.settings import Settings

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
        str | None, typer.Option(help="3des, aes or sm4 (default by generation: 2 3des, 3 sm4).")
    ] = None,
) -> None:
    """Print the card profile (file system, access conditions, keys, PINs)."""
    console.print(profile_tree(_profile(generation, algorithm)))


_Gen = Annotated[int, typer.Option(help="Card generation: 2 or 3.")]
_AlgOpt = Annotated[
    str | None, typer.Option(help="3des, aes or sm4 (default by generation: 2 3des, 3 sm4).")
]
_KeyVersion = Annotated[
    int | None,
    typer.Option("--key-version", min=1, help="Key set version (default: the newest complete)."),
]


def _hsm_keys() -> tuple[Settings, KeyService]:
    """(settings, key service) of the configured HSM (SoftHSM: its configuration written)."""
    from hsm import softhsm
    from yikatong.settings import get_settings
    from yikatong.wiring import key_service_from_settings

    settings = get_settings()
    config = hsm_config(settings)
    if config.is_softhsm:
        softhsm.write_conf(config)
    return settings, key_service_from_settings(settings)


@app.command("new-blank")
def new_blank(
    image: Annotated[
        Path | None, typer.Argument(help="Where to write the card image (JSON).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Same as IMAGE.")] = None,
    serial: Annotated[
        str | None, typer.Option(help="8-byte chip serial, 16 hex characters (default: random).")
    ] = None,
    kmc: Annotated[
        str | None, typer.Option(help="The card's transport key KMC, 32 hex (with --klk).")
    ] = None,
    klk: Annotated[
        str | None, typer.Option(help="The card's key-loading key KLK, 32 hex (with --kmc).")
    ] = None,
    key_version: _KeyVersion = None,
    generation: _Gen = 2,
    algorithm: _AlgOpt = None,
    financial: Annotated[
        bool,
        typer.Option(
            "--financial/--no-financial",
            help="With the bank's debit application (its data and keys come from a bank).",
        ),
    ] = True,
) -> None:
    """Create an emulated blank card image (demos; real blank stock comes from the maker).

    Without --kmc/--klk the HSM derives the chip's KMC and KLK (newest key set, card
    identification code = issuer region + serial) and exports them under the ``manufacturer``
    transport key, which this command unwraps as the chip maker would."""
    from cardspec.emulator import blank_card

    path = image or out
    if path is None or (image is not None and out is not None):
        raise typer.BadParameter("give the image path once (IMAGE or --out)")
    if (kmc is None) != (klk is None):
        raise typer.BadParameter("give --kmc and --klk together (or neither: keys from the HSM)")
    try:
        serial_b = bytes.fromhex(serial) if serial else os.urandom(8)
        keys = (bytes.fromhex(kmc), bytes.fromhex(klk)) if kmc and klk else None
    except ValueError:
        raise typer.BadParameter("serial, kmc and klk must be hexadecimal") from None
    prof = _profile(generation, algorithm, financial)
    if path.exists():
        raise typer.BadParameter(f"{path} exists; refusing to overwrite a card image")
    try:
        if keys is not None:
            blank_card(serial_b, keys[0], prof.algorithm, klk=keys[1], profile=prof, path=path)
            source = "keys given"
        else:
            source = _blank_from_hsm(path, serial_b, prof, key_version)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(f"blank card {serial_b.hex().upper()} ({prof.name}, {source}) written to {path}")


def _blank_from_hsm(path: Path, serial: bytes, prof: CardProfile, version: int | None) -> str:
    from hsm.service import CardKeyRef
    from issuance.batches.stock import VirtualBlankStock, ensure_manufacturer_key

    settings, keys = _hsm_keys()
    ensure_manufacturer_key(settings, prof.algorithm)
    version = version or keys.current_key_version(prof.algorithm)
    code = ids.make_card_identification_code(settings.issuer.region_code, serial)
    ref = CardKeyRef(code, version, prof.algorithm)
    VirtualBlankStock(settings, keys).make_blank_at(path, serial, ref, prof)
    return f"KMC and KLK from the HSM, key set v{version}"


@app.command("personalise")
def personalise_cmd(
    image: Annotated[
        Path | None, typer.Argument(help="Card image to personalise in-process.")
    ] = None,
    reader: Annotated[
        str | None, typer.Option("--reader", help="Or: a card in this PC/SC reader.")
    ] = None,
    sample: Annotated[
        bool, typer.Option("--sample", help="Write a fictitious holder (demo data).")
    ] = False,
    card_number: Annotated[
        str, typer.Option(help="Card number (9 characters, check character included).")
    ] = "X00000019",
    key_version: _KeyVersion = None,
    generation: _Gen = 2,
    algorithm: _AlgOpt = None,
    bank: Annotated[
        str | None,
        typer.Option(
            "--bank",
            help="The key domain of the bank whose issuer master keys give the sample's EMV "
            "keys (a card with the bank application; ykt hsm import fin_ac --bank ...).",
        ),
    ] = None,
) -> None:
    """Personalise one blank card with keys derived in the HSM, then check it is genuine
    (INTERNAL AUTHENTICATE verified in the HSM). Batches personalise real holders' cards
    (``ykt batch``); this is for demos."""
    from hsm.service import CardKeyRef

    if not sample:
        raise typer.BadParameter("only --sample data here; real cards go through `ykt batch`")
    try:
        card_number = ids.parse_card_number(card_number)
    except InvalidIdentifier as exc:
        raise typer.BadParameter(f"card number {card_number!r}: {exc.reason}") from None
    from cardspec.emulator import Card

    rd = _open_reader(image, reader)
    prof = _profile(generation, algorithm)
    if isinstance(rd, InProcessReader) and isinstance(rd.card, Card):
        prof = rd.card.profile  # the image says which profile it is
    settings, keys = _hsm_keys()
    try:
        rd.connect()
        serial = cardops.chip_serial(rd)
        code = ids.make_card_identification_code(settings.issuer.region_code, serial)
        version = key_version or keys.current_key_version(prof.algorithm)
        data = perso.sample_perso_data(code, prof, card_number=card_number)
        fin = data.financial
        if fin is not None and bank is None:
            raise typer.BadParameter(
                "this card has the bank application: its EMV keys come from a bank's issuer "
                "master keys, give --bank DOMAIN (or make the blank with --no-financial)"
            )
        ref = CardKeyRef(code, version, prof.algorithm, pan=fin.pan if fin else None,
                         psn=fin.psn if fin else None, bank=bank)  # fmt: skip
        with keys.card_crypto(ref) as crypto:
            result = perso.personalise(rd, crypto, data, prof, connect=False,
                                       certifier=perso.sm2_certifier(prof, keys))  # fmt: skip
        cardops.select_df(rd, prof, "SSSE")
        factor, challenge = keyscheme.card_factor(code), os.urandom(8)
        answer = cardops.internal_authenticate(rd, factor, challenge)
        keys.verify_internal_auth(ref, factor, challenge, answer)
    except CardSpecError as exc:
        console.print(f"[red]card error:[/red] {exc}")
        raise typer.Exit(1) from None
    finally:
        rd.disconnect()
    table = Table(title=f"personalised in {rd.name}", show_header=False)
    table.add_row("card identification code", code)
    table.add_row("card number", data.card_number)
    table.add_row("holder", f"{data.holder.name} {ids.mask_citizen_id(data.holder.ssn)}")
    table.add_row("key set", f"{prof.algorithm.value} v{version}")
    table.add_row("keys loaded", ", ".join(s.value for s in result.keys_loaded))
    table.add_row("APDUs", f"{result.apdu_count} in {result.duration_s * 1000:.0f} ms")
    table.add_row("initial PIN", f"{perso.SAMPLE_INITIAL_PIN} (must be changed before use)")
    if data.bank_pin:
        table.add_row("initial bank PIN", data.bank_pin)
    table.add_row("internal authentication", "verified in the HSM: card is genuine")
    console.print(table)


def _open_reader(image: Path | None, reader_name: str | None) -> Reader:
    if (image is None) == (reader_name is None):
        raise typer.BadParameter("give exactly one of --image or --reader")
    if image is not None:
        from cardspec.emulator import Card
        from cardspec.reader import InProcessReader

        return InProcessReader(Card.load(image), name=f"image {image.name}")
    try:
        pcsc = importlib.import_module("readers.pcsc")
    except ModuleNotFoundError as exc:
        raise typer.BadParameter("PC/SC support (readers.pcsc) is not available") from exc
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
    """Commands of the PC/SC part (``yikatong.cli.virtual``), when present."""
    try:
        module = importlib.import_module("yikatong.cli.virtual")
    except ModuleNotFoundError as exc:
        if exc.name in ("readers.virtual", "yikatong.cli.virtual"):
            return
        raise
    sub = getattr(module, "app", None)
    if isinstance(sub, typer.Typer):
        app.add_typer(sub, name="virtual")


_mount_optional()
