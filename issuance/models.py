"""The system of record: people, applications, cards and everything that happens to them.

Domain enums are StrEnum stored by value (VARCHAR, no native database enum, so adding a value
needs no type migration). Times are naive UTC (``utcnow()``), the same on SQLite and PostgreSQL.
Money is integer fen. Schema changes go through Alembic (:mod:`issuance.migrations`); the drift
check (``ykt db check``) fails when these models and the migrations disagree.
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, deferred, mapped_column, relationship

from issuance.db import Base


def utcnow() -> datetime:
    """Current UTC time, naive (what every DateTime column stores)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _enum(cls: type[enum.Enum]) -> sa.Enum:
    return sa.Enum(
        cls,
        native_enum=False,
        create_constraint=False,
        length=24,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


# --- enums ---------------------------------------------------------------------------------
class StaffRole(enum.StrEnum):
    """Roles of staff users (one per user). ``system`` is the role of workers and feeds."""

    CLERK = "clerk"
    REVIEWER = "reviewer"
    APPROVER = "approver"
    SUPERVISOR = "supervisor"
    FUND_SUPERVISOR = "fund_supervisor"
    BANK_TELLER = "bank_teller"
    AUDITOR = "auditor"
    ADMIN = "admin"
    SYSTEM = "system"


class Channel(enum.StrEnum):
    """Where a request came from (the province's channel codes plus internal ones)."""

    COUNTER = "counter"
    PHONE = "phone"
    WEB = "web"
    APP = "app"
    SMS = "sms"
    WECHAT = "wechat"
    BANK = "bank"
    EMPLOYER = "employer"
    KIOSK = "kiosk"
    PORTABLE = "portable"
    FEED = "feed"
    SYSTEM = "system"
    #: the web console (``/console``): a signed-in staff user at a counter or a back office
    CONSOLE = "console"


class ApplicationChannel(enum.StrEnum):
    COUNTER = "counter"
    EMPLOYER = "employer"
    COLLECTIVE = "collective"


class ApplicationStatus(enum.StrEnum):
    RECEIVED = "received"
    PROCESSED = "processed"
    REVIEWED = "reviewed"
    APPROVED = "approved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


LIVE_APPLICATION_STATUSES = (
    ApplicationStatus.RECEIVED,
    ApplicationStatus.PROCESSED,
    ApplicationStatus.REVIEWED,
)


class CollectiveKind(enum.StrEnum):
    EMPLOYER = "employer"
    SCHOOL = "school"
    COMMUNITY = "community"


class CardKind(enum.StrEnum):
    FORMAL = "formal"
    TEMPORARY = "temporary"


class CardStatus(enum.StrEnum):
    NUMBER_ALLOCATED = "number_allocated"
    IN_PRODUCTION = "in_production"
    PERSONALISED = "personalised"
    SHIPPED = "shipped"
    ISSUED = "issued"  # handed to the holder, social security function still sealed
    ACTIVE = "active"
    SUSPENDED = "suspended"
    LOST_PROVISIONAL = "lost_provisional"
    LOST_FORMAL = "lost_formal"
    DAMAGED = "damaged"
    REPLACED = "replaced"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


TERMINAL_CARD_STATUSES = (CardStatus.REPLACED, CardStatus.EXPIRED, CardStatus.CANCELLED)


class CardAlgorithm(enum.StrEnum):
    """Algorithm family of the card (FCI 9F0C: 86 01 01 = 3DES, 86 01 03 = SM4)."""

    DES3 = "3des"
    SM4 = "sm4"
    AES = "aes"


class ChipAppKind(enum.StrEnum):
    SOCIAL_SECURITY = "social_security"
    MEDICAL = "medical"
    PENSION = "pension"
    FINANCIAL = "financial"


class ChipAppStatus(enum.StrEnum):
    SEALED = "sealed"  # personalised, not yet activated
    ACTIVE = "active"
    SUSPENDED = "suspended"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"


class LossKind(enum.StrEnum):
    PROVISIONAL = "provisional"
    FORMAL = "formal"


class LossStatus(enum.StrEnum):
    OPEN = "open"
    FORMALISED = "formalised"  # a provisional report made formal (a new formal row exists)
    LAPSED = "lapsed"
    WITHDRAWN = "withdrawn"
    REPLACED = "replaced"
    CANCELLED = "cancelled"


class AgencyKind(enum.StrEnum):
    HOSPITAL = "hospital"
    PHARMACY = "pharmacy"
    BANK = "bank"
    #: A community (street) service centre: a collection point where residents collect cards.
    COMMUNITY = "community"
    OTHER = "other"


class BatchStage(enum.StrEnum):
    """Where one card of a production batch is (``issuance.batches.items`` has the table)."""

    SELECTED = "selected"  # in the batch, no chip yet (or its chip was spoiled: requeued)
    PREPARED = "prepared"  # a blank chip assigned, personalisation data prepared
    ENCODING = "encoding"  # a station is personalising the chip (interrupted = spoiled)
    PERSONALISED = "personalised"  # chip personalised and locked
    PRINTED = "printed"  # faces printed
    CHECKED = "checked"  # passed quality control: a good card
    SHIPPED = "shipped"  # sent to its collection point
    ISSUED = "issued"  # collected by the holder
    FAILED = "failed"  # spoiled too often: a supervisor decides (retry or withdraw)
    AT_BUREAU = "at_bureau"  # exported in a bureau file: the bureau makes it (stations skip it)
    WITHDRAWN = "withdrawn"  # taken out of production by a supervisor (the card is cancelled)


class BatchStatus(enum.StrEnum):
    """Where a production batch is (``issuance.lifecycle.BATCH_TRANSITIONS``; stored as a plain
    string column, ``batches.status``)."""

    OPEN = "open"  # selected, production not started
    IN_PRODUCTION = "in_production"  # a run started
    PRODUCED = "produced"  # no card left to make (good, failed or withdrawn)


class ChipStatus(enum.StrEnum):
    """A blank chip taken from stock for a card: every one ends good or spoiled."""

    ASSIGNED = "assigned"
    GOOD = "good"
    SPOILED = "spoiled"


# --- tables ---------------------------------------------------------------------------------
class Agency(Base):
    __tablename__ = "agencies"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(32), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    kind: Mapped[AgencyKind] = mapped_column(_enum(AgencyKind))
    region_code: Mapped[str] = mapped_column(sa.String(6))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: False: disabled (migration 0011): none of its clients gets a token or is served
    active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())


