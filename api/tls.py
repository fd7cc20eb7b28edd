"""Mutual TLS for ``ykt serve`` (by configuration).

With ``[api] tls_certfile``/``tls_keyfile`` uvicorn serves HTTPS; with ``tls_client_ca`` too,
every client must present a certificate chaining to that CA (``CERT_REQUIRED``). The subject of
the client certificate (RFC 4514 string, e.g. ``CN=hospital-1,O=City Hospital``) is handed to
the application in the ASGI scope (``extensions.tls.client_cert_subject``, as the ASGI TLS
extension names it) by :class:`MtlsHttpToolsProtocol`; a credential registered with
``ykt api agency add --cert-subject`` is then accepted only on connections with that subject.
"""

from __future__ import annotations

import ssl
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# RFC 4514 short names of the attributes a subject usually has.
_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
}


def subject_string(peercert: dict[str, Any]) -> str | None:
    """``ssl.SSLSocket.getpeercert()``'s subject as an RFC 4514 string (most specific first)."""
    rdns = peercert.get("subject") or ()
    parts = [f"{_SHORT.get(k, k)}={v}" for rdn in rdns for (k, v) in rdn]
    return ",".join(reversed(parts)) or None


class MtlsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that adds the client certificate subject to the scope."""

    _client_subject: str | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert() if ssl_object is not None else None
        self._client_subject = subject_string(cert) if cert else None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._client_subject is not None:
            self.scope["extensions"] = {"tls": {"client_cert_subject": self._client_subject}}


def uvicorn_tls_options(settings: Any) -> dict[str, Any]:
    """uvicorn keyword arguments for the ``[api]`` TLS settings (empty without a certificate)."""
    api = settings.api
    if api.tls_certfile is None:
        return {}
    opts: dict[str, Any] = {
        "ssl_certfile": str(api.tls_certfile),
        "ssl_keyfile": None if api.tls_keyfile is None else str(api.tls_keyfile),
    }
    if api.tls_client_ca is not None:
        opts["ssl_ca_certs"] = str(api.tls_client_ca)
        opts["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        opts["http"] = MtlsHttpToolsProtocol
    return opts
