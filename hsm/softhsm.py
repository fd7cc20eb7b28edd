"""The project-local SoftHSM2 token (the default HSM for development, tests and demos).

Everything is under ``<data_dir>/hsm``: ``softhsm2.conf`` with ``directories.tokendir`` pointing
at ``<data_dir>/hsm/tokens``. ``softhsm2-util`` runs as a subprocess with ``SOFTHSM2_CONF`` in
its own environment, so creating the token does not load the module into this process (the
adapter loads it lazily, after any fork). SoftHSM reads ``SOFTHSM2_CONF`` when the module is
initialised: :func:`activate` sets it for this process; :mod:`hsm.pkcs11` does the same before
loading.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from hsm.config import HsmConfig
from hsm.errors import HsmError, HsmUnavailable

SOFTHSM_UTIL = "softhsm2-util"


def _paths(config: HsmConfig) -> tuple[Path, Path]:
    if config.softhsm_conf is None or config.tokens_dir is None:
        raise HsmError("not a SoftHSM2 configuration (no softhsm_conf)")
    return config.softhsm_conf, config.tokens_dir


def write_conf(config: HsmConfig) -> Path:
    """Create the configuration file and token directory if missing; return the file."""
    conf, tokens = _paths(config)
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not conf.exists():
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            "# SoftHSM2 configuration of this Yikatong installation (created by `ykt hsm init`)\n"
            f"directories.tokendir = {tokens}/\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n",
            encoding="utf-8",
        )
        conf.chmod(0o600)
    return conf


def activate(config: HsmConfig) -> None:
    """Point this process's SoftHSM at the configuration (before the module is loaded)."""
    conf, _ = _paths(config)
    os.environ["SOFTHSM2_CONF"] = str(conf)


def _util(config: HsmConfig, *args: str) -> str:
    if shutil.which(SOFTHSM_UTIL) is None:
        raise HsmUnavailable(f"{SOFTHSM_UTIL} not found: install the softhsm2 package")
    conf, _ = _paths(config)
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    proc = subprocess.run(
        [SOFTHSM_UTIL, *args], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    if proc.returncode != 0:
        # never echo the command line: it holds PINs
        raise HsmError(f"{SOFTHSM_UTIL} {args[0]} failed: {proc.stderr.strip() or proc.stdout}")
    return proc.stdout


def token_labels(config: HsmConfig) -> list[str]:
    """Labels of the initialised tokens in this SoftHSM configuration."""
    out = _util(config, "--show-slots")
    return [
        m.group(1).strip()
        for m in re.finditer(r"^\s*Label:\s*(.*)$", out, re.M)
        if m.group(1).strip()
    ]


def ensure_token(config: HsmConfig) -> bool:
    """Create the configuration and the token if absent. Returns True if a token was created."""
    write_conf(config)
    if config.token_label in token_labels(config):
        return False
    _util(
        config,
        "--init-token",
        "--free",
        "--label",
        config.token_label,
        "--so-pin",
        config.so_pin,
        "--pin",
        config.user_pin(),
    )
    return True
