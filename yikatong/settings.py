"""Reading the settings: the composition root's job (the schema: :mod:`issuance.settings`).

Sources, later wins: the embedded defaults; a TOML file (``$YKT_CONFIG`` if set, else
``<data_dir>/yikatong.toml`` if it exists); environment variables ``YKT_<SECTION>__<KEY>`` and
``YKT_DATA_DIR``. Unknown keys are rejected (a typo must not silently fall back to a default).
Every other package receives the frozen result (or its own section of it).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from issuance.errors import ConfigError
from issuance.settings import (
    PROJECT_ROOT,
    ApiSettings,
    ApplicationSettings,
    DatabaseSettings,
    HsmSettings,
    IssuerSettings,
    LifecycleSettings,
    NotifySettings,
    PhotoSettings,
    PrinterSettings,
    ReaderSettings,
    Settings,
    StockSettings,
    WorkerSettings,
)

__all__ = [
    "PROJECT_ROOT",
    "ApiSettings",
    "ApplicationSettings",
    "DatabaseSettings",
    "HsmSettings",
    "IssuerSettings",
    "LifecycleSettings",
    "NotifySettings",
    "PhotoSettings",
    "PrinterSettings",
    "ReaderSettings",
    "Settings",
    "StockSettings",
    "WorkerSettings",
    "get_settings",
    "load_settings",
]


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
