"""Blank stock adapters, chosen by configuration (``[stock] backend``).

* ``virtual`` (default): :class:`issuance.batches.stock.VirtualBlankStock`, the emulated chips'
  manufacturer: the issuer picks the chip serial at data preparation and a blank image with
  the chip's transport keys is made for it; the station inserts that image.

A stock whose chips exist before data preparation (a chip manufacturer's delivery: its list of
chip serials with their transport keys wrapped under a transport key agreed with the issuer)
*binds at the station*: it sets ``binds_at_station = True``, offers ``bind(session, serial,
card, profile)`` (the fed chip must be an unused chip of the delivery; marked used in the
binding transaction) and ``card_crypto(prepared)`` (the card's keys with the chip's own KMC and
KLK unwrapped inside the HSM). The pipeline then reads the serial from the card fed into the
station (GET DATA DF12) and binds the card to it there (:func:`binds_at_station`). NOT DONE
YET: that adapter needs an UNWRAP-capable transport key in :mod:`hsm.ceremony` and a card
crypto session over externally supplied KMC/KLK objects in :mod:`hsm.cardcrypto`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from issuance.batches.stock import BlankStock, VirtualBlankStock
from issuance.errors import ConfigError

if TYPE_CHECKING:
    from hsm.service import KeyService
    from issuance.settings import Settings


class StationBoundStock(Protocol):
    """A stock whose chips exist before data preparation: the station reads the fed chip's
    serial and the card is bound to it there (see :mod:`issuance.batches.manufacturer`)."""

    binds_at_station: bool


def binds_at_station(stock: object) -> bool:
    return bool(getattr(stock, "binds_at_station", False))


def make_stock(settings: Settings, key_service: KeyService) -> BlankStock:
    """The blank stock adapter of ``settings.stock.backend``."""
    backend = settings.stock.backend
    if backend == "virtual":
        return VirtualBlankStock(settings, key_service)
    raise ConfigError(f"unknown blank stock backend {backend!r} (virtual)")
