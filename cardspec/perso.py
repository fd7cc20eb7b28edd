"""Personalisation: the issuer side that turns a blank chip into a social security card.

Design notes: ``docs/design/cardspec.md`` (section ``cardspec.perso``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any, cast

from cardspec import ids, sm2, tlv
from cardspec.apdu import CommandApdu
from cardspec.cardops import (
    ApduCounter,
    check_fci_algorithm,
    external_authenticate,
    select_df,
    send,
)
from cardspec.crypto import CardCrypto
from cardspec.errors import (
    CardNotFoundError,
    CardStateError,
    EncodingError,
    ProfileError,
    TlvError,
)
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import (
    DEFAULT_PROFILE,
    CardIdentification,
    CardProfile,
    ElementaryFile,
    FinancialData,
    Holder,
    MedicalData,
    PensionData,
    RecordLayout,
    encode_records,
)
from cardspec.profile.values import financial_data, financial_values, holder_values
from cardspec.reader import Reader


@dataclass(frozen=True)
class CardPersoData:
    """Everything written to one card. ``extra`` holds element values for files of extra
    applications (EF name -> element name -> value)."""

    card_identification_code: str
    card_number: str
    spec_version: str
    issue_date: date
    expiry_date: date
    init_org_code: str
    holder: Holder
    initial_pin: str
    medical: MedicalData | None = None
    pension: PensionData | None = None
    financial: FinancialData | None = None
    bank_pin: str | None = None
    """Initial bank PIN: its own value, never the social security PIN (required when the
    profile has a financial application; :func:`initial_pin_blocks`)."""
    card_category: str = "1"
    extra: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __repr__(self) -> str:  # personal data and PINs stay out of logs
        return f"CardPersoData(card={self.card_identification_code}, number={self.card_number})"

    def card_identification(self) -> CardIdentification:
        return CardIdentification(
            card_identification_code=self.card_identification_code,
            card_category=self.card_category,
            spec_version=self.spec_version,
            init_org_code=self.init_org_code,
            issue_date=self.issue_date,
            expiry_date=self.expiry_date,
            card_number=self.card_number,
        )

    def validate(self) -> None:
        """Identifiers must be valid (raises :class:`cardspec.errors.InvalidIdentifier`)."""
        ids.validate_card_identification_code(self.card_identification_code)
        ids.validate_card_number(self.card_number)
        ids.validate_citizen_id(self.holder.ssn)


@dataclass(frozen=True)
class PersoResult:
    card_identification_code: str
    apdu_count: int
    duration_s: float
    keys_loaded: tuple[KeySlot, ...]


def record_values(data: CardPersoData, profile: CardProfile) -> dict[str, dict[str, Any]]:
    """The element values of the records of ``data`` (EF name -> element name -> value): EF05
    and EF06 always (a holder name longer than EF06's name element continues in its
    extension), the medical, pension and financial files when the profile has them (financial
    data is required then), the extra applications' files."""
    values: dict[str, dict[str, Any]] = {
        "EF05": _fields(data.card_identification()),
        "EF06": holder_values(data.holder),
    }
    names = _file_names(profile)
    for ef_name, part in (("EF15", data.medical), ("EF16", data.pension),
                          ("SFI01", data.financial)):  # fmt: skip
        if ef_name not in names:
            continue
        if part is None:
            if ef_name == "SFI01":
                raise ProfileError(
                    f"profile {profile.name} has a financial application: give financial data"
                    " or use a profile without it"
                )
            continue
        if isinstance(part, FinancialData):
            values[ef_name] = financial_values(part)
        else:
            values[ef_name] = _fields(part)
    for ef_name, extra in data.extra.items():
        values[profile.ef(ef_name)[1].name] = dict(extra)  # an unknown file fails here
    return values


