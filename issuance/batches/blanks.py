"""Blank stock adapters, chosen by configuration (``[stock] backend``).

Design notes: ``docs/design/batches.md`` (section ``issuance.batches.blanks``).
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.keyscheme import KeySlot
from cardspec.profile import CardProfile
from issuance import audit
from issuance.audit import Actor
from issuance.batches.deliveries import chip_key_ref
from issuance.batches.stock import BlankStock
from issuance.errors import ConfigError, IssuanceError
from issuance.models import (
    Card,
    StockChip,
    StockChipStatus,
    StockRefusal,
    StockRejection,
    utcnow,
)
from printers.prepared import PreparedCard

if TYPE_CHECKING:
    from hsm.service import CardCryptoSession, CardKeyRef, KeyService
    from issuance.settings import IssuanceConfig

#: The backends of ``[stock] backend``.
BACKENDS = ("virtual", "delivered")


class StationBoundStock(Protocol):
    """A stock whose chips exist before data preparation: the station reads the fed chip's
    serial and the card is bound to it there."""

    binds_at_station: bool

    def bind(self, session: Session, serial: str, card: Card, profile: CardProfile) -> None: ...

    def card_crypto(self, prepared: PreparedCard) -> CardCryptoSession: ...

    def record_refusal(
        self,
        session: Session,
        serial: str | None,
        reason: StockRefusal,
        detail: str,
        actor: Actor,
        *,
        station: str | None = None,
        batch_id: int | None = None,
    ) -> StockRejection: ...


def binds_at_station(stock: BlankStock) -> bool:
    return stock.binds_at_station


class ChipRefused(IssuanceError):
    """The chip fed into a station is not one it may personalise (``reason``: a
    :class:`~issuance.models.StockRefusal`); nothing was sent to it. Take it out."""

    code = "chip_refused"

    def __init__(self, message: str, reason: StockRefusal, serial: str | None) -> None:
        super().__init__(message, reason=reason.value, serial=serial)
        self.reason = reason
        self.serial = serial


class DeliveredBlankStock:
    """Chips delivered by a supplier, bound to their card at the station (see the module
    docstring)."""

    binds_at_station = True

    def __init__(self, settings: IssuanceConfig, key_service: KeyService) -> None:
        self.settings = settings
        self.key_service = key_service
        #: chip serial -> (supplier, key set version), learnt at :meth:`bind` (a fact of the
        #: delivery, so a bind transaction rolled back and retried leaves it right)
        self._makers: dict[str, tuple[str, int]] = {}
        #: delivery key sets already found in the HSM (supplier, version, algorithm)
        self._key_sets: set[tuple[str, int, str]] = set()
        self._lock = threading.Lock()

    # the virtual stock's duties: none of them exist for delivered chips ------------------
    def ready(self) -> None:
        """Nothing to make: the supplier made the chips (their keys are imported)."""

    def new_serial(self) -> bytes:
        raise ConfigError("delivered chips are bound at the station, never picked ahead")

    def make_blank(self, serial: bytes, ref: CardKeyRef, profile: CardProfile) -> Path:
        raise ConfigError("delivered chips are made by their supplier, not by the issuer")

    def image(self, serial: str) -> Path:
        raise ConfigError("delivered chips are fed into real readers: they have no image")

    def ensure_blank(self, serial: str, ref: CardKeyRef, profile: CardProfile) -> Path:
        return self.image(serial)

    # binding at the station --------------------------------------------------------------
    def bind(self, session: Session, serial: str, card: Card, profile: CardProfile) -> None:
        """Check that the chip ``serial`` fed into a station is an available chip of the
        stock for cards of ``profile``'s algorithm and mark it used by ``card``, in the
        caller's transaction (which prepares the card on it); :class:`ChipRefused` if not."""
        serial = serial.upper()
        chip = session.scalars(
            sa.select(StockChip).where(StockChip.chip_serial == serial).with_for_update()
        ).one_or_none()
        if chip is None:
            raise ChipRefused(f"chip {serial} is not in any imported delivery",
                              StockRefusal.UNKNOWN, serial)  # fmt: skip
        if chip.status != StockChipStatus.AVAILABLE:
            number = (session.scalar(sa.select(Card.card_number).where(Card.id == chip.card_id))
                      if chip.card_id is not None else None)  # fmt: skip
            reason = (StockRefusal.USED if chip.status == StockChipStatus.USED
                      else StockRefusal.SPOILED)  # fmt: skip
            raise ChipRefused(f"chip {serial} is {chip.status} (card {number or '?'})",
                              reason, serial)  # fmt: skip
        if chip.algorithm != profile.algorithm.value:
            raise ChipRefused(
                f"chip {serial} was delivered for {chip.algorithm} cards, this card is "
                f"{profile.algorithm.value}", StockRefusal.WRONG_ALGORITHM, serial,
            )  # fmt: skip
        maker = (chip.supplier, chip.key_version)
        self._require_key_set(serial, maker, profile)
        chip.status, chip.card_id, chip.used_at = StockChipStatus.USED, card.id, utcnow()
        with self._lock:
            self._makers[serial] = maker

    def _require_key_set(self, serial: str, maker: tuple[str, int], profile: CardProfile) -> None:
        """The supplier's key set is in the HSM (once per set: the chip's KMC and KLK derived
        there). Raises :class:`hsm.errors.KeyNotFound` otherwise: the station stops with the
        ceremony still to do, the chip stays available."""
        key = (*maker, profile.algorithm.value)
        if key in self._key_sets:
            return
        ref = chip_key_ref(self.settings.issuer.region_code, serial, profile.algorithm, maker)
        with self.key_service.card_crypto(ref) as crypto:
            crypto.kcv(KeySlot.KMC)
            klk_kcv = getattr(crypto, "klk_kcv", None)
            if klk_kcv is not None:
                klk_kcv()
        with self._lock:
            self._key_sets.add(key)

    def card_crypto(self, prepared: PreparedCard) -> CardCryptoSession:
        """The card's keys for personalising it on its delivered chip: KMC and KLK from the
        supplier's key set, every card key from the issuer's masters (all in the HSM)."""
        serial = prepared.chip_serial.upper()
        with self._lock:
            maker = self._makers.get(serial)
        if maker is None:
            raise ConfigError(f"chip {serial} was not bound at this station")
        return self.key_service.card_crypto(dataclasses.replace(prepared.key_ref, chip_maker=maker))

    def record_refusal(
        self,
        session: Session,
        serial: str | None,
        reason: StockRefusal,
        detail: str,
        actor: Actor,
        *,
        station: str | None = None,
        batch_id: int | None = None,
    ) -> StockRejection:
        """Record a chip a station refused (``stock_rejections`` and an audit event)."""
        row = StockRejection(
            chip_serial=serial.upper() if serial else None, reason=reason,
            detail=detail[:300], station=station, batch_id=batch_id, at=utcnow(),
        )  # fmt: skip
        session.add(row)
        audit.record(
            session, actor, "stock.chip_refused", "stock_chip", serial or "unreadable",
            reason=detail[:500],
            details={"reason": reason.value, "station": station, "batch_id": batch_id},
        )  # fmt: skip
        return row
