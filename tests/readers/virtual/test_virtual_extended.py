"""Extended-length APDUs and command chaining through the real PC/SC stack (pyscard ->
isolated pcscd -> vpcd -> the card emulator).

vpcd and pcsc-lite carry extended APDUs (Lc/Le on 2 bytes) unchanged, under T=1 and also when
the reader negotiates T=0 (vpcd forwards APDUs as they are; a physical T=0 reader would need
ENVELOPE instead). Chaining works whatever the reader can carry, so both are checked."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from smartcard import scard
from virtual_bigcard import BIG_DF_NAME, BIG_SIZE, make_image
from virtual_helpers import HERE

from cardspec import apdu
from cardspec.apdu import CommandApdu
from cardspec.emulator import Card
from readers.pcsc import PcscReader
from readers.virtual import VirtualReaderStack

pytestmark = pytest.mark.pcsc
SELECT_PUB = bytes([0x00, 0xA4, 0x04, 0x0C, len(BIG_DF_NAME)]) + BIG_DF_NAME


@pytest.fixture
def big_stack(tmp_path: Path) -> Iterator[tuple[VirtualReaderStack, Path]]:
    image = make_image(tmp_path / "big.json")
    with VirtualReaderStack(tmp_path / "pcsc", 1, card_factory="virtual_bigcard:load",
                            python_path=[HERE, HERE.parent]) as stack:  # fmt: skip
        stack.insert(0, image)
        yield stack, image


@pytest.mark.parametrize("protocol", [scard.SCARD_PROTOCOL_T1, scard.SCARD_PROTOCOL_T0],
                         ids=["T1", "T0"])  # fmt: skip
def test_extended_apdus_through_pcsc(
    big_stack: tuple[VirtualReaderStack, Path], protocol: int
) -> None:
    stack, image = big_stack
    blob = os.urandom(600)
    with PcscReader(stack.reader_name(0), csock=stack.csock, protocols=protocol) as reader:
        assert reader.protocol == protocol
        assert reader.transmit(SELECT_PUB) == b"\x90\x00"
        update = CommandApdu(0x00, 0xD6, 0x8A, 0x00, blob)
        assert update.is_extended and len(update.to_bytes()) == 7 + 600
        assert reader.transmit(update.to_bytes()) == b"\x90\x00"
        read = CommandApdu(0x00, 0xB0, 0x8A, 0x00, le=65536)  # Le = 0000
        resp = reader.transmit(read.to_bytes())
        assert resp[-2:] == b"\x90\x00" and len(resp) == BIG_SIZE + 2 and resp[:600] == blob
    assert Card.load(image).state.binaries["MF/SSSE/PUB/EF0A"][:600] == blob  # persisted


def test_command_chaining_through_pcsc(big_stack: tuple[VirtualReaderStack, Path]) -> None:
    stack, image = big_stack
    blob = os.urandom(BIG_SIZE)
    parts = apdu.chain(CommandApdu(0x00, 0xD6, 0x8A, 0x00, blob), max_data=255)
    assert len(parts) == 4 and all(not p.is_extended for p in parts)
    with PcscReader(stack.reader_name(0), csock=stack.csock) as reader, reader.transaction():
        assert reader.transmit(SELECT_PUB) == b"\x90\x00"
        assert [reader.transmit(p.to_bytes()) for p in parts] == [b"\x90\x00"] * 4
        # read back in short APDUs: 4 x 250 bytes
        got = b""
        for offset in range(0, BIG_SIZE, 250):
            resp = reader.transmit(bytes([0x00, 0xB0, offset >> 8, offset & 0xFF, 250]))
            assert resp[-2:] == b"\x90\x00"
            got += resp[:-2]
        assert got == blob
        # a chain interrupted by another command is refused by the card
        assert reader.transmit(parts[0].to_bytes()) == b"\x90\x00"
        assert reader.transmit(bytes.fromhex("0084000008"))[-2:] == b"\x68\x83"
    assert Card.load(image).state.binaries["MF/SSSE/PUB/EF0A"] == blob
