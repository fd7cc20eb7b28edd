"""``ykt readers``: start in the foreground, drive it from other processes, Ctrl-C stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from virtual_helpers import stack_processes

from cardspec.emulator import blank_card
from cardspec.keyscheme import Algorithm
from cardspec.profile import SOCIAL_SECURITY_DF_NAME

pytestmark = pytest.mark.pcsc

RUN_APP = "from yikatong.cli.virtual import app; app()"


def ykt_readers(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN_APP, *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_start_insert_status_opensc_remove_and_ctrl_c(tmp_path: Path) -> None:
    env = {**os.environ, "YKT_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    env.pop("PCSCLITE_CSOCK_NAME", None)
    run_dir = tmp_path / "run" / "pcsc"
    image = tmp_path / "blank.json"
    blank_card(bytes(range(8)), bytes(16), Algorithm.DES3, klk=bytes(16), path=image)

    start = subprocess.Popen(
        [sys.executable, "-c", RUN_APP, "start", "--count", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert start.stdout is not None
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = start.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("export "):
                break
        assert lines and lines[-1].strip() == (
            f"export PCSCLITE_CSOCK_NAME={run_dir / 'pcscd' / 'pcscd.comm'}"
        ), "".join(lines)

        inserted = ykt_readers(env, "insert", "1", str(image))
        assert inserted.returncode == 0, inserted.stdout + inserted.stderr
        status = ykt_readers(env, "status")
        assert status.returncode == 0
        assert "Virtual PCD 0 00 01" in status.stdout and "blank.json" in status.stdout

        select = bytes([0, 0xA4, 4, 0, len(SOCIAL_SECURITY_DF_NAME)]) + SOCIAL_SECURITY_DF_NAME
        listing = ykt_readers(env, "opensc", "--", "-l")
        assert listing.returncode == 0, listing.stderr
        assert "Virtual PCD 0 00 01" in listing.stdout
        sel = ykt_readers(env, "opensc", "--", "-r", "1", "-s", select.hex())
        assert "SW1=0x90, SW2=0x00" in sel.stdout, sel.stdout + sel.stderr

        removed = ykt_readers(env, "remove", "1")
        assert removed.returncode == 0
        bad = ykt_readers(env, "insert", "7", str(image))
        assert bad.returncode == 2 and "no slot 7" in bad.stdout

        start.send_signal(signal.SIGINT)  # Ctrl-C
        assert start.wait(15) == 0
    finally:
        if start.poll() is None:
            start.kill()
            start.wait()
    assert stack_processes(run_dir) == []
    after = ykt_readers(env, "status")
    assert after.returncode == 2 and "no virtual reader stack" in after.stdout


def test_stop_command_ends_the_foreground_stack(tmp_path: Path) -> None:
    env = {**os.environ, "YKT_DATA_DIR": str(tmp_path)}
    start = subprocess.Popen(
        [sys.executable, "-c", RUN_APP, "start", "--count", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert start.stdout is not None
        for line in start.stdout:
            if line.startswith("export "):
                break
        assert ykt_readers(env, "stop").returncode == 0
        assert start.wait(15) == 0
    finally:
        if start.poll() is None:
            start.kill()
            start.wait()
    assert stack_processes(tmp_path / "run" / "pcsc") == []
