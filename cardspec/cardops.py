"""Terminal-side operations on a personalised card, over any :class:`cardspec.reader.Reader`.

What counters, hospitals, quality control and the verification service do with a card: read
its public data (EF05/EF06), have it prove itself (INTERNAL AUTHENTICATE, checked with the card
crypto port), verify / change / unblock PINs, read its life cycle. Every unexpected status word
raises the matching :class:`cardspec.errors.CardError` subclass carrying SW1SW2; malformed
response data raises :class:`cardspec.errors.ResponseError`.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cardspec import apdu, emv, sm, sm2, tlv
from cardspec.apdu import CommandApdu
from cardspec.crypto import CardCrypto
from cardspec.emulator.image import LifeCycle
from cardspec.errors import (
    CardSpecError,
    EncodingError,
    ProfileError,
    ResponseError,
    SecurityError,
    TlvError,
)
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import (
    ALGORITHM_CODES,
    DEFAULT_PROFILE,
    Access,
    CardIdentification,
    CardProfile,
    DedicatedFile,
    Holder,
    PinFormat,
    PinSpec,
    decode_records,
    encode_records,
)
from cardspec.reader import Reader
from cardspec.sw import SW, raise_for_sw

SW_OK = SW.OK


class ApduCounter:
    """Wraps a reader's transmit: counts the APDUs exchanged (GET RESPONSE included)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.count = 0

    def __call__(self, raw: bytes) -> bytes:
        self.count += 1
        return self.reader.transmit(raw)


def send(
    transmit: apdu.Transmit | Reader, command: CommandApdu, what: str, *, pin: bool = False
) -> bytes:
    """Exchange ``command``; return its data or raise for a status other than 9000."""
    fn = transmit.transmit if isinstance(transmit, Reader) else transmit
    resp = apdu.exchange(fn, command)
    raise_for_sw(resp.sw, what, pin=pin)
    return resp.data


def select_df(
    transmit: apdu.Transmit | Reader, profile: CardProfile, df_name: str, *, fci: bool = False
) -> bytes:
    """SELECT a DF of the profile by its DF name / AID (by path when it has none)."""
    path = profile.df_path(df_name)
    df = profile.df(path)
    if df.df_name:
        cmd = CommandApdu(0x00, 0xA4, 0x04, 0x00 if fci else 0x0C, df.df_name,
                          le=256 if fci else None)  # fmt: skip
    elif path == profile.mf.name:
        cmd = CommandApdu(0x00, 0xA4, 0x00, 0x0C, b"\x3f\x00")
    else:
        fids = b"".join(
            profile.df("/".join(path.split("/")[: i + 1])).fid.to_bytes(2, "big")
            for i in range(1, len(path.split("/")))
        )
        cmd = CommandApdu(0x00, 0xA4, 0x08, 0x0C, fids)
    return send(transmit, cmd, f"SELECT {df.name}")


def _fci_algorithm_code(fci: bytes) -> int:
    try:
        marker = tlv.find(fci, 0x9F0C)
        code = tlv.find(marker, 0x86) if marker is not None else None
    except TlvError as exc:
        raise ResponseError(f"malformed FCI: {exc}", SW_OK, command="SELECT") from exc
    if code is None or len(code) != 1:
        raise ResponseError("FCI lacks the algorithm marker 9F0C/86", SW_OK, command="SELECT")
    return code[0]


def fci_algorithm(fci: bytes) -> Algorithm:
    """The algorithm the FCI's ``9F0C { 86 01 xx }`` announces."""
    code = _fci_algorithm_code(fci)
    for alg, value in ALGORITHM_CODES.items():
        if value == code:
            return alg
    raise ProfileError(f"card announces an unknown algorithm {code:02X}")


def check_fci_algorithm(fci: bytes, profile: CardProfile) -> None:
    """The FCI's ``9F0C { 86 01 xx }`` must announce the profile's algorithm."""
    code = _fci_algorithm_code(fci)
    if code != ALGORITHM_CODES[profile.algorithm]:
        raise ProfileError(
            f"card announces algorithm {code:02X}, profile {profile.name} expects "
            f"{ALGORITHM_CODES[profile.algorithm]:02X}"
        )


