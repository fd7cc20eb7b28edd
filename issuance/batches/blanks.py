"""Blank stock adapters, chosen by configuration (``[stock] backend``).

* ``virtual`` (default): :class:`issuance.batches.stock.VirtualBlankStock`, the emulated chips'
  manufacturer: the issuer picks the chip serial at data preparation and a blank image with
  the chip's transport keys is made for it; the station inserts that image.
* ``manufacturer``: :class:`issuance.batches.manufacturer.ManufacturerStock`, a chip
  manufacturer's delivery imported with ``ykt stock import``: the chip serial is read from the
  card fed into the station (GET DATA DF12) and data preparation binds the card to that chip
  there; the chip's transport key is unwrapped inside the HSM.

The pipeline asks :attr:`binds_at_station` (:func:`binds_at_station`) which way it goes.
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
    if backend == "manufacturer":
        from issuance.batches.manufacturer import ManufacturerStock

        return ManufacturerStock(settings, key_service)
    raise ConfigError(f"unknown blank stock backend {backend!r} (virtual or manufacturer)")
