"""The vpcd card-side protocol against a stand-in for vpcd (a TCP listener in the test).

The stand-in speaks what vpcd speaks (vsmartcard ``vpcd.c``): 2-byte big-endian length +
payload, control codes 0/1/2/4, APDUs. No pcscd needed.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from virtual_fakecard import ATR, FileCard

from readers.virtual.vpcd import VpcdControl, VpcdSlot, answer, frame, recv_message


class FakeVpcd:
    """Listens like vpcd on a free loopback port; one card connection at a time."""

    def __init__(self, port: int = 0) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(5)
        self.port = self.server.getsockname()[1]
        self.conn: socket.socket | None = None

    def accept(self) -> socket.socket:
        self.conn, _ = self.server.accept()
        self.conn.settimeout(5)
        return self.conn

    def send(self, payload: bytes, *, split: bool = True) -> None:
        assert self.conn is not None
        data = frame(payload)
        if split:  # vpcd sends length and payload separately
            self.conn.sendall(data[:2])
            self.conn.sendall(data[2:])
        else:
            self.conn.sendall(data)

    def control(self, code: VpcdControl) -> None:
        self.send(bytes([code]))

    def exchange(self, payload: bytes) -> bytes:
        self.send(payload)
        assert self.conn is not None
        return recv_message(self.conn)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


def card() -> FileCard:
    return FileCard(ATR, {"3F00/2F01": b"\x01\x02\x03"}, {})


@pytest.fixture
def vpcd() -> Iterator[FakeVpcd]:
    fake = FakeVpcd()
    yield fake
    fake.close()


@pytest.fixture
def slot(vpcd: FakeVpcd) -> Iterator[VpcdSlot]:
    s = VpcdSlot(vpcd.port, retry_delay=0.01).start()
    yield s
    s.stop()


def test_frame_is_length_prefixed() -> None:
    assert frame(b"\x00\xa4") == b"\x00\x02\x00\xa4"
    assert frame(b"") == b"\x00\x00"
    with pytest.raises(ValueError):
        frame(bytes(0x10000))
    assert struct.unpack(">H", frame(bytes(300))[:2]) == (300,)


def test_answer_control_codes_and_apdus() -> None:
    c = card()
    assert answer(c, bytes([VpcdControl.GET_ATR])) == ATR
    c.counter = 5
    assert answer(c, bytes([VpcdControl.POWER_ON])) is None
    assert c.counter == 0
    assert answer(c, bytes([VpcdControl.RESET])) is None
    assert answer(c, bytes([VpcdControl.POWER_OFF])) is None
    assert answer(c, bytes([9])) is None  # unknown control code: ignored
    assert answer(c, bytes.fromhex("00A40000022F01")) == b"\x90\x00"
    assert answer(c, bytes.fromhex("00B0000003")) == b"\x01\x02\x03\x90\x00"


def test_a_failing_handler_answers_6f00() -> None:
    class Broken(FileCard):
        def process(self, command: bytes) -> bytes:
            raise RuntimeError("boom")

    assert answer(Broken(ATR, {}, {}), bytes.fromhex("00A4000000")) == b"\x6f\x00"


def test_slot_serves_the_inserted_card(vpcd: FakeVpcd, slot: VpcdSlot) -> None:
    assert not slot.connected
    slot.insert(card())
    vpcd.accept()
    assert slot.wait_connected(5)
    assert vpcd.exchange(bytes([VpcdControl.GET_ATR])) == ATR
    vpcd.control(VpcdControl.POWER_ON)
    assert vpcd.exchange(bytes.fromhex("00A40000022F01")) == b"\x90\x00"
    assert vpcd.exchange(bytes.fromhex("00B0000003")) == b"\x01\x02\x03\x90\x00"
    assert vpcd.exchange(bytes.fromhex("00B0000010")) == b"\x6c\x03"
    assert slot.apdus == 3
    sock = slot_socket_options(slot)
    assert sock == 1  # TCP_NODELAY on the card side


def slot_socket_options(slot: VpcdSlot) -> int:
    sock = slot._sock  # the live connection of the slot
    assert sock is not None
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_eject_closes_the_connection_and_insert_reconnects(vpcd: FakeVpcd, slot: VpcdSlot) -> None:
    slot.insert(card())
    first = vpcd.accept()
    assert slot.wait_connected(5)
    assert slot.eject() is not None
    assert first.recv(10) == b""  # the card left: vpcd sees the connection closed
    assert slot.card is None and slot.eject() is None
    slot.insert(card())
    vpcd.accept()
    assert vpcd.exchange(bytes([VpcdControl.GET_ATR])) == ATR
    assert slot.connections == 2


def test_slot_reconnects_when_vpcd_restarts(vpcd: FakeVpcd, slot: VpcdSlot) -> None:
    slot.insert(card())
    vpcd.accept()
    assert vpcd.exchange(bytes([VpcdControl.GET_ATR])) == ATR
    port = vpcd.port
    vpcd.close()  # pcscd stopped: listener and connection gone
    restarted = FakeVpcd(port)
    try:
        restarted.accept()
        assert restarted.exchange(bytes([VpcdControl.GET_ATR])) == ATR
        assert restarted.exchange(bytes.fromhex("00A40000022F01")) == b"\x90\x00"
    finally:
        restarted.close()
    assert slot.connections == 2


def test_stop_ends_the_thread(vpcd: FakeVpcd) -> None:
    s = VpcdSlot(vpcd.port).start()
    s.insert(card())
    conn = vpcd.accept()
    s.stop()
    assert conn.recv(10) == b""
    assert not s._thread.is_alive()
