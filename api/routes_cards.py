"""Routes: card status and the card lifecycle (every action goes through issuance.services)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from sqlalchemy.orm import Session

from api.auth import ctx_of, need
from api.calls import actor_for, domain
from api.errors import responses
from api.schemas import (
    CardOut,
    ChannelIn,
    CollectOut,
    FinancialIn,
    LossIn,
    LossOut,
    ReasonIn,
    ReplaceIn,
    TemporaryIn,
    UnreportIn,
)
from issuance import services
from issuance.models import Card
from issuance.services.credentials import Principal

router = APIRouter(prefix="/v1", tags=["cards"])

CardNo = Annotated[str, Path(pattern=r"^[0-9A-Za-z]{9}$", description="card number")]
_ERR = responses(401, 403, 404, 409, 422, 429)


def _card(session: Session, number: str) -> Card:
    return services.find_card(session, card_number=number)


def card_out(session: Session, card_id: int) -> CardOut:
    v = services.card_status(session, card_id=card_id)
    return CardOut(
        card_id=v.card_id, card_number=v.card_number,
        card_identification_code=v.card_identification_code, kind=v.kind, status=v.status,
        province_code=v.province_code, holder_name=v.holder_name,
        holder_citizen_id_masked=v.holder_citizen_id_masked, issue_date=v.issue_date,
        expiry_date=v.expiry_date, chip_apps=v.chip_apps,
    )  # fmt: skip


@router.get("/cards/{card_number}", response_model=CardOut, responses=_ERR)
async def get_card(
    card_number: CardNo,
    request: Request,
    principal: Annotated[Principal, Depends(need("cards:read"))],
) -> CardOut:
    """A card's status and chip applications (holder number masked)."""

    def fn(s: Session) -> CardOut:
        from issuance import audit

        out = card_out(s, _card(s, card_number).id)
        audit.record(s, principal.actor, "api.card_read", "card", out.card_id)
        return out

    return await domain(request, principal, fn)


@router.post(
    "/cards/{card_number}/loss-reports", response_model=LossOut, status_code=201, responses=_ERR
)
async def report_loss(
    card_number: CardNo,
    body: LossIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("cards:loss"))],
) -> LossOut:
    """Report a card lost: provisional through remote channels, formal at a counter. The next
    verification of the card fails."""
    actor = actor_for(principal, body.channel)
    settings = ctx_of(request).settings

    def fn(s: Session) -> LossOut:
        card = _card(s, card_number)
        r = services.report_loss(
            s, settings, card.id, actor, identity_checked=body.identity_checked, note=body.note
        )
        return LossOut(
            report_id=r.id, card_number=card.card_number, kind=str(r.kind), status=str(r.status),
            card_status=str(card.status), lapses_at=r.lapses_at,
        )  # fmt: skip

    return await domain(request, principal, fn)


@router.post("/cards/{card_number}/unreport", response_model=CardOut, responses=_ERR)
async def unreport(
    card_number: CardNo,
    body: UnreportIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("cards:loss"))],
) -> CardOut:
    """Withdraw a loss report (the card was found), while no replacement was applied for."""
    actor = actor_for(principal, body.channel)

    def fn(s: Session) -> CardOut:
        card = _card(s, card_number)
        services.unreport_loss(
            s, card.id, actor, identity_checked=body.identity_checked, note=body.note
        )
        return card_out(s, card.id)

    return await domain(request, principal, fn)


def _simple(event: str, doc: str) -> None:
    """Register ``POST /cards/{n}/<event>`` for a lifecycle action with a reason."""

    async def handler(
        card_number: CardNo,
        body: ReasonIn,
        request: Request,
        principal: Annotated[Principal, Depends(need("cards:lifecycle"))],
    ) -> CardOut:
        actor = actor_for(principal, body.channel)

        def fn(s: Session) -> CardOut:
            card = _card(s, card_number)
            action = {
                "suspend": services.suspend_card,
                "lift-suspension": services.lift_suspension,
                "cancel": services.cancel_card,
                "damaged": services.report_damaged,
            }[event]
            action(s, card.id, actor, body.reason)
            return card_out(s, card.id)

        return await domain(request, principal, fn)

    handler.__name__ = f"card_{event.replace('-', '_')}"
    handler.__doc__ = doc
    router.post(f"/cards/{{card_number}}/{event}", response_model=CardOut, responses=_ERR)(handler)


