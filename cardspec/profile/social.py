"""The social security card profile (generations 2 and 3) and the profile registry.

Every ``# CHOICE:`` marks where the public facts run out (see the package docstring).
"""

from __future__ import annotations

import re

from cardspec import keyscheme, tlv
from cardspec.errors import ProfileError
from cardspec.keyscheme import Algorithm, KeySlot
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
    simple_tlv_file,
)

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
    # optional when decoding: cards personalised before the track 2 element was added lack it
    Element(
        0x57,
        "track2",
        19,
        Fmt.HEX,
        "track 2 equivalent (PAN, expiry)",
        variable=True,
        optional=True,
    ),
    Element(0x5A, "pan", 10, Fmt.CN, "application PAN", variable=True),
    Element(0x5F24, "expiry", 3, Fmt.DATE6, "application expiration date YYMMDD"),
    Element(0x5F20, "cardholder_name", 26, Fmt.AN, "cardholder name", variable=True, optional=True),
    Element(0x5F34, "psn", 1, Fmt.N, "PAN sequence number"),
)


def _fci_algorithm(alg: Algorithm) -> bytes:
    return tlv.encode(0x9F0C, tlv.encode(0x86, bytes([ALGORITHM_CODES[alg]])))


def social_security_profile(
    *, generation: int = 2, algorithm: Algorithm | None = None, pin_tries: int = 3,
    financial: bool = True, temporary: bool = False,
) -> CardProfile:  # fmt: skip
    """The profile of a second- (default) or third-generation card.

    ``temporary``: the temporary card issued at the counter (card category "2" in EF05): the
    social security DF with EF05 and EF06 and only the medical application under it; no
    pension DF, no other application and no financial application (``financial`` is then
    ignored). CHOICE: the public sources say a temporary card serves medical insurance only;
    the card answers 6A82 to a SELECT of any other application, as a card without it does.

    ``pin_tries`` comes from ``Settings.lifecycle.pin_tries`` (default 3). Third generation:
    spec version "3.00", EF06 read needs EXTERNAL AUTHENTICATE with the read key (EAK), SM4
    keys announced by ``9F0C { 86 01 03 }`` (``algorithm=Algorithm.AES`` gives the former AES
    stand-in, ``86 01 02``, for HSMs without SM4).
    """
    if generation not in (2, 3):
        raise ProfileError("generation must be 2 or 3")
    alg = algorithm or (Algorithm.DES3 if generation == 2 else Algorithm.SM4)
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
    # The other applications under the social security DF (DOMAIN.md: public data ...00,
    # employment ...01, personnel ...04) are present and selectable by AID and FID so that a
    # terminal's SELECT of them answers 9000 and its FCI as on a real card.
    # CHOICE: their FIDs DF00 / DF01 / DF04 follow the AID's last byte as MED (DF03) and PEN
    # (DF02) do; no public source describes their files (LD/T 32.6 is not public and public
    # reader code reads only EF05/EF06 and the insurance DFs), so they hold no EF: an issuer
    # that uses them adds its files with CardProfile.with_application-style data, not code.
    others = tuple(
        DedicatedFile(name=name, fid=fid, df_name=aid, label=label,
                      fci_proprietary=_fci_algorithm(alg))
        for name, fid, aid, label in (
            ("PUB", 0xDF00, AID_PUBLIC, "public data (no file described publicly)"),
            ("EMP", 0xDF01, AID_EMPLOYMENT, "employment (no file described publicly)"),
            ("PER", 0xDF04, AID_PERSONNEL, "personnel (no file described publicly)"),
        )
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
        children=(medical,) if temporary else (others[0], others[1], pension, medical, others[2]),
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
    if financial and not temporary:
        children = (*children, *_payment_applications(pin_tries))
    mf = DedicatedFile(
        name="MF", fid=0x3F00, label="master file", children=children,
        # CHOICE: the blank chip's transport key KMC sits at MF level with id 7F.
        keys=(KeySpec(KeySlot.KMC, 0x7F, "personalisation transport key"),),
    )  # fmt: skip
    name = f"ssc{generation}-{alg.value}" + ("-tmp" if temporary else "" if financial
                                             else "-nofin")  # fmt: skip
    if pin_tries != 3:
        name += f"-t{pin_tries}"
    prof = CardProfile(
        name=name,
        description=f"{'temporary ' if temporary else ''}social security card, "
        f"generation {generation}, {alg.value}",
        algorithm=alg,
        spec_version=f"{generation}.00",
        mf=mf,
        # ISO/IEC 7816-4 8.1.1: category 80, compact-TLV "pre-issuing data" (tag 6) naming the
        # card. CHOICE: the name text.
        historical_bytes=b"\x80\x6a" + f"YKT SSC{generation}.0".encode()[:10].ljust(10, b" "),
        # CHOICE: the WRITE KEY format (LD/T 32.4 / 32.5, which define key loading, are not
        # public): RFC 5649 AES key wrap of the card key under the card's own AES-128
        # key-loading key KLK, loaded by the chip maker with the KMC and erased with it at the
        # lock. Reason: one standard PKCS#11 call (C_WrapKey CKM_AES_KEY_WRAP_PAD) in any HSM,
        # SoftHSM2 included, so no card key is ever in clear outside the HSM (3DES included:
        # SoftHSM2 cannot wrap under a 3DES KMC), and the wrap's integrity check lets the card
        # refuse a wrong payload (6A80). See cardspec.keyscheme "Key loading".
        key_loading=keyscheme.key_loading_scheme(alg),
    )
    prof.validate()
    return prof


# --- the PBOC 3.0 / EMV debit application ----------------------------------------------------

PSE_NAME = b"1PAY.SYS.DDF01"
"""Payment system environment (contact; EMV Book 1 12.2.2)."""
PPSE_NAME = b"2PAY.SYS.DDF01"
"""Proximity payment system environment (EMV Book B / PBOC 3.0 part 12)."""
FIN_LABEL = b"PBOC DEBIT"
FIN_PRIORITY = b"\x01"

# JR/T 0025 leaves these to the issuer. PDOL and CDOL1 as the public bank-card reader code of
# tests/cardspec/conformance/vectors/pboc_bank_reader.json expects them: its GPO fills
# 9F7A / 9F02 / 5F2A ("9f7a 01 9f02 06 5f2a 02": ICBC, CCB, BOC ... per its comments) and its
# GENERATE AC sends 52 bytes of CDOL1 data (the PBOC set below, with 9F21 time and 9F4E
# merchant name).
#: PDOL: EC terminal support indicator, amount authorised, transaction currency code.
PDOL = bytes.fromhex("9F7A019F02065F2A02")
#: CDOL1 (52 bytes): amounts, terminal country, TVR, currency, date, type, unpredictable
#: number, time, merchant name.
CDOL1 = bytes.fromhex("9F02069F03069F1A0295055F2A029A039C019F37049F21039F4E14")
#: CDOL2, CHOICE: the authorisation response code, then the CDOL1 data again (54 bytes), so
#: the second cryptogram covers the whole transaction as the first does.
CDOL2 = bytes.fromhex("8A02") + CDOL1
#: AIP 18 00: cardholder verification and terminal risk management supported; no offline data
#: authentication (SDA / DDA / CDA need the bank's RSA certificates, not issued here) and no
#: issuer authentication: an online-only debit application.
AIP = bytes.fromhex("1800")
#: AFL: SFI 1 record 1 (PAN, track 2, expiry, name) and SFI 2 record 1 (risk data), none of
#: them for offline data authentication.
AFL = bytes.fromhex("0801010010010100")
#: CVM list: amounts X and Y 0; online enciphered PIN if the terminal supports it (else the
#: next rule), signature if supported, else no CVM.
CVM_LIST = bytes(8) + bytes.fromhex("42035E031F03")
#: Issuer action codes default / denial / online.
IAC_DEFAULT, IAC_DENIAL, IAC_ONLINE = (bytes.fromhex(h) for h in
                                       ("D84000A800", "0010000000", "D84004F800"))  # fmt: skip
FIN_EMV = EmvApplication(aip=AIP, afl=AFL, pdol=PDOL, cdol1=CDOL1, cdol2=CDOL2)


def _fin_risk_record() -> bytes:
    """SFI 2 record 1: the issuer's risk management data, the same on every card."""
    return tlv.encode(0x70, b"".join((
        tlv.encode(0x8C, CDOL1), tlv.encode(0x8D, CDOL2), tlv.encode(0x8E, CVM_LIST),
        tlv.encode(0x9F0D, IAC_DEFAULT), tlv.encode(0x9F0E, IAC_DENIAL),
        tlv.encode(0x9F0F, IAC_ONLINE),
        tlv.encode(0x9F07, bytes.fromhex("FF00")),  # usage control: every use, domestic + intl
        tlv.encode(0x9F08, bytes.fromhex("0030")),  # application version number
        tlv.encode(0x5F28, bytes.fromhex("0156")),  # issuer country code: China
        tlv.encode(0x9F42, bytes.fromhex("0156")),  # application currency code: CNY
    )))  # fmt: skip


def _directory_entry() -> bytes:
    """Template 61 naming the debit application (EMV Book 1 12.2.3)."""
    return tlv.encode(0x61, tlv.encode(0x4F, AID_PBOC_DEBIT) + tlv.encode(0x50, FIN_LABEL)
                      + tlv.encode(0x87, FIN_PRIORITY))  # fmt: skip


def _payment_applications(pin_tries: int) -> tuple[DedicatedFile, ...]:
    """The debit application and the two payment system environments that list it.

    CHOICE: FIDs ADF1 (application), DDF0 (PSE), DDF2 (PPSE), and the PSE's directory as SFI 1
    of its DF: terminals select all three by name, never by FID."""
    risk = _fin_risk_record()
    fin = DedicatedFile(
        name="FIN", fid=0xADF1, df_name=AID_PBOC_DEBIT, label="PBOC debit application",
        files=(
            # PAN data in SFI 1 record 1, read free (EMV READ RECORD); written only during
            # personalisation (the bank's own update scripts are out of scope).
            ElementaryFile("SFI01", 0xEF01, 0x01, FileStructure.LINEAR_VARIABLE,
                           RecordLayout.EMV_TEMPLATE, FINANCIAL_ELEMENTS, FREE, NEVER,
                           record_count=1, record_size=96, label="application data"),
            ElementaryFile("SFI02", 0xEF02, 0x02, FileStructure.LINEAR_VARIABLE,
                           RecordLayout.EMV_TEMPLATE, (), FREE, NEVER, record_count=1,
                           record_size=len(risk), label="risk management data",
                           content=(risk,)),
        ),
        keys=(
            KeySpec(KeySlot.FIN_AC, 0x11, "EMV MK-AC"),
            KeySpec(KeySlot.FIN_SMI, 0x12, "EMV MK-SMI (issuer script integrity)"),
            KeySpec(KeySlot.FIN_SMC, 0x13, "EMV MK-SMC (issuer script confidentiality)"),
        ),
        pins=(PinSpec("bank", 0x80, pin_tries, PinFormat.ISO9564_2, min_digits=6,
                      max_digits=6, unblock_key=KeySlot.FIN_SMI, label="bank PIN"),),
        fci_proprietary=tlv.encode(0x50, FIN_LABEL) + tlv.encode(0x87, FIN_PRIORITY)
        + tlv.encode(0x9F38, PDOL) + tlv.encode(0x5F2D, b"zhen"),
        emv=FIN_EMV,
    )  # fmt: skip
    pse = DedicatedFile(
        name="PSE", fid=0xDDF0, df_name=PSE_NAME, label="payment system environment",
        files=(ElementaryFile("PSEDIR", 0xEF01, 0x01, FileStructure.LINEAR_VARIABLE,
                              RecordLayout.EMV_TEMPLATE, (), FREE, NEVER, record_count=1,
                              record_size=64, label="payment system directory",
                              content=(tlv.encode(0x70, _directory_entry()),)),),
        fci_proprietary=tlv.encode(0x88, b"\x01") + tlv.encode(0x5F2D, b"zhen"),
    )  # fmt: skip
    ppse = DedicatedFile(
        name="PPSE", fid=0xDDF2, df_name=PPSE_NAME, label="proximity payment system environment",
        fci_proprietary=tlv.encode(0xBF0C, _directory_entry()),
    )  # fmt: skip
    return (pse, fin, ppse)


_REGISTRY: dict[str, CardProfile] = {}


def register_profile(profile: CardProfile) -> CardProfile:
    """Make ``profile`` known by name (card images store the profile name)."""
    _REGISTRY[profile.name] = profile
    return profile


_NAME = re.compile(
    r"ssc(?P<gen>[23])-(?P<alg>3des|aes|sm4)(?P<nofin>-nofin)?(?P<tmp>-tmp)?(?:-t(?P<tries>\d+))?"
)


def get_profile(name: str) -> CardProfile:
    """A registered profile, or one of the built-in names
    ``ssc{2,3}-{3des,aes,sm4}[-nofin|-tmp][-tN]``
    (as produced by :func:`social_security_profile`)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    m = _NAME.fullmatch(name)
    if m is None:
        raise ProfileError(f"unknown card profile {name!r}; register it with register_profile()")
    prof = social_security_profile(
        generation=int(m["gen"]),
        algorithm=Algorithm(m["alg"]),
        pin_tries=int(m["tries"] or 3),
        financial=not m["nofin"],
        temporary=bool(m["tmp"]),
    )
    if prof.name != name:
        raise ProfileError(f"unknown card profile {name!r}")
    return register_profile(prof)


DEFAULT_PROFILE = register_profile(social_security_profile())
