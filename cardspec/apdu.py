"""Command and response APDUs (ISO/IEC 7816-4 clause 5.1, 5.3).

Design notes: ``docs/design/cardspec.md`` (section ``cardspec.apdu``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from cardspec.errors import ApduError

CHAINING_BIT = 0x10
SM_BITS = 0x0C


@dataclass(frozen=True)
class CommandApdu:
    cla: int
    ins: int
    p1: int = 0
    p2: int = 0
    data: bytes = b""
    le: int | None = None
    extended: bool = False
    """Force the extended encoding even where the short one fits."""

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            v = getattr(self, name)
            if not 0 <= v <= 0xFF:
                raise ApduError(f"{name} must be a byte, got {v}")
        if self.cla == 0xFF:
            raise ApduError("CLA FF is reserved (PPS)")
        if len(self.data) > 65535:
            raise ApduError("data longer than 65535 bytes")
        if self.le is not None and not 1 <= self.le <= 65536:
            raise ApduError("Le must be 1..65536")

    @property
    def is_extended(self) -> bool:
        return self.extended or len(self.data) > 255 or (self.le is not None and self.le > 256)

    @property
    def case(self) -> int:
        if self.data:
            return 4 if self.le is not None else 3
        return 2 if self.le is not None else 1

    @property
    def header(self) -> bytes:
        return bytes((self.cla, self.ins, self.p1, self.p2))

    @property
    def chained(self) -> bool:
        return bool(self.cla & CHAINING_BIT) and self.cla & 0x80 == 0

    def to_bytes(self) -> bytes:
        out = bytearray(self.header)
        if self.is_extended:
            if self.data:
                out += b"\x00" + len(self.data).to_bytes(2, "big") + self.data
            if self.le is not None:
                le = self.le % 65536
                out += (b"" if self.data else b"\x00") + le.to_bytes(2, "big")
        else:
            if self.data:
                out += bytes([len(self.data)]) + self.data
            if self.le is not None:
                out.append(self.le % 256)
        return bytes(out)

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> CommandApdu:
        """Parse any of the seven encodings; raises :class:`ApduError` when none fits."""
        n = len(raw)
        if n < 4:
            raise ApduError(f"command APDU shorter than 4 bytes ({n})")
        cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
        body = raw[4:]
        b = len(body)
        if b == 0:
            return cls(cla, ins, p1, p2)
        if b == 1:
            return cls(cla, ins, p1, p2, le=body[0] or 256)
        if body[0] != 0 or b < 3:
            lc = body[0]
            if lc and b == 1 + lc:
                return cls(cla, ins, p1, p2, bytes(body[1:]))
            if lc and b == 2 + lc:
                return cls(cla, ins, p1, p2, bytes(body[1:-1]), le=body[-1] or 256)
            raise ApduError(f"short APDU body of {b} bytes does not match Lc={lc}")
        # extended: body starts with 00
        if b == 3:
            return cls(cla, ins, p1, p2, le=int.from_bytes(body[1:3], "big") or 65536,
                       extended=True)  # fmt: skip
        lc = int.from_bytes(body[1:3], "big")
        if lc == 0:
            raise ApduError("extended Lc of 0")
        if b == 3 + lc:
            return cls(cla, ins, p1, p2, bytes(body[3:]), extended=True)
        if b == 5 + lc:
            le = int.from_bytes(body[-2:], "big") or 65536
            return cls(cla, ins, p1, p2, bytes(body[3:-2]), le=le, extended=True)
        raise ApduError(f"extended APDU body of {b} bytes does not match Lc={lc}")


@dataclass(frozen=True)
class ResponseApdu:
    data: bytes
    sw: int

    @property
    def sw1(self) -> int:
        return self.sw >> 8

    @property
    def sw2(self) -> int:
        return self.sw & 0xFF

    @property
    def ok(self) -> bool:
        return self.sw == 0x9000

    def to_bytes(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ResponseApdu:
        if len(raw) < 2:
            raise ApduError(f"response shorter than 2 bytes ({len(raw)})")
        return cls(bytes(raw[:-2]), int.from_bytes(raw[-2:], "big"))


def chain(command: CommandApdu, max_data: int = 255) -> list[CommandApdu]:
    """Split ``command`` by command chaining; Le goes on the last command only."""
    if max_data < 1:
        raise ValueError("max_data must be positive")
    if len(command.data) <= max_data:
        return [command]
    parts = [command.data[i : i + max_data] for i in range(0, len(command.data), max_data)]
    out = [
        replace(command, cla=command.cla | CHAINING_BIT, data=p, le=None, extended=False)
        for p in parts[:-1]
    ]
    out.append(replace(command, data=parts[-1], extended=False))
    return out


def get_response(le: int, cla: int = 0x00) -> CommandApdu:
    return CommandApdu(cla, 0xC0, 0, 0, le=le or 256)


Transmit = Callable[[bytes], bytes]


def exchange(transmit: Transmit, command: CommandApdu, *, max_rounds: int = 64) -> ResponseApdu:
    """Send ``command`` (chained if its data exceeds 255 bytes and it is short), following
    ``61xx`` with GET RESPONSE and ``6Cxx`` by repeating with the right Le (T=0 rules)."""
    parts = chain(command) if not command.is_extended else [command]
    for part in parts[:-1]:
        resp = ResponseApdu.from_bytes(transmit(part.to_bytes()))
        if not resp.ok:
            return resp
    last = parts[-1]
    resp = ResponseApdu.from_bytes(transmit(last.to_bytes()))
    if resp.sw1 == 0x6C:
        last = replace(last, le=resp.sw2 or 256)
        resp = ResponseApdu.from_bytes(transmit(last.to_bytes()))
    data = resp.data
    rounds = 0
    while resp.sw1 == 0x61:
        rounds += 1
        if rounds > max_rounds:
            raise ApduError("too many GET RESPONSE rounds")
        resp = ResponseApdu.from_bytes(
            transmit(get_response(resp.sw2, command.cla & 0x80).to_bytes())
        )
        data += resp.data
    return ResponseApdu(data, resp.sw)
