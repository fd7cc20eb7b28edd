"""Secure messaging of the card's commands (MAC integrity, PBOC style).

Design notes: ``docs/design/cardspec.md`` (section ``cardspec.sm``).
"""

from __future__ import annotations

import hmac
from dataclasses import replace

from cardspec import keyscheme
from cardspec.apdu import CommandApdu
from cardspec.crypto import CardCrypto
from cardspec.errors import ApduError, SecurityError
from cardspec.keyscheme import Algorithm, KeySlot

MAC_LENGTH = 4
SM_CLA = 0x04


def mac_input(cla: int, ins: int, p1: int, p2: int, data: bytes) -> bytes:
    """``CLA' INS P1 P2 Lc' || data`` where ``Lc'`` counts the 4 MAC bytes (short APDUs)."""
    lc = len(data) + MAC_LENGTH
    if lc > 255:
        raise ApduError("MAC'd commands are short APDUs: data too long")
    return bytes((cla | SM_CLA, ins, p1, p2, lc)) + data


class TerminalChannel:
    """The terminal end of a MAC channel opened by EXTERNAL AUTHENTICATE with ``slot``.

    ``iv`` starts as the challenge the card gave (8 bytes) and then follows the MAC chain.
    """

    def __init__(self, crypto: CardCrypto, slot: KeySlot, challenge: bytes) -> None:
        self.crypto = crypto
        self.slot = slot
        self.iv = challenge

    def wrap(self, command: CommandApdu) -> CommandApdu:
        """``command`` with SM CLA and its MAC appended; advances the chain."""
        cla = command.cla | SM_CLA
        block = self.crypto.mac_block(
            self.slot, mac_input(cla, command.ins, command.p1, command.p2, command.data), self.iv
        )
        self.iv = block
        return replace(command, cla=cla, data=command.data + block[:MAC_LENGTH])


def wrap_once(
    crypto: CardCrypto, slot: KeySlot, command: CommandApdu, challenge: bytes
) -> CommandApdu:
    """A single MAC'd command whose IV is a fresh challenge (e.g. PIN unblock with PUK)."""
    return TerminalChannel(crypto, slot, challenge).wrap(command)


def is_sm(cla: int) -> bool:
    """CLA announces secure messaging (b3 set: 04/0C interindustry, 84/8C proprietary)."""
    return bool(cla & SM_CLA)


def unwrap_command(
    key: bytes, alg: Algorithm, header: bytes, data: bytes, iv: bytes
) -> tuple[bytes, bytes]:
    """Card side: check the MAC at the end of ``data``; return ``(plain data, MAC block)``.

    ``header`` is CLA INS P1 P2 as received. Raises :class:`SecurityError` (6988) on a wrong
    MAC and (6987) when the data field is too short to carry one.
    """
    if len(data) < MAC_LENGTH:
        raise SecurityError("secure messaging data missing", 0x6987)
    body, mac = data[:-MAC_LENGTH], data[-MAC_LENGTH:]
    block = keyscheme.sm_mac_block(
        key, mac_input(header[0], header[1], header[2], header[3], body), iv, alg
    )
    if not hmac.compare_digest(block[:MAC_LENGTH], mac):
        raise SecurityError("secure messaging MAC incorrect", 0x6988)
    return body, block
