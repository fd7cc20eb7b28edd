"""Request and response bodies (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, model_validator

from cardspec.ids import parse_card_number
from issuance.models import ApplicationStatus, Channel, ChipAppKind

Hex32 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{32}$", description="32 hex characters")]
#: The card number's check character is validated here, before any lookup, by the one rule
#: (``cardspec.ids.parse_card_number``) the CLI and the services apply too.
CardNumber = Annotated[
    str,
    Field(min_length=1, max_length=40, description="9-character card number"),
    AfterValidator(parse_card_number),
]
#: Times are stored naive UTC; the API says so (RFC 3339 with Z).
UtcDatetime = Annotated[
    datetime, AfterValidator(lambda d: d if d.tzinfo else d.replace(tzinfo=UTC))
]
_NO_NUL = r"^[^\x00]*$"
#: Generous bounds only: trimming, folding and the real checks are the domain's normaliser's
#: (``issuance.services.applications.normalise``), the same for the CLI and file imports.
CitizenIdStr = Annotated[str, Field(min_length=1, max_length=64, pattern=_NO_NUL)]
Text500 = Annotated[str, Field(min_length=1, max_length=500, pattern=_NO_NUL)]


def text(max_length: int) -> object:
    """A text field of at most ``max_length`` characters without NUL bytes."""
    return Field(max_length=max_length, pattern=_NO_NUL)


class _In(BaseModel):
    """A request body: unknown fields refused; booleans are ``StrictBool`` (``true``/``false``
    only: neither ``0`` nor ``"yes"``)."""

    model_config = ConfigDict(extra="forbid")


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    scope: str


class Hello(BaseModel):
    hello: str


# --- verification ------------------------------------------------------------------------------
class ChallengeOut(BaseModel):
    challenge_id: str = Field(description="quote it when posting the card's answer")
    challenge: str = Field(description="16 bytes hex: 8-byte process factor || 8-byte random")
    apdu: str = Field(description="the INTERNAL AUTHENTICATE command to send to the card (hex)")
    expires_at: UtcDatetime


class VerificationIn(_In):
    challenge_id: Hex32
    card_identification_code: Hex32
    card_number: CardNumber
    response: Annotated[
        str,
        Field(
            pattern=r"^([0-9a-fA-F]{16}|[0-9a-fA-F]{32})$",
            description="the card's INTERNAL AUTHENTICATE answer (8 or 16 bytes hex)",
        ),
    ]
    application: ChipAppKind = Field(
        ChipAppKind.SOCIAL_SECURITY, description="the chip application the visit needs"
    )
    include_holder: StrictBool = Field(False, description="needs scope holder:read")
    include_photo: StrictBool = Field(False, description="needs scope holder:photo")
    sm2_card_certificate: str | None = Field(
        None, pattern=r"^([0-9a-fA-F]{2}){64,1024}$",
        description="SM4 cards: the card certificate (GET DATA DF20, hex); with sm2_signature "
        "the chip's SM2 signature is checked too, a second proof",
    )  # fmt: skip
    sm2_signature: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{128}$",
        description="the chip's SM2 signature over the challenge (INTERNAL AUTHENTICATE "
        "00 88 00 81, hex r || s)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _sm2_pair(self) -> VerificationIn:
        if (self.sm2_card_certificate is None) != (self.sm2_signature is None):
            raise ValueError("give sm2_card_certificate and sm2_signature together")
        return self


class HolderOut(BaseModel):
    name: str
    citizen_id: str = Field(description="masked unless the caller has holder:full_id")
    sex: str
    birth_date: date


class VerificationOut(BaseModel):
    valid: bool
    reason: str | None = Field(
        None,
        description="lost, suspended, cancelled, replaced, expired, damaged, not_activated, "
        "not_issued, blocked, not_genuine, wrong_application, unknown_card, challenge_expired, "
        "challenge_reused, challenge_unknown",
    )
    application: ChipAppKind
    card_number: str | None = None
    card_identification_code: str | None = None
    card_kind: str | None = None
    card_status: str | None = None
    application_status: str | None = None
    expiry_date: date | None = None
    holder: HolderOut | None = None
    photo_jpeg_base64: str | None = None


class PublicKeyOut(BaseModel):
    algorithm: Literal["ECDSA-P256-SHA256"] = "ECDSA-P256-SHA256"
    public_key_pem: str
    key_id: str = Field(description="SHA-256 of the DER public key, hex")


# --- cards --------------------------------------------------------------------------------------
class PinStateOut(BaseModel):
    """A PIN of the card as a card reader last reported it (never the PIN)."""

    state: Literal["blocked", "usable", "unknown"] = Field(
        description="blocked: no try left (the counter unblocks it)"
    )
    tries_left: int | None
    unblocks: int = Field(description="counter unblocks and resets done on this PIN")
    seen_at: datetime


class CardOut(BaseModel):
    card_id: int
    card_number: str
    card_identification_code: str | None
    kind: str
    status: str
    province_code: str
    holder_name: str | None = Field(
        None, description="staff, or an agency granted holder:lookup; else absent"
    )
    holder_citizen_id_masked: str | None = Field(
        None, description="staff, or an agency granted holder:lookup; else absent"
    )
    issue_date: date | None
    expiry_date: date | None
    chip_apps: dict[str, str]
    pins: dict[str, PinStateOut] = Field(
        default_factory=dict,
        description="each PIN (ss: social security, bank) as a reader last reported it; a PIN "
        "never seen at a reader is absent",
    )


class _HolderProof(_In):
    """What an agency's system (a hotline, a website) proves the holder with: it cannot check
    an identity card itself, so the caller names the holder (ID number and name, both must
    match the card's) or quotes the one-time code sent to the holder's phone."""

    holder_citizen_id: (
        Annotated[str, Field(min_length=15, max_length=18, pattern=_NO_NUL)] | None
    ) = Field(None, description="an agency's call: the holder's full ID number (with holder_name)")
    holder_name: Annotated[str, Field(min_length=1, max_length=60, pattern=_NO_NUL)] | None = Field(
        None, description="an agency's call: the holder's name (with holder_citizen_id)"
    )
    one_time_code: Annotated[str, Field(pattern=r"^[0-9]{6}$")] | None = Field(
        None,
        description="an agency's call, instead: the code sent to the holder's phone "
        "(POST /v1/cards/{card_number}/loss-codes)",
    )


class LossIn(_HolderProof):
    channel: Channel = Channel.COUNTER
    identity_checked: StrictBool = False
    note: Annotated[str, text(500)] | None = None


class UnreportIn(_HolderProof):
    channel: Channel = Channel.COUNTER
    identity_checked: StrictBool = False
    note: Annotated[str, text(500)] | None = None


class LossCodeOut(BaseModel):
    accepted: Literal[True] = Field(
        True, description="the same answer whether a code was sent or not"
    )


class LossOut(BaseModel):
    report_id: int
    card_number: str
    kind: str
    status: str
    card_status: str
    lapses_at: UtcDatetime | None


class ReasonIn(_In):
    reason: Text500
    channel: Channel = Channel.COUNTER


class ChannelIn(_In):
    channel: Channel = Channel.COUNTER


class ReplaceIn(_In):
    reason: Text500 = "replacement"
    fee_fen: Annotated[int, Field(ge=0, le=1_000_000)] | None = None


class FinancialIn(_In):
    """Activation at a branch: the holder's identity checked, the PIN set on the card, and the
    card itself presented: its INTERNAL AUTHENTICATE answer to a challenge of
    ``POST /v1/verifications/challenge`` (checked in the HSM, the challenge used up)."""

    identity_checked: StrictBool
    pin_set: StrictBool
    challenge_id: Hex32
    card_identification_code: Hex32
    response: Annotated[
        str,
        Field(
            pattern=r"^([0-9a-fA-F]{16}|[0-9a-fA-F]{32})$",
            description="the card's INTERNAL AUTHENTICATE answer to the challenge (hex)",
        ),
    ]


class TemporaryIn(_In):
    person_id: Annotated[int, Field(ge=1, le=2**31 - 1)]
    chip: StrictBool = Field(
        False,
        description="Personalise its chip (card category temporary, only the medical "
        "application) in the server's desk reader and print its temporary face, in the same "
        "transaction ([readers] and [printer] backends; ykt cards temporary --chip).",
    )


class HandBackIn(ChannelIn):
    chip: StrictBool = Field(
        False,
        description="Block the returned chip in the server's desk reader first, by its own "
        "command with keys from the HSM (ykt cards hand-back --chip).",
    )


class CollectIn(ChannelIn):
    temporary_card_returned: StrictBool = Field(
        False,
        description="The holder handed the temporary card back now: it is cancelled and its "
        "deposit refunded. Otherwise the temporary card is cancelled and the deposit kept "
        "until it is handed back (POST /v1/cards/{temporary card}/hand-back).",
    )


class CollectOut(BaseModel):
    card: CardOut
    temporary_cards_returned: list[str]
    deposits_refunded_fen: int
    temporary_cards_kept: list[str] = Field(
        default_factory=list, description="temporary cards not handed back (deposit kept)"
    )


# --- applications ------------------------------------------------------------------------------
class ApplicationIn(_In):
    citizen_id: CitizenIdStr
    name: Annotated[str, Field(min_length=1, max_length=200, pattern=_NO_NUL)]
    phone: Annotated[str, text(40)] | None = None
    sex: Annotated[str, text(16)] | None = None
    birth_date: Annotated[str, text(40)] | None = Field(
        None, description="YYYY-MM-DD; checked with the rest of the record"
    )
    region_code: Annotated[str, text(16)] | None = None
    ethnicity: Annotated[str, text(16)] | None = None
    address: Annotated[str, text(400)] | None = None
    photo_base64: Annotated[str, Field(max_length=20_000_000)] | None = Field(
        None, description="the photo (JPEG or PNG), base64; children under 6 may have none"
    )


class ApplicationOut(BaseModel):
    id: int
    person_id: int
    status: ApplicationStatus
    channel: str
    received_at: UtcDatetime
    decided_at: UtcDatetime | None
    reject_reason: str | None
    photo_sha256: str | None
    photo_exempt: bool
    card_id: int | None


class ApprovalOut(BaseModel):
    application: ApplicationOut
    card_number: str
    card_id: int


class RejectIn(_In):
    reason: Text500


# --- batches, audit ----------------------------------------------------------------------------
class BatchOut(BaseModel):
    id: int
    name: str
    status: str
    created_at: UtcDatetime
    cards: int


class BatchReportOut(BaseModel):
    """The batch report of issuance.batches.report (what ``ykt batch report`` prints)."""

    batch: BatchOut
    cards_by_status: dict[str, int]
    stages: dict[str, int] = Field(description="batch items by production stage")
    good: int = Field(description="cards checked, shipped or issued")
    chips: dict[str, int] = Field(description="blank chips used: good, spoiled, assigned")
    spoil_reasons: dict[str, int]
    spoil_rate: float
    mean_seconds: dict[str, float | None] = Field(description="mean time per stage")
    apdus_per_card: float | None
    spoiled_cards_shipped: int
    completed_at: UtcDatetime | None
    selection: dict[str, str] = Field(description="the batch's selection filters")


class AuditEventOut(BaseModel):
    id: int
    occurred_at: UtcDatetime
    actor: str
    role: str
    channel: str
    action: str
    entity_type: str
    entity_id: str
    before: str | None
    after: str | None
    reason: str | None
    details: str
    chain_seq: int | None


class AuditVerifyOut(BaseModel):
    events: int
    last_seq: int
    checkpoints: int
    signed_checkpoints: int
    unsealed: int
    verified_against: Literal["hsm_signing_key"] = Field(
        "hsm_signing_key",
        description="every checkpoint was verified against the issuer's signing key in the "
        "HSM; an unsigned checkpoint or one signed by another key answers 409",
    )


class PrincipalStateOut(BaseModel):
    kind: Literal["clients", "agencies", "staff"]
    name: str
    active: bool


# --- uploads: bulk import, photo, death records; temporary card hand-back ----------------------
class FieldProblemOut(BaseModel):
    field: str
    reason: str
    code: str | None = Field(default=None, description="stable reason code, where there is one")


class ImportLineOut(BaseModel):
    line: int = Field(description="line (row) number in the file, the header being line 1")
    citizen_id_masked: str
    application_id: int | None = None
    problems: list[FieldProblemOut] = Field(
        default_factory=list, description="every reason a rejected record was refused"
    )


class ImportOut(BaseModel):
    file: str
    collective_id: int
    accepted: list[ImportLineOut]
    rejected: list[ImportLineOut]
    duplicates: list[ImportLineOut] = Field(description="records imported before (no change)")


class DeathLineOut(BaseModel):
    line: int
    problems: list[FieldProblemOut]


class DeathFeedOut(BaseModel):
    persons_recorded: int
    cards_cancelled: int
    already_done: int
    rejected: list[DeathLineOut]


class HandBackOut(BaseModel):
    card: CardOut
    deposit_refunded_fen: int


class ApplicationDetailOut(ApplicationOut):
    """One application in full, for the staff who decide it (``GET /v1/applications/{id}``):
    every field, the person's identity, who did each step; the processed photo with
    ``?photo=true``."""

    citizen_id: str = Field(
        description="in full for callers who decide applications (applications:write) or hold "
        "holder:full_id; masked otherwise"
    )
    name: str
    sex: str
    birth_date: date
    ethnicity: str | None
    region_code: str
    phone: str | None
    address: str | None
    collective: str | None
    received_by: str | None
    processed_by: str | None
    reviewed_by: str | None
    approved_by: str | None
    fee_fen: int
    card_number: str | None
    photo_base64: str | None = Field(
        None, description="the processed card photo (JPEG), only with ?photo=true"
    )
