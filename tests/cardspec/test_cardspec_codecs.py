"""TLV, APDU and status-word codecs: vectors with their source, and Hypothesis round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardspec import apdu, sw, tlv
from cardspec.apdu import CommandApdu, ResponseApdu
from cardspec.errors import (
    ApduError,
    CardError,
    CardNotFoundError,
    CardStateError,
    PinError,
    SecurityError,
    TlvError,
)

# EMV 4.3 Book 1 11.3.4 / Book 3 Annex B examples: an FCI of the PSE "1PAY.SYS.DDF01":
# 6F 1A 84 0E '1PAY.SYS.DDF01' A5 08 88 01 01 5F 2D 02 'en'.
EMV_PSE_FCI = bytes.fromhex("6F1A840E315041592E5359532E4444463031A5088801015F2D02656E")


def test_emv_fci_vector() -> None:
    top = tlv.decode_one(EMV_PSE_FCI)
    assert top.tag == 0x6F and top.constructed
    inner = top.children()
    assert inner[0] == tlv.Tlv(0x84, b"1PAY.SYS.DDF01")
    assert tlv.find(EMV_PSE_FCI, 0x88) == b"\x01"
    assert tlv.find(EMV_PSE_FCI, 0x5F2D) == b"en"
    assert tlv.find(EMV_PSE_FCI, 0x9F38) is None
    # Re-encoding gives the same bytes.
    assert tlv.encode_constructed(0x6F, inner) == EMV_PSE_FCI


@pytest.mark.parametrize(
    ("length", "encoded"),
    [(0, "00"), (127, "7F"), (128, "8180"), (255, "81FF"), (256, "820100"), (65536, "83010000")],
)
def test_length_forms(length: int, encoded: str) -> None:
    # ISO/IEC 7816-4 5.2.2.2 table 8: short form below 128, then 81/82/83.
    assert tlv.encode_length(length).hex().upper() == encoded


@pytest.mark.parametrize(
    ("data", "fragment", "offset", "tag"),
    [
        ("9F", "tag truncated", 0, 0x9F),
        ("5A", "length missing", 1, 0x5A),
        ("5A0512", "runs past the end", 0, 0x5A),
        ("5A8201", "length bytes truncated", 1, 0x5A),
        ("5A80", "indefinite", 1, 0x5A),
        ("8401AA5F2485", "length of 5 bytes", 5, 0x5F24),
    ],
)
def test_tlv_errors_name_tag_and_offset(data: str, fragment: str, offset: int, tag: int) -> None:
    with pytest.raises(TlvError) as err:
        tlv.decode(bytes.fromhex(data))
    assert fragment in str(err.value)
    assert err.value.offset == offset
    assert err.value.tag == tag


def test_padding_bytes_are_skipped() -> None:
    # EMV Book 3 B1: 00 / FF between objects are padding.
    assert tlv.decode(bytes.fromhex("00 5A01 01 FF FF 8C00")) == [
        tlv.Tlv(0x5A, b"\x01"),
        tlv.Tlv(0x8C, b""),
    ]


def test_bad_tags_rejected() -> None:
    with pytest.raises(TlvError):
        tlv.tag_bytes(0x1F)  # announces more bytes
    with pytest.raises(TlvError):
        tlv.tag_bytes(0x5A24)  # two bytes without 1F
    with pytest.raises(TlvError):
        tlv.tag_bytes(0x9F0181)  # a middle byte without b8, or a last byte with it


def _tags() -> st.SearchStrategy[int]:
    one = st.integers(1, 0xFE).filter(lambda t: t & 0x1F != 0x1F)
    two = st.tuples(st.integers(0, 0xFF), st.integers(0, 0x7F)).map(
        lambda p: ((p[0] | 0x1F) << 8) | p[1]
    )
    three = st.tuples(st.integers(0, 0xFF), st.integers(0x80, 0xFF), st.integers(0, 0x7F)).map(
        lambda p: ((p[0] | 0x1F) << 16) | (p[1] << 8) | p[2]
    )
    return st.one_of(one, two, three)


@given(st.lists(st.tuples(_tags(), st.binary(max_size=300)), max_size=6))
def test_ber_tlv_roundtrip(items: list[tuple[int, bytes]]) -> None:
    encoded = b"".join(tlv.encode(t, v) for t, v in items)
    assert [(o.tag, o.value) for o in tlv.decode(encoded, skip_padding=False)] == items


@given(st.lists(st.tuples(st.integers(1, 0xFE), st.binary(max_size=400)), max_size=6))
def test_simple_tlv_roundtrip(items: list[tuple[int, bytes]]) -> None:
    encoded = b"".join(tlv.simple_encode(t, v) for t, v in items)
    assert tlv.simple_decode(encoded) == items


def test_simple_tlv_vectors_and_errors() -> None:
    # EF05 record 07: card number, SIMPLE-TLV with 1-byte tag and length.
    assert tlv.simple_encode(0x07, b"X00000019") == bytes.fromhex("0709") + b"X00000019"
    assert tlv.simple_encode(0x01, bytes(300))[:4] == bytes.fromhex("01FF012C")
    with pytest.raises(TlvError, match="invalid SIMPLE-TLV tag 00"):
        tlv.simple_decode(b"\x00\x01\x02")
    with pytest.raises(TlvError, match="runs past") as err:
        tlv.simple_decode(bytes.fromhex("0701AA0805AA"))
    assert err.value.offset == 3 and err.value.tag == 0x08


# --- APDUs ---------------------------------------------------------------------------------

APDU_VECTORS = [
    # (description, hex, case, extended) — encodings of ISO/IEC 7816-3 12.1.2
    ("case 1", "00A40000", 1, False),
    ("case 2S GET CHALLENGE (DOMAIN)", "0084000008", 2, False),
    ("case 2S Le=256", "00B2012C00", 2, False),
    ("case 3S SELECT by name", "00A4040C0F7378312E73682EC9E7BBE1B1A3D5CF", 3, False),
    ("case 4S INTERNAL AUTH", "0088000010" + "11" * 16 + "00", 4, False),
    ("case 2E", "00B00000000200", 2, True),
    ("case 3E", "00D60000000003AABBCC", 3, True),
    ("case 4E", "00D60000000003AABBCC0100", 4, True),
]


@pytest.mark.parametrize(("what", "raw", "case", "extended"), APDU_VECTORS)
def test_apdu_vectors(what: str, raw: str, case: int, extended: bool) -> None:
    cmd = CommandApdu.from_bytes(bytes.fromhex(raw))
    assert cmd.case == case, what
    assert cmd.is_extended == extended
    assert cmd.to_bytes().hex().upper() == raw.upper()


@pytest.mark.parametrize("raw", ["00A400", "00A4040C05AABB", "00A4040C0001", "00D6000000000301"])
def test_malformed_apdus(raw: str) -> None:
    with pytest.raises(ApduError):
        CommandApdu.from_bytes(bytes.fromhex(raw))


@given(
    st.integers(0, 0xFE),
    st.integers(0, 0xFF),
    st.integers(0, 0xFF),
    st.integers(0, 0xFF),
    st.binary(max_size=600),
    st.one_of(st.none(), st.integers(1, 65536)),
    st.booleans(),
)
def test_command_apdu_roundtrip(
    cla: int, ins: int, p1: int, p2: int, data: bytes, le: int | None, ext: bool
) -> None:
    cmd = CommandApdu(cla, ins, p1, p2, data, le, extended=ext)
    parsed = CommandApdu.from_bytes(cmd.to_bytes())
    assert (parsed.cla, parsed.ins, parsed.p1, parsed.p2) == (cla, ins, p1, p2)
    assert parsed.data == data and parsed.le == le
    if cmd.case != 1:  # case 1 has no length field: short and extended are the same bytes
        assert parsed.is_extended == cmd.is_extended


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_response_roundtrip(data: bytes, status: int) -> None:
    resp = ResponseApdu(data, status)
    assert ResponseApdu.from_bytes(resp.to_bytes()) == resp


def test_chaining() -> None:
    cmd = CommandApdu(0x00, 0xDA, 0x01, 0x02, bytes(600), le=16)
    parts = apdu.chain(cmd)
    assert [len(p.data) for p in parts] == [255, 255, 90]
    assert [p.cla for p in parts] == [0x10, 0x10, 0x00]
    assert [p.le for p in parts] == [None, None, 16]
    assert parts[0].chained and not parts[-1].chained
    assert b"".join(p.data for p in parts) == cmd.data


class _T0Card:
    """A card answering with 61xx / 6Cxx like a T=0 card, to exercise the terminal side."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.pending = bytes(i % 256 for i in range(300))

    def __call__(self, raw: bytes) -> bytes:
        self.seen.append(raw.hex().upper())
        cmd = CommandApdu.from_bytes(raw)
        if cmd.ins == 0xB2 and cmd.le != 0x20:
            return b"\x6c\x20"
        if cmd.ins == 0xB2:
            return bytes(0x20) + b"\x90\x00"
        if cmd.ins == 0xCA:
            return b"\x61\x00"
        if cmd.ins == 0xC0:
            chunk, self.pending = self.pending[: cmd.le], self.pending[cmd.le or 256 :]
            tail = b"\x61" + bytes([min(len(self.pending), 255)]) if self.pending else b"\x90\x00"
            return chunk + tail
        return b"\x6d\x00"


