"""The bank branch's (collection point's) pages (``/console/branch``): the cards shipped to
the branch, the hand-over to the holder after the identity check, and the activation of the
financial function.

Hand-over: the teller types the ID number from the holder's document (its check character
first) and ticks that they compared the photo; the page compares the number with the card's
holder and calls :func:`issuance.batches.shipping.issue_card` (what ``ykt batch collect``
calls), whose lifecycle refuses a card that is not waiting for collection (a card reported
lost on its way, for one).

Financial activation — CHOICE: the PIN never passes through the browser or this service. The
page checks everything that must hold first (:func:`issuance.services.desk.
request_activation`, which calls :func:`issuance.services.financial.check_can_activate`:
identity checked, card active, financial function sealed, the teller's role and channel) and
shows the refusal at once; when all holds it records an activation request for the desk
reader the teller names (audited ``desk.activation_requested`` and
``console.financial_activation_requested``, without any PIN). The desk station on the
reader's host (``ykt branch desk --reader NAME``) claims it, has the holder type the new PIN on
its own pad (the PIN pad stand-in), runs the one activation path
(:func:`yikatong.branch.activate_at_desk`, as ``ykt cards activate-financial``) and records
the outcome; the page polls the request and shows its progress, the result or the exact
refusal.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from cardspec.errors import InvalidIdentifier
from cardspec.ids import mask_citizen_id, validate_card_number, validate_citizen_id
from console.common import PREFIX, Problem, field, page, problems_of, render, tx
from console.sessions import SignedIn
from issuance import audit
from issuance.batches.shipping import issue_card
from issuance.errors import FieldProblem, IssuanceError, NotFound, ValidationError
from issuance.models import (
    Agency,
    BatchItem,
    BatchStage,
    Card,
    ChipAppKind,
    DeskRequest,
    Person,
    Staff,
)
from issuance.services import desk
from issuance.services.common import find_card
from issuance.services.places import COLLECTION_POINT_KINDS

router = APIRouter(prefix=PREFIX, include_in_schema=False)
SCOPE = "cards:lifecycle"


def _point(s: Session, user: SignedIn, code: str | None) -> Agency | None:
    """The collection point the page shows: the one asked for, else the user's own."""
    if code:
        stmt = sa.select(Agency).where(Agency.code == code,
                                       Agency.kind.in_(COLLECTION_POINT_KINDS))  # fmt: skip
        return s.scalars(stmt).one_or_none()
    staff = s.get(Staff, user.actor.staff_id) if user.actor.staff_id else None
    if staff is None or staff.agency_id is None:
        return None
    return s.get(Agency, staff.agency_id)


def _row(card: Card, person: Person, stage: str) -> dict[str, Any]:
    fin = card.chip_app(ChipAppKind.FINANCIAL)
    return {
        "card_number": card.card_number, "status": str(card.status), "stage": stage,
        "name": person.name, "citizen_id": mask_citizen_id(person.citizen_id),
        "financial": str(fin.status) if fin is not None else None,
    }  # fmt: skip


def _branch_view(s: Session, user: SignedIn, code: str | None) -> dict[str, Any]:
    point = _point(s, user, code)
    points = s.execute(sa.select(Agency.code, Agency.name).where(
        Agency.kind.in_(COLLECTION_POINT_KINDS)).order_by(Agency.code)).all()  # fmt: skip
    rows: list[dict[str, Any]] = []
    if point is not None:
        found = s.execute(
            sa.select(Card, Person, BatchItem.stage)
            .join(BatchItem, BatchItem.card_id == Card.id)
            .join(Person, Person.id == Card.person_id)
            .where(BatchItem.collection_point_id == point.id,
                   BatchItem.stage.in_([BatchStage.SHIPPED, BatchStage.ISSUED]))
            .order_by(BatchItem.stage_changed_at.desc()).limit(200)
        ).all()  # fmt: skip
        rows = [_row(c, p, str(st)) for c, p, st in found]
        audit.record(s, user.actor, "console.branch_cards_read", "agency", point.id,
                     details={"cards": len(rows)})  # fmt: skip
    return {
        "point": {"code": point.code, "name": point.name} if point is not None else None,
        "points": [(c, n) for c, n in points],
        "waiting": [r for r in rows if r["stage"] == BatchStage.SHIPPED],
        "handed": [r for r in rows if r["stage"] == BatchStage.ISSUED],
        "last_reader": _last_reader(s, user),
    }


