"""``ykt hsm ...``: token setup, key ceremonies, listing.

Ceremonies (``import``, ``generate``, ``rotate``, ``transport-key ...``) are recorded in the
issuance audit log when a database is configured (``[database] url`` set, or the embedded
SQLite file exists): who ran it (``--as`` / ``$YKT_STAFF``, else the OS user), which key, its
KCV and, for imports, each custodian's name with the KCV of the component they entered
(never a component). A configured database that cannot take the record (not migrated) stops
the ceremony before any key is made; ``--no-audit`` runs without a record.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cardspec.keyscheme import Algorithm, KeySlot, klk_algorithm
from hsm import ceremony, smtoken, softhsm
from hsm.config import HsmConfig
from hsm.pkcs11 import KEY_TYPES, Pkcs11Token, open_token
from yikatong.wiring import hsm_config

app = typer.Typer(no_args_is_help=True, help="Keys in the HSM: token setup, ceremonies, listing.")
transport_app = typer.Typer(no_args_is_help=True, help="Transport keys shared with a bureau.")
app.add_typer(transport_app, name="transport-key")
out = Console(emoji=False)  # labels such as ykt:bank:... are printed as they are
_Alg = Annotated[Algorithm, typer.Option("--algorithm", help="3des or aes (sm4: HSM with SM4).")]
_Version = Annotated[int, typer.Option("--version", min=1)]
_Count = Annotated[int, typer.Option("--components", "-n", min=2, max=3)]
_Custodians = Annotated[
    list[str] | None,
    typer.Option(
        "--custodian",
        "-c",
        help="Name of the custodian of each component, in order (repeat: one per component).",
    ),
]
_As = Annotated[
    str | None, typer.Option("--as", help="Who runs the ceremony (default: $YKT_STAFF, OS user).")
]
_NoAudit = Annotated[
    bool, typer.Option("--no-audit", help="Do not record the ceremony in the audit log.")
]
#: What ``ykt hsm import`` accepts: a card-key slot or the key-loading key master.
MASTER_NAMES = [*(slot.value for slot in KeySlot), ceremony.KLK]


def _settings() -> Any:
    from yikatong.settings import get_settings

    return get_settings()


def _config() -> HsmConfig:
    return hsm_config(_settings())


def _token(config: HsmConfig | None = None) -> Pkcs11Token:
    config = config or _config()
    if config.is_softhsm:
        softhsm.write_conf(config)
    elif config.is_sm_test_module:
        smtoken.ensure_token(config)
    return open_token(config)


def _hex(value: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value.replace(" ", ""))
    except ValueError:
        raise typer.BadParameter(f"{what}: not hexadecimal") from None
    return raw


# --- audit record of a ceremony ------------------------------------------------------------


class _CeremonyLog:
    """Where a ceremony is recorded: the issuance audit log of the configured database."""

    def __init__(self, actor_name: str | None, enabled: bool) -> None:
        settings = _settings()
        self.url: str | None = None
        self.actor_name = actor_name or os.environ.get("YKT_STAFF") or getpass.getuser()
        if not enabled:
            return
        sqlite_file = settings.data_dir / "yikatong.db"
        if not settings.database.url and not sqlite_file.exists():
            return  # no database configured: nothing to record into
        self.url = settings.database_url
        self._check()

    def _check(self) -> None:
        """Fail before the ceremony if the configured database cannot take the record."""
        import sqlalchemy as sa

        from issuance.db import make_engine

        engine = make_engine(url=self.url)
        try:
            ok = sa.inspect(engine).has_table("audit_events")
        except sa.exc.SQLAlchemyError as exc:
            raise typer.BadParameter(
                f"database unreachable ({exc.__class__.__name__}); fix it or use --no-audit"
            ) from None
        finally:
            engine.dispose()
        if not ok:
            raise typer.BadParameter(
                "the database has no audit log: run `ykt db upgrade` first (or --no-audit)"
            )

    def record(self, action: str, label: str, details: dict[str, Any]) -> None:
        if self.url is None:
            out.print("[dim]no database configured: ceremony not recorded in the audit log[/dim]")
            return
        from issuance import audit
        from issuance.db import make_engine, make_sessionmaker, transaction
        from issuance.models import Channel, StaffRole

        engine = make_engine(url=self.url)
        try:
            with transaction(make_sessionmaker(engine)) as session:
                actor = _actor(session, self.actor_name, audit, StaffRole, Channel)
                audit.record(session, actor, action, "hsm_key", label, details=details)
        finally:
            engine.dispose()
        out.print(f"recorded in the audit log: {action} {label} by {self.actor_name}")


def _actor(session: Any, name: str, audit: Any, roles: Any, channels: Any) -> Any:
    """The staff user ``name`` if the database knows them, else a named admin actor."""
    import sqlalchemy as sa

    from issuance.models import Staff

    user = session.scalars(sa.select(Staff).where(Staff.username == name)).first()
    if user is not None:
        return audit.Actor(user.username, user.role, channels.SYSTEM, user.id)
    return audit.Actor(name, roles.ADMIN, channels.SYSTEM)


def _custodian_names(names: Sequence[str] | None, count: int) -> list[str]:
    given = [n.strip() for n in names or []]
    if given and len(given) != count:
        raise typer.BadParameter(f"give one --custodian per component ({count}), got {len(given)}")
    if any(not n for n in given):
        raise typer.BadParameter("a custodian name is empty")
    if len(set(given)) != len(given):
        raise typer.BadParameter("each component needs a different custodian")
    return given


def _components(
    count: int, alg: Algorithm, custodians: Sequence[str]
) -> tuple[list[bytes], list[bytes], list[str]]:
    """Prompt each custodian for their component (no echo) and its KCV."""
    if not 2 <= count <= 3:
        raise typer.BadParameter("--components must be 2 or 3")
    comps, kcvs, names = [], [], []
    for n in range(1, count + 1):
        name = custodians[n - 1] if custodians else typer.prompt(f"custodian {n} name").strip()
        if not name or name in names:
            raise typer.BadParameter(f"custodian {n}: a name of their own is needed")
        comp = _hex(
            typer.prompt(f"{name}: component {n} (32 hex, not echoed)", hide_input=True),
            f"component {n}",
        )
        if len(comp) != 16:
            raise typer.BadParameter(f"component {n} must be 16 bytes")
        check = _hex(typer.prompt(f"{name}: KCV of component {n} (6 hex)"), "KCV")
        comps.append(comp)
        kcvs.append(check)
        names.append(name)
    return comps, kcvs, names


def _custody(names: Sequence[str], kcvs: Sequence[bytes]) -> list[dict[str, Any]]:
    return [
        {"component": n, "custodian": name, "kcv": kcv.hex().upper()}
        for n, (name, kcv) in enumerate(zip(names, kcvs, strict=True), start=1)
    ]


def _info_details(info: ceremony.KeyInfo) -> dict[str, Any]:
    return {"label": info.label, "kind": info.kind, "algorithm": info.algorithm,
            "version": info.version, "kcv": info.kcv.hex().upper()}  # fmt: skip


# --- commands --------------------------------------------------------------------------------


@app.command("init")
def init(
    if_missing: Annotated[bool, typer.Option("--if-missing", help="Quiet if all exist.")] = False,
    algorithm: Annotated[Algorithm, typer.Option(help="Master key algorithm.")] = Algorithm.DES3,
) -> None:
    """Create the SoftHSM token if absent, then every missing v1 master key, the key-loading
    key master of every key set (also on tokens made before it existed) and the signing key."""
    config = _config()
    if config.is_softhsm:
        created = softhsm.ensure_token(config)
        out.print(
            f"SoftHSM token {config.token_label!r}: {'created' if created else 'present'}"
            f" ({config.softhsm_conf})"
        )
    elif config.is_sm_test_module:  # tests and demo only (hsm.smtoken)
        created = smtoken.ensure_token(config)
        out.print(
            f"SM test module token {config.token_label!r}: {'created' if created else 'present'}"
            f" (vendor table {config.vendor!r}, {config.sm_conf})"
        )
    labels = ceremony.init_keys(_token(config), algorithm)
    if labels:
        out.print(f"created {len(labels)} key(s): {', '.join(labels)}")
    elif not if_missing:
        out.print("all keys present")


@app.command("generate")
def generate(
    slot: KeySlot,
    algorithm: _Alg = Algorithm.DES3,
    version: _Version = 1,
    as_: _As = None,
    no_audit: _NoAudit = False,
) -> None:
    """Generate one master key inside the HSM."""
    log = _CeremonyLog(as_, not no_audit)
    info = ceremony.generate_master(_token(), slot, algorithm, version)
    out.print(f"{info.label}  KCV {info.kcv.hex().upper()}")
    log.record("hsm.key_generated", info.label, _info_details(info))


@app.command("import")
def import_key(
    name: Annotated[
        str, typer.Argument(help=f"Master to import: {', '.join(MASTER_NAMES)}.", metavar="KEY")
    ],
    components: Annotated[int, typer.Option("--components", "-n")] = 2,
    custodian: _Custodians = None,
    algorithm: _Alg = Algorithm.DES3,
    version: _Version = 1,
    kcv: Annotated[
        str | None, typer.Option("--kcv", help="Expected KCV of the combined key (6 hex).")
    ] = None,
    supplier: Annotated[
        str | None,
        typer.Option(
            "--supplier",
            help="A chip supplier's delivery key set (kmc or klk) instead of an issuer master.",
        ),
    ] = None,
    bank: Annotated[
        str | None,
        typer.Option(
            "--bank",
            help="A bank's issuer master key (fin_ac, fin_smi or fin_smc: IMK-AC, IMK-SMI, "
            "IMK-SMC) into that bank's key domain ([banks.*] key_domain).",
        ),
    ] = None,
    as_: _As = None,
    no_audit: _NoAudit = False,
) -> None:
    """Import a master key from 2-3 clear components typed by their custodians (no echo), each
    checked by its KCV. ``klk`` imports the key-loading key master (AES; SM4 with
    ``--algorithm sm4``). With
    ``--supplier NAME``, ``kmc`` or ``klk`` of the key set shared with that chip supplier, from
    which it diversifies the transport keys of the blank chips it delivers. With ``--bank
    DOMAIN``, ``fin_ac``, ``fin_smi`` or ``fin_smc``: the bank's issuer master key (IMK-AC,
    IMK-SMI, IMK-SMC) from the bank's custodians, into the bank's own key domain."""
    if name not in MASTER_NAMES:
        raise typer.BadParameter(f"unknown key {name!r}: one of {', '.join(MASTER_NAMES)}")
    bank_slot = next((slot for slot in ceremony.BANK_KEYS if slot.value == name), None)
    if bank is not None and bank_slot is None:
        raise typer.BadParameter("a bank's key domain holds fin_ac, fin_smi and fin_smc only")
    if bank is None and bank_slot is not None:
        raise typer.BadParameter(
            f"{name} is a bank's issuer master key: import it into the bank's key domain "
            "with --bank <key domain>"
        )
    if bank is not None and supplier is not None:
        raise typer.BadParameter("--bank or --supplier, not both")
    if bank is not None:
        ceremony.bank_label(bank, KeySlot(name), algorithm, version)  # the name is valid
    if supplier is not None and name not in ceremony.SUPPLIER_KEYS:
        raise typer.BadParameter(f"a supplier key set has {' and '.join(ceremony.SUPPLIER_KEYS)}")
    if supplier is not None:
        ceremony.supplier_label(supplier, name, algorithm, version)  # the name is valid
    names = _custodian_names(custodian, components)
    expected = _hex(kcv, "--kcv") if kcv else None
    log = _CeremonyLog(as_, not no_audit)
    # a KLK (the issuer's, or a chip supplier's) is AES, an SM4 key for SM4 key sets / chips
    alg = klk_algorithm(algorithm) if name == ceremony.KLK else algorithm
    comps, kcvs, names = _components(components, alg, names)
    token = _token()
    if bank is not None:
        info = ceremony.import_bank_master(
            token, bank, KeySlot(name), comps, kcvs, alg, version, expected
        )
    elif supplier is not None:
        info = ceremony.import_supplier_master(
            token, supplier, name, comps, kcvs, alg, version, expected
        )
    elif name == ceremony.KLK:
        info = ceremony.import_klk_master(token, comps, kcvs, version, expected, algorithm)
    else:
        info = ceremony.import_master(token, KeySlot(name), comps, kcvs, alg, version, expected)
    comps.clear()
    out.print(f"{info.label} imported, KCV {info.kcv.hex().upper()}")
    log.record("hsm.key_imported", info.label,
               {**_info_details(info), "custodians": _custody(names, kcvs)})  # fmt: skip


@app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key.")] = False,
) -> None:
    """List the keys with label, kind, slot, algorithm, version and KCV (computed in the HSM
    for masters; for transport keys the KCV recorded at import)."""
    keys = ceremony.list_keys(_token())
    if as_json:
        import json

        for k in keys:
            typer.echo(json.dumps({
                "label": k.label, "kind": k.kind, "slot": k.slot.value if k.slot else None,
                "algorithm": k.algorithm, "version": k.version, "kcv": k.kcv.hex().upper(),
                "kcv_source": k.kcv_source, "sensitive": k.sensitive,
                "extractable": k.extractable,
            }))  # fmt: skip
        return
    table = Table(
        "label", "kind", "slot", "algorithm", "version", "KCV", "KCV from", "sensitive",
        "extractable",
    )  # fmt: skip
    for k in keys:
        table.add_row(
            k.label,
            k.kind,
            k.slot.value if k.slot else "",
            k.algorithm,
            str(k.version or ""),
            k.kcv.hex().upper(),
            k.kcv_source,
            str(k.sensitive),
            str(k.extractable),
        )
    out.print(table)
    token = _token()
    for alg in (Algorithm.DES3, Algorithm.AES, Algorithm.SM4):
        if alg not in KEY_TYPES:
            continue
        current = ceremony.current_version(token, alg)
        if current is not None:
            out.print(f"{alg.value}: new cards use key set v{current}")


@app.command("rotate")
def rotate(
    algorithm: _Alg = Algorithm.DES3,
    as_: _As = None,
    no_audit: _NoAudit = False,
) -> None:
    """Create key set version n+1: every card-key master of ``--algorithm`` and the key-loading
    key master. New cards get it; cards personalised under older versions keep working."""
    log = _CeremonyLog(as_, not no_audit)
    token = _token()
    before = ceremony.current_version(token, algorithm)
    created = ceremony.rotate_key_set(token, algorithm)
    for info in created:
        out.print(f"{info.label}  KCV {info.kcv.hex().upper()}")
    after = ceremony.current_version(token, algorithm)
    out.print(f"{algorithm.value} key set: v{before or 0} -> v{after}")
    log.record(
        "hsm.key_set_rotated",
        f"{algorithm.value}:v{after}",
        {"algorithm": algorithm.value, "from_version": before, "to_version": after,
         "keys": [_info_details(i) for i in created]},
    )  # fmt: skip


@app.command("export-public-key")
def export_public_key(
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """The signing key's public key (PEM), for relying parties."""
    from hsm.service import Pkcs11KeyService

    config = _config()
    pem = Pkcs11KeyService(
        _token(config), config.region_code, signing=config.signing
    ).public_key_pem()
    if output is None:
        typer.echo(pem.decode(), nl=False)
    else:
        output.write_bytes(pem)
        out.print(f"public key written to {output}")


