"""The API's own frozen config: ``[api]`` and what it hands the console and the domain.

The root schema (:class:`yikatong.settings.Settings`) extends :class:`ApiConfig`; the API is
typed against it (:class:`api.context.ApiContext`), never against the whole.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from console.config import ConsoleConfig
from issuance.services.verification import WRITE_LINGER


class ApiSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default=2, ge=1)
    challenge_ttl_seconds: int = Field(default=60, ge=5, le=600)
    #: PostgreSQL: how long the verifications' grouped durable write waits for more calls
    #: when calls arrive together (0: never; a lone call never waits). See
    #: :class:`issuance.services.verification.VerificationStore`.
    write_linger_ms: float = Field(default=WRITE_LINGER * 1000, ge=0, le=20)
    #: Failed authentications per caller per minute before 429.
    auth_failures_per_minute: int = Field(default=20, ge=1)
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    #: For mutual TLS: CA bundle that client certificates must chain to.
    tls_client_ca: Path | None = None
    #: Largest request body per route, in bytes (413 beyond): a path pattern ("*" stands for
    #: one path segment) to its cap; ``default`` for every other route.
    body_limits: dict[str, int] = Field(
        default_factory=lambda: {
            "default": 64 * 1024,
            "/v1/applications": 28 * 1024 * 1024,  # JSON with a base64 photo of up to 20 MB
            "/v1/applications/*/photo": 21 * 1024 * 1024,
            "/v1/death-records": 21 * 1024 * 1024,
            "/v1/imports": 560 * 1024 * 1024,  # a 50 MB file and a 500 MB photo archive
            "/console/counter/apply": 21 * 1024 * 1024,  # the counter's form with a photo
            "/console/centre/bureau/import": 64 * 1024 * 1024,  # a bureau's result file
            "/console/centre/stock/import": 201 * 1024 * 1024,  # a delivery file (200 MB at most)
            "/console/counter/applications/*/photo": 21 * 1024 * 1024,  # a photo replaced
        }
    )
    #: JSON request bodies nested deeper than this are refused (400).
    max_json_depth: int = Field(default=32, ge=2, le=1000)
    #: Serve the interactive documentation (``/docs``, its assets from the package, and
    #: ``/openapi.json``) without authentication; False in production: the OpenAPI document
    #: then needs a token (any scope) and ``/docs`` is off.
    public_docs: bool = True


class ApiConfig(ConsoleConfig):
    """What the API reads: ``[api]``, the console's and the domain's sections."""

    api: ApiSettings = ApiSettings()