async def _branch_page(
    request: Request, user: SignedIn, code: str | None, *, status: int = 200,
    done: str | None = None, number: str = "", problems: list[Problem] | None = None,
) -> Response:  # fmt: skip
    view = await tx(request, lambda s: _branch_view(s, user, code))
    here = f"{PREFIX}/branch" + (f"?point={code}" if code else "")
    return render(request, "branch/branch.html", user, status, **view, done=done,
                  number=number, problems=problems or [], here=here)  # fmt: skip


@router.get("/branch")
@page(SCOPE)
async def branch(request: Request, user: SignedIn) -> Response:
    code = (request.query_params.get("point") or "").strip()[:32] or None
    return await _branch_page(request, user, code)


def _number(request: Request) -> str:
    """The card number of the path (or of the form's ``card`` field), its check character
    checked before any lookup."""
    raw = request.path_params.get("number")
    if raw is None:
        raw = field(request.state.form, "card", 20) or ""
    number = str(raw).strip().upper()[:20]
    validate_card_number(number)
    return number


@router.post("/branch/handover")
@router.post("/branch/cards/{number}/handover")
@page(SCOPE, form=True)
async def handover(request: Request, user: SignedIn) -> Response:
    """Hand a card over: from the list of cards waiting, or by the number on the holder's
    collection notice."""
    data: FormData = request.state.form
    code = field(data, "point", 32) or None
    typed = (field(data, "citizen_id", 18) or "").upper()
    photo_checked = field(data, "identity_checked") == "yes"

    def fn(s: Session) -> None:
        number = _number(request)
        card = find_card(s, card_number=number)
        problems = []
        if not photo_checked:
            problems.append(
                FieldProblem("identity_checked", "compare the holder with the ID document's photo")
            )
        if not typed:
            problems.append(FieldProblem("citizen_id", "type the ID number from the document"))
        else:
            validate_citizen_id(typed)  # a typo is said as such, not as another person
            if typed != card.person.citizen_id:
                problems.append(FieldProblem(
                    "citizen_id", "the ID document is not the card holder's: do not hand over"
                ))  # fmt: skip
        if problems:
            raise ValidationError("cannot hand the card over", problems)
        issue_card(s, number, user.actor)
        audit.record(s, user.actor, "console.card_handed_over", "card", card.id,
                     details={"identity_checked": True, "document_matches": True})  # fmt: skip

    number = str(request.path_params.get("number") or field(data, "card", 20) or "").upper()
    try:
        await tx(request, fn)
    except (IssuanceError, InvalidIdentifier) as exc:
        return await _branch_page(request, user, code, status=409, number=number,
                                  problems=problems_of(exc))  # fmt: skip
    return await _branch_page(request, user, code, done="handed", number=number)


@router.post("/branch/cards/{number}/activate-card")
@page(SCOPE, form=True)
async def activate_card(request: Request, user: SignedIn) -> Response:
    """The social security function of a card just handed over (``ykt cards activate``)."""
    from issuance.services import activate_card as activate_social

    data: FormData = request.state.form
    code = field(data, "point", 32) or None

    def fn(s: Session) -> None:
        activate_social(s, find_card(s, card_number=_number(request)).id, user.actor)

    number = str(request.path_params["number"]).upper()[:20]
    try:
        await tx(request, fn)
    except (IssuanceError, InvalidIdentifier) as exc:
        return await _branch_page(request, user, code, status=409, number=number,
                                  problems=problems_of(exc))  # fmt: skip
    return await _branch_page(request, user, code, done="activated", number=number)


