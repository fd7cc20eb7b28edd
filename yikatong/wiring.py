"""Wiring: the one place that turns the settings into concrete adapters.

Every other package is typed against its port (:class:`hsm.service.KeyService`, the blank
stock, the printer, the encoding stations, the notification sink) and receives its own frozen
configuration; this module names the adapters the settings choose: the PKCS#11 module of the
HSM, the readers (virtual or PC/SC), the printer (file spool or CUPS), the blank stock and the
notification gateway.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from hsm.config import HsmConfig
from hsm.service import KeyService, Pkcs11KeyService
from issuance.batches import pipeline
from issuance.batches.adapters import BatchAdapters
from issuance.batches.blanks import BACKENDS, DeliveredBlankStock
from issuance.batches.counter import CounterDesk, open_counter_desk
from issuance.batches.mailers import PinMailerSink
from issuance.batches.pipeline import BatchRunner, RunSummary
from issuance.batches.stations import EncodingStation, open_stations
from issuance.batches.stock import BlankStock, VirtualBlankStock
from issuance.errors import ConfigError
from issuance.services.outbox import HttpSink, LogSink, Sink, SmtpSink
from printers.backends import make_printer
from yikatong.settings import Settings, get_settings

if TYPE_CHECKING:
    from fastapi import FastAPI


def hsm_config(settings: Settings) -> HsmConfig:
    """The HSM's own configuration (:meth:`yikatong.settings.Settings.hsm_config`)."""
    return settings.hsm_config()


def key_service_from_settings(settings: Settings) -> KeyService:
    """The product key service for these settings (PKCS#11 on the configured module)."""
    return Pkcs11KeyService.from_config(hsm_config(settings))


def api_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    """The HTTP application on these settings, its key service from the configured HSM."""
    # imported here: the batch workers, the CLI and the benches wire adapters without loading
    # FastAPI and the API (about 330 modules, 23 MiB more in every forked worker)
    from api.app import create_app

    def keys() -> KeyService:
        return key_service_from_settings(settings)

    def desk(service: KeyService) -> AbstractContextManager[CounterDesk]:
        return desk_on(settings, service)

    return create_app(settings, engine=engine, key_service_factory=keys,
                      batch_adapters=batch_adapters(settings), desk_factory=desk)  # fmt: skip


def app_from_env() -> FastAPI:
    """The application for the settings in force (uvicorn ``--factory``)."""
    return api_app(get_settings())


def outbox_sink(settings: Settings) -> Sink:
    """What draining the outbox sends to: PIN mailers printed (the HSM and the mailer
    printer, :class:`issuance.batches.mailers.PinMailerSink`), every other message to the
    notification gateway (:func:`sink_from_settings`)."""
    return PinMailerSink(settings, sink_from_settings(settings),
                         key_service=lambda: key_service_from_settings(settings))  # fmt: skip


def sink_from_settings(settings: Settings) -> Sink:
    """The notification gateway of ``[notify] backend``."""
    backend = settings.notify.backend
    if backend == "log":
        return LogSink()
    if backend == "smtp":
        return SmtpSink(settings.notify)
    if backend == "http":
        return HttpSink(settings.notify)
    raise ConfigError(f"unknown notify backend {backend!r}")


def make_stock(settings: Settings, key_service: KeyService) -> BlankStock:
    """The blank stock adapter of ``settings.stock.backend``."""
    backend = settings.stock.backend
    if backend == "virtual":
        return VirtualBlankStock(settings, key_service)
    if backend == "delivered":
        if settings.readers.backend != "pcsc":
            raise ConfigError(
                '[stock] backend = "delivered" needs real readers the chips are fed into: '
                '[readers] backend = "pcsc"'
            )
        return DeliveredBlankStock(settings, key_service)
    raise ConfigError(f"unknown blank stock backend {backend!r} ({', '.join(BACKENDS)})")


def batch_adapters(settings: Settings) -> BatchAdapters:
    """The production line's adapters for these settings."""

    def stations(
        count: int | None = None, *, run_dir: Path | None = None, feed_timeout: float | None = None
    ) -> AbstractContextManager[list[EncodingStation]]:
        return open_stations(settings, count, run_dir=run_dir, feed_timeout=feed_timeout)

    return BatchAdapters(
        key_service=lambda: key_service_from_settings(settings),
        stock=lambda keys: make_stock(settings, keys),
        printer=lambda: make_printer(settings),
        stations=stations,
    )


def run_batch(settings: Settings, batch_ref: str | int, **kwargs: Any) -> RunSummary:
    """:func:`issuance.batches.pipeline.run_batch` on the adapters of these settings."""
    return pipeline.run_batch(settings, batch_ref, adapters=batch_adapters(settings), **kwargs)


def runner_for(
    settings: Settings, batch_ref: str | int, **kwargs: Any
) -> AbstractContextManager[BatchRunner]:
    """:func:`issuance.batches.pipeline.runner_for` on the adapters of these settings."""
    return pipeline.runner_for(settings, batch_ref, adapters=batch_adapters(settings), **kwargs)


@contextmanager
def counter_desk(settings: Settings, *, reader: str | None = None) -> Iterator[CounterDesk]:
    """The counter's desk (:class:`issuance.batches.counter.CounterDesk`): one reader beside
    the clerk (``[readers] backend``: a virtual reader by default; ``reader`` picks a PC/SC
    reader by part of its name), the printer of ``[printer] backend``, the configured HSM and
    blank stock. Stopped (the virtual reader's stack too) on exit."""
    keys = key_service_from_settings(settings)
    with desk_on(settings, keys, reader=reader) as desk:
        yield desk


def desk_on(
    settings: Settings, keys: KeyService, *, reader: str | None = None
) -> AbstractContextManager[CounterDesk]:
    """The counter's desk with this key service (the API's HSM thread's)."""
    return open_counter_desk(settings, keys, make_stock(settings, keys), make_printer(settings),
                             reader=reader)  # fmt: skip