@transport_app.command("generate")
def transport_generate(
    name: str,
    components: _Count = 2,
    custodian: _Custodians = None,
    as_: _As = None,
    no_audit: _NoAudit = False,
) -> None:
    """New AES transport key; shows each custodian their component (once)."""
    names = _custodian_names(custodian, components)
    log = _CeremonyLog(as_, not no_audit)
    info, parts = ceremony.generate_transport_key(_token(), name, components)
    for n, (comp, check) in enumerate(parts, start=1):
        who = names[n - 1] if names else f"custodian {n}"
        typer.prompt(f"{who}: press Enter to show your component", default="", show_default=False)
        out.print(f"component {n}: {comp.hex().upper()}  KCV {check.hex().upper()}")
    out.print(f"{info.label} created, KCV {info.kcv.hex().upper()}")
    kcvs = [check for _, check in parts]
    parts.clear()
    details: dict[str, Any] = {**_info_details(info), "components": components}
    if names:
        details["custodians"] = _custody(names, kcvs)
    log.record("hsm.transport_key_generated", info.label, details)


@transport_app.command("import")
def transport_import(
    name: str,
    components: _Count = 2,
    custodian: _Custodians = None,
    as_: _As = None,
    no_audit: _NoAudit = False,
) -> None:
    """Import a bureau's AES transport key from components (no echo); its KCV is recorded in
    the token (``ykt hsm list`` shows it)."""
    names = _custodian_names(custodian, components)
    log = _CeremonyLog(as_, not no_audit)
    comps, kcvs, names = _components(components, Algorithm.AES, names)
    info = ceremony.import_transport_key(_token(), name, comps, kcvs)
    comps.clear()
    out.print(f"{info.label} imported, KCV {info.kcv.hex().upper()}")
    log.record("hsm.transport_key_imported", info.label,
               {**_info_details(info), "custodians": _custody(names, kcvs)})  # fmt: skip