def read_record(transmit: apdu.Transmit | Reader, sfi: int, number: int, what: str) -> bytes:
    return send(transmit, CommandApdu(0x00, 0xB2, number, (sfi << 3) | 0x04, le=256), what)


def external_authenticate(
    transmit: apdu.Transmit | Reader, crypto: CardCrypto, slot: KeySlot, profile: CardProfile
) -> sm.TerminalChannel:
    """GET CHALLENGE + EXTERNAL AUTHENTICATE with card key ``slot``; returns the MAC channel."""
    _, spec = profile.key(slot)
    challenge = send(transmit, CommandApdu(0x00, 0x84, 0, 0, le=8), "GET CHALLENGE")
    if len(challenge) != 8:
        raise ResponseError(f"challenge of {len(challenge)} bytes", SW_OK, command="GET CHALLENGE")
    cryptogram = crypto.external_auth(slot, challenge)
    send(transmit, CommandApdu(0x00, 0x82, 0x00, spec.key_id, cryptogram), "EXTERNAL AUTHENTICATE")
    return sm.TerminalChannel(crypto, slot, challenge)


def read_file(
    transmit: apdu.Transmit | Reader, profile: CardProfile, ef_name: str
) -> dict[str, Any]:
    """Read every record of an EF in the *current* DF and decode it (no SELECT)."""
    _, ef = profile.ef(ef_name)
    if ef.sfi is None:
        raise ProfileError(f"{ef.name} has no SFI")
    count = ef.record_count if ef.layout.value == "simple_tlv" else 1
    records = [read_record(transmit, ef.sfi, n, f"READ RECORD {ef.name}/{n}")
               for n in range(1, count + 1)]  # fmt: skip
    try:
        return decode_records(ef, records)
    except (TlvError, EncodingError) as exc:
        raise ResponseError(f"{ef.name}: {exc}", SW_OK, command="READ RECORD") from exc


@dataclass(frozen=True)
class CardPublicData:
    """What a terminal reads from EF05 and EF06 (``holder`` None when EF06 needs a key the
    terminal did not present)."""

    atr: bytes
    card_identification: CardIdentification
    holder: Holder | None

    @property
    def card_number(self) -> str:
        return self.card_identification.card_number

    @property
    def card_identification_code(self) -> str:
        return self.card_identification.card_identification_code


def read_card_public(
    reader: Reader,
    profile: CardProfile = DEFAULT_PROFILE,
    *,
    crypto: CardCrypto | None = None,
    connect: bool = True,
) -> CardPublicData:
    """Select the social security application and read EF05 and EF06.

    On third-generation profiles EF06 needs EXTERNAL AUTHENTICATE with the read key: give
    ``crypto`` (HSM or PSAM side) to present it; without it ``holder`` is None.
    """
    atr = reader.connect() if connect else b""
    fci = select_df(reader, profile, "SSSE", fci=True)
    check_fci_algorithm(fci, profile)
    ident = read_file(reader, profile, "EF05")
    holder_rule = profile.ef("EF06")[1].read
    holder: Holder | None = None
    if holder_rule.kind is Access.FREE or crypto is not None:
        if holder_rule.kind is Access.KEY and holder_rule.key is not None and crypto is not None:
            external_authenticate(reader, crypto, holder_rule.key, profile)
        values = read_file(reader, profile, "EF06")
        values.setdefault("name_extension", "")
        holder = Holder(**values)
    try:
        card_ident = CardIdentification(**ident)
    except TypeError as exc:
        raise ResponseError(f"EF05 incomplete: {exc}", SW_OK, command="READ RECORD") from exc
    return CardPublicData(atr=atr, card_identification=card_ident, holder=holder)


def internal_authenticate(
    reader: Reader | apdu.Transmit, factor: bytes, random: bytes, *, p2: int = 0x00
) -> bytes:
    """INTERNAL AUTHENTICATE ``00 88 00 00 10`` (factor || random); the card's answer.
    The social security application must be selected."""
    if len(factor) != 8 or len(random) != 8:
        raise ValueError("factor and random are 8 bytes each")
    resp = send(reader, CommandApdu(0x00, 0x88, 0x00, p2, factor + random, le=256),
                "INTERNAL AUTHENTICATE")  # fmt: skip
    if len(resp) not in (8, 16):
        raise ResponseError(f"answer of {len(resp)} bytes", SW_OK, command="INTERNAL AUTHENTICATE")
    return resp


