"""The FastAPI application: one HTTP service for counters, banks, hospitals and agencies.

``create_app(settings)`` builds it (tests pass their own engine, key service factory and photo
processor); ``uvicorn --factory yikatong.wiring:app_from_env`` (what ``ykt serve`` runs, one app per
worker process) builds it from the settings in force. The HSM is opened lazily, in the HSM
thread of each worker, after the fork.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from sqlalchemy.engine import Engine

from api import (
    errors,
    routes_admin,
    routes_apps,
    routes_cards,
    routes_cash,
    routes_ecard,
    routes_people,
    routes_verify,
)
from api.auth import Authenticator
from api.batchruns import BatchRuns
from api.calllog import PRINCIPAL, CallLog, CallRecorder, Receive, Scope, Send, state_of
from api.config import ApiConfig
from api.context import ApiContext, HsmRunner
from api.gate import Gate
from api.hotpath import HotPath
from hsm.service import KeyService
from issuance.batches.adapters import BatchAdapters
from issuance.db import make_engine, make_sessionmaker
from issuance.db_async import AsyncPgPool, dsn_from_url
from issuance.services.applications import PhotoProcessor
from issuance.services.credentials import Principal
from issuance.services.temporary import TemporaryChipDesk
from issuance.services.verification import VerificationStore

log = logging.getLogger("api")

#: Threads for blocking work (database) per worker process; see lifespan.
THREADS = int(os.environ.get("YKT_API_THREADS", "8"))
#: PostgreSQL connections of the asyncio pool (verification hot path) per worker process.
PG_POOL = int(os.environ.get("YKT_API_PG_POOL", "12"))
#: The cyclic collector's young-generation threshold in a serving process (Python's default is
#: 700 allocations). Requests allocate and free many small objects; at 700 a worker ran ~300
#: young, ~27 middle and 1-2 full collections in one ``bench.verification`` run (6 s phases),
#: 0.10-0.32 s of CPU (~20-35 us per verification) with pauses up to 16-53 ms; at 20,000 one
#: young collection, 5-29 ms in all (docs/design/api.md, "The tail at 32 connections").
GC_YOUNG = 20_000

DESCRIPTION = """\
Card verification, the signed status feed, applications, the card lifecycle, bank activation,
batches and audit queries of the Yikatong card centre.

Authentication: OAuth 2.0 client credentials (`POST /v1/oauth/token`) for agencies, staff
tokens (`ykt api staff-token`) for staff acting as themselves; `Authorization: Bearer <token>`.
Every error answers `{"error": {"code", "message", "field"}}`.
"""


def create_app(
    settings: ApiConfig,
    *,
    engine: Engine | None = None,
    key_service_factory: Callable[[], KeyService],
    photo_processor: PhotoProcessor | None = None,
    batch_adapters: BatchAdapters | None = None,
    desk_factory: Callable[[KeyService], AbstractContextManager[TemporaryChipDesk]] | None = None,
) -> FastAPI:
    if engine is None:
        engine = make_engine(settings)
    ctx = ApiContext(settings, engine, make_sessionmaker(engine), HsmRunner(key_service_factory))
    if engine.dialect.name == "postgresql":
        ctx.pg = AsyncPgPool(dsn_from_url(engine.url), PG_POOL)
        ctx.verifications = VerificationStore(
            ctx.pg, write_linger=settings.api.write_linger_ms / 1000
        )
    if photo_processor is not None:
        ctx.extra["photo_processor"] = photo_processor
    runs = ctx.batch_runs = BatchRuns(settings, engine, batch_adapters)
    if desk_factory is not None:  # the counter's reader and printer (temporary cards' chips)
        ctx.extra["desk_factory"] = desk_factory

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Few worker threads: database round trips overlap, but CPU-bound threads do not
        # convoy the event loop on the GIL (measured: 40 threads were slower than 8).
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        sys.setswitchinterval(0.001)  # hand the GIL back to the event loop sooner
        if ctx.pg is not None:
            await ctx.pg.open()  # this worker's event loop owns the hot paths' connections
        # Everything built so far lives as long as the worker: out of the collector's sight,
        # so its full collections only walk the objects of requests (measured: ~10 % less
        # CPU per verification); and the young generation is collected every GC_YOUNG
        # allocations, not every 700.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
        yield
        if ctx.pg is not None:
            await ctx.pg.close()
        ctx.hsm.shutdown()
        runs.stop_all()

    app = YikatongApi(
        title="Yikatong API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # see _docs: served from the package, never from a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if settings.api.public_docs else None,
    )
    app.state.ctx = ctx
    app.state.auth = auth = _LoggedAuthenticator(ctx)
    recorder = CallRecorder(ctx)
    app.add_middleware(CallLog, recorder=recorder)
    app.hot = HotPath(ctx, auth, recorder)
    app.gate = Gate(auth, recorder, app)
    errors.install(app)
    modules = (routes_verify, routes_cards, routes_apps, routes_admin, routes_people, routes_cash,
               routes_ecard)  # fmt: skip
    for module in modules:
        app.include_router(module.router)
    _security_scheme(app)
    _docs(app, settings)
    from console.web import install as install_console

    install_console(app)  # the web console at /console
    return app


class YikatongApi(FastAPI):
    """The FastAPI application, with the verification calls' hot path in front of it
        (:mod:`api.hotpath`: it answers the common case and hands everything else on) and the gate
    (:mod:`api.gate`: authentication before any body is read, body caps, JSON depth)."""

    hot: HotPath | None = None
    gate: Gate | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.hot is not None:
            rest = await self.hot(scope, receive, send)
            if rest is None:
                return
            receive = rest
        if scope["type"] == "http" and self.gate is not None:
            gated = await self.gate(scope, receive, send)
            if gated is None:
                return
            receive = gated
        await super().__call__(scope, receive, send)


class _LoggedAuthenticator(Authenticator):
    """The authenticator that also tells the call log who is calling."""

    async def principal(self, request: Request) -> Principal:
        principal = await super().principal(request)
        state_of(request.scope)[PRINCIPAL] = principal
        return principal


def _security_scheme(app: FastAPI) -> None:
    """Declare the bearer scheme in OpenAPI (routes check it themselves, see api.auth)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        open_paths = {"/healthz", "/v1/hello", "/v1/oauth/token", "/v1/status-feed/public-key"}
        for path, ops in schema.get("paths", {}).items():
            if path in open_paths:
                continue
            for op in ops.values():
                op["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


DOCS_ASSETS = "/docs/assets"


def _docs(app: FastAPI, settings: ApiConfig) -> None:
    """``/docs`` with Swagger UI's assets from the installed package (swagger-ui-bundle: no
    CDN, nothing loaded from elsewhere), while ``[api] public_docs`` (development). With it
    off (production) there is no ``/docs`` and ``/openapi.json`` needs a valid bearer token."""
    from fastapi import Depends
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse, JSONResponse

    from api.auth import need

    if not settings.api.public_docs:

        async def openapi_json(
            _principal: Principal = Depends(need()),  # noqa: B008 - FastAPI's idiom
        ) -> JSONResponse:
            return JSONResponse(app.openapi())

        app.add_api_route("/openapi.json", openapi_json, include_in_schema=False)
        return
    from starlette.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title=f"{app.title} - docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )  # fmt: skip

    app.add_api_route("/docs", docs, include_in_schema=False)
