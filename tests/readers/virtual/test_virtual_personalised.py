"""The README's card walk-through, command for command: an HSM token, a blank chip whose keys
come from it, personalised with sample data, inserted into a virtual reader, then read back by
two independent PC/SC clients: opensc-tool (SELECT the social security DF by name, READ
RECORD of EF05) and ``ykt card read --reader``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from virtual_helpers import stack_processes

from cardspec import ids
from cardspec.emulator import Card, LifeCycle
from cardspec.profile import SOCIAL_SECURITY_DF_NAME

pytestmark = [pytest.mark.pcsc, pytest.mark.softhsm]

SERIAL = "0123456789ABCDEF"
CARD_NUMBER = "B7K334774"


def ykt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "yikatong.cli.main", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _received(opensc_output: str) -> list[bytes]:
    """The data of each 'Received' block of ``opensc-tool -s`` output."""
    out: list[bytes] = []
    for block in opensc_output.split("Received")[1:]:
        lines = block.splitlines()[1:]
        data = b""
        for line in lines:
            if line.startswith("Sending"):
                break
            data += bytes.fromhex(" ".join(re.findall(r"\b[0-9A-F]{2}\b", line[:48])))
        out.append(data)
    return out


def test_personalised_card_read_by_opensc_and_ykt(tmp_path: Path) -> None:
    env = {**os.environ, "YKT_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    for name in ("PCSCLITE_CSOCK_NAME", "SOFTHSM2_CONF"):
        env.pop(name, None)
    image = tmp_path / "card.json"
    steps = [
        ("hsm", "init", "--if-missing"),
        ("card", "new-blank", str(image), "--serial", SERIAL, "--no-financial"),
        ("card", "personalise", str(image), "--sample", "--card-number", CARD_NUMBER),
    ]
    for step in steps:
        done = ykt(env, *step)
        assert done.returncode == 0, f"{step}: {done.stdout}{done.stderr}"
    assert "card is genuine" in done.stdout
    card = Card.load(image)
    assert card.state.life_cycle is LifeCycle.SECURED and card.state.klk is None
    code = ids.make_card_identification_code("330100", bytes.fromhex(SERIAL))

    run_dir = tmp_path / "run" / "pcsc"
    start = subprocess.Popen(
        [sys.executable, "-m", "yikatong.cli.main", "readers", "start", "--count", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert start.stdout is not None
        deadline = time.monotonic() + 30
        export = ""
        while time.monotonic() < deadline and not export:
            line = start.stdout.readline()
            if not line:
                break
            if line.startswith("export "):
                export = line.strip()
        assert export, "the virtual readers did not start"
        csock = export.split("=", 1)[1]
        inserted = ykt(env, "readers", "insert", "0", str(image))
        assert inserted.returncode == 0, inserted.stdout + inserted.stderr

        # opensc-tool, an independent PC/SC client, against the isolated pcscd
        client = {**env, "PCSCLITE_CSOCK_NAME": csock}
        listing = subprocess.run(["opensc-tool", "-l"], env=client, capture_output=True,
                                 text=True, timeout=60, check=False)  # fmt: skip
        assert listing.returncode == 0 and "Virtual PCD 0 00 00" in listing.stdout
        select = bytes([0, 0xA4, 4, 0x0C, len(SOCIAL_SECURITY_DF_NAME)]) + SOCIAL_SECURITY_DF_NAME
        read = subprocess.run(
            ["opensc-tool", "-r", "0", "-s", select.hex(), "-s", "00B2012C00",
             "-s", "00B2072C00"],
            env=client, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert read.returncode == 0, read.stderr
        assert read.stdout.count("SW1=0x90, SW2=0x00") == 3, read.stdout
        _, record1, record7 = _received(read.stdout)
        assert record1 == bytes([0x01, 0x10]) + bytes.fromhex(code)  # card identification code
        assert record7 == bytes([0x07, 0x09]) + CARD_NUMBER.encode()  # card number

        # ykt card read through PC/SC (a reader in a card printer is read the same way)
        shown = ykt(client, "card", "read", "--reader", "Virtual PCD 0 00 00")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert CARD_NUMBER in shown.stdout and code in shown.stdout
        assert "secured" in shown.stdout and "1101**********002X" in shown.stdout

        start.send_signal(signal.SIGINT)
        assert start.wait(15) == 0
    finally:
        if start.poll() is None:
            start.kill()
            start.wait()
    assert stack_processes(run_dir) == []