def check_internal_authenticate(
    crypto: CardCrypto, factor: bytes, random: bytes, response: bytes
) -> None:
    """Raise :class:`SecurityError` unless ``response`` is what the genuine card answers."""
    expected = crypto.internal_auth_response(factor, random)
    if not hmac.compare_digest(expected, response):
        raise SecurityError("card failed internal authentication (not genuine)", 0x6300,
                            command="INTERNAL AUTHENTICATE")  # fmt: skip


def _pin(profile: CardProfile, name: str) -> tuple[str, Any]:
    return profile.pin(name)


def verify_pin(
    reader: Reader,
    pin: str,
    *,
    pin_name: str = "ss",
    profile: CardProfile = DEFAULT_PROFILE,
    select: bool = True,
) -> None:
    """VERIFY; raises :class:`cardspec.errors.PinError` with ``tries_left`` when refused."""
    path, spec = _pin(profile, pin_name)
    if select:
        select_df(reader, profile, path)
    block = spec.encode(pin)
    send(reader, CommandApdu(0x00, 0x20, 0x00, spec.ref, block), "VERIFY", pin=True)


def change_pin(
    reader: Reader,
    old: str,
    new: str,
    *,
    pin_name: str = "ss",
    profile: CardProfile = DEFAULT_PROFILE,
    select: bool = True,
) -> None:
    """Change a PIN: the social security PIN with PBOC ``80 5E 01 00`` (old FF new), others
    with ISO CHANGE REFERENCE DATA ``00 24 00 ref``. The card refuses the initial PIN as new
    PIN (6A80)."""
    path, spec = _pin(profile, pin_name)
    if select:
        select_df(reader, profile, path)
    old_b, new_b = spec.encode(old), spec.encode(new)
    if spec.fmt is PinFormat.CN:
        data = old_b + b"\xff" + new_b
        cmd = (
            CommandApdu(0x80, 0x5E, 0x01, 0x00, data)
            if spec.ref == 0x00
            else CommandApdu(0x00, 0x24, 0x00, spec.ref, data)
        )
    else:
        cmd = CommandApdu(0x00, 0x24, 0x00, spec.ref, old_b + new_b)
    send(reader, cmd, "CHANGE PIN", pin=True)


def unblock_pin(
    reader: Reader,
    crypto: CardCrypto,
    *,
    new_pin: str | None = None,
    pin_name: str = "ss",
    profile: CardProfile = DEFAULT_PROFILE,
    select: bool = True,
) -> None:
    """PIN unblock (``84 24 00 ref`` + MAC under the PIN's unblock key); with ``new_pin`` a
    reload: the new PIN travels encrypted under the same key (it must then be changed by the
    holder, like an initial PIN)."""
    path, spec = _pin(profile, pin_name)
    if spec.unblock_key is None:
        raise ProfileError(f"PIN {pin_name} has no unblock key")
    if select:
        select_df(reader, profile, path)
    challenge = send(reader, CommandApdu(0x00, 0x84, 0, 0, le=8), "GET CHALLENGE")
    body = crypto.encrypt(spec.unblock_key, spec.encode(new_pin)) if new_pin else b""
    cmd = sm.wrap_once(
        crypto, spec.unblock_key, CommandApdu(0x84, 0x24, 0x00, spec.ref, body), challenge
    )
    send(reader, cmd, "PIN UNBLOCK", pin=True)


def reset_key_counter(
    reader: Reader, crypto: CardCrypto, slot: KeySlot, *, profile: CardProfile = DEFAULT_PROFILE
) -> None:
    """Issuer command: unblock card key ``slot`` (reset its error counter) with
    ``84 2C 03 <key id>`` MAC'd in a channel opened with the application master key DMK;
    ``crypto`` is the issuer's HSM side (the DMK never leaves it)."""
    _, spec = profile.key(slot)
    select_df(reader, profile, profile.key(KeySlot.DMK)[0])
    channel = external_authenticate(reader, crypto, KeySlot.DMK, profile)
    send(reader, channel.wrap(CommandApdu(0x80, 0x2C, 0x03, spec.key_id)), "RESET KEY COUNTER")


