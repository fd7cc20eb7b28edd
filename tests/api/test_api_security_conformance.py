"""Issue 15 item 9 (conformance), replayed: OPTIONS and 405 list every method of the path;
booleans are strict; ``/docs`` loads nothing from a CDN and is off (``/openapi.json`` behind a
token) in production; ``create-staff --help`` does not offer ``system``; a request uvicorn
cannot parse (an oversized request line) gets the project's error shape from a real
``ykt serve``. (The token endpoint's 400s: test_api_security_auth; the malformed-JSON field:
test_api_security_bodies.)"""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import pytest
from api_helpers import ApiEnv, Hsm, fake_photo
from fastapi.testclient import TestClient
from server_helpers import server_env, serving
from typer.testing import CliRunner

from api.app import create_app
from cardspec.ids import make_card_number
from yikatong.cli import db as cli_db
from yikatong.settings import load_settings

pytestmark = pytest.mark.softhsm


def test_options_and_405_list_every_method(api_env: ApiEnv) -> None:
    c = api_env.client
    r = c.options("/v1/applications")
    assert r.status_code == 204
    assert r.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    r = c.delete("/v1/applications", headers=api_env.auth("clerk"))
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    assert c.options("/v1/cards/A00000019").headers["allow"] == "GET, HEAD, OPTIONS"


def test_booleans_are_strict(api_env: ApiEnv) -> None:
    for value in (0, 1, "yes", "true", None):
        body = {"challenge_id": "0" * 32, "card_identification_code": "0" * 32,
                "card_number": make_card_number("A0000001"), "response": "0" * 16,
                "include_photo": value}  # fmt: skip
        r = api_env.client.post("/v1/verifications", json=body, headers=api_env.auth("hospital"))
        assert r.status_code == 422, (value, r.text)
        assert r.json()["error"]["field"] == "include_photo"
    path = f"/v1/cards/{make_card_number('A0000001')}/loss-reports"
    r = api_env.client.post(path, json={"identity_checked": 1}, headers=api_env.auth("clerk"))
    assert r.status_code == 422 and r.json()["error"]["field"] == "identity_checked"


def test_docs_from_the_package_and_off_in_production(api_env: ApiEnv) -> None:
    c = api_env.client
    page = c.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/docs/assets/") for a in assets), assets
    assert "http://" not in page.text and "https://" not in page.text
    for asset in assets:
        assert c.get(asset).status_code == 200, asset
    prod = load_settings(
        environ={"YKT_DATA_DIR": str(api_env.settings.data_dir), "YKT_API__PUBLIC_DOCS": "false"}
    )
    app = create_app(prod, engine=api_env.engine, key_service_factory=lambda: api_env.hsm.service,
                     photo_processor=fake_photo)  # fmt: skip
    with TestClient(app, raise_server_exceptions=False) as closed:
        assert closed.get("/docs").status_code == 404
        assert closed.get("/docs/assets/swagger-ui.css").status_code == 404
        assert closed.get("/openapi.json").status_code == 401
        r = closed.get("/openapi.json", headers=api_env.auth("hospital"))
        assert r.status_code == 200 and "/v1/verifications" in r.json()["paths"]


def test_create_staff_help_does_not_offer_system() -> None:
    out = CliRunner().invoke(cli_db.app, ["create-staff", "--help"], env={"COLUMNS": "250"}).output
    roles = re.search(r"<([a-z_]+(?:\|[a-z_]+)+)>", out)
    assert roles is not None, out
    assert "clerk" in roles.group(1).split("|") and "system" not in roles.group(1).split("|")


@pytest.mark.slow
def test_an_unparsable_request_gets_the_error_shape(
    tmp_path: Path, _sqlite_template: Path, api_hsm: Hsm
) -> None:
    db = tmp_path / "serve.db"
    shutil.copyfile(_sqlite_template, db)
    env = server_env(tmp_path / "data", f"sqlite:///{db}", api_hsm.config.softhsm_conf or Path())
    with serving(env, tmp_path / "serve.log", workers=1) as server:
        for request, status, code in (
            # past what the HTTP parser reads: answered by ykt serve's protocol, not the app
            (b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
            # read by the parser, past MAX_TARGET: the gate
            (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, "bad_request"),
        ):
            with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
                s.sendall(request)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.split(b" ")[1] == str(status).encode(), data[:300]
            assert b"content-type: application/json" in head.lower(), data[:300]
            assert json.loads(body)["error"]["code"] == code
