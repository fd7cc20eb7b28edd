"""The project's card emulator (cardspec.emulator) behind a virtual reader: the default card
factory loads a JSON card image; pyscard and opensc-tool reach it through the isolated pcscd."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardspec import cardops, perso
from cardspec.emulator import Card, blank_card
from cardspec.keyscheme import KeySlot
from cardspec.profile import DEFAULT_PROFILE, SOCIAL_SECURITY_DF_NAME
from readers.pcsc import PcscReader
from readers.virtual import VirtualReaderStack

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "cardspec"))  # tests/cardspec helpers
from cardspec_helpers import SERIAL, perso_data, software_crypto

pytestmark = pytest.mark.pcsc

SSSE = SOCIAL_SECURITY_DF_NAME
SELECT_SSSE = bytes([0x00, 0xA4, 0x04, 0x00, len(SSSE)]) + SSSE


@pytest.fixture
def emu_stack(tmp_path: Path) -> Iterator[VirtualReaderStack]:
    with VirtualReaderStack(tmp_path / "pcsc", 2) as st:  # default factory: Card.load
        yield st


@pytest.fixture
def blank_image(tmp_path: Path) -> Path:
    crypto = software_crypto(SERIAL, DEFAULT_PROFILE.algorithm)
    path = tmp_path / "blank.json"
    blank_card(SERIAL, crypto.card_key(KeySlot.KMC), DEFAULT_PROFILE.algorithm,
               klk=crypto.key_loading_key(), profile=DEFAULT_PROFILE, path=path)  # fmt: skip
    return path


def test_blank_card_answers_select_through_pyscard(
    emu_stack: VirtualReaderStack, blank_image: Path
) -> None:
    emu_stack.insert(0, blank_image)
    with PcscReader(emu_stack.reader_name(0), csock=emu_stack.csock) as reader:
        assert reader.atr() == Card.load(blank_image).atr()
        # Sent without Le: the emulator answers 61xx (T=0 style), GET RESPONSE is automatic.
        resp = reader.transmit(SELECT_SSSE)
        assert resp[-2:] == b"\x90\x00"
        assert resp[0] == 0x6F and SOCIAL_SECURITY_DF_NAME in resp
        assert cardops.life_cycle(reader).value != "secured"


def test_blank_card_answers_select_through_opensc_tool(
    emu_stack: VirtualReaderStack, blank_image: Path
) -> None:
    emu_stack.insert(1, blank_image)
    out = subprocess.run(
        ["opensc-tool", "-r", "1", "-s", SELECT_SSSE.hex() + "00"],
        env=emu_stack.client_env(), capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "SW1=0x90, SW2=0x00" in out
    assert SOCIAL_SECURITY_DF_NAME.hex(" ").upper() in out.replace("\n", " ").upper() or (
        SOCIAL_SECURITY_DF_NAME[:8].hex(" ").upper() in out.upper()
    )


def test_personalisation_through_pcsc_persists_in_the_image(
    emu_stack: VirtualReaderStack, blank_image: Path
) -> None:
    emu_stack.insert(0, blank_image)
    crypto = software_crypto(SERIAL, DEFAULT_PROFILE.algorithm)
    data = perso_data(SERIAL, spec_version=DEFAULT_PROFILE.spec_version)
    with PcscReader(emu_stack.reader_name(0), csock=emu_stack.csock) as reader:
        with reader.transaction():
            perso.personalise(reader, crypto, data, DEFAULT_PROFILE, connect=False)
        public = cardops.read_card_public(reader, DEFAULT_PROFILE, connect=False)
    assert public.card_identification.card_number == data.card_number
    assert public.holder is not None and public.holder.ssn == data.holder.ssn
    emu_stack.remove(0)
    # The card saved itself: the image read in-process holds the personalised data.
    from cardspec.reader import InProcessReader

    again = cardops.read_card_public(InProcessReader(Card.load(blank_image)), DEFAULT_PROFILE)
    assert again.card_identification == public.card_identification
