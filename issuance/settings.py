"""The domain's settings: its sections and :class:`IssuanceConfig`, its own frozen config.

The root schema (every section: :class:`yikatong.settings.Settings`) extends
:class:`IssuanceConfig`; only the composition root reads the settings
(:func:`yikatong.settings.load_settings`) and hands each package its own part. Sources, later wins:
  1. embedded defaults (everything under one project-local data directory, no configuration
     needed: SQLite file, SoftHSM token dir, virtual readers, file print spool);
  2. a TOML file: ``$YKT_CONFIG`` if set, else ``<data_dir>/yikatong.toml`` if it exists;
  3. environment variables ``YKT_<SECTION>__<KEY>`` (e.g. ``YKT_DATABASE__URL``) and
     ``YKT_DATA_DIR``.

Unknown keys are rejected (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatabaseSettings(_Section):
    #: SQLAlchemy URL. Empty means the embedded SQLite file ``<data_dir>/yikatong.db``.
    url: str = ""
    echo: bool = False


class ReaderSettings(_Section):
    #: ``virtual``: the project's card emulator behind vsmartcard's vpcd in an isolated pcscd
    #: (started on demand). ``pcsc``: the host's pcscd and real readers.
    backend: Literal["virtual", "pcsc", "inprocess"] = "virtual"
    #: Number of virtual readers (encoding stations) to run.
    count: int = Field(default=4, ge=1, le=16)
    #: For ``pcsc``: reader names to use (substring match); empty = all readers found.
    names: tuple[str, ...] = ()
    #: For ``pcsc``: the pcscd client socket; empty = ``$PCSCLITE_CSOCK_NAME`` or the system's.
    csock: Path | None = None
    #: For ``pcsc``: seconds a station waits for a card to be fed (kept well below the lease).
    feed_timeout_seconds: float = Field(default=30.0, gt=0, le=600)


class StockSettings(_Section):
    #: Where blank chips come from (``issuance.batches.blanks``). ``virtual``: the emulated
    #: chips' manufacturer (chip serial and transport keys chosen by the issuer).
    #: ``delivered``: chips a supplier delivered pre-personalised (``ykt stock import``), fed
    #: into real readers (``[readers] backend = "pcsc"``); each fed chip is checked against
    #: the imported stock and bound to its card at the station.
    backend: Literal["virtual", "delivered"] = "virtual"


class PrinterSettings(_Section):
    backend: Literal["file", "cups"] = "file"
    #: File spool directory; empty = ``<data_dir>/spool``.
    spool_dir: Path | None = None
    #: CUPS server (host:port or socket path) and queue for ``backend = "cups"``.
    cups_server: str = ""
    cups_queue: str = "yikatong-cards"
    dpi: int = Field(default=300, ge=150, le=1200)


class PinSettings(_Section):
    """``[pins]``: the PIN services (:mod:`issuance.services.pins`)."""

    #: The weak-PIN rule: which patterns a PIN set by the holder (change, reset, bank
    #: activation) may not have: ``repeated`` (one digit, or a group of 1-3 digits repeated:
    #: 111111, 121212, 123123), ``sequence`` (ascending or descending by one: 123456, 654321),
    #: ``birth_date`` (the holder's birth date as YYMMDD, MMDDYY, DDMMYY, YYYYMM or MMYYYY;
    #: YYYYMMDD ... for longer PINs), ``citizen_id`` (any run of the holder's ID number's
    #: digits as long as the PIN).
    weak_rules: tuple[Literal["repeated", "sequence", "birth_date", "citizen_id"], ...] = (
        "repeated", "sequence", "birth_date", "citizen_id",
    )  # fmt: skip
    #: The PIN mailers' directory with ``[printer] backend = "file"``; empty =
    #: ``<spool_dir>/pin-mailers`` (created owner-only, files mode 0600).
    mailer_dir: Path | None = None
    #: The CUPS queue of the PIN mailers (letter paper) with ``backend = "cups"``; empty =
    #: ``[printer] cups_queue``.
    mailer_queue: str = ""


class PhotoSettings(_Section):
    width: int = 358
    height: int = 441
    dpi: int = 350
    min_bytes: int = 20 * 1024
    max_bytes: int = 100 * 1024
    #: Children under this age may be issued a card without a photo.
    photo_exempt_under_years: int = 6
    #: The project's own limit on a submitted picture's pixel count (read from the file's header,
    #: before decoding; honoured above and below Pillow's default bomb limit). It is also what
    #: bounds memory: a PNG (and a JPEG whose face needs every pixel) is decoded whole, 4 bytes a
    #: pixel in Pillow, so 50,000,000 pixels is 191 MiB decoded and about 300 MB for the worst
    #: input in all (``python -m bench.photo_memory``). It admits a 50 MP phone picture and a
    #: 600 dpi A4 scan (35 MP); raise it only with the memory to match.
    max_input_pixels: int = Field(default=50_000_000, ge=1)
    #: Some cities' rules require a colour photograph: a greyscale one is then refused.
    require_colour: bool = False


class LifecycleSettings(_Section):
    #: A phone/web loss report lapses back after this many hours unless made formal.
    provisional_loss_hours: int = Field(default=7 * 24, ge=1)
    #: Some cities turn a formal loss into cancellation after N days; 0 = never.
    formal_loss_cancel_days: int = Field(default=0, ge=0)
    temporary_card_days: int = Field(default=60, ge=1, le=183)
    temporary_card_deposit_fen: int = Field(default=500, ge=0)
    replacement_fee_fen: int = Field(default=2000, ge=0)
    card_validity_years: int = Field(default=10, ge=1)
    renewal_window_days: int = Field(default=60, ge=0)
    pin_tries: int = Field(default=3, ge=1, le=15)
    #: How many times the counter may unblock or reset a card's PIN (RESET RETRY COUNTER,
    #: counted per card and PIN in the database); past it the card must be replaced.
    pin_unblocks: int = Field(default=5, ge=1, le=15)
    #: A suspended card may be reported lost (it is then blocked as lost; lifting the
    #: suspension no longer applies). ``false``: the suspension must be lifted first.
    loss_of_suspended_card: bool = True


class IssuerSettings(_Section):
    #: GB/T 2260 code of the issuing region (6 digits).
    region_code: str = "330100"
    name: str = "杭州市人力资源和社会保障局"
    name_en: str = "Hangzhou Human Resources and Social Security Bureau"
    bank_name: str = "中国工商银行"
    #: Card number series prefix letter(s) for this centre; the rest is allocated sequentially.
    card_number_prefix: str = "A"
    #: Initialising organisation code (EF05 tag 04, 12 characters).
    init_org_code: str = "330100000001"
    #: IANA time zone every time is shown in (with its UTC offset); times are stored in UTC.
    time_zone: str = "Asia/Shanghai"
    #: Card key algorithm of the cards made from now on (new, replacement and temporary
    #: cards): ``3des`` (second generation, FCI ``86 01 01``), ``sm4`` (third generation,
    #: ``86 01 03``; needs an HSM with an SM table, ``[hsm] vendor``) or ``aes`` (the former
    #: third-generation stand-in, ``86 01 02``). Cards already made keep theirs.
    card_algorithm: Literal["3des", "sm4", "aes"] = "3des"
    #: The city's substitutes for name characters outside GBK (生僻字), written to the chip's
    #: GBK name field instead of them: a character -> its substitute (one GBK character, e.g.
    #: a homophone or variant: ``{"𠮷" = "吉"}``). The true name is stored, printed and shown; the
    #: substitution is recorded (``issuance.cardname``).
    gbk_substitutes: dict[str, str] = Field(default_factory=dict)
    #: What replaces a character outside GBK that ``gbk_substitutes`` does not list (one GBK
    #: character; CHOICE ``*``, see ``issuance.cardname``).
    gbk_placeholder: str = "*"

    @field_validator("gbk_substitutes")
    @classmethod
    def _gbk_substitutes(cls, v: dict[str, str]) -> dict[str, str]:
        from issuance.cardname import in_gbk

        for ch, sub in v.items():
            if len(ch) != 1 or in_gbk(ch):
                raise ValueError(f"gbk_substitutes: {ch!r} is not one character outside GBK")
            if len(sub) != 1 or not in_gbk(sub):
                raise ValueError(
                    f"gbk_substitutes: the substitute of {ch!r} must be one GBK character"
                )
        return v

    @field_validator("gbk_placeholder")
    @classmethod
    def _gbk_placeholder(cls, v: str) -> str:
        from issuance.cardname import in_gbk

        if len(v) != 1 or not in_gbk(v):
            raise ValueError("gbk_placeholder must be one character GBK can hold")
        return v

    @field_validator("region_code")
    @classmethod
    def _region(cls, v: str) -> str:
        if len(v) != 6 or not v.isdigit():
            raise ValueError("region_code must be 6 digits (GB/T 2260)")
        return v

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r} (an IANA name, e.g. Asia/Shanghai)") from exc
        return v


class BankSettings(_Section):
    """A co-operating bank, ``[banks.<agency code>]`` (the code of its bank agency,
    ``ykt places``/``ykt api`` agencies): its PAN ranges and the HSM key domain of its issuer
    master keys (``docs/guide/bank.md``)."""

    #: The bank's key domain in the HSM: its issuer master keys are
    #: ``ykt:bank:<key_domain>:imk-ac|imk-smi|imk-smc:<alg>:v<n>`` (``ykt hsm import fin_ac
    #: --bank <key_domain>``); 1-40 lower-case letters, digits, ``-`` or ``_``.
    key_domain: str
    #: The BINs (issuer identification numbers, 6-8 digits) of this bank's card PANs: a PAN of
    #: its response file outside them is refused.
    bins: tuple[str, ...]
    #: Version of the bank's issuer master keys the cards made from now on use.
    key_version: int = Field(default=1, ge=1)
    #: The holder's ID number in the request file: ``masked`` (first 6 and last 4 characters,
    #: the rest ``*``) or ``full`` (as agreed with the bank).
    id_number: Literal["masked", "full"] = "masked"

    @field_validator("key_domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        import re

        if re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", v) is None:
            raise ValueError("key_domain: 1-40 lower-case letters, digits, '-' or '_'")
        return v

    @field_validator("bins")
    @classmethod
    def _bins(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or any(not (b.isdigit() and 6 <= len(b) <= 8) for b in v):
            raise ValueError("bins: at least one BIN, each 6 to 8 digits")
        return v


class ApplicationSettings(_Section):
    #: Maker-checker. Always: the approver is neither the receiver nor the processor nor the
    #: reviewer, and the reviewer is not the receiver. ``true``: receive, process, review and
    #: approve by four different staff users (cities that split every step).
    separate_every_step: bool = False


class NotifySettings(_Section):
    """Notification gateway that drains the outbox (``ykt outbox drain``, ``ykt worker``)."""

    #: ``log``: the log (phone masked); ``smtp``: e-mail through an SMTP relay (an operator's
    #: e-mail-to-SMS gateway); ``http``: a JSON POST to an SMS gateway's webhook.
    backend: Literal["log", "smtp", "http"] = "log"
    smtp_host: str = "localhost"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    #: ``none``, ``starttls`` (upgrade a plain connection) or ``tls`` (implicit TLS, port 465).
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_from: str = "noreply@localhost"
    #: Recipient address from the message's recipient (a phone number): e.g.
    #: ``"{recipient}@sms.example.gov.cn"`` for an e-mail-to-SMS gateway.
    smtp_to: str = "{recipient}@localhost"
    http_url: str = ""
    #: Sent as ``Authorization: Bearer ...`` when not empty.
    http_token: SecretStr = SecretStr("")
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)


class WorkerSettings(_Section):
    """``ykt worker``: the periodic jobs."""

    interval_seconds: float = Field(default=60.0, ge=0.1)
    #: Seal the audit chain each round (checkpoints signed by the HSM's signing key).
    seal_audit: bool = True
    #: ``false``: unsigned checkpoints (development without an HSM).
    sign_checkpoints: bool = True
    outbox_batch: int = Field(default=100, ge=1)


class ResidentSettings(_Section):
    """Resident self-service (``/console/self``): the one-time code sent to the phone on file
    (:mod:`issuance.services.otp`, also the hotline's loss code) and the short resident session
    it opens."""

    #: A one-time code is valid this many seconds after it was sent.
    code_ttl_seconds: int = Field(default=300, ge=60, le=1800)
    #: The hotline's loss code (``POST /v1/cards/{n}/loss-codes``, read out by the holder over
    #: the phone) is valid this many seconds after it was sent.
    hotline_code_ttl_seconds: int = Field(default=600, ge=60, le=1800)
    #: Wrong codes a challenge takes before it is locked (a new code must be asked for).
    code_tries: int = Field(default=5, ge=1, le=10)
    #: Codes sent to one person's phone in an hour, at most (beyond: none is sent, the answer
    #: is the same).
    codes_per_person_per_hour: int = Field(default=3, ge=1, le=20)
    #: Codes asked for from one source address in an hour, at most (beyond: refused, 429).
    requests_per_address_per_hour: int = Field(default=20, ge=1)
    #: A resident session (opened by a confirmed code, for its one purpose) ends after this
    #: many minutes, or at its first action.
    session_minutes: int = Field(default=10, ge=1, le=60)


class EcardSettings(_Section):
    """The electronic card (``issuance.services.ecard``)."""

    #: A new dynamic code every this many seconds (the resident page fetches one each period).
    code_seconds: int = Field(default=60, ge=10, le=600)
    #: A code stays valid this many seconds past its period (a code shown at the end of a
    #: period can still be scanned; the offline replay window is ``code_seconds`` + this).
    code_grace_seconds: int = Field(default=30, ge=0, le=600)
    #: How long the signed link a counter clerk hands out opens the resident's e-card page.
    link_minutes: int = Field(default=10, ge=1, le=24 * 60)
    #: The resident's own e-card session (``/console/self/ecard``, opened by a one-time code)
    #: lasts this many minutes: the page shows codes for its lifetime, then asks for a new
    #: one-time code. (The loss pages' sessions keep ``[resident] session_minutes``.)
    session_minutes: int = Field(default=30, ge=1, le=12 * 60)


class IssuanceConfig(_Section):
    """The domain's own frozen configuration: the sections :mod:`issuance` reads (the batch
    runs also read ``[readers]`` and ``[printer]``: they drive the stations and print the
    faces) and the locations derived from them. The root schema
    (:class:`yikatong.settings.Settings`) extends it with the sections of the layers above
    and of the HSM, so the object the composition root loads is passed as it is; the domain is
    typed against this class, and mypy refuses a read of a section that is not here."""

    data_dir: Path = PROJECT_ROOT / "var"
    database: DatabaseSettings = DatabaseSettings()
    readers: ReaderSettings = ReaderSettings()
    stock: StockSettings = StockSettings()
    printer: PrinterSettings = PrinterSettings()
    photos: PhotoSettings = PhotoSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    pins: PinSettings = PinSettings()
    issuer: IssuerSettings = IssuerSettings()
    applications: ApplicationSettings = ApplicationSettings()
    notify: NotifySettings = NotifySettings()
    worker: WorkerSettings = WorkerSettings()
    resident: ResidentSettings = ResidentSettings()
    ecard: EcardSettings = EcardSettings()
    #: The co-operating banks by the code of their bank agency (:class:`BankSettings`).
    banks: dict[str, BankSettings] = Field(default_factory=dict)

    # Derived locations -------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'yikatong.db'}"

    @property
    def spool_dir(self) -> Path:
        return self.printer.spool_dir or (self.data_dir / "spool")

    @property
    def mailer_dir(self) -> Path:
        """Where the file backend spools PIN mailers (owner-only)."""
        return self.pins.mailer_dir or (self.spool_dir / "pin-mailers")

    @property
    def cards_dir(self) -> Path:
        """Persistent images of the emulated cards."""
        return self.data_dir / "cards"

    @property
    def run_dir(self) -> Path:
        """Runtime state of services the project starts (isolated pcscd, ...)."""
        return self.data_dir / "run"
