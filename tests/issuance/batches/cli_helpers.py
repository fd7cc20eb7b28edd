"""Running ``ykt`` as an operator does: a real subprocess with the test's settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from batch_helpers import STAFF_PASSWORD, HsmRoot, subprocess_env

from yikatong.settings import Settings


def ykt_env(settings: Settings, hsm: HsmRoot, **extra: str) -> dict[str, str]:
    env = {**os.environ, **subprocess_env(settings, hsm), "PYTHONUNBUFFERED": "1",
           "COLUMNS": "200"}  # fmt: skip
    env.pop("PCSCLITE_CSOCK_NAME", None)
    env.pop("YKT_STAFF", None)
    return {**env, "YKT_STAFF_PASSWORD": STAFF_PASSWORD, **extra}


def ykt_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "yikatong.cli.main", *args]


def ykt(
    env: dict[str, str], *args: str, timeout: float = 240, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ykt_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
