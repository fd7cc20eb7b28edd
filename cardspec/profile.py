"""The card profile: a declarative description of the card's file system, keys and PINs.

Everything here is *data* (frozen dataclasses): the emulator (:mod:`cardspec.emulator`)
interprets a :class:`CardProfile` the way a chip's OS interprets its file-system image, and the
issuer side (:mod:`cardspec.perso`, :mod:`cardspec.cardops`) walks the same profile to know what
to write and read. An extra application (e.g. a housing-fund DF) is added with
:meth:`CardProfile.with_application` without touching the emulator.

Public facts come from DOMAIN.md ("The national card, as far as public sources show"): the DF
name ``sx1.sh.社会保障``, the FCI algorithm marker ``9F0C { 86 01 xx }``, EF05/EF06 tags and
lengths, the application AIDs ``D156000005 0x``, the access conditions of holder and medical
files, the PBOC financial AID and tags (EMV 4.3 Book 3 Annex A). Where the facts run out the
profile makes a choice, marked ``# CHOICE:`` with the reason; the official texts are LD/T
32.3/32.4/32.6-2015.

Formats (LD/T 32 and EMV conventions): ``an`` ASCII left-aligned padded with 00; ``cn`` digits
BCD left-aligned padded with F; ``n`` digits BCD right-aligned padded with 0; ``b`` binary;
``gbk`` GBK text left-aligned padded with 00; ``date`` n8 YYYYMMDD (4 bytes BCD);
``date6`` n6 YYMMDD (3 bytes, EMV 5F24); ``hex`` a hexadecimal string stored as bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
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
        parts = [self.kind.value]
        if self.pin:
            parts.append(f"PIN {self.pin}")
        if self.key:
            parts.append(f"key {self.key.value}")
        return " ".join(parts)


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


@dataclass(frozen=True)
class CardProfile:
    name: str
    description: str
    algorithm: Algorithm
    spec_version: str
    mf: DedicatedFile
    historical_bytes: bytes

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

    def keys(self) -> Iterator[tuple[str, KeySpec]]:
        for p, d in self.walk():
            for k in d.keys:
                yield p, k

    def key(self, slot: KeySlot) -> tuple[str, KeySpec]:
        for p, k in self.keys():
            if k.slot is slot:
                return p, k
        raise ProfileError(f"profile {self.name} declares no key {slot.value}")

    def pins(self) -> Iterator[tuple[str, PinSpec]]:
        for p, d in self.walk():
            for pin in d.pins:
                yield p, pin

    def pin(self, name: str) -> tuple[str, PinSpec]:
        for p, spec in self.pins():
            if spec.name == name:
                return p, spec
        raise ProfileError(f"profile {self.name} declares no PIN {name!r}")

    def with_application(self, df: DedicatedFile, parent: str = "MF") -> CardProfile:
        """A new profile with ``df`` added under the DF ``parent`` (data only)."""
        target = self.df_path(parent)

        def rec(path: str, node: DedicatedFile) -> DedicatedFile:
            kids = tuple(rec(f"{path}/{c.name}", c) for c in node.children)
            if path == target:
                kids = (*kids, df)
            return replace(node, children=kids)

        new = replace(self, mf=rec(self.mf.name, self.mf), name=f"{self.name}+{df.name}")
        new.validate()
        return new

    def validate(self) -> None:
        """Key ids, PIN refs, DF names, FIDs and SFIs must be unique where the card needs it."""
        key_ids: dict[int, KeySlot] = {}
        for _, k in self.keys():
            if k.key_id in key_ids:
                raise ProfileError(f"key id {k.key_id:02X} used twice")
            key_ids[k.key_id] = k.slot
        slots = [k.slot for _, k in self.keys()]
        if len(set(slots)) != len(slots):
            raise ProfileError("a key slot is declared twice")
        pins = [p.name for _, p in self.pins()]
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
        return bytes.fromhex(value.strftime("%Y%m%d" if fmt is Fmt.DATE else "%y%m%d"))
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


# --- the social security card profile -----------------------------------------------------------

EF05_ELEMENTS = (
    Element(0x01, "card_identification_code", 16, Fmt.HEX, "region + D156000005 + chip serial"),
    # CHOICE: card category as one 'an' character ("1" social security card, "2" temporary
    # card); the public sources name the element but not its length or code list.
    Element(0x02, "card_category", 1, Fmt.AN, "card category"),
    Element(0x03, "spec_version", 4, Fmt.AN, 'specification version, e.g. "2.00", "3.00"'),
    Element(0x04, "init_org_code", 12, Fmt.AN, "initialising organisation code"),
    Element(0x05, "issue_date", 4, Fmt.DATE, "issue date YYYYMMDD"),
    Element(0x06, "expiry_date", 4, Fmt.DATE, "expiry date YYYYMMDD"),
    Element(0x07, "card_number", 9, Fmt.AN, "card number (8 + check character)"),
)
EF06_ELEMENTS = (
    Element(0x08, "ssn", 18, Fmt.AN, "social security number = citizen ID number"),
    Element(0x09, "name", 30, Fmt.GBK, "name (GBK, padded with 00)"),
    Element(0x0A, "sex", 1, Fmt.AN, '"1" male, "2" female, "9" unstated (GB/T 2261.1)'),
    # CHOICE: the GB 3304 ethnicity code (2 digits) stored as one BCD byte.
    Element(0x0B, "ethnicity", 1, Fmt.N, "ethnicity, GB 3304 code"),
    Element(0x0C, "birthplace", 3, Fmt.N, "birthplace region code (BCD)"),
    Element(0x0D, "birth_date", 4, Fmt.DATE, "birth date YYYYMMDD"),
    Element(0x4E, "name_extension", 20, Fmt.GBK, "name extension for long names", optional=True),
)
# CHOICE: medical / pension records. Provincial variants differ and LD/T 32.6 is not public; the
# profile keeps a small, typical set as SIMPLE-TLV records with tags in a private range.
MEDICAL_ELEMENTS = (
    Element(0x20, "insurance_type", 3, Fmt.AN, 'insurance type ("310" employees, "390" residents)'),
    Element(0x21, "insured_region", 3, Fmt.N, "region code where the holder is insured"),
    Element(0x22, "status", 1, Fmt.AN, 'medical insurance status ("1" normal, "2" suspended)'),
    Element(0x23, "personnel_category", 2, Fmt.AN, 'category ("11" working, "21" retired)'),
    Element(0x24, "start_date", 4, Fmt.DATE, "insured since"),
)
MEDICAL_LOG_ELEMENTS = (
    Element(0x01, "time", 7, Fmt.N, "YYYYMMDDhhmmss"),
    Element(0x02, "amount", 4, Fmt.N, "amount in fen"),
    Element(0x03, "institution", 12, Fmt.AN, "medical institution code"),
    Element(0x04, "kind", 2, Fmt.AN, 'kind ("11" outpatient, "21" inpatient, "41" pharmacy)'),
)
PENSION_ELEMENTS = (
    Element(0x30, "status", 1, Fmt.AN, 'pension insurance status ("1" contributing ...)'),
    Element(0x31, "insured_region", 3, Fmt.N, "region code of the insurance relation"),
    Element(0x32, "start_date", 4, Fmt.DATE, "insured since"),
    Element(0x33, "insurance_types", 5, Fmt.AN, "flags: pension unemployment injury maternity -"),
)
FINANCIAL_ELEMENTS = (
    Element(0x5A, "pan", 10, Fmt.CN, "application PAN", variable=True),
    Element(0x5F24, "expiry", 3, Fmt.DATE6, "application expiration date YYMMDD"),
    Element(0x5F20, "cardholder_name", 26, Fmt.AN, "cardholder name", variable=True,
            optional=True),
    Element(0x5F34, "psn", 1, Fmt.N, "PAN sequence number"),
)


def _fci_algorithm(alg: Algorithm) -> bytes:
    return tlv.encode(0x9F0C, tlv.encode(0x86, bytes([ALGORITHM_CODES[alg]])))


def social_security_profile(
    *, generation: int = 2, algorithm: Algorithm | None = None, pin_tries: int = 3,
    financial: bool = True,
) -> CardProfile:  # fmt: skip
    """The profile of a second- (default) or third-generation card.

    ``pin_tries`` comes from ``Settings.lifecycle.pin_tries`` (default 3). Third generation:
    spec version "3.00", EF06 read needs EXTERNAL AUTHENTICATE with the read key (EAK), SM4
    announced (AES in software, see keyscheme).
    """
    if generation not in (2, 3):
        raise ProfileError("generation must be 2 or 3")
    alg = algorithm or (Algorithm.DES3 if generation == 2 else Algorithm.AES)
    holder_read = FREE if generation == 2 else by_key(KeySlot.EAK)
    ss_pin = PinSpec(
        "ss", 0x00, pin_tries, PinFormat.CN, min_digits=6, max_digits=6,
        initial_must_change=True, unblock_key=KeySlot.PUK, label="social security PIN",
    )  # fmt: skip
    # CHOICE: FIDs of DFs and EFs (EF05 -> EF05 ...), SFIs 15/16/18 of the insurance files and
    # the key ids below: not public; chosen to be unique card-wide so one id names one key.
    medical = DedicatedFile(
        name="MED", fid=0xDF03, df_name=AID_MEDICAL, label="medical insurance (social insurance 2)",
        files=(
            simple_tlv_file("EF15", 0xEF15, 0x15, MEDICAL_ELEMENTS, by_pin("ss"),
                            by_key(KeySlot.UK_MEDICAL), "basic medical data"),
            ElementaryFile(
                "EF18", 0xEF18, 0x18, FileStructure.CYCLIC, RecordLayout.FIXED,
                MEDICAL_LOG_ELEMENTS, by_pin("ss"), by_key(KeySlot.UK_MEDICAL),
                record_count=10, record_size=sum(e.length for e in MEDICAL_LOG_ELEMENTS),
                label="card-kept transaction log (cyclic, newest = record 1)",
            ),
        ),
        keys=(KeySpec(KeySlot.UK_MEDICAL, 0x05, "update medical files"),),
        fci_proprietary=_fci_algorithm(alg),
    )  # fmt: skip
    pension = DedicatedFile(
        name="PEN", fid=0xDF02, df_name=AID_PENSION, label="pension / social insurance 1",
        files=(simple_tlv_file("EF16", 0xEF16, 0x16, PENSION_ELEMENTS, by_pin("ss"),
                               by_key(KeySlot.UK_PENSION), "pension insurance data"),),
        keys=(KeySpec(KeySlot.UK_PENSION, 0x06, "update pension files"),),
        fci_proprietary=_fci_algorithm(alg),
    )  # fmt: skip
    ssse = DedicatedFile(
        name="SSSE", fid=0xDDF1, df_name=SOCIAL_SECURITY_DF_NAME,
        label="social security application",
        files=(
            simple_tlv_file("EF05", 0xEF05, 0x05, EF05_ELEMENTS, FREE, by_key(KeySlot.UK_IDENT),
                            "card identification"),
            simple_tlv_file("EF06", 0xEF06, 0x06, EF06_ELEMENTS, holder_read,
                            by_key(KeySlot.UK_IDENT), "holder"),
        ),
        children=(pension, medical),
        keys=(
            KeySpec(KeySlot.DMK, 0x01, "application master / maintenance key"),
            KeySpec(KeySlot.EAK, 0x02, "external authentication / read key"),
            KeySpec(KeySlot.IRK, 0x03, "internal authentication"),
            KeySpec(KeySlot.UK_IDENT, 0x04, "update card identification and holder files"),
            KeySpec(KeySlot.PUK, 0x07, "PIN unblock / reload"),
        ),
        pins=(ss_pin,),
        fci_proprietary=_fci_algorithm(alg),
    )  # fmt: skip
    children: tuple[DedicatedFile, ...] = (ssse,)
    if financial:
        fin = DedicatedFile(
            name="FIN", fid=0xADF1, df_name=AID_PBOC_DEBIT, label="PBOC debit application",
            files=(
                # CHOICE: PAN data in SFI 1 record 1, read free (EMV READ RECORD); written only
                # during personalisation (the bank's own update scripts are out of scope).
                ElementaryFile("SFI01", 0xEF01, 0x01, FileStructure.LINEAR_VARIABLE,
                               RecordLayout.EMV_TEMPLATE, FINANCIAL_ELEMENTS, FREE, NEVER,
                               record_count=1, record_size=64, label="application data"),
            ),
            keys=(
                KeySpec(KeySlot.FIN_AC, 0x11, "EMV MK-AC"),
                KeySpec(KeySlot.FIN_SMI, 0x12, "EMV MK-SMI (issuer script integrity)"),
                KeySpec(KeySlot.FIN_SMC, 0x13, "EMV MK-SMC (issuer script confidentiality)"),
            ),
            pins=(PinSpec("bank", 0x80, pin_tries, PinFormat.ISO9564_2, min_digits=6,
                          max_digits=6, unblock_key=KeySlot.FIN_SMI, label="bank PIN"),),
            fci_proprietary=tlv.encode(0x50, b"PBOC DEBIT") + tlv.encode(0x87, b"\x01"),
        )  # fmt: skip
        children = (*children, fin)
    mf = DedicatedFile(
        name="MF", fid=0x3F00, label="master file", children=children,
        # CHOICE: the blank chip's transport key KMC sits at MF level with id 7F.
        keys=(KeySpec(KeySlot.KMC, 0x7F, "personalisation transport key"),),
    )  # fmt: skip
    name = f"ssc{generation}-{alg.value}" + ("" if financial else "-nofin")
    if pin_tries != 3:
        name += f"-t{pin_tries}"
    prof = CardProfile(
        name=name,
        description=f"social security card, generation {generation}, {alg.value}",
        algorithm=alg,
        spec_version=f"{generation}.00",
        mf=mf,
        # ISO/IEC 7816-4 8.1.1: category 80, compact-TLV "pre-issuing data" (tag 6) naming the
        # card. CHOICE: the name text.
        historical_bytes=b"\x80\x6a" + f"YKT SSC{generation}.0".encode()[:10].ljust(10, b" "),
    )
    prof.validate()
    return prof


_REGISTRY: dict[str, CardProfile] = {}


def register_profile(profile: CardProfile) -> CardProfile:
    """Make ``profile`` known by name (card images store the profile name)."""
    _REGISTRY[profile.name] = profile
    return profile


def get_profile(name: str) -> CardProfile:
    if name in _REGISTRY:
        return _REGISTRY[name]
    for gen in (2, 3):
        for alg in (Algorithm.DES3, Algorithm.AES):
            for fin in (True, False):
                p = social_security_profile(generation=gen, algorithm=alg, financial=fin)
                _REGISTRY.setdefault(p.name, p)
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise ProfileError(f"unknown card profile {name!r}; register it with register_profile()")


DEFAULT_PROFILE = register_profile(social_security_profile())


# --- domain values and their encoders ----------------------------------------------------------


@dataclass(frozen=True)
class CardIdentification:
    """EF05 contents."""

    card_identification_code: str
    card_category: str
    spec_version: str
    init_org_code: str
    issue_date: date
    expiry_date: date
    card_number: str


@dataclass(frozen=True)
class Holder:
    """EF06 contents. ``name`` longer than 30 GBK bytes continues in ``name_extension``."""

    ssn: str
    name: str
    sex: str
    ethnicity: str
    birthplace: str
    birth_date: date
    name_extension: str = ""

    def __repr__(self) -> str:  # personal data: keep it out of logs
        return f"Holder(ssn={self.ssn[:4]}**********{self.ssn[-4:]}, ...)"

    @property
    def full_name(self) -> str:
        return self.name + self.name_extension


@dataclass(frozen=True)
class MedicalData:
    insurance_type: str
    insured_region: str
    status: str
    personnel_category: str
    start_date: date


@dataclass(frozen=True)
class PensionData:
    status: str
    insured_region: str
    start_date: date
    insurance_types: str


@dataclass(frozen=True)
class FinancialData:
    pan: str
    expiry: date
    psn: str = "00"
    cardholder_name: str = ""


@dataclass(frozen=True)
class MedicalLogEntry:
    time: str
    """YYYYMMDDhhmmss"""
    amount: int
    """in fen"""
    institution: str
    kind: str


def _asdict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def split_name(full_name: str, length: int = 30) -> tuple[str, str]:
    """Split a name at a character boundary into the 09 part (``length`` GBK bytes) and the
    4E extension (CHOICE: the overflow goes to 4E)."""
    head = ""
    for ch in full_name:
        if len((head + ch).encode("gbk", errors="replace")) > length:
            break
        head += ch
    return head, full_name[len(head) :]


def encode_card_identification(
    value: CardIdentification, profile: CardProfile = DEFAULT_PROFILE
) -> list[bytes]:
    return encode_records(profile.ef("EF05")[1], _asdict(value))


def decode_card_identification(
    records: list[bytes], profile: CardProfile = DEFAULT_PROFILE
) -> CardIdentification:
    return CardIdentification(**decode_records(profile.ef("EF05")[1], records))


def encode_holder(value: Holder, profile: CardProfile = DEFAULT_PROFILE) -> list[bytes]:
    values = _asdict(value)
    if not value.name_extension:
        values["name"], values["name_extension"] = split_name(value.name)
    return encode_records(profile.ef("EF06")[1], values)


def decode_holder(records: list[bytes], profile: CardProfile = DEFAULT_PROFILE) -> Holder:
    values = decode_records(profile.ef("EF06")[1], records)
    values.setdefault("name_extension", "")
    return Holder(**values)


def encode_medical(value: MedicalData, profile: CardProfile = DEFAULT_PROFILE) -> list[bytes]:
    return encode_records(profile.ef("EF15")[1], _asdict(value))


def decode_medical(records: list[bytes], profile: CardProfile = DEFAULT_PROFILE) -> MedicalData:
    return MedicalData(**decode_records(profile.ef("EF15")[1], records))


def encode_pension(value: PensionData, profile: CardProfile = DEFAULT_PROFILE) -> list[bytes]:
    return encode_records(profile.ef("EF16")[1], _asdict(value))


def decode_pension(records: list[bytes], profile: CardProfile = DEFAULT_PROFILE) -> PensionData:
    return PensionData(**decode_records(profile.ef("EF16")[1], records))


def encode_financial(value: FinancialData, profile: CardProfile = DEFAULT_PROFILE) -> list[bytes]:
    return encode_records(profile.ef("SFI01")[1], _asdict(value))


def decode_financial(
    records: list[bytes], profile: CardProfile = DEFAULT_PROFILE
) -> FinancialData:
    values = decode_records(profile.ef("SFI01")[1], records)
    values.setdefault("cardholder_name", "")
    return FinancialData(**values)


def encode_log_entry(value: MedicalLogEntry, profile: CardProfile = DEFAULT_PROFILE) -> bytes:
    return encode_records(profile.ef("EF18")[1], _asdict(value))[0]


def decode_log_entry(record: bytes, profile: CardProfile = DEFAULT_PROFILE) -> MedicalLogEntry:
    values = decode_fixed_record(profile.ef("EF18")[1], record)
    values["amount"] = int(values["amount"])
    return MedicalLogEntry(**values)