def from_values(
    values: Mapping[str, Mapping[str, Any]], initial_pin: str, *, bank_pin: str | None = None
) -> CardPersoData:
    """The :class:`CardPersoData` whose :func:`record_values` are ``values`` (the standard
    files; others go to ``extra``)."""
    ef05 = values["EF05"]
    part = values.get
    return CardPersoData(
        card_identification_code=ef05["card_identification_code"],
        card_number=ef05["card_number"],
        spec_version=ef05["spec_version"],
        issue_date=ef05["issue_date"],
        expiry_date=ef05["expiry_date"],
        init_org_code=ef05["init_org_code"],
        holder=Holder(**values["EF06"]),
        initial_pin=initial_pin,
        medical=None if part("EF15") is None else MedicalData(**values["EF15"]),
        pension=None if part("EF16") is None else PensionData(**values["EF16"]),
        financial=None if part("SFI01") is None else financial_data(values["SFI01"]),
        bank_pin=bank_pin,
        card_category=ef05["card_category"],
        extra={k: dict(v) for k, v in values.items() if k not in _STANDARD_FILES},
    )


_STANDARD_FILES = frozenset({"EF05", "EF06", "EF15", "EF16", "SFI01"})
_FIELDS: dict[type, tuple[str, ...]] = {}
_NAMES: dict[int, tuple[CardProfile, frozenset[str]]] = {}


def _fields(obj: Any) -> dict[str, Any]:
    names = _FIELDS.get(type(obj))
    if names is None:
        names = _FIELDS[type(obj)] = tuple(f.name for f in fields(obj))
    return {n: getattr(obj, n) for n in names}


def _file_names(profile: CardProfile) -> frozenset[str]:
    known = _NAMES.get(id(profile))
    if known is None or known[0] is not profile:
        known = _NAMES[id(profile)] = (profile, frozenset(ef.name for _, ef in profile.files()))
    return known[1]


