"""Conformance from outside: the APDU sequences of public reader code
(tests/cardspec/conformance/vectors, each citing its source) replayed through pcscd + vpcd
against a personalised card by an independent client (conformance/terminal.py: pyscard only,
no project import) and by opensc-tool."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardspec.keyscheme import KeySlot
from readers.virtual import VirtualReaderStack

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "cardspec"))  # tests/cardspec helpers
from cardspec_helpers import PAN, PSN, masters, personalised_card

pytestmark = pytest.mark.pcsc

CONFORMANCE = Path(__file__).resolve().parents[2] / "cardspec" / "conformance"
VECTORS = sorted((CONFORMANCE / "vectors").glob("*.json"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualReaderStack]:
    with VirtualReaderStack(tmp_path_factory.mktemp("conf") / "pcsc", 2) as st:
        yield st


@pytest.fixture
def card_image(tmp_path: Path) -> Path:
    path = tmp_path / "card.json"
    personalised_card(path)
    return path


def terminal(stack: VirtualReaderStack, *vectors: Path) -> subprocess.CompletedProcess[str]:
    """The independent client in its own interpreter, isolated (-I: no PYTHONPATH, no cwd on
    sys.path), so the project is not importable by accident from the test's path."""
    return subprocess.run(
        [sys.executable, "-I", str(CONFORMANCE / "terminal.py"),
         "--reader", stack.reader_name(0), *map(str, vectors)],
        env=stack.client_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("vector", VECTORS, ids=[v.stem for v in VECTORS])
def test_public_sequence_through_pcscd(
    stack: VirtualReaderStack, card_image: Path, vector: Path
) -> None:
    spec = json.loads(vector.read_text(encoding="utf-8"))
    assert spec["source"]["cite"] and spec["steps"]
    stack.insert(0, card_image)
    done = terminal(stack, vector)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok  > ") == len(spec["steps"]), done.stdout
    assert "BAD" not in done.stdout


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_arqc_from_the_bank_reader_sequence_checks_with_pyemv(
    stack: VirtualReaderStack, card_image: Path
) -> None:
    """The bank's host side of the same transaction: pyemv (the independent EMV oracle)
    derives the card's MK-AC from the bank's issuer master key (option A) and the session key
    from the ATC, and recomputes the ARQC the card sent through pcscd."""
    from pyemv import ac, kd

    vector = CONFORMANCE / "vectors" / "pboc_bank_reader.json"
    stack.insert(0, card_image)
    done = terminal(stack, vector)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("ok  > 80AE8000"))
    cdol1 = bytes.fromhex(lines[at].split()[2])[5:-1]
    gpo = next(i for i, line in enumerate(lines) if line.startswith("ok  > 80A80000"))
    aip = bytes.fromhex(lines[gpo + 1].split()[1])[2:4]
    resp = bytes.fromhex(lines[at + 1].split()[1])[2:]
    cid, atc, arqc, iad = resp[:1], resp[1:3], resp[3:11], resp[11:]
    assert cid == b"\x80" and len(cdol1) == 52
    icc_mk = kd.derive_icc_mk_a(masters()[KeySlot.FIN_AC], PAN, PSN)
    sk = kd.derive_common_sk(icc_mk, atc + bytes(6))
    assert arqc == ac.generate_ac(sk, cdol1 + aip + atc + iad[3:], ac.PaddingType.EMV)


def test_terminal_reports_a_wrong_answer(
    stack: VirtualReaderStack, card_image: Path, tmp_path: Path
) -> None:
    """The client is a real check: a vector expecting another card number fails."""
    vector = json.loads((CONFORMANCE / "vectors" / "hdos_xinjiang.json").read_text("utf-8"))
    vector["steps"][1]["data"] = "0709" + b"B7K334774".hex().upper()
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(vector), encoding="utf-8")
    stack.insert(0, card_image)
    done = terminal(stack, wrong)
    assert done.returncode == 1 and done.stdout.count("BAD") == 1, done.stdout


def test_opensc_tool_sends_the_public_sequence(stack: VirtualReaderStack, card_image: Path) -> None:
    """opensc-tool -s, a second independent PC/SC client, with the DeCard reader's commands."""
    spec = json.loads((CONFORMANCE / "vectors" / "hiquotion_decard.json").read_text("utf-8"))
    stack.insert(1, card_image)
    args = ["opensc-tool", "-r", "1"]
    for step in spec["steps"]:
        args += ["-s", step["apdu"]]
    done = subprocess.run(args, env=stack.client_env(), capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    statuses = re.findall(r"SW1=0x([0-9a-f]{2}), SW2=0x([0-9a-f]{2})", done.stdout)
    assert len(statuses) == len(spec["steps"])
    for (sw1, sw2), step in zip(statuses, spec["steps"], strict=True):
        assert re.fullmatch(step["sw"], (sw1 + sw2).upper()), done.stdout
