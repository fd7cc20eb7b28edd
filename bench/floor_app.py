"""The machine's floor for the verification benchmark: the least a verification flow can cost.

A plain ASGI application (no FastAPI, no authentication, no HSM, no call log), served by the
same uvicorn settings as ``ykt serve`` (workers, uvloop, httptools), speaking the two calls of
the flow the way :mod:`bench.verification`'s load generator expects:

* ``POST /v1/verifications/challenge``: 16 random bytes and an id, nothing written;
* ``POST /v1/verifications``: the JSON body parsed, then the two statements a verification
  cannot do without on PostgreSQL - the read of the card, its holder and the requested chip
  application (the product's own query), and one durable write that records the challenge as
  used and inserts the audit event (the product's own statement shape: ``used_challenges`` +
  ``audit_events`` in one data-modifying CTE, committed with ``synchronous_commit`` on) - and
  ``{"valid":true}``. Both go through the product's grouping
  (:class:`issuance.services.verification.VerificationStore`): the flows in flight together
  share their statements, as in the product.

With ``YKT_FLOOR_HSM=1`` (and ``YKT_DATA_DIR``: the bench's token) the floor also checks the
chip's cryptogram in the token, the one check a verification cannot do without beside the two
statements: the challenge sent is the challenge id's own 16 bytes (factor || random: nothing
to keep between the two calls), and the verification runs the product's
:func:`hsm.internal_auth.check_internal_auth` (card key and session key derived in the token,
the random encrypted, compared) the way the product runs it
(:meth:`api.context.HsmRunner.run_short`: on the loop's thread when the HSM is free, else on
the HSM owner thread, the checks of one loop iteration handed over together), with
the card's key version and algorithm from the card read; a wrong answer says
``{"valid":false}`` (the bench counts it as a failure). That is the *floor with the HSM check*
of issue 20.

Nobody is authenticated and no challenge is protected: this is a measuring stick, never a
service. Run by :mod:`bench.verification` only (``uvicorn --factory bench.floor_app:app``, with
``YKT_FLOOR_DSN`` set).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from issuance.db_async import AsyncPgPool
from issuance.models import utcnow
from issuance.services.verification import VerificationStore

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_HEADERS = [(b"content-type", b"application/json")]


class FloorApp:
    def __init__(self, dsn: str, pool_size: int, hsm: Any = None) -> None:
        self.pool = AsyncPgPool(dsn, pool_size)  # the product's pool
        self.store = VerificationStore(self.pool)  # and its grouped statements
        self.hsm = hsm  # the product's HsmRunner, or None: no cryptogram check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path = scope["path"]
        if path == "/v1/verifications/challenge":
            cid = secrets.token_bytes(16)
            challenge = cid if self.hsm is not None else secrets.token_bytes(16)
            body = b'{"challenge_id":"%s","challenge":"%s"}' % (
                cid.hex().encode(),
                challenge.hex().encode(),
            )
        elif path == "/v1/verifications":
            raw = b""
            more = True
            while more:
                message = await receive()
                raw += message.get("body", b"")
                more = message.get("more_body", False)
            body = await self._verify(json.loads(raw))
        else:
            body = b'{"hello":"world"}'
        headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _verify(self, req: dict[str, Any]) -> bytes:
        now = utcnow()
        cid, kind = req["card_identification_code"], req["application"]
        row = await self.store.lookup(cid, kind)
        valid = row is not None
        if row is not None and self.hsm is not None:
            valid = await self._check(cid, row, req)
        details = json.dumps({"card_number": req["card_number"], "valid": valid})
        args = [bytes.fromhex(req["challenge_id"]), now, None, "floor", "agency", "api",
                "card.verified", "card", cid, None, "valid", None, details, "invalid",
                details]  # fmt: skip
        await self.store.use_and_audit(args)
        return b'{"valid":true}' if valid else b'{"valid":false}'

    async def _check(self, cid: str, row: Any, req: dict[str, Any]) -> bool:
        from cardspec.keyscheme import Algorithm
        from hsm.errors import CryptogramMismatch
        from hsm.internal_auth import check_internal_auth
        from hsm.service import CardKeyRef

        challenge = bytes.fromhex(req["challenge_id"])  # the floor's challenge is its id
        ref = CardKeyRef(cid, key_version=row.key_version, algorithm=Algorithm(row.algorithm))
        try:
            await self.hsm.run_short(check_internal_auth, ref, challenge[:8], challenge[8:],
                                     bytes.fromhex(req["response"]))  # fmt: skip
        except CryptogramMismatch:
            return False
        return True

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.pool.open()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.pool.close()
                if self.hsm is not None:
                    self.hsm.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _hsm_runner() -> Any:
    """The product's HSM owner thread on the bench's token (opened in that thread at first
    use, after the worker process started)."""
    from api.context import HsmRunner
    from hsm.service import Pkcs11KeyService
    from yikatong.settings import load_settings
    from yikatong.wiring import hsm_config

    config = hsm_config(load_settings(environ={"YKT_DATA_DIR": os.environ["YKT_DATA_DIR"]}))
    return HsmRunner(lambda: Pkcs11KeyService.from_config(config))


def app() -> FloorApp:
    hsm = _hsm_runner() if os.environ.get("YKT_FLOOR_HSM", "") not in ("", "0") else None
    return FloorApp(os.environ["YKT_FLOOR_DSN"], int(os.environ.get("YKT_FLOOR_POOL", "12")), hsm)
