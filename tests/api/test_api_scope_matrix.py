"""Out-of-scope calls are refused for every role pair (issue 7).

The matrix is built from the code, nothing hand-listed: the principals are every staff role
(scopes from ``credentials.STAFF_SCOPES``) and every agency kind (its default scopes,
``credentials.AGENCY_DEFAULT_SCOPES``); the routes are every route of the app that requires a
scope (found from its FastAPI dependencies, ``api.auth.route_scopes``). For each pair:

* the caller lacks a scope the route needs -> 403 ``forbidden`` and exactly one ``api.denied``
  audit event for that caller, naming the missing scope;
* the caller holds the scopes -> never the scope refusal: success, or a domain answer (404,
  409, 422, or 403 ``permission_denied`` when the role may not do it, audited once as well),
  never a server error.

Request bodies are valid for their schema (built from the route's body model, field by field),
so a held scope meets the domain, not the validator.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import PHOTO, Hsm, active_card, fake_photo, make_cid, staff
from fastapi import params as fastapi_params
from fastapi import routing
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from api.app import create_app
from api.auth import route_scopes
from issuance import services
from issuance.batches.selection import BatchFilter, create_batch
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import AgencyKind, AuditEvent, StaffRole
from issuance.services import credentials
from yikatong.settings import Settings, load_settings

pytestmark = pytest.mark.softhsm


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    scopes: tuple[str, ...]
    dependant: Any
    body_model: Any

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def app_routes() -> list[RouteSpec]:
    """Every route of the app that requires a scope (public routes have none)."""
    app = create_app(
        load_settings(environ={"YKT_DATA_DIR": "/nonexistent/ykt-matrix"}),
        engine=sa.create_engine("sqlite://"),
        key_service_factory=lambda: (_ for _ in ()).throw(RuntimeError("no HSM at collection")),
    )
    out = []
    for r in routing.iter_route_contexts(app.routes):
        dependant = getattr(r, "dependant", None)
        if dependant is None:
            continue
        scopes = route_scopes(dependant)
        if not scopes:
            continue
        body = r.body_field.field_info.annotation if r.body_field is not None else None
        for method in sorted(r.methods):
            out.append(RouteSpec(method, r.path_format, scopes, dependant, body))
    return out


def principals() -> dict[str, frozenset[str]]:
    out = {f"staff:{role}": frozenset(s) for role, s in credentials.STAFF_SCOPES.items()}
    out |= {f"agency:{k}": frozenset(s) for k, s in credentials.AGENCY_DEFAULT_SCOPES.items()}
    return out


ROUTES = app_routes()
PRINCIPALS = principals()
# every staff role and agency kind is in the matrix (a new one cannot be forgotten)
assert {p.split(":", 1)[1] for p in PRINCIPALS} >= {str(r) for r in StaffRole} - {"system"}
assert {str(k) for k in AgencyKind} <= {p.split(":", 1)[1] for p in PRINCIPALS}
PAIRS = [(who, route) for who in PRINCIPALS for route in ROUTES]


@dataclass
class Matrix:
    client: TestClient
    engine: Engine
    settings: Settings
    actors: dict[str, Any]
    tokens: dict[str, str]
    credential_ids: dict[str, int]
    shared_card: str
    shared_app: int
    batch_id: int
    person_id: int

    def tx(self) -> Any:
        return transaction(make_sessionmaker(self.engine))

    def fresh_card(self) -> str:
        with self.tx() as s:
            return active_card(s, self.settings, self.actors).card_number

    def fresh_application(self) -> int:
        with self.tx() as s:
            return self._application(s).id

    def _application(self, s: Any) -> Any:
        return services.submit_application(
            s, self.settings,
            services.ApplicationInput(citizen_id=make_cid(), name="矩阵", phone="13800138099",
                                      photo=PHOTO, ethnicity="01"),
            self.actors["clerk"], photo_processor=fake_photo,
        )  # fmt: skip


def _new_db(request: pytest.FixtureRequest, backend: str, dest: Path) -> str:
    name = f"ykt_matrix_{random.randrange(10**9)}"
    if backend == "postgres":
        template = request.getfixturevalue("_pg_template")
        return str(request.getfixturevalue("pg_server").create_database(name, template=template))
    path = dest / f"{name}.db"
    shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def matrix(
    db_backend: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    api_hsm: Hsm,
) -> Iterator[Matrix]:
    tmp = tmp_path_factory.mktemp("matrix")
    settings = load_settings(
        environ={"YKT_DATA_DIR": str(tmp), "YKT_API__AUTH_FAILURES_PER_MINUTE": "1000000"}
    )
    engine = make_engine(url=_new_db(request, db_backend, tmp))
    app = create_app(
        settings, engine=engine, key_service_factory=lambda: api_hsm.service,
        photo_processor=fake_photo,
    )  # fmt: skip
    tokens: dict[str, str] = {}
    creds: dict[str, int] = {}
    with transaction(make_sessionmaker(engine)) as s:
        actors = staff(s, "m")
        for who in PRINCIPALS:
            kind, name = who.split(":", 1)
            if kind == "staff":
                tokens[who] = credentials.staff_token(s, actors[name].username).access_token
            else:
                agency = services.create_agency(s, f"m-{name}", name, AgencyKind(name), "330100")
                new = credentials.register_agency_client(s, agency)
                assert new.client_secret is not None
                tokens[who] = credentials.issue_token(
                    s, new.client_id, new.client_secret
                ).access_token
            creds[who] = credentials.authenticate(s, tokens[who]).credential_id
        shared = active_card(s, settings, actors)
    m = Matrix(TestClient(app, raise_server_exceptions=False), engine, settings, actors, tokens,
               creds, shared.card_number, 0, 0, shared.person_id)  # fmt: skip
    with m.tx() as s:
        app_row = m._application(s)
        services.process_application(s, app_row.id, actors["clerk"])
        services.review_application(s, app_row.id, actors["reviewer"])
        services.approve_application(s, settings, app_row.id, actors["approver"])
        m.batch_id = create_batch(s, actors["clerk"], "matrix", BatchFilter()).id
    m.shared_app = m.fresh_application()
    with m.client:
        yield m
    engine.dispose()


# --- request bodies from the route's schema ---------------------------------------------------
CSV = b"citizen_id,name,phone,death_date\r\n"

#: A valid value for each body field name the API uses (a new required field without a value
#: here fails the test with its name, rather than being skipped).
FIELD_VALUES: dict[str, Callable[[Matrix], Any]] = {
    "challenge_id": lambda m: random.randbytes(16).hex(),
    "card_identification_code": lambda m: "330100D156000005" + random.randbytes(8).hex().upper(),
    "card_number": lambda m: m.shared_card,
    "response": lambda m: random.randbytes(8).hex(),
    "reason": lambda m: "scope matrix",
    "person_id": lambda m: m.person_id,
    "citizen_id": lambda m: make_cid(),
    "name": lambda m: "矩阵",
    "identity_checked": lambda m: True,
    "pin_set": lambda m: True,
    "collective": lambda m: "矩阵测试单位",
    "file": lambda m: ("records.csv", CSV, "text/csv"),
    "photo": lambda m: ("photo.jpg", PHOTO, "image/jpeg"),
    "code": lambda m: "YKTEC1:NOT-A-CODE",  # an e-card code (refused: code_malformed)
}


def request_kwargs(route: RouteSpec, m: Matrix) -> dict[str, Any]:
    if route.body_model is None:
        return {}
    params = list(route.dependant.body_params)
    if len(params) == 1 and not isinstance(
        params[0].field_info, fastapi_params.Form | fastapi_params.File
    ):  # a JSON body: its model's required fields
        fields = route.body_model.model_fields
        missing = [n for n, f in fields.items() if f.is_required() and n not in FIELD_VALUES]
        assert not missing, f"{route}: add a FIELD_VALUES entry for {missing}"
        body = {n: FIELD_VALUES[n](m) for n, f in fields.items() if f.is_required()}
        route.body_model.model_validate(body)  # valid for the schema: held scopes meet the domain
        return {"json": body}
    files, data = {}, {}
    for p in params:
        if not p.field_info.is_required():
            continue
        assert p.name in FIELD_VALUES, f"{route}: add a FIELD_VALUES entry for {p.name}"
        value = FIELD_VALUES[p.name](m)
        if isinstance(p.field_info, fastapi_params.File):
            files[p.name] = value
        else:
            data[p.name] = value
    return {"files": files, "data": data}


def url_for(route: RouteSpec, m: Matrix, held: bool) -> str:
    # a caller that may act gets a fresh card/application, so its call meets a usable state
    values = {
        "card_number": m.fresh_card() if held and route.method != "GET" else m.shared_card,
        "app_id": str(m.fresh_application() if held and route.method != "GET" else m.shared_app),
        "batch_id": str(m.batch_id),
        # disabling principals: one nobody has (a caller that may do it meets a 404)
        "kind": "clients",
        "name": "matrix-nobody",
        "action": "disable",
        "person_id": str(m.person_id),
        "day": "2026-12-06",
        "number": "CENTRE-00000001",
        "ecard_id": "0" * 32,  # an e-card nobody has (a caller that may act meets a 404)
    }
    path = route.path
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"{route}: no value for a path parameter"
    return path


def _denials(m: Matrix, who: str, after: int) -> list[AuditEvent]:
    with m.tx() as s:
        return list(
            s.scalars(
                sa.select(AuditEvent).where(
                    AuditEvent.id > after,
                    AuditEvent.action == "api.denied",
                    AuditEvent.entity_type == "api_credential",
                    AuditEvent.entity_id == str(m.credential_ids[who]),
                )
            )
        )


def _last_event(m: Matrix) -> int:
    with m.tx() as s:
        return int(s.scalar(sa.select(sa.func.max(AuditEvent.id))) or 0)


def test_matrix_covers_every_route_and_principal() -> None:
    assert len(ROUTES) >= 33 and len(PRINCIPALS) == 13  # agency kind community (issue 16)
    paths = {str(r) for r in ROUTES}
    assert {"POST /v1/imports", "POST /v1/cards/{card_number}/cancel", "GET /v1/audit/events",
            "POST /v1/verifications", "POST /v1/people/search",
            "GET /v1/people/{person_id}"} <= paths  # fmt: skip
    # the matrix has both kinds of pairs for most routes (not a trivially all-refused grid)
    for route in ROUTES:
        holders = [w for w in PRINCIPALS if set(route.scopes) <= PRINCIPALS[w]]
        assert holders, f"{route}: no principal holds {route.scopes}"


@pytest.mark.parametrize(("who", "route"), PAIRS, ids=[f"{w}|{r}" for w, r in PAIRS])
def test_scope_is_enforced_for_every_pair(matrix: Matrix, who: str, route: RouteSpec) -> None:
    held = set(route.scopes) <= PRINCIPALS[who]
    url = url_for(route, matrix, held)
    kwargs = request_kwargs(route, matrix)
    before = _last_event(matrix)
    r = matrix.client.request(
        route.method, url, headers={"Authorization": f"Bearer {matrix.tokens[who]}"}, **kwargs
    )
    assert r.status_code < 500, r.text
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    denials = _denials(matrix, who, before)
    if not held:
        missing = sorted(set(route.scopes) - PRINCIPALS[who])
        assert r.status_code == 403 and code == "forbidden", (who, str(route), r.text)
        assert len(denials) == 1, (who, str(route), len(denials))
        details = json.loads(denials[0].details)
        assert details["scope"] == " ".join(missing)
        assert details["path"] == url and details["method"] == route.method
    else:
        assert code != "forbidden", (who, str(route), r.text)
        if r.status_code == 403:  # the domain's role rule, audited once too
            assert code == "permission_denied", r.text
            assert len(denials) == 1
        else:
            assert denials == [], (who, str(route), r.text)
