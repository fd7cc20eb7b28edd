"""``ykt hsm ...``: token setup, key ceremonies, listing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cardspec.keyscheme import Algorithm, KeySlot
from hsm import ceremony, softhsm
from hsm.config import HsmConfig
from hsm.pkcs11 import Pkcs11Token, open_token

app = typer.Typer(no_args_is_help=True, help="Keys in the HSM: token setup, ceremonies, listing.")
transport_app = typer.Typer(no_args_is_help=True, help="Transport keys shared with a bureau.")
app.add_typer(transport_app, name="transport-key")
out = Console()
_Alg = Annotated[Algorithm, typer.Option("--algorithm", help="3des or aes (sm4: HSM with SM4).")]
_Version = Annotated[int, typer.Option("--version", min=1)]
_Count = Annotated[int, typer.Option("--components", "-n", min=2, max=3)]


def _config() -> HsmConfig:
    from issuance.settings import get_settings

    return HsmConfig.from_settings(get_settings())


def _token(config: HsmConfig | None = None) -> Pkcs11Token:
    config = config or _config()
    if config.is_softhsm:
        softhsm.write_conf(config)
    return open_token(config)


def _hex(value: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value.replace(" ", ""))
    except ValueError:
        raise typer.BadParameter(f"{what}: not hexadecimal") from None
    return raw


def _components(count: int, alg: Algorithm) -> tuple[list[bytes], list[bytes]]:
    if not 2 <= count <= 3:
        raise typer.BadParameter("--components must be 2 or 3")
    comps, kcvs = [], []
    for n in range(1, count + 1):
        comp = _hex(
            typer.prompt(f"component {n} (32 hex, not echoed)", hide_input=True), f"component {n}"
        )
        if len(comp) != 16:
            raise typer.BadParameter(f"component {n} must be 16 bytes")
        check = _hex(typer.prompt(f"KCV of component {n} (6 hex)"), "KCV")
        comps.append(comp)
        kcvs.append(check)
    return comps, kcvs


@app.command("init")
def init(
    if_missing: Annotated[bool, typer.Option("--if-missing", help="Quiet if all exist.")] = False,
    algorithm: Annotated[Algorithm, typer.Option(help="Master key algorithm.")] = Algorithm.DES3,
) -> None:
    """Create the SoftHSM token if absent, then every missing v1 master key and the signing key."""
    config = _config()
    if config.is_softhsm:
        created = softhsm.ensure_token(config)
        out.print(
            f"SoftHSM token {config.token_label!r}: {'created' if created else 'present'}"
            f" ({config.softhsm_conf})"
        )
    labels = ceremony.init_keys(_token(config), algorithm)
    if labels:
        out.print(f"created {len(labels)} key(s): {', '.join(labels)}")
    elif not if_missing:
        out.print("all keys present")


@app.command("generate")
def generate(slot: KeySlot, algorithm: _Alg = Algorithm.DES3, version: _Version = 1) -> None:
    """Generate a master key inside the HSM."""
    info = ceremony.generate_master(_token(), slot, algorithm, version)
    out.print(f"{info.label}  KCV {info.kcv.hex().upper()}")


@app.command("import")
def import_key(
    slot: KeySlot,
    components: Annotated[int, typer.Option("--components", "-n")] = 2,
    algorithm: _Alg = Algorithm.DES3,
    version: _Version = 1,
) -> None:
    """Import a master key from 2-3 clear components typed by their custodians (no echo)."""
    comps, kcvs = _components(components, algorithm)
    info = ceremony.import_master(_token(), slot, comps, kcvs, algorithm, version)
    out.print(f"{info.label} imported, KCV {info.kcv.hex().upper()}")


@app.command("list")
def list_cmd() -> None:
    """List the keys with label, slot, algorithm, version and KCV (computed in the HSM)."""
    table = Table(
        "label", "kind", "slot", "algorithm", "version", "KCV", "sensitive", "extractable"
    )
    for k in ceremony.list_keys(_token()):
        table.add_row(
            k.label,
            k.kind,
            k.slot.value if k.slot else "",
            k.algorithm,
            str(k.version or ""),
            k.kcv.hex().upper(),
            str(k.sensitive),
            str(k.extractable),
        )
    out.print(table)


@app.command("rotate")
def rotate(slot: KeySlot, algorithm: _Alg = Algorithm.DES3) -> None:
    """Create the next version of a master key (older versions stay usable)."""
    info = ceremony.rotate(_token(), slot, algorithm)
    out.print(f"{info.label}  KCV {info.kcv.hex().upper()}")


@app.command("export-public-key")
def export_public_key(
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """The signing key's public key (PEM), for relying parties."""
    from hsm.service import Pkcs11KeyService

    config = _config()
    pem = Pkcs11KeyService(_token(config), config.region_code).public_key_pem()
    if output is None:
        typer.echo(pem.decode(), nl=False)
    else:
        output.write_bytes(pem)


@transport_app.command("generate")
def transport_generate(name: str, components: _Count = 2) -> None:
    """New AES transport key; prints its components for the custodians (once)."""
    info, parts = ceremony.generate_transport_key(_token(), name, components)
    for n, (comp, check) in enumerate(parts, start=1):
        typer.prompt(
            f"custodian {n}: press Enter to show your component", default="", show_default=False
        )
        out.print(f"component {n}: {comp.hex().upper()}  KCV {check.hex().upper()}")
    out.print(f"{info.label} created, KCV {info.kcv.hex().upper()}")


@transport_app.command("import")
def transport_import(name: str, components: _Count = 2) -> None:
    """Import a bureau's AES transport key from components (no echo)."""
    comps, kcvs = _components(components, Algorithm.AES)
    info = ceremony.import_transport_key(_token(), name, comps, kcvs)
    out.print(f"{info.label} imported, KCV {info.kcv.hex().upper()}")
