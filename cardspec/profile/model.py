"""The profile model: element formats, files, access rules, keys, PINs and the profile itself,
with the codecs from domain values to file contents. Pure data and pure functions."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date
from enum import StrEnum
from typing import Any

from cardspec import tlv
from cardspec.errors import EncodingError, ProfileError, TlvError
from cardspec.keyscheme import Algorithm, KeySlot

SOCIAL_SECURITY_DF_NAME = "sx1.sh.社会保障".encode("gbk")
"""DF name of the social security application (GBK, 15 bytes)."""
AID_PUBLIC = bytes.fromhex("D15600000500")
AID_EMPLOYMENT = bytes.fromhex("D15600000501")
AID_PENSION = bytes.fromhex("D15600000502")
"""Social insurance 1: pension, unemployment, work injury ..."""
AID_MEDICAL = bytes.fromhex("D15600000503")
"""Social insurance 2: medical insurance."""
AID_PERSONNEL = bytes.fromhex("D15600000504")
"""Personnel (DOMAIN.md "Applications under the social security DF")."""
AID_PBOC_DEBIT = bytes.fromhex("A000000333010101")
"""UnionPay / PBOC debit application."""

ALGORITHM_CODES: dict[Algorithm, int] = {
    Algorithm.DES3: 0x01,
    Algorithm.AES: 0x02,  # CHOICE: 02 is not a public value; AES stands in for SM4 (keyscheme).
    Algorithm.SM4: 0x03,
}
"""Value of ``86 01 xx`` in the FCI tag 9F0C."""


class Fmt(StrEnum):
    """Element formats (see module docstring)."""

    AN = "an"
    CN = "cn"
    N = "n"
    B = "b"
    GBK = "gbk"
    DATE = "date"
    DATE6 = "date6"
    HEX = "hex"


class FileStructure(StrEnum):
    """EF structures of ISO/IEC 7816-4 7.3 (file descriptor byte)."""

    TRANSPARENT = "transparent"
    LINEAR_FIXED = "linear_fixed"
    LINEAR_VARIABLE = "linear_variable"
    CYCLIC = "cyclic"

    @property
    def descriptor(self) -> int:
        return {"transparent": 0x01, "linear_fixed": 0x02, "linear_variable": 0x04,
                "cyclic": 0x06}[self.value]  # fmt: skip


class RecordLayout(StrEnum):
    """How an EF's elements are laid out in its records."""

    SIMPLE_TLV = "simple_tlv"
    """Record *i* is one SIMPLE-TLV object holding element *i* (EF05/EF06 style)."""
    EMV_TEMPLATE = "emv_template"
    """Record 1 is template ``70`` holding every element as BER-TLV (EMV Book 3 10.2)."""
    FIXED = "fixed"
    """Each record concatenates the fixed-length element values (transaction logs)."""


class Access(StrEnum):
    """Access condition kinds (DOMAIN: free, PIN, key, PIN or key, PIN and key, never)."""

    FREE = "free"
    PIN = "pin"
    KEY = "key"
    PIN_OR_KEY = "pin_or_key"
    PIN_AND_KEY = "pin_and_key"
    NEVER = "never"


@dataclass(frozen=True)
class AccessRule:
    """One access condition. For *writes*, ``KEY`` means: EXTERNAL AUTHENTICATE with ``key``
    in this session and the command MAC'd under the same key (secure messaging)."""

    kind: Access
    key: KeySlot | None = None
    pin: str | None = None

    def __post_init__(self) -> None:
        needs_key = self.kind in (Access.KEY, Access.PIN_OR_KEY, Access.PIN_AND_KEY)
        needs_pin = self.kind in (Access.PIN, Access.PIN_OR_KEY, Access.PIN_AND_KEY)
        if needs_key != (self.key is not None) or needs_pin != (self.pin is not None):
            raise ProfileError(f"access rule {self.kind.value} with key={self.key} pin={self.pin}")

    def __str__(self) -> str:
        pin, key = f"PIN {self.pin}", f"key {self.key.value if self.key else ''}"
        return {
            Access.FREE: "free",
            Access.NEVER: "never",
            Access.PIN: pin,
            Access.KEY: key,
            Access.PIN_OR_KEY: f"{pin} or {key}",
            Access.PIN_AND_KEY: f"{pin} and {key}",
        }[self.kind]


FREE = AccessRule(Access.FREE)
NEVER = AccessRule(Access.NEVER)


def by_pin(pin: str) -> AccessRule:
    return AccessRule(Access.PIN, pin=pin)