class RecordPlanner:
    """The records of one profile's files from their element values: each EF's
    :func:`~cardspec.profile.encode_records`, with the profile's files looked up once and the
    TLV of element values that repeat (dates, codes, regions, categories) remembered per
    element (a Hypothesis test holds it equal to ``encode_records``, byte for byte). The one
    path of :func:`plan_records` and :func:`plan_values` (:func:`planner`: one per profile)."""

    _MAX_VALUES = 4096  # distinct values remembered per element (a unique one stops caching)

    def __init__(self, profile: CardProfile) -> None:
        self.profile = profile
        self.files = [ef for _, ef in profile.files()]
        #: per EF: [element, its memo (value -> TLV) or None once it proved unique, its tag's
        #: encoding as a SIMPLE-TLV and as a BER-TLV object (None: a tag the encoders refuse),
        #: its name, whether it is optional]
        self._memo: dict[str, list[list[Any]]] = {
            ef.name: [[el, {}, *_tag_heads(el.tag), el.name, el.optional] for el in ef.elements]
            for ef in self.files
        }
        self._elements = {ef.name: frozenset(e.name for e in ef.elements) for ef in self.files}
        self._required = {
            ef.name: frozenset(e.name for e in ef.elements if not e.optional) for ef in self.files
        }
        #: per EF in profile order: (name, EF, layout, its element names, the required ones)
        self._plan = [
            (ef.name, ef, ef.layout, self._elements[ef.name], self._required[ef.name])
            for ef in self.files
        ]

    @staticmethod
    def _fresh(entry: list[Any], value: Any, simple: bool, remember: bool) -> bytes:
        """The element's SIMPLE-TLV (``simple``) or BER-TLV of ``value``, not remembered yet;
        remembered now with ``remember`` (text and dates, of exactly these types: equal values
        of other types may encode apart)."""
        el = entry[0]
        raw = el.encode(value)
        head = entry[2] if simple else entry[3]
        if head is not None and len(raw) < 0x7F:  # the tag and a one-byte length
            hit: bytes = head + _LENGTHS[len(raw)] + raw
        else:
            hit = tlv.simple_encode(el.tag, raw) if simple else tlv.encode(el.tag, raw)
        if remember:
            memo = entry[1]
            if len(memo) >= RecordPlanner._MAX_VALUES:
                entry[1] = None
            else:
                memo[value] = hit
        return hit

    def _tlvs(self, ef: ElementaryFile, values: Mapping[str, Any], simple: bool) -> list[bytes]:
        """Each element's SIMPLE-TLV (``simple``) or BER-TLV, in profile order; BER-TLV (an
        EMV record's body) leaves out an optional element without a value."""
        out: list[bytes] = []
        append, get, fresh = out.append, values.get, self._fresh
        skip_empty = not simple
        for entry in self._memo[ef.name]:
            value = get(entry[4])
            if skip_empty and entry[5] and value in (None, ""):
                continue
            memo = entry[1]
            if memo is not None and (type(value) is str or type(value) is date):
                hit = memo.get(value)
                append(hit if hit is not None else fresh(entry, value, simple, True))
            else:
                append(fresh(entry, value, simple, False))
        return out

    def _simple(self, ef: ElementaryFile, values: Mapping[str, Any]) -> list[bytes]:
        return self._tlvs(ef, values, True)

    def _emv(self, ef: ElementaryFile, values: Mapping[str, Any]) -> list[bytes]:
        body = b"".join(self._tlvs(ef, values, False))
        record = _TEMPLATE + tlv.encode_length(len(body)) + body  # tlv.encode(0x70, body)
        if len(record) > ef.record_size:
            raise EncodingError(ef.name, f"record of {len(record)} bytes exceeds {ef.record_size}")
        return [record]

    def plan_values(self, values: Mapping[str, Mapping[str, Any]]) -> dict[str, list[bytes]]:
        """EF name -> records, in profile order, of the files ``values`` has (raises
        :class:`ProfileError` for a file the profile lacks or a financial application without
        its data, :class:`EncodingError` for a value the chip cannot hold)."""
        if not values.keys() <= self._elements.keys():
            unknown = sorted(values.keys() - self._elements.keys())
            raise ProfileError(f"no EF {unknown[0]!r} in profile {self.profile.name}")
        out: dict[str, list[bytes]] = {}
        get = values.get
        for name, ef, layout, elements, required in self._plan:
            vals = get(name)
            if vals is None:
                if name == "SFI01":
                    raise ProfileError(
                        f"profile {self.profile.name} has a financial application: give "
                        "financial data or use a profile without it"
                    )
                continue
            keys = vals.keys()
            if layout is RecordLayout.SIMPLE_TLV and keys <= elements:
                out[name] = self._simple(ef, vals)
            elif layout is RecordLayout.EMV_TEMPLATE and keys <= elements and required <= keys:
                out[name] = self._emv(ef, vals)
            else:
                out[name] = encode_records(ef, vals)
        return out


_PLANNERS: dict[int, RecordPlanner] = {}
_LENGTHS = tuple(bytes((n,)) for n in range(0x7F))
_TEMPLATE = tlv.tag_bytes(0x70)  # EMV's record template


def _tag_heads(tag: int) -> tuple[bytes | None, bytes | None]:
    """A tag's first bytes of a SIMPLE-TLV and of a BER-TLV object (as
    :func:`cardspec.tlv.simple_encode` and :func:`cardspec.tlv.encode` write them for a value
    shorter than 127 bytes); None for a tag they refuse (the planner leaves it to them)."""
    simple = bytes((tag,)) if 0x01 <= tag <= 0xFE else None
    try:
        ber: bytes | None = tlv.tag_bytes(tag)
    except TlvError:
        ber = None
    return simple, ber


def planner(profile: CardProfile) -> RecordPlanner:
    """The :class:`RecordPlanner` of ``profile`` (one per profile object)."""
    got = _PLANNERS.get(id(profile))
    if got is None or got.profile is not profile:
        got = _PLANNERS[id(profile)] = RecordPlanner(profile)
    return got


