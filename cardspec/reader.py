"""The reader port: how the rest of the system talks to a card.

A *reader* is anything that exchanges APDUs with one card: a PC/SC reader (a desk reader, the
encoding module of a card printer, vsmartcard's virtual reader with the project's emulator behind
it) or the emulator in-process (fast unit tests). A *card handler* is the card side: something
that answers APDUs; the emulator implements it, and the vpcd bridge serves one over TCP.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class CardHandler(Protocol):
    """The card side of a contact interface (what a chip does)."""

    def atr(self) -> bytes:
        """Answer-to-reset bytes (ISO/IEC 7816-3)."""
        ...

    def power_on(self) -> None:
        """Cold reset: volatile state (selected file, security status, challenge) is cleared."""
        ...

    def power_off(self) -> None:
        """Contacts deactivated; persistent content stays."""
        ...

    def process(self, command: bytes) -> bytes:
        """Answer one command APDU with response data followed by SW1 SW2."""
        ...


@runtime_checkable
class Reader(Protocol):
    """The terminal side: one reader with (at most) one card."""

    name: str

    def connect(self) -> bytes:
        """Power the card and return its ATR; raises if no card is present."""
        ...

    def transmit(self, command: bytes) -> bytes:
        """Send one command APDU, return response data + SW1 SW2 (raw bytes)."""
        ...

    def disconnect(self) -> None: ...


class InProcessReader:
    """A reader wired straight to a card handler in this process (no PC/SC)."""

    def __init__(self, card: CardHandler, name: str = "in-process reader") -> None:
        self.name = name
        self.card = card
        self._connected = False

    def connect(self) -> bytes:
        self.card.power_on()
        self._connected = True
        return self.card.atr()

    def transmit(self, command: bytes) -> bytes:
        if not self._connected:
            raise RuntimeError(f"{self.name}: transmit before connect")
        return self.card.process(command)

    def disconnect(self) -> None:
        if self._connected:
            self.card.power_off()
        self._connected = False
