"""Wiring: the one place that turns the settings into concrete adapters.

Every other package is typed against its port (:class:`hsm.service.KeyService`, the blank
stock, the printer, the encoding stations, the notification sink) and receives its own frozen
configuration; this module names the adapters the settings choose: the PKCS#11 module of the
HSM, the readers (virtual or PC/SC), the printer (file spool or CUPS), the blank stock and the
notification gateway.
"""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy.engine import Engine

from api.app import create_app
from hsm.config import HsmConfig
from hsm.service import KeyService, Pkcs11KeyService
from issuance.errors import ConfigError
from issuance.services.outbox import HttpSink, LogSink, Sink, SmtpSink
from issuance.settings import Settings
from yikatong.settings import get_settings


def hsm_config(settings: Settings) -> HsmConfig:
    """The HSM's own configuration (:meth:`issuance.settings.Settings.hsm_config`)."""
    return settings.hsm_config()


def key_service_from_settings(settings: Settings) -> KeyService:
    """The product key service for these settings (PKCS#11 on the configured module)."""
    return Pkcs11KeyService.from_config(hsm_config(settings))


def api_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    """The HTTP application on these settings, its key service from the configured HSM."""

    def keys() -> KeyService:
        return key_service_from_settings(settings)

    return create_app(settings, engine=engine, key_service_factory=keys)


def app_from_env() -> FastAPI:
    """The application for the settings in force (uvicorn ``--factory``)."""
    return api_app(get_settings())


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