class Staff(Base):
    __tablename__ = "staff"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    display_name: Mapped[str] = mapped_column(sa.String(100))
    role: Mapped[StaffRole] = mapped_column(_enum(StaffRole))
    agency_id: Mapped[int | None] = mapped_column(sa.ForeignKey("agencies.id"))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: scrypt hash of the password the ``ykt`` CLI asks for (migration 0004); None = may not
    #: act through the CLI until an administrator sets one (``ykt db set-password``).
    password_hash: Mapped[str | None] = mapped_column(sa.String(200))


class Person(Base):
    """One resident. One person, one social security number (the citizen ID number)."""

    __tablename__ = "persons"
    #: The counter's searches (migration 0011; ``issuance.services.people``): by phone, by
    #: name with the birth date, by name with the region (a range on the second column).
    __table_args__ = (
        sa.Index("ix_persons_phone", "phone"),
        sa.Index("ix_persons_name_birth_date", "name", "birth_date"),
        sa.Index("ix_persons_name_region", "name", "region_code"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    citizen_id: Mapped[str] = mapped_column(sa.String(18), unique=True)
    name: Mapped[str] = mapped_column(sa.String(60))
    #: The GBK name written to the chip when ``name`` has characters outside GBK (the city's
    #: substitution, ``issuance.cardname``); None: the name is written as it is.
    card_name: Mapped[str | None] = mapped_column(sa.String(60))
    sex: Mapped[str] = mapped_column(sa.String(1))  # GB/T 2261.1: 1 male, 2 female, 9 unstated
    birth_date: Mapped[date]
    ethnicity: Mapped[str | None] = mapped_column(sa.String(2))  # GB 3304 code
    region_code: Mapped[str] = mapped_column(sa.String(6))  # decides who pays subsidies
    phone: Mapped[str | None] = mapped_column(sa.String(20))
    address: Mapped[str | None] = mapped_column(sa.String(200))
    death_date: Mapped[date | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    cards: Mapped[list[Card]] = relationship(back_populates="person", foreign_keys="Card.person_id")

    def __repr__(self) -> str:  # never the full number
        from cardspec.ids import mask_citizen_id

        return f"Person(id={self.id}, citizen_id={mask_citizen_id(self.citizen_id)!r})"


class CollectiveApplicant(Base):
    """An employer, or a school/community acting for members who have no employer."""

    __tablename__ = "collective_applicants"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    kind: Mapped[CollectiveKind] = mapped_column(_enum(CollectiveKind))
    org_code: Mapped[str | None] = mapped_column(sa.String(18))
    region_code: Mapped[str] = mapped_column(sa.String(6))
    contact_phone: Mapped[str | None] = mapped_column(sa.String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Application(Base):
    __tablename__ = "applications"
    __table_args__ = (
        # One live application per person (the database enforces what intake checks).
        sa.Index(
            "uq_applications_live_person",
            "person_id",
            unique=True,
            sqlite_where=sa.text("status IN ('received', 'processed', 'reviewed')"),
            postgresql_where=sa.text("status IN ('received', 'processed', 'reviewed')"),
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(sa.ForeignKey("persons.id"), index=True)
    channel: Mapped[ApplicationChannel] = mapped_column(_enum(ApplicationChannel))
    status: Mapped[ApplicationStatus] = mapped_column(_enum(ApplicationStatus), index=True)
    collective_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("collective_applicants.id"), index=True
    )
    received_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    processed_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    reviewed_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    approved_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]
    reject_reason: Mapped[str | None] = mapped_column(sa.String(500))
    phone: Mapped[str | None] = mapped_column(sa.String(20))
    photo_jpeg: Mapped[bytes | None] = deferred(mapped_column(sa.LargeBinary))
    photo_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    photo_exempt: Mapped[bool] = mapped_column(default=False)
    fee_fen: Mapped[int] = mapped_column(default=0)
    #: Identifies the file line an imported application came from (re-import finds it).
    #: Cleared when the application is rejected or withdrawn (kept in its audit event), so
    #: only live and approved applications count as "already imported".
    import_ref: Mapped[str | None] = mapped_column(sa.String(80), unique=True)
    card_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("cards.id", use_alter=True), index=True
    )
    version: Mapped[int] = mapped_column(default=1)
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012

    person: Mapped[Person] = relationship()
    collective: Mapped[CollectiveApplicant | None] = relationship()


class Batch(Base):
    """A production batch: approved applications picked by region, collective applicant and
    approval date (migration 0002 added the selection and production columns)."""

    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    status: Mapped[str] = mapped_column(sa.String(24), default="open")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    region_code: Mapped[str | None] = mapped_column(sa.String(6))
    collective_id: Mapped[int | None] = mapped_column(sa.ForeignKey("collective_applicants.id"))
    approved_from: Mapped[date | None]
    approved_to: Mapped[date | None]
    created_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    profile_name: Mapped[str | None] = mapped_column(sa.String(40))
    card_count: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]


class BatchItem(Base):
    """One card of a batch: its stage, attempts and the worker lease (claimed with
    ``FOR UPDATE SKIP LOCKED`` on PostgreSQL). On PostgreSQL the table has ``fillfactor = 40``
    (migration 0023): the lease write changes no indexed column and finds room on its page, a
    HOT update (no index touched)."""

    __tablename__ = "batch_items"
    #: (batch, stage, id): claims are index range scans in id order (migration 0010)
    __table_args__ = (sa.Index("ix_batch_items_batch_stage", "batch_id", "stage", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(sa.ForeignKey("batches.id"))
    card_id: Mapped[int] = mapped_column(sa.ForeignKey("cards.id"), unique=True)
    application_id: Mapped[int | None] = mapped_column(sa.ForeignKey("applications.id"))
    stage: Mapped[BatchStage] = mapped_column(_enum(BatchStage))
    attempts: Mapped[int] = mapped_column(default=0)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(100))
    lease_expires_at: Mapped[datetime | None]
    #: Serial (16 hex) of the chip the card is being made on; None while it has none.
    chip_serial: Mapped[str | None] = mapped_column(sa.String(16))
    issue_date: Mapped[date | None]
    station: Mapped[str | None] = mapped_column(sa.String(100))
    apdu_count: Mapped[int | None]
    print_ref: Mapped[str | None] = mapped_column(sa.String(300))
    #: The card number printed on the face (checked against the chip by quality control).
    printed_card_number: Mapped[str | None] = mapped_column(sa.String(9))
    #: SHA-256 of the face data as rendered and printed (fields + photo hash; migration 0005).
    face_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    #: ``file_id`` of the bureau file the card was exported in (stage ``at_bureau``; 0005).
    #: Not indexed (migration 0023): read only beside ``card_id``, whose unique index finds it.
    bureau_file_id: Mapped[str | None] = mapped_column(sa.String(32))
    collection_point_id: Mapped[int | None] = mapped_column(sa.ForeignKey("agencies.id"))
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    stage_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    prepared_at: Mapped[datetime | None]
    personalised_at: Mapped[datetime | None]
    printed_at: Mapped[datetime | None]
    checked_at: Mapped[datetime | None]
    shipped_at: Mapped[datetime | None]
    issued_at: Mapped[datetime | None]

    card: Mapped[Card] = relationship()
    batch: Mapped[Batch] = relationship()


class BlankChip(Base):
    """A blank chip taken from stock for a card of a batch, and how it ended."""

    __tablename__ = "blank_chips"
    id: Mapped[int] = mapped_column(primary_key=True)
    chip_serial: Mapped[str] = mapped_column(sa.String(16), unique=True)
    batch_id: Mapped[int] = mapped_column(sa.ForeignKey("batches.id"), index=True)
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("batch_items.id"), index=True)
    card_id: Mapped[int] = mapped_column(sa.ForeignKey("cards.id"))
    status: Mapped[ChipStatus] = mapped_column(_enum(ChipStatus))
    reason: Mapped[str | None] = mapped_column(sa.String(500))
    station: Mapped[str | None] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]
    #: Where data preparation put the chip's perso record (``issuance.batches.persofile``):
    #: the segment file under ``<data_dir>/perso`` and the record's byte offset in it; None:
    #: prepared card by card (the station derives the keys). Migration 0007.
    perso_file: Mapped[str | None] = mapped_column(sa.String(100))
    perso_offset: Mapped[int | None] = mapped_column(sa.BigInteger)


class StockChipStatus(enum.StrEnum):
    """A chip of a supplier's delivery (``ykt stock import``)."""

    AVAILABLE = "available"  # blank, in the card centre's stock
    USED = "used"  # bound to a card at a station (its fate is in blank_chips)
    SPOILED = "spoiled"  # bound to a card, then spoiled (failed, or interrupted in a station)


class StockRefusal(enum.StrEnum):
    """Why a station refused a chip fed into it (set aside, never personalised)."""

    UNKNOWN = "unknown"  # not in any imported delivery
    USED = "used"  # already bound to a card (a finished card fed again)
    SPOILED = "spoiled"  # bound to a card once and spoiled since
    WRONG_ALGORITHM = "wrong_algorithm"  # delivered for the other card algorithm
    UNREADABLE = "unreadable"  # no chip serial could be read (mute, foreign card)


class StockChip(Base):
    """A blank chip delivered by a chip supplier, pre-personalised with its transport key KMC
    and key-loading key KLK diversified by its serial from the supplier's delivery key set
    ``key_version`` (never stored here: derived in the HSM at the station; migrations 0005,
    0008). ``kmc_kcv``: the KMC's check value as the delivery file gave it (checked at import)."""

    __tablename__ = "stock_chips"
    id: Mapped[int] = mapped_column(primary_key=True)
    chip_serial: Mapped[str] = mapped_column(sa.String(16), unique=True)
    lot: Mapped[str] = mapped_column(sa.String(64), index=True)
    supplier: Mapped[str] = mapped_column(sa.String(100), index=True)
    key_version: Mapped[int] = mapped_column(default=1, server_default=sa.text("1"))
    algorithm: Mapped[CardAlgorithm] = mapped_column(_enum(CardAlgorithm))
    kmc_kcv: Mapped[str | None] = mapped_column(sa.String(6))
    status: Mapped[StockChipStatus] = mapped_column(_enum(StockChipStatus), index=True)
    card_id: Mapped[int | None] = mapped_column(sa.ForeignKey("cards.id"))
    imported_at: Mapped[datetime] = mapped_column(default=utcnow)
    used_at: Mapped[datetime | None]


class StockRejection(Base):
    """A chip a station refused (:class:`StockRefusal`; migration 0008)."""

    __tablename__ = "stock_rejections"
    id: Mapped[int] = mapped_column(primary_key=True)
    #: None: the chip's serial could not be read.
    chip_serial: Mapped[str | None] = mapped_column(sa.String(16), index=True)
    reason: Mapped[StockRefusal] = mapped_column(_enum(StockRefusal))
    detail: Mapped[str | None] = mapped_column(sa.String(300))
    station: Mapped[str | None] = mapped_column(sa.String(100))
    batch_id: Mapped[int | None] = mapped_column(sa.ForeignKey("batches.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Card(Base):
    __tablename__ = "cards"
    __table_args__ = (
        # One live formal card per person.
        sa.Index(
            "uq_cards_live_formal_person",
            "person_id",
            unique=True,
            sqlite_where=sa.text(
                "kind = 'formal' AND status NOT IN ('replaced', 'expired', 'cancelled')"
            ),
            postgresql_where=sa.text(
                "kind = 'formal' AND status NOT IN ('replaced', 'expired', 'cancelled')"
            ),
        ),
        # One live temporary card per person (migration 0004): two counters racing to issue
        # one cannot both win, whatever the isolation level.
        sa.Index(
            "uq_cards_live_temporary_person",
            "person_id",
            unique=True,
            sqlite_where=sa.text(
                "kind = 'temporary' AND status NOT IN ('replaced', 'expired', 'cancelled')"
            ),
            postgresql_where=sa.text(
                "kind = 'temporary' AND status NOT IN ('replaced', 'expired', 'cancelled')"
            ),
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    #: 9 characters with check character; unique and never reused (allocated from a series).
    card_number: Mapped[str] = mapped_column(sa.String(9), unique=True)
    #: 32 characters: region + D156000005 + chip serial; known once a chip is assigned.
    card_identification_code: Mapped[str | None] = mapped_column(sa.String(32), unique=True)
    kind: Mapped[CardKind] = mapped_column(_enum(CardKind))
    status: Mapped[CardStatus] = mapped_column(_enum(CardStatus))
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    person_id: Mapped[int] = mapped_column(sa.ForeignKey("persons.id"), index=True)
    application_id: Mapped[int | None] = mapped_column(sa.ForeignKey("applications.id"))
    region_code: Mapped[str] = mapped_column(sa.String(6))
    key_version: Mapped[int] = mapped_column(default=1)
    algorithm: Mapped[CardAlgorithm] = mapped_column(_enum(CardAlgorithm))
    issue_date: Mapped[date | None]
    expiry_date: Mapped[date | None] = mapped_column(index=True)  # the expiry job's scan
    replaced_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("cards.id"))
    batch_id: Mapped[int | None] = mapped_column(sa.ForeignKey("batches.id"), index=True)
    fee_fen: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    version: Mapped[int] = mapped_column(default=1)
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012

    person: Mapped[Person] = relationship(back_populates="cards", foreign_keys=[person_id])
    chip_apps: Mapped[list[ChipApplication]] = relationship(
        back_populates="card", order_by="ChipApplication.id"
    )

    def chip_app(self, kind: ChipAppKind) -> ChipApplication | None:
        return next((a for a in self.chip_apps if a.kind == kind), None)


class ChipApplication(Base):
    """One application on a card's chip, with its own status (bank function vs social)."""

    __tablename__ = "chip_applications"
    __table_args__ = (
        sa.UniqueConstraint("card_id", "kind", name="uq_chip_applications_card_kind"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    card_id: Mapped[int] = mapped_column(sa.ForeignKey("cards.id"))
    kind: Mapped[ChipAppKind] = mapped_column(_enum(ChipAppKind))
    status: Mapped[ChipAppStatus] = mapped_column(_enum(ChipAppStatus))
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Financial function: the holder set a PIN on the card at the branch (the PIN itself is
    #: never seen by this system).
    pin_set: Mapped[bool] = mapped_column(default=False)
    bank_agency_id: Mapped[int | None] = mapped_column(sa.ForeignKey("agencies.id"))
    version: Mapped[int] = mapped_column(default=1)
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012

    card: Mapped[Card] = relationship(back_populates="chip_apps")


class Deposit(Base):
    """Deposit for a temporary card (fen), taken at issue and refunded when handed back."""

    __tablename__ = "deposits"
    id: Mapped[int] = mapped_column(primary_key=True)
    card_id: Mapped[int] = mapped_column(sa.ForeignKey("cards.id"), unique=True)
    amount_fen: Mapped[int]
    taken_at: Mapped[datetime] = mapped_column(default=utcnow)
    taken_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    refunded_at: Mapped[datetime | None]
    refunded_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    #: When and to whom the temporary card itself was handed back (migration 0004): the
    #: deposit is refunded only then, never just because the formal card was collected.
    returned_at: Mapped[datetime | None]
    returned_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))


class LossReport(Base):
    __tablename__ = "loss_reports"
    __table_args__ = (sa.Index("ix_loss_reports_status_lapses_at", "status", "lapses_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    card_id: Mapped[int] = mapped_column(sa.ForeignKey("cards.id"), index=True)
    kind: Mapped[LossKind] = mapped_column(_enum(LossKind))
    status: Mapped[LossStatus] = mapped_column(_enum(LossStatus))
    channel: Mapped[Channel] = mapped_column(_enum(Channel))
    identity_checked: Mapped[bool] = mapped_column(default=False)
    reported_at: Mapped[datetime] = mapped_column(default=utcnow)
    lapses_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    staff_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    note: Mapped[str | None] = mapped_column(sa.String(500))


class AuditEvent(Base):
    """One audited action. Inserted in the business transaction; sealed into the hash chain
    later by :func:`issuance.audit.seal` (chain_seq, prev_hash, hash)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        sa.Index(
            "ix_audit_events_unsealed",
            "id",
            sqlite_where=sa.text("chain_seq IS NULL"),
            postgresql_where=sa.text("chain_seq IS NULL"),
        ),
        sa.Index("ix_audit_events_entity", "entity_type", "entity_id"),
        # unique among sealed events; an unsealed one (NULL) has no entry (migration 0022)
        sa.Index(
            "uq_audit_events_chain_seq",
            "chain_seq",
            unique=True,
            sqlite_where=sa.text("chain_seq IS NOT NULL"),
            postgresql_where=sa.text("chain_seq IS NOT NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True
    )
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_staff_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    actor_name: Mapped[str] = mapped_column(sa.String(64))
    actor_role: Mapped[str] = mapped_column(sa.String(24))
    channel: Mapped[str] = mapped_column(sa.String(24))
    action: Mapped[str] = mapped_column(sa.String(64))
    entity_type: Mapped[str] = mapped_column(sa.String(32))
    entity_id: Mapped[str] = mapped_column(sa.String(40))
    before: Mapped[str | None] = mapped_column(sa.String(64))
    after: Mapped[str | None] = mapped_column(sa.String(64))
    reason: Mapped[str | None] = mapped_column(sa.String(500))
    details: Mapped[str] = mapped_column(sa.Text, default="{}")  # canonical JSON
    chain_seq: Mapped[int | None] = mapped_column(sa.BigInteger)
    prev_hash: Mapped[str | None] = mapped_column(sa.String(64))
    hash: Mapped[str | None] = mapped_column(sa.String(64))


class AuditChainHead(Base):
    """Single row (id 1): last sealed sequence and hash. Locked while sealing."""

    __tablename__ = "audit_chain_head"
    id: Mapped[int] = mapped_column(primary_key=True)
    last_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(sa.String(64))
    sealed_at: Mapped[datetime | None]


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoints"
    id: Mapped[int] = mapped_column(primary_key=True)
    chain_seq: Mapped[int] = mapped_column(sa.BigInteger, unique=True)
    hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    signature: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    public_key_pem: Mapped[str | None] = mapped_column(sa.Text)


class OutboxMessage(Base):
    """A notification waiting for the gateway (SMS, e-mail ...), drained by drain_outbox."""

    __tablename__ = "outbox"
    __table_args__ = (
        sa.Index(
            "ix_outbox_pending",
            "id",
            sqlite_where=sa.text("sent_at IS NULL"),
            postgresql_where=sa.text("sent_at IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    topic: Mapped[str] = mapped_column(sa.String(40))
    person_id: Mapped[int | None] = mapped_column(sa.ForeignKey("persons.id"))
    recipient: Mapped[str | None] = mapped_column(sa.String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    attempts: Mapped[int] = mapped_column(default=0)
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.String(500))


class CardNumberSeries(Base):
    """Sequential card-number allocator, one row per prefix, updated under a row lock."""

    __tablename__ = "card_number_series"
    prefix: Mapped[str] = mapped_column(sa.String(4), primary_key=True)
    next_value: Mapped[int] = mapped_column(sa.BigInteger, default=1)


# --- API: credentials, tokens, verification challenges, status feed (migration 0003) --------
def _bigint_pk() -> Any:
    return sa.BigInteger().with_variant(sa.Integer, "sqlite")


class ApiCredential(Base):
    """A party allowed to call the API: an agency (client credentials) or a staff user.

    ``secret_hash`` is the scrypt hash of the client secret (never the secret). ``scopes`` is a
    space-separated list. ``cert_subject``: with mutual TLS, the client certificate subject
    (RFC 4514 string) this credential is bound to.
    """

    __tablename__ = "api_credentials"
    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    secret_hash: Mapped[str | None] = mapped_column(sa.String(200))
    agency_id: Mapped[int | None] = mapped_column(sa.ForeignKey("agencies.id"), index=True)
    staff_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"), index=True)
    scopes: Mapped[str] = mapped_column(sa.String(500))
    active: Mapped[bool] = mapped_column(default=True)
    cert_subject: Mapped[str | None] = mapped_column(sa.String(300), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """An opaque bearer token, stored as its SHA-256 (tokens are 256-bit random)."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(_bigint_pk(), primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    credential_id: Mapped[int] = mapped_column(sa.ForeignKey("api_credentials.id"), index=True)
    scopes: Mapped[str] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None]


class ApiCall(Base):
    """One call of the HTTP API, written by the API's call log (``api.app``; migration 0006):
    who called (``caller``: the actor name, or ``anonymous`` before authentication), the
    method and route template, the status and error code, never a body or a concrete path.
    A card verification's call is recorded by its own ``card.verified`` audit event instead, in
    the transaction that consumed the challenge. No foreign key: a record outlives anything.
    One index beside the key (migration 0022): ``at``, BRIN on PostgreSQL (the retention
    prune; rows come in ``at`` order, so most inserts leave it untouched)."""

    __tablename__ = "api_calls"
    __table_args__ = (sa.Index("ix_api_calls_at", "at", postgresql_using="brin"),)
    id: Mapped[int] = mapped_column(_bigint_pk(), primary_key=True)
    at: Mapped[datetime]
    credential_id: Mapped[int | None]
    caller: Mapped[str] = mapped_column(sa.String(64))
    client_id: Mapped[str | None] = mapped_column(sa.String(64))
    client_ip: Mapped[str | None] = mapped_column(sa.String(45))
    method: Mapped[str] = mapped_column(sa.String(8))
    route: Mapped[str] = mapped_column(sa.String(200))
    status: Mapped[int] = mapped_column(sa.SmallInteger)
    error_code: Mapped[str | None] = mapped_column(sa.String(40))
    duration_us: Mapped[int]


class ApiAuthEpoch(Base):
    """One row (id 1): grows whenever an API principal is disabled, enabled or has its tokens
    revoked (migration 0011). Each API request compares it with the epoch its cached token was
    resolved at, so such a change stops the tokens at once on every worker and node."""

    __tablename__ = "api_auth_epoch"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(sa.BigInteger)


class ApiRateCounter(Base):
    """Failed authentications and refusals of one caller key in one minute (Unix minutes),
    shared by every API worker and node (``api.auth.FailureLimiter``; migration 0011)."""

    __tablename__ = "api_rate_counters"
    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    minute: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, index=True)
    count: Mapped[int]


class UsedChallenge(Base):
    """A verification challenge that was used: challenges are stateless (a MAC'd id, see
    :mod:`issuance.services.verification`), this primary key makes each one single-use. The id
    starts with its expiry (4 bytes, big-endian Unix seconds): pruning is a key range."""

    __tablename__ = "used_challenges"
    id: Mapped[bytes] = mapped_column(sa.LargeBinary(16), primary_key=True)


class CardStatusChange(Base):
    """Every change of a card's status, in commit-independent sequence order: the source of
    the signed status feed's deltas (written by the listener below, whoever changes a card)."""

    __tablename__ = "card_status_changes"
    seq: Mapped[int] = mapped_column(_bigint_pk(), primary_key=True, autoincrement=True)
    card_id: Mapped[int] = mapped_column(sa.ForeignKey("cards.id"), index=True)
    status: Mapped[CardStatus] = mapped_column(_enum(CardStatus))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)

    card: Mapped[Card] = relationship()


@sa.event.listens_for(Card.status, "set", active_history=True)
def _record_card_status_change(target: Card, value: Any, oldvalue: Any, _initiator: Any) -> None:
    from sqlalchemy.orm import attributes, object_session

    if oldvalue is attributes.NO_VALUE or oldvalue is attributes.NEVER_SET or value == oldvalue:
        return
    session = object_session(target)
    if session is not None:
        session.add(CardStatusChange(card=target, status=value, changed_at=utcnow()))


# --- cash: receipts per counter (migration 0012; issuance.services.cash) ---------------------
class ReceiptSeries(Base):
    """The next receipt number of one counter (a collection point's code, or CENTRE)."""

    __tablename__ = "receipt_series"
    counter: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    next_value: Mapped[int] = mapped_column(sa.BigInteger, default=1)


class Receipt(Base):
    """A numbered receipt for money that changed hands at a counter: a fee, a deposit, or a
    deposit's refund (``kind``; ``amount_fen`` is always positive)."""

    __tablename__ = "receipts"
    __table_args__ = (sa.UniqueConstraint("counter", "seq", name="uq_receipts_counter_seq"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(sa.String(48), unique=True)
    counter: Mapped[str] = mapped_column(sa.String(32))
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    kind: Mapped[str] = mapped_column(sa.String(16))
    amount_fen: Mapped[int]
    card_id: Mapped[int] = mapped_column(sa.ForeignKey("cards.id"), index=True)
    person_id: Mapped[int] = mapped_column(sa.ForeignKey("persons.id"))
    staff_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    staff_name: Mapped[str] = mapped_column(sa.String(64))
    what: Mapped[str] = mapped_column(sa.String(100))
    issued_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ConsoleSession(Base):
    """A staff user's signed-in session of the web console (migration 0014): the browser
    holds a random token in a cookie, the database only its SHA-256 (so a session holds
    across worker processes and nodes, and a database reader cannot take it over)."""

    __tablename__ = "console_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    staff_id: Mapped[int] = mapped_column(sa.ForeignKey("staff.id"), index=True)
    #: the token every form of this session carries (checked on every POST)
    csrf_token: Mapped[str] = mapped_column(sa.String(64))
    source: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    #: ``signed_out``, ``idle``, ``disabled``
    end_reason: Mapped[str | None] = mapped_column(sa.String(16))


class ConsoleSignInFailure(Base):
    """Failed console sign-ins of one user name from one source address (migration 0014): the
    backoff is per user *and* address, so nobody elsewhere can lock a user out."""

    __tablename__ = "console_sign_in_failures"
    username: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    source: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    last_failure_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    wait_until: Mapped[datetime | None]


# --- resident self-service: one-time codes and resident sessions (migration 0015) -----------
class ResidentChallenge(Base):
    """One request for a one-time code by a resident (``issuance.services.otp``): bound to
    one purpose and (when the stated ID number and name matched a person with a phone on
    file) to that person; a hotline's code for a card (asked for by an agency's system) is
    bound to the card and its holder too. A request that matched nobody is kept the same
    way, with a code nobody was sent, so that it is answered, tried and locked exactly like
    the others.

    ``subject`` is the SHA-256 of the ID number as stated (the per-person key, whether or not
    a person has it); ``code_hash`` the code's SHA-256 salted with the challenge; the code
    itself is never stored here."""

    __tablename__ = "resident_challenges"
    __table_args__ = (
        sa.Index("ix_resident_challenges_subject_created_at", "subject", "created_at"),
        sa.Index("ix_resident_challenges_source_created_at", "source", "created_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    #: the random handle the resident's browser holds (in a cookie) until the code is typed
    handle: Mapped[str] = mapped_column(sa.String(43), unique=True)
    purpose: Mapped[str] = mapped_column(sa.String(32))
    subject: Mapped[str] = mapped_column(sa.String(64))
    person_id: Mapped[int | None] = mapped_column(sa.ForeignKey("persons.id"), index=True)
    #: the card a card-bound code is for (the hotline's loss code; migration 0016), else None
    card_id: Mapped[int | None] = mapped_column(sa.ForeignKey("cards.id"), index=True)
    #: a code was sent to the phone on file (the per-person limit counts these)
    sent: Mapped[bool] = mapped_column(default=False)
    code_hash: Mapped[str] = mapped_column(sa.String(64))
    source: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(default=0)
    used_at: Mapped[datetime | None]


class ResidentSession(Base):
    """A resident's short session of one purpose, opened by a confirmed one-time code: the
    browser holds a random token in a cookie, the database its SHA-256. Not a staff session
    (no staff user, no role; the console's staff pages never read it)."""

    __tablename__ = "resident_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    person_id: Mapped[int] = mapped_column(sa.ForeignKey("persons.id"), index=True)
    purpose: Mapped[str] = mapped_column(sa.String(32))
    csrf_token: Mapped[str] = mapped_column(sa.String(64))
    source: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class CardPin(Base):
    """What this system last learnt of one PIN on a card's chip (migration 0018): the tries
    left the card reported (``63Cx``; ``6983`` = 0, blocked) at a counter or branch reader, and
    how many times the counter unblocked or reset it (``[lifecycle] pin_unblocks`` caps it).
    Never the PIN itself."""

    __tablename__ = "card_pins"
    __table_args__ = (sa.UniqueConstraint("card_id", "pin_name", name="uq_card_pins_card_pin"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    card_id: Mapped[int] = mapped_column(sa.ForeignKey("cards.id"), index=True)
    #: the profile's PIN name: ``ss`` (social security), ``bank`` (financial)
    pin_name: Mapped[str] = mapped_column(sa.String(16))
    #: tries left as the card last reported them; None: not known
    tries_left: Mapped[int | None]
    blocked: Mapped[bool] = mapped_column(default=False)
    #: counter unblocks and resets (RESET RETRY COUNTER) done on this PIN
    unblocks: Mapped[int] = mapped_column(default=0)
    #: when the card last reported this state (UTC)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- the electronic card (migration 0019; issuance.services.ecard) ---------------------------
class Ecard(Base):
    """A person's electronic card: bound to one physical (formal) card and its holder; its
    dynamic codes are signed by the issuer (:mod:`issuance.services.ecard_token`). It follows
    its card (:func:`issuance.services.card_steps.ecard_follows_card`): moved to the
    replacement card, ended when the card is cancelled or expires. Live while ``ended_at`` is
    empty; one live e-card per person."""

    __tablename__ = "ecards"
    __table_args__ = (
        sa.Index(
            "uq_ecards_live_person",
            "person_id",
            unique=True,
            sqlite_where=sa.text("ended_at IS NULL"),
            postgresql_where=sa.text("ended_at IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    #: 32 hex characters (16 random bytes): the e-card's identity in its codes
    public_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    person_id: Mapped[int] = mapped_column(sa.ForeignKey("persons.id"), index=True)
    #: the card it is bound to now
    card_id: Mapped[int] = mapped_column(sa.ForeignKey("cards.id"), index=True)
    #: how the person was identified when it was issued (``counter_identity_check``,
    #: ``resident_otp``)
    proof: Mapped[str] = mapped_column(sa.String(32))
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    issued_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    #: the provisional loss report during which the holder authorised the e-card's use
    loss_authorised_report_id: Mapped[int | None] = mapped_column(sa.ForeignKey("loss_reports.id"))
    ended_at: Mapped[datetime | None]
    #: why it ended: the card's status then (``cancelled``, ``expired``, ...)
    end_reason: Mapped[str | None] = mapped_column(sa.String(32))

    card: Mapped[Card] = relationship(foreign_keys=[card_id])


class EcardNonce(Base):
    """A used e-card code: expiry (4 bytes, big-endian Unix seconds) || the code's 12-byte
    nonce. The primary key makes each code single-use online across every node; the expiry
    leads the key, so pruning is a key range."""

    __tablename__ = "ecard_nonces"
    id: Mapped[bytes] = mapped_column(sa.LargeBinary(16), primary_key=True)


class BankAccount(Base):
    """The bank account behind a card's financial application (migration 0020): asked of the
    bank in a request file (``requested_*``), then opened by the bank, whose response file gives
    the PAN, its sequence number, the expiry, the service code and the bank's account reference
    (``opened_*``; :mod:`issuance.bank`). A card's EMV data come from here and nowhere else."""

    __tablename__ = "bank_accounts"
    #: the cards of one account may share a PAN (a replacement: the next PAN sequence number);
    #: a PAN and PSN pair is one card's (its EMV keys derive from it) (migration 0021)
    __table_args__ = (sa.UniqueConstraint("pan", "psn", name="uq_bank_accounts_pan_psn"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    card_id: Mapped[int] = mapped_column(sa.ForeignKey("cards.id"), unique=True)
    bank_agency_id: Mapped[int] = mapped_column(sa.ForeignKey("agencies.id"), index=True)
    #: the request file that asked for it (``YKTB-<bank>-<UTC time>``)
    request_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: None until the bank's response gave it
    pan: Mapped[str | None] = mapped_column(sa.String(19), index=True)
    psn: Mapped[str | None] = mapped_column(sa.String(2))
    #: the application expiry the bank gave (last day of its YYMM month)
    expiry: Mapped[date | None]
    service_code: Mapped[str | None] = mapped_column(sa.String(3))
    account_ref: Mapped[str | None] = mapped_column(sa.String(32))
    #: the bank's key version of its issuer master keys for this card (``[banks.*]``)
    key_version: Mapped[int] = mapped_column(default=1)
    opened_at: Mapped[datetime | None]
    response_file: Mapped[str | None] = mapped_column(sa.String(200))
    #: a replacement card's request: the replaced card's account, which the bank's answer must
    #: be bound to (migration 0021)
    replaces_account_id: Mapped[int | None] = mapped_column(sa.ForeignKey("bank_accounts.id"))
    #: the card was replaced: its financial application goes on the bank's hotlist in the next
    #: request file (a line of kind ``X``), which ``hotlist_request_id`` names once written
    hotlist_due_at: Mapped[datetime | None]
    hotlist_request_id: Mapped[str | None] = mapped_column(sa.String(64))


class DeskRequest(Base):
    """A financial activation started on the branch page, done by the desk station of the
    reader it names (``ykt branch desk --reader NAME``, :mod:`issuance.services.desk`;
    migration 0021): waiting until a station claims it (``claimed_*``), then finished with
    an ``outcome`` (``active`` or ``refused``, the refusal's ``message`` and ``problems``).
    Never a PIN."""

    __tablename__ = "desk_requests"
    __table_args__ = (sa.Index("ix_desk_requests_reader_claimed", "reader", "claimed_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    card_id: Mapped[int] = mapped_column(sa.ForeignKey("cards.id"), index=True)
    #: the desk reader's name the teller chose (the station's ``--reader``)
    reader: Mapped[str] = mapped_column(sa.String(64))
    identity_checked: Mapped[bool]
    requested_by_staff_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    requested_by: Mapped[str] = mapped_column(sa.String(64))
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_at: Mapped[datetime | None]
    #: the station that claimed it (its user, host and process)
    claimed_by: Mapped[str | None] = mapped_column(sa.String(120))
    finished_at: Mapped[datetime | None]
    #: ``active`` or ``refused``
    outcome: Mapped[str | None] = mapped_column(sa.String(16))
    message: Mapped[str | None] = mapped_column(sa.String(500))
    #: the refusal's problems, JSON ``[[field, reason], ...]``
    problems: Mapped[str | None] = mapped_column(sa.Text)
