"""Personalisation: the issuer side that turns a blank chip into a social security card.

The lean APDU sequence (no redundant SELECT or READ), all over one MAC channel opened with the
chip's transport key KMC:

1. ``SELECT`` the social security DF by name (FCI checked: algorithm marker 9F0C).
2. ``GET CHALLENGE`` and ``EXTERNAL AUTHENTICATE`` with KMC (cryptogram from the
   :class:`~cardspec.crypto.CardCrypto` port: the HSM in production).
3. ``WRITE KEY`` for every key slot the profile declares: ``crypto.wrapped_card_key(slot)``
   (the card key wrapped under the card's key-loading key KLK with RFC 5649, computed inside
   the HSM; profile CHOICE ``key_loading``), MAC chained.
4. ``UPDATE RECORD`` of every record (EF05, EF06, then the insurance DFs and the financial
   application, one ``SELECT`` by AID per DF), MAC chained.
5. ``SET PIN`` for every PIN (initial PINs encrypted under KMC).
6. ``SET STATUS`` SECURED: the card refuses issuer-only commands afterwards and erases KMC
   and KLK.

``personalise`` returns the APDU count and the duration. Personal data is never logged.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
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
from cardspec.errors import CardNotFoundError, CardStateError, ProfileError
from cardspec.keyscheme import Algorithm, KeySlot
from cardspec.profile import (
    DEFAULT_PROFILE,
    CardIdentification,
    CardProfile,
    FinancialData,
    Holder,
    MedicalData,
    PensionData,
    encode_card_identification,
    encode_financial,
    encode_holder,
    encode_medical,
    encode_pension,
    encode_records,
)
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
    """Initial bank PIN; CHOICE: defaults to ``initial_pin`` (the bank has the holder set
    their own at activation)."""
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


def plan_records(data: CardPersoData, profile: CardProfile) -> dict[str, list[bytes]]:
    """EF name -> records to write, in profile order (raises before any APDU is sent)."""
    files: dict[str, list[bytes]] = {
        "EF05": encode_card_identification(data.card_identification(), profile),
        "EF06": encode_holder(data.holder, profile),
    }
    names = {ef.name for _, ef in profile.files()}
    optional = {
        "EF15": (data.medical, encode_medical),
        "EF16": (data.pension, encode_pension),
        "SFI01": (data.financial, encode_financial),
    }
    for ef_name, (value, encoder) in optional.items():
        if ef_name not in names:
            continue
        if value is None:
            if ef_name == "SFI01":
                raise ProfileError(
                    f"profile {profile.name} has a financial application: give financial data"
                    " or use a profile without it"
                )
            continue
        files[ef_name] = encoder(value, profile)  # type: ignore[operator]
    for ef_name, values in data.extra.items():
        files[ef_name] = encode_records(profile.ef(ef_name)[1], values)
    order = [ef.name for _, ef in profile.files()]
    return {name: files[name] for name in order if name in files}


def sm2_certifier(profile: CardProfile, key_service: object) -> sm2.Sm2Signer | None:
    """The ``certifier`` of :func:`personalise` for a card of ``profile``: SM4 cards get their
    SM2 key pair and certificates when the key service holds the issuer's SM2 key
    (``sign_sm2``: ``hsm.service.Pkcs11KeyService`` on an HSM with an SM table); others none."""
    if profile.algorithm is Algorithm.SM4 and hasattr(key_service, "sign_sm2"):
        return cast("sm2.Sm2Signer", key_service)
    return None


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
    pins = {"ss": data.initial_pin, "bank": data.bank_pin or data.initial_pin}
    pin_blocks = [(spec, spec.encode(pins.get(spec.name, data.initial_pin)))
                  for _, spec in profile.pin_specs()]  # fmt: skip

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


def sample_perso_data(
    card_identification_code: str,
    profile: CardProfile = DEFAULT_PROFILE,
    *,
    card_number: str = "X00000019",
    issue_date: date | None = None,
    pan: str = "6217000012345678901",
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
    )
