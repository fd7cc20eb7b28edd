"""The settings: the root schema and reading it, the composition root's job.

:class:`Settings` composes every section: it extends the API's own config
(:class:`api.config.ApiConfig`, which extends the console's :class:`console.config.ConsoleConfig`,
which extends the domain's :class:`issuance.settings.IssuanceConfig`) with the HSM's section, and
maps that to the HSM's own frozen config (:meth:`Settings.hsm_config`). Every other package is
typed against its own part; only this package (and tests, benchmarks, the throwaway servers)
names :class:`Settings` (``tests/structure``).

Sources, later wins: the embedded defaults; a TOML file (``$YKT_CONFIG`` if set, else
``<data_dir>/yikatong.toml`` if it exists); environment variables ``YKT_<SECTION>__<KEY>`` and
``YKT_DATA_DIR``. Unknown keys are rejected (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from api.config import ApiConfig, ApiSettings
from console.config import ConsoleSettings
from hsm.config import HsmConfig
from hsm.smtoken import is_sm_test_module
from issuance.errors import ConfigError
from issuance.settings import (
    PROJECT_ROOT,
    ApplicationSettings,
    BankSettings,
    DatabaseSettings,
    EcardSettings,
    IssuanceConfig,
    IssuerSettings,
    LifecycleSettings,
    NotifySettings,
    PhotoSettings,
    PinSettings,
    PrinterSettings,
    ReaderSettings,
    ResidentSettings,
    StockSettings,
    WorkerSettings,
)

__all__ = [
    "PROJECT_ROOT",
    "ApiSettings",
    "ApplicationSettings",
    "BankSettings",
    "ConsoleSettings",
    "DatabaseSettings",
    "EcardSettings",
    "HsmSettings",
    "IssuanceConfig",
    "IssuerSettings",
    "LifecycleSettings",
    "NotifySettings",
    "PhotoSettings",
    "PinSettings",
    "PrinterSettings",
    "ReaderSettings",
    "ResidentSettings",
    "Settings",
    "StockSettings",
    "WorkerSettings",
    "get_settings",
    "load_settings",
]


class HsmSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: PKCS#11 module of the HSM vendor. Default: SoftHSM2 from Debian.
    module: Path = Path("/usr/lib/softhsm/libsofthsm2.so")
    token_label: str = "yikatong"
    #: User PIN. In production give ``pin_file`` instead (readable by the service only).
    pin: SecretStr = SecretStr("1234")
    pin_file: Path | None = None
    #: Security-officer PIN, only used by ``ykt hsm init`` on SoftHSM.
    so_pin: SecretStr = SecretStr("12345678")
    #: SoftHSM2 configuration file; empty = ``<data_dir>/hsm/softhsm2.conf`` (created by setup).
    softhsm_conf: Path | None = None
    #: The vendor's table of SM2/SM3/SM4 mechanism numbers (``hsm.vendors``: ``ibm``,
    #: ``swxa``), or ``standard``: PKCS#11 v2.40 only, no SM algorithm (SoftHSM2). The SM test
    #: module ``var/lib/libykt-smp11.so`` offers exactly the table named here.
    vendor: str = "standard"
    #: What signs the status feed and audit checkpoints: ``ecdsa-p256`` (``ykt:signing:v1``) or
    #: ``sm2`` (``ykt:signing:sm2:v1``, SM2 with SM3; needs an HSM with an SM table). Clients
    #: verify either (``hsm.service.verify_signature``).
    signing: Literal["ecdsa-p256", "sm2"] = "ecdsa-p256"

    def user_pin(self) -> str:
        if self.pin_file is not None:
            try:
                return self.pin_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read HSM PIN file {self.pin_file}: {exc}") from exc
        return self.pin.get_secret_value()


class Settings(ApiConfig):
    """Every section (the root schema): the API's, the console's and the domain's (inherited)
    and the HSM's."""

    hsm: HsmSettings = HsmSettings()

    @property
    def softhsm_conf(self) -> Path:
        return self.hsm.softhsm_conf or (self.data_dir / "hsm" / "softhsm2.conf")

    def hsm_config(self) -> HsmConfig:
        """The HSM's own frozen configuration: ``[hsm]`` and the issuer's region."""
        sm_dir = self.data_dir / "hsm" / "sm"
        sm_module = is_sm_test_module(self.hsm.module)
        return HsmConfig(
            module=self.hsm.module,
            token_label=self.hsm.token_label,
            pin_source=self.hsm.user_pin,
            so_pin=self.hsm.so_pin.get_secret_value(),
            softhsm_conf=self.softhsm_conf,
            tokens_dir=self.data_dir / "hsm" / "tokens",
            region_code=self.issuer.region_code,
            vendor=self.hsm.vendor,
            signing=self.hsm.signing,
            sm_conf=sm_dir / "smp11.conf" if sm_module else None,
            sm_store=sm_dir / "tokens" if sm_module else None,
        )


def _set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"environment overrides a non-section: {'.'.join(keys)}")
        node = child
    node[keys[-1]] = value


def load_settings(
    config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build settings from defaults, the TOML file and ``YKT_*`` variables; raise ConfigError."""
    env = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    data_dir = Path(env["YKT_DATA_DIR"]) if env.get("YKT_DATA_DIR") else None
    path = config_file or (Path(env["YKT_CONFIG"]) if env.get("YKT_CONFIG") else None)
    if path is None:
        candidate = (data_dir or Settings.model_fields["data_dir"].default) / "yikatong.toml"
        path = candidate if candidate.exists() else None
    if path is not None:
        try:
            tree = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read settings file {path}: {exc}") from exc
    for name, value in env.items():
        if not name.startswith("YKT_") or name in ("YKT_CONFIG", "YKT_DATA_DIR"):
            continue
        parts = name[4:].lower().split("__")
        if len(parts) != 2:
            continue
        if parts[1] == "names":
            _set_path(tree, parts, [v for v in value.strip("[]").split(",") if v])
        else:
            _set_path(tree, parts, value)
    if data_dir is not None:
        tree["data_dir"] = str(data_dir)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings ({path or 'environment'}): {problems}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, loaded once."""
    return load_settings()