def _activation_view(s: Session, number: str) -> dict[str, Any]:
    card = find_card(s, card_number=number)
    fin = card.chip_app(ChipAppKind.FINANCIAL)
    return {"number": card.card_number, "financial": str(fin.status) if fin else None,
            "pin_set": bool(fin and fin.pin_set)}  # fmt: skip


def _last_reader(s: Session, user: SignedIn) -> str:
    """The desk reader this teller named last (the form's default)."""
    if user.actor.staff_id is None:
        return ""
    found = s.scalar(sa.select(DeskRequest.reader).where(
        DeskRequest.requested_by_staff_id == user.actor.staff_id,
    ).order_by(DeskRequest.id.desc()).limit(1))  # fmt: skip
    return found or ""


def _desk_view(s: Session, request_id: int) -> dict[str, Any]:
    view = desk.request_view(s, request_id)
    return {"req": view, "number": view.card_number, "claim_minutes":
            int(desk.CLAIM_WITHIN.total_seconds() // 60)}  # fmt: skip


@router.post("/branch/cards/{number}/activate")
@page("financial:activate", form=True)
async def activate(request: Request, user: SignedIn) -> Response:
    """Everything checked before the holder is asked for a PIN; then the request goes to the
    desk station of the reader named (see the module docstring)."""
    from issuance.models import Channel

    data: FormData = request.state.form
    code = field(data, "point", 32) or None
    checked = field(data, "identity_checked") == "yes"
    reader = field(data, "reader", desk.READER_MAX + 1) or ""
    actor = user.actor.via(Channel.BANK)  # the teller at the branch, as the CLI's desk

    def fn(s: Session) -> dict[str, Any]:
        number = _number(request)
        card = find_card(s, card_number=number)
        req = desk.request_activation(s, card.id, actor, reader=reader,
                                      identity_checked=checked)  # fmt: skip
        audit.record(s, user.actor, "console.financial_activation_requested", "card", card.id,
                     details={"identity_checked": True, "request_id": req.id,
                              "reader": req.reader})  # fmt: skip
        return _desk_view(s, req.id)

    number = str(request.path_params["number"]).upper()[:20]
    try:
        view = await tx(request, fn)
    except (IssuanceError, InvalidIdentifier) as exc:
        return await _branch_page(request, user, code, status=409, number=number,
                                  problems=problems_of(exc))  # fmt: skip
    return render(request, "branch/activate.html", user, **view, here=f"{PREFIX}/branch")


@router.get("/branch/desk/{request_id}")
@page("financial:activate")
async def desk_state(request: Request, user: SignedIn) -> Response:
    """A desk request's progress (polled by the activation page; HTTP 286 once it ended,
    which stops htmx's polling)."""
    raw = str(request.path_params["request_id"])
    try:
        if not raw.isdigit() or len(raw) > 12:
            raise NotFound("no such desk request")
        view = await tx(request, lambda s: _desk_view(s, int(raw)))
    except IssuanceError as exc:
        return render(request, "_problems.html", user, 404, problems=problems_of(exc))
    ended = view["req"].state in ("active", "refused", "expired")
    return render(request, "branch/_desk.html", user, 286 if ended else 200, **view)


@router.get("/branch/cards/{number}/financial")
@page("financial:activate")
async def financial_state(request: Request, user: SignedIn) -> Response:
    """The card's financial function (polled by the activation page)."""
    try:
        number = _number(request)
        view = await tx(request, lambda s: _activation_view(s, number))
    except (IssuanceError, InvalidIdentifier) as exc:
        return render(request, "_problems.html", user, 404, problems=problems_of(exc))
    return render(request, "branch/_financial.html", user, **view)
