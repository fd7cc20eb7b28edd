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

The cryptogram is not checked and nobody is authenticated: this is a measuring stick, never a
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
    def __init__(self, dsn: str, pool_size: int) -> None:
        self.pool = AsyncPgPool(dsn, pool_size)  # the product's pool
        self.store = VerificationStore(self.pool)  # and its grouped statements

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path = scope["path"]
        if path == "/v1/verifications/challenge":
            cid, challenge = secrets.token_bytes(16), secrets.token_bytes(16)
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
        details = json.dumps({"card_number": req["card_number"], "valid": row is not None})
        args = [bytes.fromhex(req["challenge_id"]), now, None, "floor", "agency", "api",
                "card.verified", "card", cid, None, "valid", None, details, "invalid",
                details]  # fmt: skip
        await self.store.use_and_audit(args)
        return b'{"valid":true}'

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.pool.open()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def app() -> FloorApp:
    return FloorApp(os.environ["YKT_FLOOR_DSN"], int(os.environ.get("YKT_FLOOR_POOL", "12")))