def block_application(
    reader: Reader, crypto: CardCrypto, *, profile: CardProfile = DEFAULT_PROFILE,
    df_name: str = "SSSE", unblock: bool = False,
) -> None:  # fmt: skip
    """Issuer command: block (``unblock``: unblock) the application ``df_name`` with APPLICATION
    BLOCK ``84 1E 00 00`` (UNBLOCK ``84 18 00 00``) MAC'd in a channel opened with the
    application master key DMK; ``crypto`` is the issuer's HSM side (the DMK never leaves
    it). A blocked application answers 6283 to its SELECT and 6985 to its use
    (:func:`application_blocked`)."""
    application_blocked(reader, profile, df_name)  # selects it (blocked or not)
    channel = external_authenticate(reader, crypto, KeySlot.DMK, profile)
    ins, what = (0x18, "APPLICATION UNBLOCK") if unblock else (0x1E, "APPLICATION BLOCK")
    send(reader, channel.wrap(CommandApdu(0x80, ins, 0x00, 0x00)), what)


def application_blocked(
    reader: Reader | apdu.Transmit, profile: CardProfile = DEFAULT_PROFILE, df_name: str = "SSSE"
) -> bool:
    """Whether the application ``df_name`` is blocked: its SELECT answers 6283 (selected file
    invalidated) instead of 9000; any other refusal raises."""
    df = profile.df(profile.df_path(df_name))
    fn = reader.transmit if isinstance(reader, Reader) else reader
    resp = apdu.exchange(fn, CommandApdu(0x00, 0xA4, 0x04, 0x0C, df.df_name))
    if resp.sw == SW.FILE_INVALIDATED:
        return True
    raise_for_sw(resp.sw, f"SELECT {df.name}")
    return False


@dataclass(frozen=True)
class PinStatus:
    tries_left: int
    must_change: bool


def pin_status(reader: Reader, profile: CardProfile = DEFAULT_PROFILE) -> dict[str, PinStatus]:
    """GET DATA DF11: tries left and "initial PIN not yet changed" for each PIN set."""
    raw = send(reader, CommandApdu(0x80, 0xCA, 0xDF, 0x11, le=256), "GET DATA DF11")
    try:
        value = tlv.decode_one(raw).value
    except TlvError as exc:
        raise ResponseError(f"GET DATA DF11: {exc}", SW_OK, command="GET DATA") from exc
    if len(value) % 3:
        raise ResponseError("GET DATA DF11: length not a multiple of 3", SW_OK)
    by_ref = {spec.ref: spec.name for _, spec in profile.pin_specs()}
    out: dict[str, PinStatus] = {}
    for i in range(0, len(value), 3):
        name = by_ref.get(value[i], f"ref{value[i]:02X}")
        out[name] = PinStatus(tries_left=value[i + 1], must_change=bool(value[i + 2]))
    return out


def life_cycle(reader: Reader | apdu.Transmit) -> LifeCycle:
    """GET DATA DF10: the card's life cycle (personalisation or secured)."""
    raw = send(reader, CommandApdu(0x80, 0xCA, 0xDF, 0x10, le=256), "GET DATA DF10")
    try:
        code = tlv.decode_one(raw).value
    except TlvError as exc:
        raise ResponseError(f"GET DATA DF10: {exc}", SW_OK, command="GET DATA") from exc
    for state in LifeCycle:
        if code == bytes([state.gp_code]):
            return state
    raise ResponseError(f"unknown life cycle {code.hex()}", SW_OK, command="GET DATA")


def is_locked(reader: Reader | apdu.Transmit) -> bool:
    """True once personalisation has been closed (issuer-only commands refused)."""
    return life_cycle(reader) is LifeCycle.SECURED


def chip_serial(reader: Reader | apdu.Transmit) -> bytes:
    """GET DATA DF12: the 8-byte chip serial (readable on blank cards too)."""
    raw = send(reader, CommandApdu(0x80, 0xCA, 0xDF, 0x12, le=256), "GET DATA DF12")
    try:
        value = tlv.decode_one(raw).value
    except TlvError as exc:
        raise ResponseError(f"GET DATA DF12: {exc}", SW_OK, command="GET DATA") from exc
    if len(value) != 8:
        raise ResponseError("chip serial is not 8 bytes", SW_OK, command="GET DATA")
    return value