def by_key(key: KeySlot) -> AccessRule:
    return AccessRule(Access.KEY, key=key)


@dataclass(frozen=True)
class Element:
    """A data element: its tag, length in bytes (maximum when ``variable``) and format."""

    tag: int
    name: str
    length: int
    fmt: Fmt
    description: str = ""
    variable: bool = False
    """Variable length (BER-TLV records only): encode just the bytes needed."""
    optional: bool = False
    """May be absent / empty (encoded as the format's padding)."""

    def encode(self, value: Any) -> bytes:
        """Domain value -> element bytes (see module docstring for formats)."""
        return encode_value(self, value)

    def decode(self, raw: bytes) -> Any:
        return decode_value(self, raw)


@dataclass(frozen=True)
class ElementaryFile:
    name: str
    fid: int
    sfi: int | None
    structure: FileStructure
    layout: RecordLayout
    elements: tuple[Element, ...]
    read: AccessRule
    write: AccessRule
    record_count: int = 0
    """Number of records (SIMPLE_TLV: one per element; CYCLIC: ring size)."""
    record_size: int = 0
    """Maximum record length in bytes (exact for LINEAR_FIXED / CYCLIC)."""
    label: str = ""
    content: tuple[bytes, ...] = ()
    """Records the card holds from its creation, fixed by the profile (e.g. the payment
    system directory): not personalised per card."""

    def __post_init__(self) -> None:
        if self.sfi is not None and not 1 <= self.sfi <= 30:
            raise ProfileError(f"{self.name}: SFI must be 1..30")
        if self.structure is FileStructure.TRANSPARENT:
            return
        if self.record_count <= 0 or self.record_size <= 0:
            raise ProfileError(f"{self.name}: record file needs record_count and record_size")

    def element(self, name: str) -> Element:
        for el in self.elements:
            if el.name == name:
                return el
        raise ProfileError(f"{self.name} has no element {name!r}")


def simple_tlv_file(
    name: str, fid: int, sfi: int, elements: tuple[Element, ...], read: AccessRule,
    write: AccessRule, label: str = "",
) -> ElementaryFile:  # fmt: skip
    """A linear variable EF with one SIMPLE-TLV element per record (EF05/EF06 style)."""
    return ElementaryFile(
        name=name, fid=fid, sfi=sfi, structure=FileStructure.LINEAR_VARIABLE,
        layout=RecordLayout.SIMPLE_TLV, elements=elements, read=read, write=write,
        record_count=len(elements), record_size=max(e.length for e in elements) + 2, label=label,
    )  # fmt: skip


class PinFormat(StrEnum):
    CN = "cn"
    """PIN digits BCD, padded with F to whole bytes (PBOC VERIFY ``00 20 00 00``)."""
    ISO9564_2 = "iso9564_2"
    """ISO 9564 format 2 block: ``2L PPPP..FF`` 8 bytes (EMV plaintext offline PIN, P2=80)."""


@dataclass(frozen=True)
class PinSpec:
    name: str
    ref: int
    """Reference in P2 of VERIFY / CHANGE REFERENCE DATA / RESET RETRY COUNTER."""
    tries: int
    fmt: PinFormat
    min_digits: int = 4
    max_digits: int = 12
    initial_must_change: bool = False
    """The personalised PIN is an initial PIN: it may not be set again by a change."""
    unblock_key: KeySlot | None = None
    """MAC key of PIN unblock / reload (``84 24``); also encrypts the reloaded PIN."""
    label: str = ""

    def encode(self, pin: str) -> bytes:
        return encode_pin(self, pin)


@dataclass(frozen=True)
class KeySpec:
    slot: KeySlot
    key_id: int
    """Key reference: P2 of EXTERNAL AUTHENTICATE and of WRITE KEY."""
    usage: str
    version: int = 1
    tries: int = 5
    """Error counter of the key (ISO/IEC 7816-4 ``63Cx``): each failed EXTERNAL AUTHENTICATE
    or wrong MAC under the key counts one; at 0 the key is blocked (``6983``) until the issuer
    resets the counter. CHOICE: 5 (LD/T 32 is not public; PBOC cards commonly set 3 to 15)."""