def plan_values(
    values: Mapping[str, Mapping[str, Any]], profile: CardProfile
) -> dict[str, list[bytes]]:
    """EF name -> records to write, in profile order, from the files' element values (as
    :func:`record_values` gives them)."""
    return planner(profile).plan_values(values)


def plan_records(data: CardPersoData, profile: CardProfile) -> dict[str, list[bytes]]:
    """EF name -> records to write, in profile order (raises before any APDU is sent)."""
    return plan_values(record_values(data, profile), profile)


def sm2_certifier(profile: CardProfile, key_service: object) -> sm2.Sm2Signer | None:
    """The ``certifier`` of :func:`personalise` for a card of ``profile``: SM4 cards get their
    SM2 key pair and certificates when the key service holds the issuer's SM2 key
    (``sign_sm2``: ``hsm.service.Pkcs11KeyService`` on an HSM with an SM table); others none."""
    if profile.algorithm is Algorithm.SM4 and hasattr(key_service, "sign_sm2"):
        return cast("sm2.Sm2Signer", key_service)
    return None


def initial_pin_blocks(data: CardPersoData, profile: CardProfile) -> list[bytes]:
    """The PIN block of each PIN of the profile (profile order): ``ss`` (and any other PIN)
    from ``initial_pin``, ``bank`` from ``bank_pin``, which never defaults to the social
    security PIN: a profile with a bank PIN needs ``bank_pin`` (ProfileError otherwise)."""
    blocks = []
    for _, spec in profile.pin_specs():
        if spec.name == "bank":
            if not data.bank_pin:
                raise ProfileError(
                    "the card's financial application needs its own initial PIN "
                    "(bank_pin): it never defaults to the social security PIN"
                )
            blocks.append(spec.encode(data.bank_pin))
        else:
            blocks.append(spec.encode(data.initial_pin))
    return blocks


def personalise(
    reader: Reader,
    crypto: CardCrypto,
    data: CardPersoData,
    profile: CardProfile = DEFAULT_PROFILE,
    *,
    connect: bool = True,
    certifier: sm2.Sm2Signer | None = None,
) -> PersoResult:
    """Personalise the blank card in ``reader``; see the module docstring for the sequence.

    ``certifier`` (SM4 cards): the issuer's SM2 key; the chip then generates its SM2 key pair,
    the issuer signs its certificate and both certificates are written (``cardspec.sm2``)."""
    if crypto.algorithm is not profile.algorithm:
        raise ProfileError("card crypto and profile use different algorithms")
    data.validate()
    plan = plan_records(data, profile)
    pin_blocks = list(zip([spec for _, spec in profile.pin_specs()],
                          initial_pin_blocks(data, profile), strict=True))  # fmt: skip

    start = time.perf_counter()
    if connect:
        reader.connect()
    tx = ApduCounter(reader)
    try:
        fci = select_df(tx, profile, "SSSE", fci=True)
        check_fci_algorithm(fci, profile)
        current = profile.df_path("SSSE")
        try:
            channel = external_authenticate(tx, crypto, KeySlot.KMC, profile)
        except CardNotFoundError as exc:
            raise CardStateError(
                "card has no transport key: already personalised", exc.sw, command=exc.command
            ) from exc

        loaded: list[KeySlot] = []
        for _, spec in profile.key_specs():
            if spec.slot is KeySlot.KMC:
                continue
            wrapped = crypto.wrapped_card_key(spec.slot)
            cmd = channel.wrap(CommandApdu(0x80, 0xD4, 0x00, spec.key_id, wrapped))
            send(tx, cmd, f"WRITE KEY {spec.slot.value}")
            loaded.append(spec.slot)

        if certifier is not None:
            if profile.algorithm is not Algorithm.SM4:
                raise ProfileError("SM2 keys and certificates are for SM4 (third-generation) cards")
            cmd = channel.wrap(CommandApdu(0x80, 0x46, 0x00, sm2.SM2_KEY_REF, le=256))
            answer = send(tx, cmd, "GENERATE KEY PAIR")
            public = tlv.find(tlv.find(answer, 0x7F49) or b"", 0x86)
            if public is None:
                raise CardStateError("GENERATE KEY PAIR answered no public key", 0x9000,
                                     command="GENERATE KEY PAIR")  # fmt: skip
            card_cert = sm2.card_certificate(certifier, data.card_identification_code, public)
            issuer_cert = sm2.issuer_certificate(
                certifier, f"ISSUER {data.card_identification_code[:6]}".encode()
            )
            for tag, cert in ((sm2.DO_CARD_CERTIFICATE, card_cert),
                              (sm2.DO_ISSUER_CERTIFICATE, issuer_cert)):  # fmt: skip
                cmd = channel.wrap(CommandApdu(0x80, 0xDA, tag >> 8, tag & 0xFF, cert))
                send(tx, cmd, f"PUT DATA {tag:04X}")

        for ef_name, records in plan.items():
            df_path, ef = profile.ef(ef_name)
            if df_path != current:
                select_df(tx, profile, df_path)
                current = df_path
            if ef.sfi is None:
                raise ProfileError(f"{ef.name} has no SFI: cannot be personalised by record")
            for n, record in enumerate(records, start=1):
                cmd = channel.wrap(CommandApdu(0x00, 0xDC, n, (ef.sfi << 3) | 0x04, record))
                send(tx, cmd, f"UPDATE RECORD {ef.name}/{n}")

        for pin_spec, block in pin_blocks:
            wrapped = crypto.encrypt(KeySlot.KMC, block)
            cmd = channel.wrap(CommandApdu(0x80, 0xD4, 0x01, pin_spec.ref, wrapped))
            send(tx, cmd, f"SET PIN {pin_spec.name}")

        send(tx, channel.wrap(CommandApdu(0x80, 0xF0, 0x80, 0x0F)), "SET STATUS SECURED")
    finally:
        if connect:
            reader.disconnect()
    return PersoResult(
        card_identification_code=data.card_identification_code,
        apdu_count=tx.count,
        duration_s=time.perf_counter() - start,
        keys_loaded=tuple(loaded),
    )


