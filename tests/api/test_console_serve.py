"""``ykt serve`` serves the console beside the API: the real command, two worker processes, a
session that holds on every new connection (whichever worker takes it: the session is in the
database)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest
from api_helpers import Hsm
from console_helpers import PASSWORD
from server_helpers import server_env, serving

from console.web import CSP
from issuance import services
from issuance.audit import SYSTEM_ACTOR
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.services import staff as staff_service

pytestmark = [pytest.mark.softhsm, pytest.mark.slow]


def test_ykt_serve_serves_the_console(tmp_path: Path, _sqlite_template: Path, api_hsm: Hsm) -> None:
    db = tmp_path / "serve.db"
    shutil.copyfile(_sqlite_template, db)
    engine = make_engine(url=f"sqlite:///{db}")
    with transaction(make_sessionmaker(engine)) as s:
        services.create_staff(s, "auditor-serve", "auditor", display_name="审计 王")
        staff_service.set_password(s, "auditor-serve", PASSWORD, SYSTEM_ACTOR)
    engine.dispose()
    conf = api_hsm.config.softhsm_conf or Path()
    env = server_env(tmp_path / "data", f"sqlite:///{db}", conf)
    with serving(env, tmp_path / "serve.log", workers=2) as server:
        base = server.base_url
        with httpx.Client(base_url=base) as c:
            login = c.get("/console/login")
            assert login.status_code == 200 and login.headers["content-security-policy"] == CSP
            token = re.search(r'name="csrf" value="([^"]+)"', login.text)
            assert token
            r = c.post("/console/login", data={"csrf": token.group(1), "username": "auditor-serve",
                                               "password": PASSWORD})  # fmt: skip
            assert r.status_code == 303
            cookies = dict(c.cookies)
        for _ in range(12):  # a new connection each time
            with httpx.Client(base_url=base, cookies=cookies) as c:
                home = c.get("/console/home")
                assert home.status_code == 200 and "审计 王" in home.text
        assert httpx.get(f"{base}/console/static/htmx.min.js").status_code == 200
        assert httpx.get(f"{base}/healthz").status_code == 200  # the API beside it
