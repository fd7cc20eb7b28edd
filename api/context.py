"""Per-process state of the API: database, the HSM owner thread, settings.

The HSM (PKCS#11) has one owner per process: a dedicated single-thread executor opens the key
service *in that thread, after the worker process started* (never before a fork) and runs every
HSM call. The event loop awaits its futures (:meth:`HsmRunner.run`); request handlers already in
the threadpool block on them (:meth:`HsmRunner.call`). So HSM work never blocks the event loop
and never runs on two threads at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from hsm.service import KeyService
from issuance.db import transaction
from issuance.settings import Settings

T = TypeVar("T")


class HsmRunner:
    """Runs callables ``fn(key_service, *args)`` on the one HSM thread of this process."""

    def __init__(self, factory: Callable[[], KeyService]) -> None:
        self._factory = factory
        self._service: KeyService | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hsm")

    def _invoke(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._service is None:  # first use, in the HSM thread
            self._service = self._factory()
        return fn(self._service, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._invoke, fn, args)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """From a worker thread (never from the event loop): run and wait."""
        return self._executor.submit(self._invoke, fn, args).result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class ApiContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    hsm: HsmRunner
    public_key_pem: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def tx(self) -> Iterator[Session]:
        with transaction(self.sessions) as session:
            yield session
