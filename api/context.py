"""Per-process state of the API: database, the HSM owner thread, settings.

The HSM (PKCS#11) has one owner per process: a dedicated thread opens the key service *in that
thread, after the worker process started* (never before a fork) and runs the HSM calls. The
event loop awaits its futures (:meth:`HsmRunner.run`); request handlers already in the
threadpool block on them (:meth:`HsmRunner.call`). So long HSM work never blocks the event
loop, and no HSM call ever runs on two threads at once (the PKCS#11 lock, ``hsm.pkcs11.LOCK``).
One exception, for the verification's cryptogram check (:meth:`HsmRunner.run_short`): a call
that holds the GIL from start to end blocks the loop the same on either thread, so once the
key service is open and the HSM is free it runs at once on the loop's thread (design notes:
``docs/design/api.md``, section ``api.hotpath``, "The tail at 32 connections").
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.batchruns import BatchRuns
from api.config import ApiConfig
from hsm.errors import HsmUnavailable
from hsm.internal_auth import challenge_key
from hsm.pkcs11 import LOCK
from hsm.service import KeyService
from issuance.db import transaction
from issuance.db_async import AsyncPgPool
from issuance.services.verification import ChallengeCodec, VerificationStore

T = TypeVar("T")


class HsmRunner:
    """Runs callables ``fn(key_service, *args)`` on the one HSM thread of this process.

    The thread takes every call queued since it last looked and runs them in one go, then hands
    the results back to each waiting event loop with one wake-up: under load a batch of
    cryptogram checks costs one GIL hand-over and one loop wake-up instead of one each.
    """

    def __init__(self, factory: Callable[[], KeyService]) -> None:
        self._factory = factory
        self._service: KeyService | None = None
        self._queue: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        #: calls of the running loop iteration, handed over together (see :meth:`run`)
        self._gathering: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _invoke(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._service is None:  # first use, in the HSM thread
            self._service = self._factory()
        return fn(self._service, *args)

    def _submit(self, jobs: list[_Job]) -> None:
        if self._thread is None or self._closed:  # (after shutdown nobody would answer)
            with self._lock:
                if self._closed:
                    raise HsmUnavailable("the HSM thread is shut down")
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, name="hsm", daemon=True)
                    self._thread.start()
        self._queue.put(jobs)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """From the event loop: run on the HSM thread, await the result.

        The calls made during one iteration of the loop are handed to the thread together,
        at the end of that iteration (one queue item, one thread wake-up, one GIL hand-over
        for all of them: measured, a hand-over per call cost more CPU than the check)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        gathering = self._gathering.get(loop)
        if gathering is None:
            gathering = self._gathering[loop] = []
            loop.call_soon(self._hand_over, loop)
        gathering.append((fn, args, loop, fut))
        return await fut

    async def run_short(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`run` for a short call that holds the GIL throughout (the cryptogram check's
        :mod:`hsm.p11fast` calls, bound through ``ctypes.PyDLL``): the loop cannot run while
        it runs on either thread, so when the key service is open and nobody holds the PKCS#11
        lock (taken without waiting: the loop never blocks on it) it runs at once on the
        loop's thread, under that lock - no thread wake-up, no GIL hand-over either way, no
        loop iteration waiting for the answer. Otherwise (first call, HSM busy, shut down)
        it is queued for the HSM thread like :meth:`run`."""
        service = self._service
        if service is not None and not self._closed and LOCK.acquire(blocking=False):
            try:
                return fn(service, *args)
            finally:
                LOCK.release()
        return await self.run(fn, *args)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs = self._gathering.pop(loop, [])
        try:
            self._submit(jobs)
        except HsmUnavailable as exc:
            for _, _, _, fut in jobs:
                if not fut.done():
                    fut.set_exception(exc)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """From a worker thread (never from the event loop): run and wait."""
        done: Future[T] = Future()
        self._submit([(fn, args, None, done)])
        return done.result()

    def _serve(self) -> None:
        while True:
            items = [self._queue.get()]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch: list[_Job | None] = []
            for item in items:
                batch.extend([None] if item is None else item)
            replies: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any, BaseException | None]]]
            replies = {}
            stop = False
            for job in batch:
                if job is None:
                    stop = True
                    continue
                fn, args, loop, fut = job
                result: Any = None
                error: BaseException | None = None
                try:
                    result = self._invoke(fn, args)
                except BaseException as exc:
                    error = exc
                if loop is None:
                    if error is None:
                        fut.set_result(result)
                    else:
                        fut.set_exception(error)
                else:
                    replies.setdefault(loop, []).append((fut, result, error))
            for loop, replied in replies.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_deliver, replied)
            if stop:
                return

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            if self._thread is not None:
                self._queue.put(None)


#: (fn, args, event loop or None for a thread's concurrent Future, future)
_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop | None, Any]


def _deliver(items: list[tuple[Any, Any, BaseException | None]]) -> None:
    for fut, result, error in items:
        if fut.done():  # the caller gave up (cancelled)
            continue
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)


@dataclass
class ApiContext:
    settings: ApiConfig
    engine: Engine
    sessions: sessionmaker[Session]
    hsm: HsmRunner
    #: PostgreSQL: the asyncio pool of the hot paths (verification); None on SQLite
    pg: AsyncPgPool | None = None
    #: PostgreSQL: the verifications' grouped statements on ``pg``; None on SQLite
    verifications: VerificationStore | None = None
    public_key_pem: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the stateless challenges' codec, its key derived in the HSM at first use
    challenges: ChallengeCodec | None = None
    #: batch runs started from the console (:mod:`api.batchruns`)
    batch_runs: BatchRuns | None = None

    async def challenge_codec(self) -> ChallengeCodec:
        """The challenge codec (from the event loop; the key comes from the HSM thread)."""
        if self.challenges is None:
            self.challenges = ChallengeCodec(await self.hsm.run(challenge_key))
        return self.challenges

    def challenge_codec_sync(self) -> ChallengeCodec:
        """:meth:`challenge_codec` from a worker thread."""
        if self.challenges is None:
            self.challenges = ChallengeCodec(self.hsm.call(challenge_key))
        return self.challenges

    @contextmanager
    def tx(self) -> Iterator[Session]:
        with transaction(self.sessions) as session:
            yield session
