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

from cardspec.apdu import CommandApdu
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import AID_PBOC_DEBIT, social_security_profile
from readers.pcsc import PcscReader
from readers.virtual import VirtualReaderStack

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "cardspec"))  # tests/cardspec helpers
from cardspec_helpers import PAN, PSN, masters, personalised_card
from emv_oracle import oracle_arqc, oracle_icc_mk, oracle_pin, oracle_script_mac

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


# --- the debit application of the AES and SM4 cards (third generation) -------------------------

EMV_ALGS = (Algorithm.AES, Algorithm.SM4)
BANK_VECTOR = CONFORMANCE / "vectors" / "pboc_bank_reader.json"


def _image(tmp_path: Path, alg: Algorithm) -> Path:
    path = tmp_path / f"card-{alg.value}.json"
    personalised_card(path, profile=social_security_profile(generation=3, algorithm=alg))
    return path


def _mk(alg: Algorithm, slot: KeySlot) -> bytes:
    """The bank's side: the card's ICC master key from the bank's IMK (the oracle)."""
    return oracle_icc_mk(alg, masters()[slot], PAN, PSN)


@pytest.mark.parametrize("alg", EMV_ALGS, ids=[a.value for a in EMV_ALGS])
def test_bank_reader_sequence_on_aes_and_sm4_cards(
    stack: VirtualReaderStack, tmp_path: Path, alg: Algorithm
) -> None:
    """The bank-card reader's sequence (the same vector, byte for byte) answered by an AES and
    an SM4 card through pcscd, and the ARQC it received recomputed by the independent oracle
    (AES: option C, A1.3.1 with n = 16, AES-CMAC; SM4: the CHOICEs of cardspec.emv)."""
    spec = json.loads(BANK_VECTOR.read_text(encoding="utf-8"))
    stack.insert(0, _image(tmp_path, alg))
    done = terminal(stack, BANK_VECTOR)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok  > ") == len(spec["steps"]) and "BAD" not in done.stdout
    lines = done.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("ok  > 80AE8000"))
    cdol1 = bytes.fromhex(lines[at].split()[2])[5:-1]
    gpo = next(i for i, line in enumerate(lines) if line.startswith("ok  > 80A80000"))
    aip = bytes.fromhex(lines[gpo + 1].split()[1])[2:4]
    resp = bytes.fromhex(lines[at + 1].split()[1])[2:]
    atc, arqc, iad = resp[1:3], resp[3:11], resp[11:]
    expected = oracle_arqc(alg, _mk(alg, KeySlot.FIN_AC), atc, cdol1 + aip + atc + iad[3:])
    assert resp[:1] == b"\x80" and arqc == expected


@pytest.mark.parametrize("alg", EMV_ALGS, ids=[a.value for a in EMV_ALGS])
def test_arqc_then_issuer_script_through_pcscd(
    stack: VirtualReaderStack, tmp_path: Path, alg: Algorithm
) -> None:
    """A bank terminal's online transaction on an AES / SM4 card through pcscd + vpcd: GPO,
    GENERATE AC (the ARQC checked by the oracle), then the issuer's PIN change script (new PIN
    enciphered and MAC'd by the oracle under the session keys of that ARQC) accepted, and the
    new PIN verified."""
    stack.insert(1, _image(tmp_path, alg))
    pdol = bytes.fromhex("00" + "000000012345" + "0156")
    cdol1 = bytes.fromhex("000000012345" "000000000000" "0156" "0000000000" "0156" "261206"
                          "00" "1A2B3C4D" "103000") + bytes(20)  # fmt: skip
    with PcscReader(stack.reader_name(1), csock=stack.csock) as reader:

        def ok(cmd: CommandApdu) -> bytes:
            out = reader.transmit(cmd.to_bytes())
            assert out[-2:] == b"\x90\x00", out[-2:].hex()
            return out[:-2]

        ok(CommandApdu(0x00, 0xA4, 0x04, 0x00, AID_PBOC_DEBIT))
        aip = ok(CommandApdu(0x80, 0xA8, 0, 0, b"\x83\x09" + pdol))[2:4]
        resp = ok(CommandApdu(0x80, 0xAE, 0x80, 0, cdol1))[2:]
        atc, ac, iad = resp[1:3], resp[3:11], resp[11:]
        assert ac == oracle_arqc(alg, _mk(alg, KeySlot.FIN_AC), atc, cdol1 + aip + atc + iad[3:])
        enc = oracle_pin(alg, _mk(alg, KeySlot.FIN_SMC), ac, "654321")
        header = bytes([0x84, 0x24, 0x00, 0x02])
        mac = oracle_script_mac(alg, _mk(alg, KeySlot.FIN_SMI), header, atc, ac, enc)
        bad = reader.transmit(CommandApdu(0x84, 0x24, 0, 0x02, enc + bytes(4)).to_bytes())
        assert bad[-2:] == b"\x69\x88"  # a wrong MAC: refused
        ok(CommandApdu(0x84, 0x24, 0, 0x02, enc + mac))
        ok(CommandApdu(0x00, 0x20, 0x00, 0x80, bytes.fromhex("26654321FFFFFFFF")))