@dataclass(frozen=True)
class EmvApplication:
    """What makes a DF an EMV / PBOC debit application (EMV 4.3 Book 3): the card answers
    GET PROCESSING OPTIONS, GENERATE AC and issuer scripts while it is selected."""

    aip: bytes
    """Application interchange profile (82), 2 bytes."""
    afl: bytes
    """Application file locator (94): 4 bytes per SFI range."""
    pdol: bytes
    """Processing options data object list (9F38), also in the FCI."""
    cdol1: bytes
    """Card risk management DOL 1 (8C): the data of the first GENERATE AC."""
    cdol2: bytes
    """Card risk management DOL 2 (8D): the data of the second GENERATE AC."""
    cvn: int = 0x01
    """Cryptogram version number in the issuer application data (9F10)."""
    dki: int = 0x01
    """Derivation key index in the issuer application data (9F10)."""


@dataclass(frozen=True)
class DedicatedFile:
    name: str
    fid: int
    df_name: bytes = b""
    """DF name / AID, selectable with SELECT P1=04."""
    label: str = ""
    files: tuple[ElementaryFile, ...] = ()
    children: tuple[DedicatedFile, ...] = ()
    keys: tuple[KeySpec, ...] = ()
    pins: tuple[PinSpec, ...] = ()
    fci_proprietary: bytes = b""
    """Content of the FCI proprietary template ``A5``."""
    emv: EmvApplication | None = None
    """Set for an EMV / PBOC payment application."""


@dataclass(frozen=True)
class CardProfile:
    name: str
    description: str
    algorithm: Algorithm
    spec_version: str
    mf: DedicatedFile
    historical_bytes: bytes
    key_loading: str = "aes-kwp-klk"
    """How WRITE KEY carries a card key (see ``cardspec.keyscheme`` "Key loading"):
    ``aes-kwp-klk`` = RFC 5649 AES key wrap under the card's AES-128 key-loading key KLK."""

    # --- lookups (all pure) -----------------------------------------------------------------

    def walk(self) -> Iterator[tuple[str, DedicatedFile]]:
        """Every DF with its path (``MF``, ``MF/SSSE``, ``MF/SSSE/MED`` ...)."""

        def rec(path: str, df: DedicatedFile) -> Iterator[tuple[str, DedicatedFile]]:
            yield path, df
            for child in df.children:
                yield from rec(f"{path}/{child.name}", child)

        yield from rec(self.mf.name, self.mf)

    def df(self, path: str) -> DedicatedFile:
        for p, d in self.walk():
            if p == path or d.name == path:
                return d
        raise ProfileError(f"no DF {path!r} in profile {self.name}")

    def df_path(self, name: str) -> str:
        for p, d in self.walk():
            if d.name == name or p == name:
                return p
        raise ProfileError(f"no DF {name!r} in profile {self.name}")

    def files(self) -> Iterator[tuple[str, ElementaryFile]]:
        """Every EF with its DF path."""
        for p, d in self.walk():
            for ef in d.files:
                yield p, ef

    def ef(self, name: str) -> tuple[str, ElementaryFile]:
        """An EF by ``name`` (unique) or ``DFPATH/name``; returns (DF path, EF)."""
        for p, ef in self.files():
            if ef.name == name or f"{p}/{ef.name}" == name:
                return p, ef
        raise ProfileError(f"no EF {name!r} in profile {self.name}")

    def key_specs(self) -> Iterator[tuple[str, KeySpec]]:
        for p, d in self.walk():
            for k in d.keys:
                yield p, k

    def key(self, slot: KeySlot) -> tuple[str, KeySpec]:
        for p, k in self.key_specs():
            if k.slot is slot:
                return p, k
        raise ProfileError(f"profile {self.name} declares no key {slot.value}")

    def pin_specs(self) -> Iterator[tuple[str, PinSpec]]:
        for p, d in self.walk():
            for pin in d.pins:
                yield p, pin

    def pin(self, name: str) -> tuple[str, PinSpec]:
        for p, spec in self.pin_specs():
            if spec.name == name:
                return p, spec
        raise ProfileError(f"profile {self.name} declares no PIN {name!r}")

    def with_application(self, df: DedicatedFile, parent: str = "MF") -> CardProfile:
        """A new profile with ``df`` added under the DF ``parent`` (data only). A DF of the
        same name already there (e.g. the empty public data DF ``PUB``) is replaced by ``df``,
        in place."""
        target = self.df_path(parent)

        def rec(path: str, node: DedicatedFile) -> DedicatedFile:
            kids = tuple(rec(f"{path}/{c.name}", c) for c in node.children)
            if path == target:
                names = [c.name for c in kids]
                if df.name in names:
                    at = names.index(df.name)
                    kids = (*kids[:at], df, *kids[at + 1 :])
                else:
                    kids = (*kids, df)
            return replace(node, children=kids)

        new = replace(self, mf=rec(self.mf.name, self.mf), name=f"{self.name}+{df.name}")
        new.validate()
        return new

    def validate(self) -> None:
        """Key ids, PIN refs, DF names, FIDs and SFIs must be unique where the card needs it."""
        key_ids: dict[int, KeySlot] = {}
        for _, k in self.key_specs():
            if k.key_id in key_ids:
                raise ProfileError(f"key id {k.key_id:02X} used twice")
            key_ids[k.key_id] = k.slot
        slots = [k.slot for _, k in self.key_specs()]
        if len(set(slots)) != len(slots):
            raise ProfileError("a key slot is declared twice")
        pins = [p.name for _, p in self.pin_specs()]
        if len(set(pins)) != len(pins):
            raise ProfileError("a PIN name is declared twice")
        names = [d.df_name for _, d in self.walk() if d.df_name]
        if len(set(names)) != len(names):
            raise ProfileError("a DF name / AID is declared twice")
        for path, d in self.walk():
            sfis = [f.sfi for f in d.files if f.sfi is not None]
            fids = [f.fid for f in d.files] + [c.fid for c in d.children]
            if len(set(sfis)) != len(sfis) or len(set(fids)) != len(fids):
                raise ProfileError(f"{path}: duplicate SFI or FID")
        for _, ef in self.files():
            for rule in (ef.read, ef.write):
                if rule.pin:
                    self.pin(rule.pin)
                if rule.key:
                    self.key(rule.key)


