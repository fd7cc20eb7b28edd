"""Mutual TLS on a real ``ykt serve`` (uvicorn, ``ssl_cert_reqs=CERT_REQUIRED``) with a
throwaway CA made here (cryptography): a credential bound to a certificate subject works on a
connection with that subject (200), is refused on a connection with another subject of the
same CA (401), and a client without a certificate does not get through the handshake."""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from api_helpers import Hsm
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from server_helpers import server_env, serving

from api.tls import subject_matches
from issuance import services
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import AgencyKind, AuditEvent
from issuance.services import credentials

pytestmark = [pytest.mark.softhsm, pytest.mark.slow]


class Ca:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Yikatong test CA")])
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = self._write("ca.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    def _write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    def issue(self, stem: str, subject: x509.Name, *, server: bool) -> tuple[Path, Path, str]:
        """(certificate file, key file, RFC 4514 subject) of a new leaf certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self._write(f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM))
        key_path = self._write(
            f"{stem}.key",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return cert_path, key_path, cert.subject.rfc4514_string()


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "City Hospital"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _context(ca: Ca, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def _without_certificate(ca: Ca, port: int, version: ssl.TLSVersion) -> tuple[str, str]:
    """Where a client without a certificate is stopped, and the TLS error it gets: TLS 1.2
    fails the handshake itself; in TLS 1.3 the client's side of the handshake completes and
    the server drops the connection before any HTTP is read (first read: an alert or EOF)."""
    ctx = _context(ca, None)
    ctx.minimum_version = ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1", do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except ssl.SSLError as exc:
            return "handshake", str(exc)
        try:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = tls.recv(100)
        except ssl.SSLError as exc:
            return "first read", str(exc)
        finally:
            tls.close()
    if data == b"":
        return "first read", "closed by the server without an answer"
    raise AssertionError(f"{version}: the server answered without a client certificate: {data!r}")


def _scope(name: x509.Name) -> dict[str, object]:
    return {"extensions": {"tls": {"client_cert_name": name}}}


FORGED_CN = "hospital-1,O=City Hospital,C=CN"


def test_subjects_are_compared_as_names_not_strings() -> None:
    bound = _name("hospital-1").rfc4514_string()
    assert bound == "CN=hospital-1,O=City Hospital,C=CN"
    assert subject_matches(_scope(_name("hospital-1")), bound)
    # issue 15: one CN holding the whole subject joined to the same string before
    forged = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, FORGED_CN)])
    assert not subject_matches(_scope(forged), bound)
    assert not subject_matches(_scope(_name("hospital-2")), bound)
    assert not subject_matches({}, bound)  # no certificate
    # the binding is stored the way cryptography writes it; a forged CN binds only itself
    assert credentials.canonical_cert_subject(" " + bound) == bound
    assert credentials.canonical_cert_subject(forged.rfc4514_string()) != bound
    assert subject_matches(_scope(forged), forged.rfc4514_string())


def test_mutual_tls_binds_a_credential_to_its_certificate_subject(
    tmp_path: Path, fresh_db_url: str, api_hsm: Hsm
) -> None:
    ca = Ca(tmp_path)
    server_cert, server_key, _ = ca.issue("server", _name("api.example"), server=True)
    good = ca.issue("hospital-1", _name("hospital-1"), server=False)
    other = ca.issue("intruder", _name("intruder"), server=False)
    forged = ca.issue(
        "forged", x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, FORGED_CN)]), server=False
    )
    engine = make_engine(url=fresh_db_url)
    with transaction(make_sessionmaker(engine)) as s:
        agency = services.create_agency(s, "tls-hospital", "City Hospital", AgencyKind.HOSPITAL,
                                        "330100")  # fmt: skip
        bound = credentials.register_agency_client(s, agency, cert_subject=good[2])
        plain = credentials.register_agency_client(s, agency)
    env = server_env(
        tmp_path / "data", fresh_db_url, api_hsm.config.softhsm_conf or Path(),
        YKT_API__TLS_CERTFILE=str(server_cert), YKT_API__TLS_KEYFILE=str(server_key),
        YKT_API__TLS_CLIENT_CA=str(ca.path),
    )  # fmt: skip
    with serving(env, tmp_path / "serve.log", workers=1, scheme="https") as server:

        def client(cert: tuple[Path, Path, str] | None) -> httpx.Client:
            pair = None if cert is None else (cert[0], cert[1])
            return httpx.Client(base_url=server.base_url, verify=_context(ca, pair), timeout=20)

        def token(c: httpx.Client, cred: credentials.NewCredential) -> dict[str, str]:
            r = c.post("/v1/oauth/token", data={"grant_type": "client_credentials"},
                       auth=(cred.client_id, cred.client_secret or ""))  # fmt: skip
            assert r.status_code == 200, r.text
            return {"Authorization": f"Bearer {r.json()['access_token']}"}

        with client(good) as c:
            h = token(c, bound)
            r = c.post("/v1/verifications/challenge", headers=h)
            assert r.status_code == 200, r.text
            assert len(r.json()["challenge"]) == 32
            # an unbound credential of the same agency works on any verified connection
            assert c.post("/v1/verifications/challenge", headers=token(c, plain)).status_code == 200
        with client(other) as c:
            r = c.post("/v1/verifications/challenge", headers=h)  # the bound token, wrong cert
            assert r.status_code == 401, r.text
            assert r.json()["error"] == {
                "code": "unauthorized",
                "message": "this client must present its TLS client certificate",
            }
        with client(forged) as c:  # issue 15: the CN that joined to the bound subject
            r = c.post("/v1/verifications/challenge", headers=h)
            assert r.status_code == 401, r.text
            r = c.get("/v1/status-feed/public-key")  # the connection itself is fine
            assert r.status_code == 200
        # no certificate: no HTTP answer at all, the TLS layer refuses the connection
        with client(None) as c, pytest.raises(httpx.TransportError):
            c.post("/v1/verifications/challenge", headers=h)
        phase, _ = _without_certificate(ca, server.port, ssl.TLSVersion.TLSv1_2)
        assert phase == "handshake"
        phase, error = _without_certificate(ca, server.port, ssl.TLSVersion.TLSv1_3)
        assert phase == "first read", error
        # plain HTTP on the TLS port gets nothing useful either
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as c:
            try:
                r = c.get("/healthz")
            except httpx.TransportError:
                pass
            else:
                assert r.status_code == 400 and "ok" not in r.text
    assert "Traceback" not in server.log_text()
    with transaction(make_sessionmaker(engine)) as s:
        used = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "api.denied")).all()
    assert used == []  # a 401 is an authentication failure, not a refusal of a known caller
    engine.dispose()
