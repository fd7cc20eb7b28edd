"""Helpers of the console tests: staff with passwords, a signed-in TestClient, the CSRF token
of a page."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from issuance.audit import SYSTEM_ACTOR
from issuance.db import make_sessionmaker, transaction
from issuance.services import staff as staff_service

PASSWORD = "correct-horse-电池-9"


def give_passwords(env: object) -> None:
    """A password for every staff user of an ApiEnv (the one ``ykt db set-password`` sets)."""
    with transaction(make_sessionmaker(env.engine)) as s:  # type: ignore[attr-defined]
        for actor in env.actors.values():  # type: ignore[attr-defined]
            staff_service.set_password(s, actor.username, PASSWORD, SYSTEM_ACTOR)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> str:
    """Sign in through the form; return the page's CSRF token of the signed-in session."""
    page = client.get("/console/login")
    assert page.status_code == 200
    r = client.post("/console/login", data={
        "csrf": csrf_of(page.text), "username": username, "password": password,
        "next": "/console/home",
    })  # fmt: skip
    assert r.status_code == 200, r.text  # followed the redirect to the home page
    return csrf_of(r.text)