# --- element encoding --------------------------------------------------------------------------


#: 0..99 as one BCD byte
_BCD = tuple(int(f"{i:02d}", 16) for i in range(100))


def _digits(el: Element, value: Any) -> str:
    text = str(value)
    if not text.isascii() or not text.isdigit():
        raise EncodingError(el.name, "must be digits")
    return text


def encode_value(el: Element, value: Any) -> bytes:
    """Encode ``value`` for element ``el`` (fixed length unless ``el.variable``)."""
    fmt = el.fmt
    if value is None or value == "":
        if not el.optional:
            raise EncodingError(el.name, "is required")
        return b"" if el.variable else bytes([0xFF if fmt is Fmt.CN else 0x00]) * el.length
    if fmt in (Fmt.AN, Fmt.GBK):
        try:
            raw = str(value).encode("ascii" if fmt is Fmt.AN else "gbk")
        except UnicodeEncodeError:
            raise EncodingError(el.name, f"not encodable as {fmt.value}") from None
        if len(raw) > el.length:
            raise EncodingError(el.name, f"{len(raw)} bytes exceed {el.length}")
        return raw if el.variable else raw.ljust(el.length, b"\x00")
    if fmt is Fmt.CN:
        digits = _digits(el, value)
        if len(digits) > 2 * el.length:
            raise EncodingError(el.name, f"{len(digits)} digits exceed {2 * el.length}")
        if el.variable:
            return bytes.fromhex(digits + "F" * (len(digits) % 2))
        return bytes.fromhex(digits.ljust(2 * el.length, "F"))
    if fmt is Fmt.N:
        digits = _digits(el, value)
        if len(digits) > 2 * el.length:
            raise EncodingError(el.name, f"{len(digits)} digits exceed {2 * el.length}")
        return bytes.fromhex(digits.rjust(2 * el.length, "0"))
    if fmt is Fmt.DATE or fmt is Fmt.DATE6:
        if not isinstance(value, date):
            raise EncodingError(el.name, "must be a date")
        year = value.year
        if year < 1000:  # strftime's own (unpadded) year, as ever
            return bytes.fromhex(value.strftime("%Y%m%d" if fmt is Fmt.DATE else "%y%m%d"))
        # BCD of YYYYMMDD / YYMMDD (strftime's digits, without its formatting cost)
        if fmt is Fmt.DATE:
            return bytes((_BCD[year // 100], _BCD[year % 100], _BCD[value.month], _BCD[value.day]))
        return bytes((_BCD[year % 100], _BCD[value.month], _BCD[value.day]))
    if fmt is Fmt.HEX:
        try:
            raw = bytes.fromhex(str(value))
        except ValueError:
            raise EncodingError(el.name, "must be hexadecimal") from None
    else:  # Fmt.B
        if not isinstance(value, bytes | bytearray):
            raise EncodingError(el.name, "must be bytes")
        raw = bytes(value)
    if len(raw) != el.length and not (el.variable and len(raw) <= el.length):
        raise EncodingError(el.name, f"must be {el.length} bytes, got {len(raw)}")
    return raw


def decode_value(el: Element, raw: bytes) -> Any:
    """Element bytes -> domain value (``""`` / None for an empty optional element)."""
    fmt = el.fmt
    if len(raw) > el.length or (not el.variable and len(raw) != el.length):
        raise EncodingError(el.name, f"stored as {len(raw)} bytes, expected {el.length}")
    if fmt in (Fmt.AN, Fmt.GBK):
        try:
            return raw.rstrip(b"\x00").decode("ascii" if fmt is Fmt.AN else "gbk")
        except UnicodeDecodeError:
            raise EncodingError(el.name, f"stored bytes are not {fmt.value}") from None
    if fmt is Fmt.CN:
        return raw.hex().upper().rstrip("F")
    if fmt is Fmt.N:
        return raw.hex()
    if fmt is Fmt.DATE or fmt is Fmt.DATE6:
        if el.optional and not raw.strip(b"\x00"):
            return None
        text = raw.hex()
        try:
            if fmt is Fmt.DATE:
                return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
            return date(2000 + int(text[:2]), int(text[2:4]), int(text[4:6]))
        except ValueError:
            raise EncodingError(el.name, "stored bytes are not a BCD date") from None
    if fmt is Fmt.HEX:
        return raw.hex().upper()
    return raw


# --- records of a file -------------------------------------------------------------------------


def encode_records(ef: ElementaryFile, values: Mapping[str, Any]) -> list[bytes]:
    """Domain values (element name -> value) -> the file's records, record 1 first."""
    unknown = set(values) - {e.name for e in ef.elements}
    if unknown:
        raise EncodingError(ef.name, f"unknown elements {sorted(unknown)}")
    if ef.layout is RecordLayout.SIMPLE_TLV:
        return [tlv.simple_encode(el.tag, el.encode(values.get(el.name))) for el in ef.elements]
    if ef.layout is RecordLayout.EMV_TEMPLATE:
        body = b"".join(
            tlv.encode(el.tag, el.encode(values[el.name]))
            for el in ef.elements
            if not (el.optional and values.get(el.name) in (None, ""))
        )
        record = tlv.encode(0x70, body)
        if len(record) > ef.record_size:
            raise EncodingError(ef.name, f"record of {len(record)} bytes exceeds {ef.record_size}")
        return [record]
    return [b"".join(el.encode(values.get(el.name)) for el in ef.elements)]


def decode_records(ef: ElementaryFile, records: list[bytes]) -> dict[str, Any]:
    """The file's records (record 1 first) -> element name -> value.

    Raises :class:`TlvError` for malformed TLV and :class:`EncodingError` when a record holds
    the wrong tag or a value of the wrong size.
    """
    out: dict[str, Any] = {}
    if ef.layout is RecordLayout.SIMPLE_TLV:
        for el, record in zip(ef.elements, records, strict=False):
            tag, value = tlv.simple_decode_one(record)
            if tag != el.tag:
                raise EncodingError(el.name, f"record holds tag {tag:02X}, expected {el.tag:02X}")
            out[el.name] = el.decode(value)
        return out
    if ef.layout is RecordLayout.EMV_TEMPLATE:
        if not records:
            raise TlvError("no record", offset=0)
        template = tlv.decode_one(records[0])
        if template.tag != 0x70:
            raise TlvError("record is not an EMV template 70", offset=0, tag=template.tag)
        found = {t.tag: t.value for t in template.children()}
        for el in ef.elements:
            if el.tag in found:
                out[el.name] = el.decode(found[el.tag])
            elif not el.optional:
                raise TlvError("mandatory element missing", offset=0, tag=el.tag)
        return out
    return decode_fixed_record(ef, records[0])


def decode_fixed_record(ef: ElementaryFile, record: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pos = 0
    for el in ef.elements:
        out[el.name] = el.decode(record[pos : pos + el.length])
        pos += el.length
    return out


def encode_pin(spec: PinSpec, pin: str) -> bytes:
    """PIN digits -> the reference data block of ``spec.fmt``."""
    if not pin.isascii() or not pin.isdigit():
        raise EncodingError(f"pin {spec.name}", "must be digits")
    if not spec.min_digits <= len(pin) <= spec.max_digits:
        raise EncodingError(
            f"pin {spec.name}", f"must be {spec.min_digits}..{spec.max_digits} digits"
        )
    if spec.fmt is PinFormat.CN:
        return bytes.fromhex(pin + "F" * (len(pin) % 2))
    return bytes.fromhex(f"2{len(pin):X}{pin}".ljust(16, "F"))
