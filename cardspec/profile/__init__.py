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

from cardspec.profile.model import (
    AID_EMPLOYMENT,
    AID_MEDICAL,
    AID_PBOC_DEBIT,
    AID_PENSION,
    AID_PERSONNEL,
    AID_PUBLIC,
    ALGORITHM_CODES,
    FREE,
    NEVER,
    SOCIAL_SECURITY_DF_NAME,
    Access,
    AccessRule,
    CardProfile,
    DedicatedFile,
    Element,
    ElementaryFile,
    EmvApplication,
    FileStructure,
    Fmt,
    KeySpec,
    PinFormat,
    PinSpec,
    RecordLayout,
    by_key,
    by_pin,
    decode_fixed_record,
    decode_records,
    decode_value,
    encode_pin,
    encode_records,
    encode_value,
    simple_tlv_file,
)
from cardspec.profile.social import (
    DEFAULT_PROFILE,
    EF05_ELEMENTS,
    EF06_ELEMENTS,
    FINANCIAL_ELEMENTS,
    MEDICAL_ELEMENTS,
    MEDICAL_LOG_ELEMENTS,
    PENSION_ELEMENTS,
    get_profile,
    register_profile,
    social_security_profile,
)
from cardspec.profile.values import (
    CardIdentification,
    FinancialData,
    Holder,
    MedicalData,
    MedicalLogEntry,
    PensionData,
    complete_financial,
    decode_card_identification,
    decode_financial,
    decode_holder,
    decode_log_entry,
    decode_medical,
    decode_pension,
    encode_card_identification,
    encode_financial,
    encode_holder,
    encode_log_entry,
    encode_medical,
    encode_pension,
    split_name,
)

__all__ = [
    "AID_EMPLOYMENT",
    "AID_MEDICAL",
    "AID_PBOC_DEBIT",
    "AID_PENSION",
    "AID_PERSONNEL",
    "AID_PUBLIC",
    "ALGORITHM_CODES",
    "DEFAULT_PROFILE",
    "EF05_ELEMENTS",
    "EF06_ELEMENTS",
    "FINANCIAL_ELEMENTS",
    "FREE",
    "MEDICAL_ELEMENTS",
    "MEDICAL_LOG_ELEMENTS",
    "NEVER",
    "PENSION_ELEMENTS",
    "SOCIAL_SECURITY_DF_NAME",
    "Access",
    "AccessRule",
    "CardIdentification",
    "CardProfile",
    "DedicatedFile",
    "Element",
    "ElementaryFile",
    "EmvApplication",
    "FileStructure",
    "FinancialData",
    "Fmt",
    "Holder",
    "KeySpec",
    "MedicalData",
    "MedicalLogEntry",
    "PensionData",
    "PinFormat",
    "PinSpec",
    "RecordLayout",
    "by_key",
    "by_pin",
    "complete_financial",
    "decode_card_identification",
    "decode_financial",
    "decode_fixed_record",
    "decode_holder",
    "decode_log_entry",
    "decode_medical",
    "decode_pension",
    "decode_records",
    "decode_value",
    "encode_card_identification",
    "encode_financial",
    "encode_holder",
    "encode_log_entry",
    "encode_medical",
    "encode_pension",
    "encode_pin",
    "encode_records",
    "encode_value",
    "get_profile",
    "register_profile",
    "simple_tlv_file",
    "social_security_profile",
    "split_name",
]
