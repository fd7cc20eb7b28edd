"""Mutual TLS for ``ykt serve`` (by configuration).

With ``[api] tls_certfile``/``tls_keyfile`` uvicorn serves HTTPS; with ``tls_client_ca`` too,
every client must present a certificate chaining to that CA (``CERT_REQUIRED``). The subject of
the client certificate is handed to the application in the ASGI scope by
:class:`MtlsHttpToolsProtocol` (``extensions.tls.client_cert_subject``, as the ASGI TLS
extension names it, an RFC 4514 string for messages; ``client_cert_name``, the parsed
:class:`cryptography.x509.Name`); a credential registered with
``ykt api agency-add --cert-subject`` is then accepted only on connections whose certificate
subject *is* that name (:func:`subject_matches`: RDN sequences compared, never strings).
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from typing import Any

from cryptography import x509
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.config import ApiConfig

#: The ASGI TLS extension's keys: the subject as an RFC 4514 string (escaped, for logs and
#: messages) and as a structured :class:`x509.Name` (what bindings are compared with).
SUBJECT_KEY = "client_cert_subject"
NAME_KEY = "client_cert_name"


def peer_name(der: bytes) -> x509.Name:
    """The subject of a DER client certificate, as a structured name (its RDN sequence)."""
    return x509.load_der_x509_certificate(der).subject


@lru_cache(maxsize=4096)
def bound_name(subject: str) -> x509.Name:
    """A bound subject (RFC 4514 string, as registered) as a structured name; raise
    ValueError if it is not one."""
    return x509.Name.from_rfc4514_string(subject)


def subject_matches(scope: Any, bound: str) -> bool:
    """Does the connection's client certificate have exactly the subject ``bound``? Compared
    as names (RDN sequences, attribute types and values), never as joined strings: a single
    CN ``hospital-1,O=City Hospital,C=CN`` is not the subject
    ``CN=hospital-1,O=City Hospital,C=CN``."""
    tls = scope.get("extensions", {}).get("tls") or {}
    presented = tls.get(NAME_KEY)
    if not isinstance(presented, x509.Name):
        return False
    try:
        return presented == bound_name(bound)
    except ValueError:
        return False


class ShapedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose answer to a request it cannot parse (a malformed or
    oversized request line or header) is the project's error shape in JSON, not plain text."""

    def send_400_response(self, msg: str) -> None:
        import json

        body = json.dumps(
            {"error": {"code": "bad_request", "message": f"malformed HTTP request: {msg}"}}
        ).encode("ascii")
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()


class MtlsHttpToolsProtocol(ShapedHttpToolsProtocol):
    """uvicorn's httptools protocol that adds the client certificate subject to the scope."""

    _client_name: x509.Name | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self._client_name = peer_name(der) if der else None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._client_name is not None:
            self.scope["extensions"] = {
                "tls": {
                    SUBJECT_KEY: self._client_name.rfc4514_string(),
                    NAME_KEY: self._client_name,
                }
            }


def uvicorn_tls_options(settings: ApiConfig) -> dict[str, Any]:
    """uvicorn keyword arguments for the ``[api]`` TLS settings, and the HTTP protocol (the
    project's error shape for unparsable requests; the client certificate with mutual TLS)."""
    api = settings.api
    if api.tls_certfile is None:
        return {"http": ShapedHttpToolsProtocol}
    opts: dict[str, Any] = {
        "http": ShapedHttpToolsProtocol,
        "ssl_certfile": str(api.tls_certfile),
        "ssl_keyfile": None if api.tls_keyfile is None else str(api.tls_keyfile),
    }
    if api.tls_client_ca is not None:
        opts["ssl_ca_certs"] = str(api.tls_client_ca)
        opts["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        opts["http"] = MtlsHttpToolsProtocol
    return opts
