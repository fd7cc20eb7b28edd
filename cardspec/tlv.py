"""TLV codecs: BER-TLV (ISO/IEC 7816-4 clause 5.2 / EMV 4.3 Book 3 Annex B) and SIMPLE-TLV.

BER-TLV
    Tag: first byte bits b5..b1 = 11111 means more tag bytes follow, each with b8 = 1 while
    another follows (Book 3 B1). Bit b6 of the first byte marks a constructed object.
    Length: ``0..127`` in one byte; otherwise ``81 xx``, ``82 xx xx``, ``83 ..``, ``84 ..``
    (Book 3 B2). Bytes ``00`` and ``FF`` between objects are padding (Book 3 B1, ISO 7816-4
    5.2.2) and are skipped when ``skip_padding`` is true.
SIMPLE-TLV (ISO/IEC 7816-4 5.2.1)
    Tag one byte ``01..FE``; length one byte ``00..FE``, or ``FF`` followed by two bytes.
    The social security EF05/EF06 records are SIMPLE-TLV objects (tag, 1-byte length, value).

Tags are handled as integers (``0x9F0C``, ``0x5F24``), values as bytes. Errors raise
:class:`cardspec.errors.TlvError` naming the tag and offset.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cardspec.errors import TlvError


def tag_bytes(tag: int) -> bytes:
    """The encoded bytes of an integer tag, validated against the BER rules."""
    if tag <= 0:
        raise TlvError("tag must be positive", offset=0, tag=tag)
    raw = tag.to_bytes((tag.bit_length() + 7) // 8, "big")
    first = raw[0]
    if len(raw) == 1:
        if first & 0x1F == 0x1F:
            raise TlvError("one-byte tag announces subsequent bytes", offset=0, tag=tag)
        return raw
    if first & 0x1F != 0x1F:
        raise TlvError("multi-byte tag without 1F in its first byte", offset=0, tag=tag)
    for i, b in enumerate(raw[1:], start=1):
        last = i == len(raw) - 1
        if bool(b & 0x80) == last:
            raise TlvError("bad continuation bit in tag", offset=i, tag=tag)
    return raw


def is_constructed(tag: int) -> bool:
    """Bit b6 of the first tag byte (ISO/IEC 7816-4 5.2.2.1)."""
    first = tag >> (8 * ((tag.bit_length() - 1) // 8)) if tag else 0
    return bool(first & 0x20)


def encode_length(length: int) -> bytes:
    """Definite-form BER length (short form below 128, long form up to 4 bytes)."""
    if length < 0:
        raise ValueError("negative length")
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    if len(body) > 4:
        raise ValueError("length does not fit in 4 bytes")
    return bytes([0x80 | len(body)]) + body


def encode(tag: int, value: bytes) -> bytes:
    """One BER-TLV object."""
    return tag_bytes(tag) + encode_length(len(value)) + value


def encode_constructed(tag: int, children: Iterable[Tlv]) -> bytes:
    if not is_constructed(tag):
        raise TlvError("children under a primitive tag", offset=0, tag=tag)
    return encode(tag, b"".join(c.to_bytes() for c in children))


@dataclass(frozen=True)
class Tlv:
    """One BER-TLV data object."""

    tag: int
    value: bytes

    @property
    def constructed(self) -> bool:
        return is_constructed(self.tag)

    def children(self) -> list[Tlv]:
        """Parse the value of a constructed object."""
        if not self.constructed:
            raise TlvError("primitive object has no children", offset=0, tag=self.tag)
        return decode(self.value)

    def to_bytes(self) -> bytes:
        return encode(self.tag, self.value)


def _read_tag(data: bytes, pos: int) -> tuple[int, int]:
    start = pos
    if pos >= len(data):
        raise TlvError("missing tag", offset=pos)
    tag = data[pos]
    pos += 1
    if tag & 0x1F == 0x1F:
        while True:
            if pos >= len(data):
                raise TlvError("tag truncated", offset=start, tag=tag)
            b = data[pos]
            tag = (tag << 8) | b
            pos += 1
            if not b & 0x80:
                break
            if pos - start > 4:
                raise TlvError("tag longer than 4 bytes", offset=start, tag=tag)
    return tag, pos


def _read_length(data: bytes, pos: int, tag: int) -> tuple[int, int]:
    if pos >= len(data):
        raise TlvError("length missing", offset=pos, tag=tag)
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if first == 0x80:
        raise TlvError("indefinite length is not allowed", offset=pos - 1, tag=tag)
    if count > 4:
        raise TlvError(f"length of {count} bytes is not supported", offset=pos - 1, tag=tag)
    if pos + count > len(data):
        raise TlvError("length bytes truncated", offset=pos - 1, tag=tag)
    return int.from_bytes(data[pos : pos + count], "big"), pos + count


def iter_decode(data: bytes, *, skip_padding: bool = True) -> Iterator[tuple[int, Tlv]]:
    """Yield ``(offset, Tlv)`` for each top-level object in ``data``."""
    pos = 0
    n = len(data)
    while pos < n:
        if skip_padding and data[pos] in (0x00, 0xFF):
            pos += 1
            continue
        start = pos
        tag, pos = _read_tag(data, pos)
        length, pos = _read_length(data, pos, tag)
        end = pos + length
        if end > n:
            raise TlvError(
                f"value of {length} bytes runs past the end ({n - pos} left)", offset=start, tag=tag
            )
        yield start, Tlv(tag, bytes(data[pos:end]))
        pos = end


def decode(data: bytes, *, skip_padding: bool = True) -> list[Tlv]:
    """All top-level objects in ``data``."""
    return [t for _, t in iter_decode(data, skip_padding=skip_padding)]


def decode_one(data: bytes) -> Tlv:
    """Exactly one object spanning all of ``data``."""
    items = list(iter_decode(data, skip_padding=False))
    if len(items) != 1:
        raise TlvError(f"expected one object, found {len(items)}", offset=0)
    return items[0][1]


def find(data: bytes | list[Tlv], tag: int) -> bytes | None:
    """Depth-first search for ``tag`` through constructed objects; its value or None."""
    objects = decode(data) if isinstance(data, bytes | bytearray) else data
    for obj in objects:
        if obj.tag == tag:
            return obj.value
        if obj.constructed:
            found = find(obj.children(), tag)
            if found is not None:
                return found
    return None


def to_dict(data: bytes) -> dict[int, bytes]:
    """Top-level primitive objects as a mapping (later duplicates win)."""
    return {t.tag: t.value for t in decode(data)}


# --- SIMPLE-TLV --------------------------------------------------------------------------------


def simple_encode(tag: int, value: bytes) -> bytes:
    """One SIMPLE-TLV object (ISO/IEC 7816-4 5.2.1)."""
    if not 0x01 <= tag <= 0xFE:
        raise TlvError("SIMPLE-TLV tag must be 01..FE", offset=0, tag=tag)
    n = len(value)
    if n <= 0xFE:
        return bytes([tag, n]) + value
    if n <= 0xFFFF:
        return bytes([tag, 0xFF]) + n.to_bytes(2, "big") + value
    raise TlvError("SIMPLE-TLV value longer than 65535 bytes", offset=0, tag=tag)


def simple_decode(data: bytes) -> list[tuple[int, bytes]]:
    """All SIMPLE-TLV objects in ``data`` (no padding is skipped: 00 and FF are invalid tags)."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    n = len(data)
    while pos < n:
        start = pos
        tag = data[pos]
        if tag in (0x00, 0xFF):
            raise TlvError(f"invalid SIMPLE-TLV tag {tag:02X}", offset=start)
        if pos + 1 >= n:
            raise TlvError("length missing", offset=start, tag=tag)
        length = data[pos + 1]
        pos += 2
        if length == 0xFF:
            if pos + 2 > n:
                raise TlvError("3-byte length truncated", offset=start, tag=tag)
            length = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        if pos + length > n:
            raise TlvError(
                f"value of {length} bytes runs past the end ({n - pos} left)", offset=start, tag=tag
            )
        out.append((tag, bytes(data[pos : pos + length])))
        pos += length
    return out


def simple_decode_one(data: bytes) -> tuple[int, bytes]:
    items = simple_decode(data)
    if len(items) != 1:
        raise TlvError(f"expected one SIMPLE-TLV object, found {len(items)}", offset=0)
    return items[0]
