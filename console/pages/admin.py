"""The administrator's pages (``/console/admin``): staff users (create, disable, enable, a new
password), agencies and their API clients (create, disable, enable; a new client secret shown
once), collection points (create, list).

The same services as ``ykt db``, ``ykt api`` and ``ykt places``, with the same rule on who may
use them (:data:`issuance.services.staff.STAFF_ADMINS`, as ``admin_or_bootstrap`` in the CLI);
every action audited with channel ``console``. A password or client secret is shown once on
the answer to the form that made it (``Cache-Control: no-store``) and never logged.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from console.common import PREFIX, Problem, field, page, problems_of, render, tx
from console.sessions import SignedIn
from issuance import audit, services
from issuance.audit import Actor
from issuance.errors import FieldProblem, IssuanceError, NotFound, PermissionDenied, ValidationError
from issuance.models import Agency, AgencyKind, ApiCredential, StaffRole
from issuance.services import credentials
from issuance.services.places import add_collection_point, list_collection_points
from issuance.services.staff import STAFF_ADMINS, generate_password
from issuance.services.staff_list import list_staff

router = APIRouter(prefix=PREFIX, include_in_schema=False)
SCOPE = "principals:manage"

#: The roles a person may have (``system`` is the service itself).
PERSON_ROLES = [r for r in StaffRole if r != StaffRole.SYSTEM]


def _admin(actor: Actor, what: str) -> Actor:
    """The acting admin or supervisor (the CLI's rule, ``admin_or_bootstrap``)."""
    if actor.role not in STAFF_ADMINS:
        raise PermissionDenied(f"role {actor.role} may not {what}")
    return actor


# --- staff users ----------------------------------------------------------------------------


def _staff_view(s: Session, user: SignedIn) -> dict[str, Any]:
    agencies = s.execute(sa.select(Agency.code, Agency.name).order_by(Agency.code)).all()
    return {
        "staff": list_staff(s, user.actor),
        "roles": [str(r) for r in PERSON_ROLES],
        "agencies": [(code, name) for code, name in agencies],
    }


async def _staff_page(
    request: Request, user: SignedIn, *, status: int = 200, done: str | None = None,
    who: str = "", password: str | None = None, problems: list[Problem] | None = None,
) -> Response:  # fmt: skip
    view = await tx(request, lambda s: _staff_view(s, user))
    return render(request, "admin/staff.html", user, status, **view, done=done, who=who,
                  password=password, problems=problems or [],
                  here=f"{PREFIX}/admin/staff")  # fmt: skip


@router.get("/admin/staff")
@page(SCOPE)
async def staff(request: Request, user: SignedIn) -> Response:
    return await _staff_page(request, user)


@router.post("/admin/staff")
@page(SCOPE, form=True)
async def create_staff(request: Request, user: SignedIn) -> Response:
    data: FormData = request.state.form
    username = field(data, "username", 64) or ""
    role = field(data, "role", 32) or ""
    display_name = field(data, "display_name", 100) or None
    agency_code = field(data, "agency", 32) or None
    password = generate_password()

    def fn(s: Session) -> None:
        actor = _admin(user.actor, "create staff users")
        problems = []
        if not username:
            problems.append(FieldProblem("username", "1-64 characters"))
        if role not in {str(r) for r in PERSON_ROLES}:
            problems.append(FieldProblem("role", "choose a role"))
        agency_id = None
        if agency_code:
            agency_id = s.scalar(sa.select(Agency.id).where(Agency.code == agency_code))
            if agency_id is None:
                problems.append(FieldProblem("agency", f"no agency {agency_code!r}"))
        if problems:
            raise ValidationError("invalid staff user", problems)
        services.create_staff(s, username, StaffRole(role), display_name=display_name,
                              agency_id=agency_id, actor=actor)  # fmt: skip
        services.set_password(s, username, password, actor)

    try:
        await tx(request, fn)
    except IssuanceError as exc:
        return await _staff_page(request, user, status=422, problems=problems_of(exc))
    return await _staff_page(request, user, done="created", who=username, password=password)


@router.post("/admin/staff/{username}/{action}")
@page(SCOPE, form=True)
async def staff_action(request: Request, user: SignedIn) -> Response:
    """``disable``, ``enable`` or ``password`` (a new generated password, shown once)."""
    username = str(request.path_params["username"])[:64]
    action = str(request.path_params["action"])
    password = generate_password() if action == "password" else None

    def fn(s: Session) -> None:
        actor = _admin(user.actor, "manage staff users")
        if action in ("disable", "enable"):
            credentials.set_staff_active(s, username, action == "enable", actor)
        elif action == "password" and password is not None:
            services.set_password(s, username, password, actor)
        else:
            raise NotFound(f"no action {action!r}")

    try:
        await tx(request, fn)
    except IssuanceError as exc:
        return await _staff_page(request, user, status=409, who=username,
                                 problems=problems_of(exc))  # fmt: skip
    done = {"disable": "disabled", "enable": "enabled", "password": "password"}[action]
    return await _staff_page(request, user, done=done, who=username, password=password)


# --- agencies and API clients ---------------------------------------------------------------


def _clients_view(s: Session, user: SignedIn) -> dict[str, Any]:
    _admin(user.actor, "manage API clients")
    agencies = s.scalars(sa.select(Agency).order_by(Agency.code)).all()
    creds = s.scalars(
        sa.select(ApiCredential).where(ApiCredential.agency_id.is_not(None))
        .order_by(ApiCredential.client_id)
    ).all()  # fmt: skip
    by_agency: dict[int, list[dict[str, Any]]] = {}
    for c in creds:
        assert c.agency_id is not None
        by_agency.setdefault(c.agency_id, []).append(
            {"client_id": c.client_id, "scopes": c.scopes.split(), "active": c.active,
             "cert_subject": c.cert_subject, "created_at": c.created_at}
        )  # fmt: skip
    return {
        "agencies": [
            {"code": a.code, "name": a.name, "kind": str(a.kind), "region_code": a.region_code,
             "active": a.active, "clients": by_agency.get(a.id, [])}
            for a in agencies
        ],
        "kinds": [str(k) for k in AgencyKind],
        "all_scopes": sorted(set(credentials.SCOPES) - credentials.STAFF_ONLY_SCOPES),
        "defaults": {str(k): list(v) for k, v in credentials.AGENCY_DEFAULT_SCOPES.items()},
    }  # fmt: skip


async def _clients_page(
    request: Request, user: SignedIn, *, status: int = 200, done: str | None = None,
    who: str = "", secret: credentials.NewCredential | None = None,
    problems: list[Problem] | None = None,
) -> Response:  # fmt: skip
    try:
        view = await tx(request, lambda s: _clients_view(s, user))
    except IssuanceError as exc:
        return render(request, "message.html", user, 403, problems=problems_of(exc))
    return render(request, "admin/clients.html", user, status, **view, done=done, who=who,
                  secret=secret, problems=problems or [],
                  here=f"{PREFIX}/admin/clients")  # fmt: skip


@router.get("/admin/clients")
@page(SCOPE)
async def clients(request: Request, user: SignedIn) -> Response:
    return await _clients_page(request, user)


@router.post("/admin/clients")
@page(SCOPE, form=True)
async def create_client(request: Request, user: SignedIn) -> Response:
    """A new agency with its first client, or (``agency`` names one) another client of it."""
    data: FormData = request.state.form
    existing = field(data, "agency", 32) or None
    code = field(data, "code", 32) or ""
    name = field(data, "name", 200) or ""
    kind = field(data, "kind", 32) or ""
    region = field(data, "region", 6) or ""
    scopes = [v for v in data.getlist("scope") if isinstance(v, str)][:40]
    cert_subject = field(data, "cert_subject", 300) or None

    def fn(s: Session) -> credentials.NewCredential:
        actor = _admin(user.actor, "manage API clients")
        if existing:
            agency = s.scalars(sa.select(Agency).where(Agency.code == existing)).one_or_none()
            if agency is None:
                raise NotFound(f"no agency {existing!r}")
        else:
            problems = []
            if not code:
                problems.append(FieldProblem("code", "1-32 characters"))
            if not name:
                problems.append(FieldProblem("name", "1-200 characters"))
            if kind not in {str(k) for k in AgencyKind}:
                problems.append(FieldProblem("kind", "choose a kind"))
            if problems:
                raise ValidationError("invalid agency", problems)
            if s.scalar(sa.select(Agency.id).where(Agency.code == code)) is not None:
                from issuance.errors import ConflictError

                raise ConflictError(f"an agency {code!r} already exists")
            agency = services.create_agency(s, code, name, kind, region, actor=actor)
        return credentials.register_agency_client(
            s, agency, scopes=scopes or None, cert_subject=cert_subject, actor=actor
        )

    try:
        new = await tx(request, fn)
    except IssuanceError as exc:
        return await _clients_page(request, user, status=422, problems=problems_of(exc))
    return await _clients_page(request, user, done="created", secret=new)


@router.post("/admin/access/{kind}/{name}/{action}")
@page(SCOPE, form=True)
async def set_active(request: Request, user: SignedIn) -> Response:
    """An agency or an API client disabled (its tokens stop at once) or enabled again."""
    kind = str(request.path_params["kind"])
    name = str(request.path_params["name"])[:64]
    action = str(request.path_params["action"])
    setter = {"agencies": credentials.set_agency_active,
              "clients": credentials.set_client_active}.get(kind)  # fmt: skip

    def fn(s: Session) -> None:
        actor = _admin(user.actor, "manage API clients")
        if setter is None or action not in ("disable", "enable"):
            raise NotFound(f"no action {kind}/{action}")
        setter(s, name, action == "enable", actor)

    try:
        await tx(request, fn)
    except IssuanceError as exc:
        return await _clients_page(request, user, status=409, who=name,
                                   problems=problems_of(exc))  # fmt: skip
    return await _clients_page(request, user, done=f"{action}d", who=name)


# --- collection points ----------------------------------------------------------------------


async def _places_page(
    request: Request, user: SignedIn, *, status: int = 200, done: str | None = None,
    form: dict[str, str] | None = None, problems: list[Problem] | None = None,
) -> Response:  # fmt: skip
    def fn(s: Session) -> Any:
        audit.record(s, user.actor, "console.places_read", "agency", "collection_points")
        return list_collection_points(s)

    places = await tx(request, fn)
    return render(request, "admin/places.html", user, status, places=places, done=done,
                  form=form or dict.fromkeys(("code", "name", "kind", "region"), ""),
                  problems=problems or [], here=f"{PREFIX}/admin/places")  # fmt: skip


@router.get("/admin/places")
@page(SCOPE)
async def places(request: Request, user: SignedIn) -> Response:
    return await _places_page(request, user)


@router.post("/admin/places")
@page(SCOPE, form=True)
async def add_place(request: Request, user: SignedIn) -> Response:
    data: FormData = request.state.form
    form = {k: field(data, k, 200) or "" for k in ("code", "name", "kind", "region")}

    def fn(s: Session) -> None:
        add_collection_point(s, form["code"], form["name"], form["kind"], form["region"],
                             user.actor)  # fmt: skip

    try:
        await tx(request, fn)
    except IssuanceError as exc:
        return await _places_page(request, user, status=422, form=form,
                                  problems=problems_of(exc))  # fmt: skip
    return await _places_page(request, user, done=form["code"])
