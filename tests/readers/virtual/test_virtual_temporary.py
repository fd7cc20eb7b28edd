"""The temporary card from outside (issue 18, "Temporary cards and generations"): the public
read sequences replayed through pcscd + vpcd by the independent client (conformance/
terminal.py, no project import) against temporary cards of the second and third generation,
which answer them alike (and the formal card's public sequences unchanged)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from cardspec import perso
from cardspec.keyscheme import Algorithm
from cardspec.profile import CardProfile, social_security_profile
from cardspec.reader import InProcessReader
from readers.virtual import VirtualReaderStack

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "cardspec"))  # tests/cardspec helpers
from cardspec_helpers import SERIAL, blank, perso_data, software_crypto

pytestmark = pytest.mark.pcsc

CONFORMANCE = Path(__file__).resolve().parents[2] / "cardspec" / "conformance"
TEMPORARY = CONFORMANCE / "temporary" / "temporary_card.json"
PUBLIC = [CONFORMANCE / "vectors" / "hiquotion_decard.json",
          CONFORMANCE / "vectors" / "hdos_xinjiang.json"]  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualReaderStack]:
    with VirtualReaderStack(tmp_path_factory.mktemp("tmpconf") / "pcsc", 1) as st:
        yield st


def temporary_card(path: Path, profile: CardProfile) -> Path:
    """The sample holder on a temporary card of ``profile`` (category 2, medical only)."""
    data = dataclasses.replace(
        perso_data(SERIAL, spec_version=profile.spec_version),
        card_category="2", expiry_date=date(2024, 5, 1), pension=None, financial=None,
    )  # fmt: skip
    card = blank(SERIAL, profile, path=path)
    perso.personalise(InProcessReader(card), software_crypto(SERIAL, profile.algorithm), data,
                      profile)  # fmt: skip
    return path


def terminal(stack: VirtualReaderStack, *vectors: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", str(CONFORMANCE / "terminal.py"),
         "--reader", stack.reader_name(0), *map(str, vectors)],
        env=stack.client_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def answers(transcript: str) -> list[str]:
    """The card's answers (``<`` lines) of a transcript."""
    return [line.strip() for line in transcript.splitlines() if line.strip().startswith("<")]


GENERATIONS = [
    social_security_profile(temporary=True),
    social_security_profile(generation=3, algorithm=Algorithm.AES, temporary=True),
]


def test_second_and_third_generation_temporary_cards_answer_the_public_sequence_alike(
    stack: VirtualReaderStack, tmp_path: Path
) -> None:
    transcripts = []
    for profile in GENERATIONS:
        stack.insert(0, temporary_card(tmp_path / f"{profile.name}.json", profile))
        done = terminal(stack, TEMPORARY)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "BAD" not in done.stdout and done.stdout.count("ok  > ") == 13, done.stdout
        transcripts.append(answers(done.stdout))
    assert transcripts[0] == transcripts[1]


def test_public_reader_sequences_read_a_second_generation_temporary_card(
    stack: VirtualReaderStack, tmp_path: Path
) -> None:
    """The DeCard and Xinjiang hospital readers' whole sequences (EF05 and the holder's EF06)
    read a temporary card as they read the social security card: the same commands, the same
    answers but for the expiry date (the temporary card's own)."""
    vectors = []
    for path in PUBLIC:
        spec = json.loads(path.read_text(encoding="utf-8"))
        for step in spec["steps"]:
            if step["apdu"] == "00B2060006":  # identifier 06: the expiry date
                step["data"] = "060420240501"
        vectors.append(tmp_path / path.name)
        vectors[-1].write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    stack.insert(0, temporary_card(tmp_path / "t2.json", GENERATIONS[0]))
    done = terminal(stack, *vectors)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BAD" not in done.stdout


def test_the_client_sees_a_formal_card_is_not_temporary(
    stack: VirtualReaderStack, tmp_path: Path
) -> None:
    """The vector is a real check: the formal sample card (category 1, other expiry, every
    application) fails it where it differs."""
    from cardspec_helpers import personalised_card

    path = tmp_path / "formal.json"
    personalised_card(path)
    stack.insert(0, path)
    done = terminal(stack, TEMPORARY)
    assert done.returncode == 1
    bad = [line for line in done.stdout.splitlines() if line.startswith("BAD")]
    assert len(bad) == 6, done.stdout  # category, expiry, pension, public, PSE, PBOC
