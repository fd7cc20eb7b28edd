"""API fixtures: one SoftHSM token per worker, an app on a fresh database (SQLite and
PostgreSQL), staff and agencies with credentials, an active card and its emulated chip."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import ApiEnv, Hsm, fake_photo, make_hsm, staff
from fastapi.testclient import TestClient

from api.app import create_app
from cardspec.reader import InProcessReader
from issuance import services
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import Agency, AgencyKind, Card
from issuance.services import credentials
from yikatong.settings import Settings

_tags = itertools.count(1)


@pytest.fixture(scope="session")
def api_hsm(tmp_path_factory: pytest.TempPathFactory) -> Hsm:
    return make_hsm(tmp_path_factory.mktemp("api-hsm"))


@pytest.fixture
def api_env(fresh_db_url: str, settings: Settings, api_hsm: Hsm) -> Iterator[ApiEnv]:
    engine = make_engine(url=fresh_db_url)
    app = create_app(
        settings, engine=engine, key_service_factory=lambda: api_hsm.service,
        photo_processor=fake_photo,
    )  # fmt: skip
    tag = f"t{next(_tags)}"
    tokens: dict[str, str] = {}
    clients: dict[str, tuple[str, str]] = {}
    agencies: dict[str, int] = {}
    with transaction(make_sessionmaker(engine)) as s:
        actors = staff(s, tag)
        for role in actors:
            tokens[role] = credentials.staff_token(s, actors[role].username).access_token
        for name, kind in (("hospital", AgencyKind.HOSPITAL), ("bank", AgencyKind.BANK),
                           ("selfservice", AgencyKind.OTHER)):  # fmt: skip
            agency: Agency = services.create_agency(s, f"{name}-{tag}", name, kind, "330100")
            agencies[name] = agency.id
            new = credentials.register_agency_client(s, agency)
            assert new.client_secret is not None
            clients[name] = (new.client_id, new.client_secret)
    with TestClient(app, raise_server_exceptions=False) as client:
        for name, (cid, secret) in clients.items():
            r = client.post(
                "/v1/oauth/token",
                data={"grant_type": "client_credentials", "client_id": cid,
                      "client_secret": secret},
            )  # fmt: skip
            assert r.status_code == 200, r.text
            tokens[name] = r.json()["access_token"]
        yield ApiEnv(client, engine, settings, api_hsm, actors, tokens, clients, agencies)
    engine.dispose()


@pytest.fixture
def card_and_chip(api_env: ApiEnv) -> tuple[Card, InProcessReader]:
    card = api_env.new_card()
    return card, api_env.chip(card)


__all__ = ["ApiEnv", "Path"]