_simple("suspend", "Suspend a card (fund supervisor): its social functions stop.")
_simple("lift-suspension", "Lift a suspension (fund supervisor).")
_simple("cancel", "Cancel a card for good (death, emigration ...): every function stops.")
_simple("damaged", "Record a card as damaged (it is then replaced).")


@router.post("/cards/{card_number}/collect", response_model=CollectOut, responses=_ERR)
async def collect(
    card_number: CardNo,
    body: ChannelIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("cards:lifecycle"))],
) -> CollectOut:
    """Hand the card to its holder; a temporary card is handed back and its deposit refunded."""
    actor = actor_for(principal, body.channel)

    def fn(s: Session) -> CollectOut:
        r = services.collect_card(s, _card(s, card_number).id, actor)
        return CollectOut(
            card=card_out(s, r.card.id),
            temporary_cards_returned=r.temporary_cards_returned,
            deposits_refunded_fen=r.deposits_refunded_fen,
        )

    return await domain(request, principal, fn)


@router.post("/cards/{card_number}/activate", response_model=CardOut, responses=_ERR)
async def activate(
    card_number: CardNo,
    body: ChannelIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("cards:lifecycle"))],
) -> CardOut:
    """Activate the social security function (the holder's older cards lose theirs)."""
    actor = actor_for(principal, body.channel)

    def fn(s: Session) -> CardOut:
        card = _card(s, card_number)
        services.activate_card(s, card.id, actor)
        return card_out(s, card.id)

    return await domain(request, principal, fn)


@router.post(
    "/cards/{card_number}/replace", response_model=CardOut, status_code=201, responses=_ERR
)
async def replace(
    card_number: CardNo,
    body: ReplaceIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("cards:lifecycle"))],
) -> CardOut:
    """Replace a formally lost, damaged or expiring card: the old card is cancelled for good
    and a new card (new number) starts production. Answers the new card."""
    settings = ctx_of(request).settings
    actor = actor_for(principal, None)

    def fn(s: Session) -> CardOut:
        new = services.replace_card(
            s, settings, _card(s, card_number).id, actor, reason=body.reason, fee_fen=body.fee_fen
        )
        return card_out(s, new.id)

    return await domain(request, principal, fn)


@router.post("/cards/{card_number}/financial-activation", response_model=CardOut, responses=_ERR)
async def financial_activation(
    card_number: CardNo,
    body: FinancialIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("financial:activate"))],
) -> CardOut:
    """A bank branch activates the financial function after checking the holder's identity
    (the holder set the PIN on the card; the PIN never reaches this service)."""
    from issuance.models import Channel

    actor = actor_for(principal, Channel.BANK)

    def fn(s: Session) -> CardOut:
        card = _card(s, card_number)
        services.activate_financial(
            s, card.id, actor, identity_checked=body.identity_checked, pin_set=body.pin_set,
            bank_agency_id=principal.agency_id,
        )  # fmt: skip
        return card_out(s, card.id)

    return await domain(request, principal, fn)


@router.post("/temporary-cards", response_model=CardOut, status_code=201, responses=_ERR)
async def temporary_card(
    body: TemporaryIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("cards:lifecycle"))],
) -> CardOut:
    """Issue a temporary card on the spot (medical function only, deposit taken)."""
    settings = ctx_of(request).settings
    actor = actor_for(principal, None)

    def fn(s: Session) -> CardOut:
        card = services.issue_temporary_card(s, settings, body.person_id, actor)
        return card_out(s, card.id)

    return await domain(request, principal, fn)
