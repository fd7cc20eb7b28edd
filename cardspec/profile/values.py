"""Domain values of the card's files and their encoders / decoders."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date
from typing import Any

from cardspec.emv import SERVICE_CODE, track2_equivalent
from cardspec.errors import EncodingError
from cardspec.ids import luhn_ok, mask_pan
from cardspec.profile.model import CardProfile, decode_fixed_record, decode_records, encode_records
from cardspec.profile.social import DEFAULT_PROFILE

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
    service_code: str = SERVICE_CODE
    """In the track 2 equivalent data (57) only (the record has no 5F30)."""


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
    if len(full_name.encode("gbk", errors="replace")) <= length:  # GBK is stateless:
        return full_name, ""  # every prefix of a name that fits fits too
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


def holder_values(value: Holder) -> dict[str, Any]:
    """EF06's element values of ``value``: a whole name too long for the name element is split
    (:func:`split_name`), the rest going to ``name_extension``."""
    values = _asdict(value)
    if not value.name_extension:
        values["name"], values["name_extension"] = split_name(value.name)
    return values


def encode_holder(value: Holder, profile: CardProfile = DEFAULT_PROFILE) -> list[bytes]:
    return encode_records(profile.ef("EF06")[1], holder_values(value))


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


def complete_financial(values: Mapping[str, Any]) -> dict[str, Any]:
    """The financial record's element values with those derived from the others: the track 2
    equivalent data (57) from the PAN, the expiry date and the service code (given by the bank;
    not an element of the record). Every path that encodes the record (this module, data
    preparation's planners) completes its values here, so this is where a PAN failing the Luhn
    check (ISO/IEC 7812-1) is refused: no card is written with a PAN no terminal accepts."""
    out = dict(values)
    pan = str(out.get("pan", ""))
    if not luhn_ok(pan):
        raise EncodingError("pan", f"PAN {mask_pan(pan)} fails the Luhn check (ISO/IEC 7812-1)")
    service = out.pop("service_code", None) or SERVICE_CODE
    out["track2"] = track2_equivalent(out["pan"], out["expiry"], service)
    return out


def financial_values(value: FinancialData) -> dict[str, Any]:
    """The financial record's element values of ``value`` (:func:`complete_financial`)."""
    return complete_financial(_asdict(value))


def financial_data(values: Mapping[str, Any]) -> FinancialData:
    """The :class:`FinancialData` of the financial record's element values (the derived ones
    of :func:`complete_financial` left out)."""
    data = {k: v for k, v in values.items() if k not in _DERIVED_FINANCIAL}
    track2 = values.get("track2")
    if track2 and "service_code" not in data:
        data["service_code"] = _track2_service_code(track2, str(values["pan"]))
    return FinancialData(**data)


def _track2_service_code(track2: str, pan: str) -> str:
    """The service code of a track 2 equivalent (hex text): after ``PAN D YYMM``."""
    at = len(pan) + 5
    return track2[at : at + 3] if len(track2) >= at + 3 else SERVICE_CODE


_DERIVED_FINANCIAL = frozenset({"track2"})


def encode_financial(value: FinancialData, profile: CardProfile = DEFAULT_PROFILE) -> list[bytes]:
    return encode_records(profile.ef("SFI01")[1], financial_values(value))


def decode_financial(records: list[bytes], profile: CardProfile = DEFAULT_PROFILE) -> FinancialData:
    values = decode_records(profile.ef("SFI01")[1], records)
    values.setdefault("cardholder_name", "")
    track2 = values.pop("track2", None)
    if track2 is not None:
        values["service_code"] = _track2_service_code(track2, values["pan"])
    data = FinancialData(**values)
    if track2 is not None and track2 != track2_equivalent(data.pan, data.expiry,
                                                         data.service_code):  # fmt: skip
        raise EncodingError("track2", "does not match the PAN and expiry date")
    return data


def encode_log_entry(value: MedicalLogEntry, profile: CardProfile = DEFAULT_PROFILE) -> bytes:
    return encode_records(profile.ef("EF18")[1], _asdict(value))[0]


def decode_log_entry(record: bytes, profile: CardProfile = DEFAULT_PROFILE) -> MedicalLogEntry:
    values = decode_fixed_record(profile.ef("EF18")[1], record)
    values["amount"] = int(values["amount"])
    return MedicalLogEntry(**values)
