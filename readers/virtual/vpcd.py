"""The card side of vsmartcard's vpcd protocol: serve a :class:`CardHandler` to a vpcd reader.

Design notes: ``docs/design/readers.md`` (section ``readers.virtual.vpcd``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from enum import IntEnum

from cardspec.reader import CardHandler

log = logging.getLogger(__name__)

#: vpcd's default port (``/etc/reader.conf.d/vpcd``: ``DEVICENAME /dev/null:0x8C7B``).
VPCD_DEFAULT_PORT = 0x8C7B

#: Status word answered when the card handler fails unexpectedly (6F00: no precise diagnosis).
_SW_TECHNICAL_PROBLEM = b"\x6f\x00"


class VpcdControl(IntEnum):
    """Control codes vpcd sends as 1-byte messages (vsmartcard ``vpcd.h``)."""

    POWER_OFF = 0
    """Deactivate the contacts (no answer)."""
    POWER_ON = 1
    """Cold reset (no answer)."""
    RESET = 2
    """Warm reset (no answer)."""
    GET_ATR = 4
    """Ask for the ATR (answered with the ATR bytes)."""


class VpcdConnectionClosed(ConnectionError):
    """vpcd closed the connection (pcscd stopped, or the slot was ejected locally)."""


def frame(payload: bytes) -> bytes:
    """One vpcd message: 2-byte big-endian length + payload."""
    if len(payload) > 0xFFFF:
        raise ValueError("vpcd message longer than 65535 bytes")
    return struct.pack(">H", len(payload)) + payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        # The kernel clears QUICKACK after use: set it before every recv.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise VpcdConnectionClosed("vpcd closed the connection")
        buf += chunk
    return bytes(buf)


def recv_message(sock: socket.socket) -> bytes:
    """Read one framed message from vpcd."""
    (length,) = struct.unpack(">H", _recv_exact(sock, 2))
    return _recv_exact(sock, length) if length else b""


def answer(card: CardHandler, message: bytes) -> bytes | None:
    """The card's answer to one vpcd message (``None``: the message expects no answer)."""
    if len(message) == 1:
        code = message[0]
        if code == VpcdControl.GET_ATR:
            return card.atr()
        if code == VpcdControl.POWER_OFF:
            card.power_off()
        elif code in (VpcdControl.POWER_ON, VpcdControl.RESET):
            card.power_on()
        else:
            log.warning("unknown vpcd control code %d ignored", code)
        return None
    try:
        return card.process(message)
    except Exception:  # a broken handler must not kill the reader slot
        log.exception("card handler failed on an APDU (INS %02X)", message[1] if message else 0)
        return _SW_TECHNICAL_PROBLEM


def serve_connection(
    sock: socket.socket, card: CardHandler, on_apdu: Callable[[], None] | None = None
) -> int:
    """Answer vpcd messages on ``sock`` with ``card`` until the connection closes.

    Returns the number of APDUs answered (control codes not counted); ``on_apdu`` is called
    after each one.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    apdus = 0
    while True:
        try:
            message = recv_message(sock)
        except (VpcdConnectionClosed, OSError):
            return apdus
        reply = answer(card, message)
        if len(message) > 1:
            apdus += 1
            if on_apdu is not None:
                on_apdu()
        if reply is not None:
            try:
                sock.sendall(frame(reply))
            except OSError:
                return apdus


class VpcdSlot:
    """One vpcd reader slot served from a background thread.

    ``insert(card)`` makes the card present (the slot connects to vpcd), ``eject()`` removes it
    (the connection is closed). While a card is inserted the slot reconnects whenever the
    connection drops (vpcd restarted) after ``retry_delay`` seconds.
    """

    def __init__(
        self,
        port: int = VPCD_DEFAULT_PORT,
        host: str = "127.0.0.1",
        *,
        name: str = "",
        retry_delay: float = 0.05,
    ) -> None:
        self.port = port
        self.host = host
        self.name = name or f"vpcd:{port}"
        self.retry_delay = retry_delay
        self._cond = threading.Condition()
        self._card: CardHandler | None = None
        self._generation = 0
        self._sock: socket.socket | None = None
        self._connected = False
        self._stopped = False
        self.apdus = 0
        self.connections = 0
        self._thread = threading.Thread(target=self._run, name=f"vpcd-{port}", daemon=True)

    # --- control (any thread) --------------------------------------------------------------

    def start(self) -> VpcdSlot:
        self._thread.start()
        return self

    @property
    def card(self) -> CardHandler | None:
        return self._card

    @property
    def connected(self) -> bool:
        return self._connected

    def insert(self, card: CardHandler) -> None:
        """Insert ``card`` (replacing any card in the slot)."""
        with self._cond:
            self._card = card
            self._generation += 1
            self._drop_connection()
            self._cond.notify_all()

    def eject(self) -> CardHandler | None:
        """Remove the card; returns it (``None`` if the slot was empty)."""
        with self._cond:
            card, self._card = self._card, None
            self._generation += 1
            self._drop_connection()
            self._cond.notify_all()
        return card

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopped = True
            self._card = None
            self._generation += 1
            self._drop_connection()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wait_connected(self, timeout: float) -> bool:
        """Wait until the inserted card is connected to vpcd."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._connected:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _count_apdu(self) -> None:
        self.apdus += 1

    def _drop_connection(self) -> None:
        # Called with the lock held: unblocks the serving thread's recv.
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    # --- serving thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._card is None and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                card, generation = self._card, self._generation
            assert card is not None
            sock = self._connect(generation)
            if sock is None:
                continue
            try:
                card.power_on()
                serve_connection(sock, card, self._count_apdu)
            finally:
                with self._cond:
                    self._sock = None
                    self._connected = False
                    self._cond.notify_all()
                sock.close()
                try:
                    card.power_off()
                except Exception:
                    log.exception("%s: power_off failed", self.name)
            with self._cond:
                if self._generation == generation and not self._stopped:
                    # vpcd went away with the card still inserted: retry shortly.
                    log.info("%s: connection to vpcd lost, reconnecting", self.name)
                    self._cond.wait(self.retry_delay)

    def _connect(self, generation: int) -> socket.socket | None:
        """Connect to vpcd, retrying until it answers or the slot's card changes."""
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=1.0)
            except OSError:
                with self._cond:
                    if self._generation != generation or self._stopped:
                        return None
                    self._cond.wait(self.retry_delay)
                    if self._generation != generation or self._stopped:
                        return None
                continue
            sock.settimeout(None)
            with self._cond:
                if self._generation != generation or self._stopped:
                    sock.close()
                    return None
                self._sock = sock
                self._connected = True
                self.connections += 1
                self._cond.notify_all()
            return sock