#: The sample holder of :func:`sample_perso_data` (a valid GB 11643 number of a fictitious
#: person, used in demos and the README only).
SAMPLE_SSN = "11010519491231002X"
SAMPLE_INITIAL_PIN = "123456"
#: The sample card's initial bank PIN (its own: never the social security PIN).
SAMPLE_BANK_PIN = "802413"


def sample_perso_data(
    card_identification_code: str,
    profile: CardProfile = DEFAULT_PROFILE,
    *,
    card_number: str = "X00000019",
    issue_date: date | None = None,
    pan: str = "6212260012345678903",
) -> CardPersoData:
    """Personalisation data of a fictitious holder for demos (``ykt card personalise
    --sample``): valid identifiers, every file the profile has."""
    from datetime import timedelta

    issued = issue_date or date.today()
    try:
        expiry = issued.replace(year=issued.year + 10) - timedelta(days=1)
    except ValueError:  # 29 February
        expiry = issued.replace(year=issued.year + 10, day=28)
    region = card_identification_code[:6]
    names = {ef.name for _, ef in profile.files()}
    return CardPersoData(
        card_identification_code=card_identification_code,
        card_number=card_number,
        spec_version=profile.spec_version,
        issue_date=issued,
        expiry_date=expiry,
        init_org_code=region + "000001",
        holder=Holder(SAMPLE_SSN, "张三", "2", "01", "110105", date(1949, 12, 31)),
        initial_pin=SAMPLE_INITIAL_PIN,
        medical=MedicalData("310", region, "1", "11", date(2020, 1, 1)),
        pension=PensionData("1", region, date(2020, 1, 1), "11100"),
        financial=(
            FinancialData(pan, date(issued.year + 10, 12, 31), "00", "ZHANG SAN")
            if "SFI01" in names
            else None
        ),
        bank_pin=SAMPLE_BANK_PIN if "SFI01" in names else None,
    )