def update_file(
    reader: Reader,
    crypto: CardCrypto,
    ef_name: str,
    values: Mapping[str, Any],
    *,
    profile: CardProfile = DEFAULT_PROFILE,
) -> int:
    """Post-issuance update of an EF (e.g. medical data with UK_MEDICAL): select its DF,
    authenticate with the file's write key and write every record MAC'd. Returns APDU count."""
    path, ef = profile.ef(ef_name)
    if ef.write.kind is not Access.KEY or ef.write.key is None or ef.sfi is None:
        raise ProfileError(f"{ef.name} is not writable with a key after issuance")
    counter = ApduCounter(reader)
    select_df(counter, profile, path)
    channel = external_authenticate(counter, crypto, ef.write.key, profile)
    for n, record in enumerate(encode_records(ef, values), start=1):
        cmd = channel.wrap(CommandApdu(0x00, 0xDC, n, (ef.sfi << 3) | 0x04, record))
        send(counter, cmd, f"UPDATE RECORD {ef.name}/{n}")
    return counter.count


def append_record(
    reader: Reader,
    crypto: CardCrypto,
    ef_name: str,
    record: bytes,
    *,
    profile: CardProfile = DEFAULT_PROFILE,
) -> None:
    """APPEND RECORD (e.g. a medical transaction log entry) with the file's write key."""
    path, ef = profile.ef(ef_name)
    if ef.write.key is None or ef.sfi is None:
        raise ProfileError(f"{ef.name} is not appendable with a key")
    select_df(reader, profile, path)
    channel = external_authenticate(reader, crypto, ef.write.key, profile)
    send(reader, channel.wrap(CommandApdu(0x00, 0xE2, 0x00, ef.sfi << 3, record)),
         f"APPEND RECORD {ef.name}")  # fmt: skip


def read_records(
    reader: Reader, ef_name: str, *, profile: CardProfile = DEFAULT_PROFILE, select: bool = True
) -> list[bytes]:
    """Raw records of an EF (cyclic files: newest first, until 6A83)."""
    path, ef = profile.ef(ef_name)
    if ef.sfi is None:
        raise ProfileError(f"{ef.name} has no SFI")
    if select:
        select_df(reader, profile, path)
    out: list[bytes] = []
    for n in range(1, ef.record_count + 1):
        try:
            out.append(read_record(reader, ef.sfi, n, f"READ RECORD {ef.name}/{n}"))
        except CardSpecError as exc:
            if getattr(exc, "sw", None) == SW.RECORD_NOT_FOUND:
                break
            raise
    return out


__all__ = [
    "ApduCounter",
    "CardPublicData",
    "PinStatus",
    "append_record",
    "change_pin",
    "check_fci_algorithm",
    "check_internal_authenticate",
    "chip_serial",
    "external_authenticate",
    "internal_authenticate",
    "is_locked",
    "life_cycle",
    "pin_status",
    "read_card_public",
    "read_file",
    "read_record",
    "read_records",
    "reset_key_counter",
    "select_df",
    "send",
    "unblock_pin",
    "update_file",
    "verify_pin",
]


# --- SM2: the chip's key and certificates (cardspec.sm2) -----------------------------------------


def read_certificates(reader: Reader | apdu.Transmit) -> tuple[bytes, bytes]:
    """GET DATA DF20 / DF21: the card certificate and the issuer certificate."""
    card = send(reader, CommandApdu(0x00, 0xCA, 0xDF, 0x20, le=256), "GET DATA DF20")
    issuer = send(reader, CommandApdu(0x00, 0xCA, 0xDF, 0x21, le=256), "GET DATA DF21")
    return card, issuer


def sm2_internal_authenticate(reader: Reader | apdu.Transmit, challenge: bytes) -> bytes:
    """INTERNAL AUTHENTICATE ``00 88 00 81``: the chip's SM2 signature over ``challenge``."""
    if not 1 <= len(challenge) <= 64:
        raise ValueError("the SM2 challenge is 1-64 bytes")
    return send(
        reader, CommandApdu(0x00, 0x88, 0x00, sm2.SM2_KEY_REF, challenge, le=256),
        "INTERNAL AUTHENTICATE (SM2)",
    )  # fmt: skip


