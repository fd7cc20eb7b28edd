"""One exception root per package, and each root mapped once by the API (issue 13)."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil

import pytest

from api.errors import map_exception
from cardspec.errors import CardSpecError
from cardspec.keyscheme import UnsupportedAlgorithm
from hsm.errors import HsmError
from issuance.db_async import DatabaseUnavailable
from issuance.errors import IssuanceError
from issuance.services.outbox import DeliveryError
from printers.errors import JobRejected, PrinterError, PrinterUnavailable
from readers.pcsc import PcscError

ROOTS: dict[str, type[BaseException]] = {
    "issuance": IssuanceError,
    "hsm": HsmError,
    "cardspec": CardSpecError,
    "printers": PrinterError,
    "readers": PcscError,
}

#: Control-flow signals caught inside their own module, never raised to a caller: the
#: emulator's status-word abort (answered as the SW of the response APDU) and the vpcd
#: connection's end (a ConnectionError, the reader's normal way out).
INTERNAL = {"cardspec.emulator.common.Status", "readers.virtual.vpcd.VpcdConnectionClosed"}


def _exceptions(package: str) -> list[type[BaseException]]:
    found = []
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        if ".migrations" in info.name:
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.append(obj)
    return found


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_every_exception_of_a_package_is_under_its_root(package: str) -> None:
    classes = _exceptions(package)
    assert ROOTS[package] in classes
    names = {c: f"{c.__module__}.{c.__qualname__}" for c in classes}
    outside = [n for c, n in names.items() if not issubclass(c, ROOTS[package])]
    assert sorted(set(outside) - INTERNAL) == []


def _answer(exc: BaseException) -> tuple[int, dict[str, object]]:
    response = map_exception(exc)
    return response.status_code, json.loads(response.body)["error"]


def test_the_api_maps_printer_database_and_gateway_errors_not_500() -> None:
    status, body = _answer(PrinterUnavailable("cups at /run/cups.sock is down"))
    assert (status, body["code"]) == (503, "printer_unavailable")
    assert "cups.sock" not in str(body["message"])  # the detail goes to the log only
    assert _answer(JobRejected("bad job"))[0] == 503
    status, body = _answer(DatabaseUnavailable("the batch writer stopped"))
    assert (status, body["code"]) == (503, "service_unavailable")
    status, body = _answer(DeliveryError("SMTP relay smtp.example:25: refused"))
    assert (status, body["code"]) == (503, "delivery_failed")
    assert "smtp.example" not in str(body["message"])
    status, body = _answer(UnsupportedAlgorithm("sm4"))
    assert (status, body["code"]) == (422, "card_error")
    assert isinstance(UnsupportedAlgorithm("sm4"), ValueError)  # still caught as before
