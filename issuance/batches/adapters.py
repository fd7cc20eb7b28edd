"""The adapters a production run needs, as factories the composition root provides
(:func:`yikatong.wiring.batch_adapters`): the batch code is typed against their ports and never
chooses them itself.

Factories rather than objects: forked data preparation workers open their own key service (their
own HSM session, after the fork) and blank stock; the stations are opened for one run.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hsm.service import KeyService
from issuance.batches.stations import EncodingStation
from issuance.batches.stock import BlankStock
from printers.spool import CardPrinter


class OpenStations(Protocol):
    """Opens ``count`` encoding stations (None: as configured) for one run."""

    def __call__(
        self,
        count: int | None = None,
        *,
        run_dir: Path | None = None,
        feed_timeout: float | None = None,
    ) -> AbstractContextManager[list[EncodingStation]]: ...


@dataclass(frozen=True)
class BatchAdapters:
    """Factories of the production line's adapters."""

    key_service: Callable[[], KeyService]
    """A key service with its own HSM session."""
    stock: Callable[[KeyService], BlankStock]
    """The blank stock (its chips' keys through this key service)."""
    printer: Callable[[], CardPrinter]
    stations: OpenStations