def verify_chip_sm2(
    card_certificate: bytes, issuer_public: bytes, card_identification_code: str,
    challenge: bytes, signature: bytes,
) -> None:  # fmt: skip
    """The second proof of a genuine SM4 card (:func:`cardspec.sm2.verify_chip`); raises
    SecurityError (status 6A80: wrong data) if it fails."""
    try:
        sm2.verify_chip(card_certificate, issuer_public, card_identification_code, challenge,
                        signature)  # fmt: skip
    except ValueError as exc:
        raise SecurityError(str(exc), 0x6A80) from None


# --- the bank's issuer scripts (EMV / PBOC debit application) -----------------------------------


@dataclass(frozen=True)
class EmvScriptSession:
    """An online transaction opened for issuer scripts: the ATC and the first application
    cryptogram (ARQC) whose session keys MAC (SK-SMI) and encipher (SK-SMC) the scripts."""

    df_name: str
    atc: int
    ac: bytes
    pin: PinSpec
    cryptogram_type: int = 0x80
    """The card's answer (9F27 type bits): 80 ARQC; 00 AAC (a blocked application declines)."""


def emv_application(profile: CardProfile) -> tuple[str, DedicatedFile]:
    """The profile's EMV / PBOC debit application (path, DF); ProfileError if it has none."""
    for path, df in profile.walk():
        if df.emv is not None:
            return path, df
    raise ProfileError(f"profile {profile.name} has no bank application")


def dol_data(dol: bytes, values: Mapping[int, bytes]) -> bytes:
    """The data of a data object list (EMV Book 3 5.4): each tag's value from ``values``
    (right-justified, cut to its length), zeros for the others."""
    out = b""
    for tag, length in emv.parse_dol(dol):
        value = values.get(tag, b"")[-length:] if length else b""
        out += value.rjust(length, b"\x00")
    return out


def open_emv_script_session(
    transmit: apdu.Transmit | Reader, profile: CardProfile, unpredictable: bytes, today: str
) -> EmvScriptSession:
    """SELECT the bank application, GET PROCESSING OPTIONS, then a first GENERATE AC asking an
    ARQC for a zero-amount transaction (``today`` YYMMDD, ``unpredictable`` 4 bytes): the ATC
    and cryptogram the bank's issuer script commands are MAC'd with (EMV Book 2 9.2). A card
    that declines (AAC: blocked application) still gives them (an unblock script works)."""
    path, df = emv_application(profile)
    assert df.emv is not None
    if not df.pins:
        raise ProfileError(f"{df.name} has no PIN")
    fn = transmit.transmit if isinstance(transmit, Reader) else transmit
    selected = apdu.exchange(fn, CommandApdu(0x00, 0xA4, 0x04, 0x00, df.df_name, le=256))
    if selected.sw != SW.FILE_INVALIDATED:  # 6283: a blocked application, selected
        raise_for_sw(selected.sw, f"SELECT {df.name}")
    values = {0x5F2A: b"\x01\x56", 0x9F1A: b"\x01\x56", 0x9A: bytes.fromhex(today),
              0x9C: b"\x30", 0x9F37: unpredictable}  # fmt: skip
    pdol = dol_data(df.emv.pdol, values)
    send(transmit, CommandApdu(0x80, 0xA8, 0, 0, b"\x83" + bytes([len(pdol)]) + pdol, le=256),
         "GET PROCESSING OPTIONS")  # fmt: skip
    answer = send(transmit, CommandApdu(0x80, 0xAE, 0x80, 0, dol_data(df.emv.cdol1, values),
                                        le=256), "GENERATE AC")  # fmt: skip
    body = tlv.decode_one(answer)
    if body.tag != 0x80 or len(body.value) < 11:
        raise ProfileError("GENERATE AC: not a format 1 answer")
    return EmvScriptSession(path, int.from_bytes(body.value[1:3], "big"), body.value[3:11],
                            df.pins[0], body.value[0] & 0xC0)  # fmt: skip


def send_issuer_script(
    transmit: apdu.Transmit | Reader, ins: int, p2: int, data_and_mac: bytes, what: str
) -> None:
    """One issuer script command ``84 ins 00 p2`` (data || MAC) of the bank's host; raises for
    a refusal (6988: wrong MAC; the card counts it on its script key)."""
    send(transmit, CommandApdu(0x84, ins, 0, p2, data_and_mac), what)