def test_exchange_handles_6c_and_61() -> None:
    card = _T0Card()
    resp = apdu.exchange(card, CommandApdu(0x00, 0xB2, 1, 0x0C, le=256))
    assert resp.ok and len(resp.data) == 0x20
    assert card.seen == ["00B2010C00", "00B2010C20"]
    card = _T0Card()
    resp = apdu.exchange(card, CommandApdu(0x00, 0xCA, 0x9F, 0x7F, le=256))
    assert resp.ok and resp.data == bytes(i % 256 for i in range(300))
    assert card.seen[1:] == ["00C0000000", "00C000002C"]


def test_status_words() -> None:
    assert sw.SW.FILE_NOT_FOUND == 0x6A82
    assert sw.SW.SECURITY_STATUS_NOT_SATISFIED.phrase == "Security status not satisfied."
    assert sw.describe(0x63C2) == "verification failed, 2 tries left"
    assert sw.describe(0x6110) == "16 response bytes still available (GET RESPONSE)"
    assert sw.tries_left(0x63C1) == 1 and sw.tries_left(0x6983) == 0
    assert sw.tries_left(0x9000) is None
    sw.raise_for_sw(0x9000)
    cases: list[tuple[int, type[CardError], bool]] = [
        (0x63C1, PinError, True),
        (0x6983, PinError, True),
        (0x6982, SecurityError, False),
        (0x6A82, CardNotFoundError, False),
        (0x6A83, CardNotFoundError, False),
        (0x6985, CardStateError, False),
        (0x6D00, CardError, False),
    ]
    for status, cls, pin in cases:
        with pytest.raises(cls) as err:
            sw.raise_for_sw(status, "TEST", pin=pin)
        assert err.value.sw == status
        assert err.value.sw1 == status >> 8
    with pytest.raises(PinError) as perr:
        sw.raise_for_sw(0x63C2, pin=True)
    assert perr.value.tries_left == 2
