"""Settings: one typed, frozen, strict place for every knob.

Sources, later wins:
  1. embedded defaults (everything under one project-local data directory, no configuration
     needed: SQLite file, SoftHSM token dir, virtual readers, file print spool);
  2. a TOML file: ``$YKT_CONFIG`` if set, else ``<data_dir>/yikatong.toml`` if it exists;
  3. environment variables ``YKT_<SECTION>__<KEY>`` (e.g. ``YKT_DATABASE__URL``) and
     ``YKT_DATA_DIR``.

Unknown keys are rejected (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from issuance.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatabaseSettings(_Section):
    #: SQLAlchemy URL. Empty means the embedded SQLite file ``<data_dir>/yikatong.db``.
    url: str = ""
    echo: bool = False


class HsmSettings(_Section):
    #: PKCS#11 module of the HSM vendor. Default: SoftHSM2 from Debian.
    module: Path = Path("/usr/lib/softhsm/libsofthsm2.so")
    token_label: str = "yikatong"
    #: User PIN. In production give ``pin_file`` instead (readable by the service only).
    pin: SecretStr = SecretStr("1234")
    pin_file: Path | None = None
    #: Security-officer PIN, only used by ``ykt hsm init`` on SoftHSM.
    so_pin: SecretStr = SecretStr("12345678")
    #: SoftHSM2 configuration file; empty = ``<data_dir>/hsm/softhsm2.conf`` (created by setup).
    softhsm_conf: Path | None = None
    #: The vendor's table of SM2/SM3/SM4 mechanism numbers (``hsm.vendors``: ``ibm``,
    #: ``swxa``), or ``standard``: PKCS#11 v2.40 only, no SM algorithm (SoftHSM2). The SM test
    #: module ``var/lib/libykt-smp11.so`` offers exactly the table named here.
    vendor: str = "standard"
    #: What signs the status feed and audit checkpoints: ``ecdsa-p256`` (``ykt:signing:v1``) or
    #: ``sm2`` (``ykt:signing:sm2:v1``, SM2 with SM3; needs an HSM with an SM table). Clients
    #: verify either (``hsm.service.verify_signature``).
    signing: Literal["ecdsa-p256", "sm2"] = "ecdsa-p256"

    def user_pin(self) -> str:
        if self.pin_file is not None:
            try:
                return self.pin_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read HSM PIN file {self.pin_file}: {exc}") from exc
        return self.pin.get_secret_value()


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


class PhotoSettings(_Section):
    width: int = 358
    height: int = 441
    dpi: int = 350
    min_bytes: int = 20 * 1024
    max_bytes: int = 100 * 1024
    #: Children under this age may be issued a card without a photo.
    photo_exempt_under_years: int = 6
    max_input_pixels: int = 60_000_000


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
    pin_unblocks: int = Field(default=5, ge=1, le=15)


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
    #: Card key algorithm of the cards made from now on (new, replacement and temporary
    #: cards): ``3des`` (second generation, FCI ``86 01 01``), ``sm4`` (third generation,
    #: ``86 01 03``; needs an HSM with an SM table, ``[hsm] vendor``) or ``aes`` (the former
    #: third-generation stand-in, ``86 01 02``). Cards already made keep theirs.
    card_algorithm: Literal["3des", "sm4", "aes"] = "3des"

    @field_validator("region_code")
    @classmethod
    def _region(cls, v: str) -> str:
        if len(v) != 6 or not v.isdigit():
            raise ValueError("region_code must be 6 digits (GB/T 2260)")
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


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default=2, ge=1)
    challenge_ttl_seconds: int = Field(default=60, ge=5, le=600)
    #: Failed authentications per caller per minute before 429.
    auth_failures_per_minute: int = Field(default=20, ge=1)
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    #: For mutual TLS: CA bundle that client certificates must chain to.
    tls_client_ca: Path | None = None


class Settings(_Section):
    data_dir: Path = PROJECT_ROOT / "var"
    database: DatabaseSettings = DatabaseSettings()
    hsm: HsmSettings = HsmSettings()
    readers: ReaderSettings = ReaderSettings()
    stock: StockSettings = StockSettings()
    printer: PrinterSettings = PrinterSettings()
    photos: PhotoSettings = PhotoSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    issuer: IssuerSettings = IssuerSettings()
    api: ApiSettings = ApiSettings()
    applications: ApplicationSettings = ApplicationSettings()
    notify: NotifySettings = NotifySettings()
    worker: WorkerSettings = WorkerSettings()

    # Derived locations -------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'yikatong.db'}"

    @property
    def softhsm_conf(self) -> Path:
        return self.hsm.softhsm_conf or (self.data_dir / "hsm" / "softhsm2.conf")

    @property
    def spool_dir(self) -> Path:
        return self.printer.spool_dir or (self.data_dir / "spool")

    @property
    def cards_dir(self) -> Path:
        """Persistent images of the emulated cards."""
        return self.data_dir / "cards"

    @property
    def run_dir(self) -> Path:
        """Runtime state of services the project starts (isolated pcscd, ...)."""
        return self.data_dir / "run"


def _set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"environment overrides a non-section: {'.'.join(keys)}")
        node = child
    node[keys[-1]] = value


def load_settings(
    config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build settings from defaults, the TOML file and ``YKT_*`` variables; raise ConfigError."""
    env = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    data_dir = Path(env["YKT_DATA_DIR"]) if env.get("YKT_DATA_DIR") else None
    path = config_file or (Path(env["YKT_CONFIG"]) if env.get("YKT_CONFIG") else None)
    if path is None:
        candidate = (data_dir or Settings.model_fields["data_dir"].default) / "yikatong.toml"
        path = candidate if candidate.exists() else None
    if path is not None:
        try:
            tree = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read settings file {path}: {exc}") from exc
    for name, value in env.items():
        if not name.startswith("YKT_") or name in ("YKT_CONFIG", "YKT_DATA_DIR"):
            continue
        parts = name[4:].lower().split("__")
        if len(parts) != 2:
            continue
        if parts[1] == "names":
            _set_path(tree, parts, [v for v in value.strip("[]").split(",") if v])
        else:
            _set_path(tree, parts, value)
    if data_dir is not None:
        tree["data_dir"] = str(data_dir)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings ({path or 'environment'}): {problems}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, loaded once."""
    return load_settings()
