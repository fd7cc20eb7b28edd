"""Routes: card status and the card lifecycle (every action goes through issuance.services)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated, TypeVar, cast

from fastapi import APIRouter, Depends, File, Path, Request, UploadFile
from pydantic import AfterValidator
from sqlalchemy.orm import Session

from api.auth import auth_of, ctx_of, need
from api.calls import actor_for, domain
from api.context import ApiContext
from api.errors import responses
from api.schemas import (
    CardOut,
    ChannelIn,
    CollectIn,
    CollectOut,
    DeathFeedOut,
    DeathLineOut,
    FieldProblemOut,
    FinancialIn,
    HandBackIn,
    HandBackOut,
    LossCodeOut,
    LossIn,
    LossOut,
    PinStateOut,
    ReasonIn,
    ReplaceIn,
    TemporaryIn,
    UnreportIn,
)
from cardspec.ids import parse_card_number
from hsm.internal_auth import check_internal_auth
from hsm.service import CardKeyRef, KeyService
from issuance import services
from issuance.errors import FieldProblem, ValidationError
from issuance.models import Card, Channel, ChipAppKind
from issuance.services import otp, verification
from issuance.services.credentials import Principal
from issuance.services.loss import holder_mismatch, holder_proven
from issuance.services.temporary import TemporaryChipDesk

T = TypeVar("T")

router = APIRouter(prefix="/v1", tags=["cards"])

#: Check character validated before any lookup (``cardspec.ids.parse_card_number``).
CardNo = Annotated[
    str,
    Path(min_length=1, max_length=40, description="card number"),
    AfterValidator(parse_card_number),
]
_ERR = responses(400, 401, 403, 404, 409, 422, 429)


def _card(session: Session, number: str) -> Card:
    return services.find_card(session, card_number=number)


def sees_holder(principal: Principal) -> bool:
    """May this caller learn who holds a card from its number alone? Staff (people acting at a
    counter, every read audited) may; an agency's system only with ``holder:lookup``, a scope
    an administrator grants it (never a default). Agencies otherwise learn the holder from a
    verification, with the card's chip present (``holder:read``)."""
    return principal.staff_id is not None or "holder:lookup" in principal.scopes


def card_out(session: Session, card_id: int, principal: Principal) -> CardOut:
    v = services.card_status(session, card_id=card_id)
    holder = sees_holder(principal)
    return CardOut(
        card_id=v.card_id, card_number=v.card_number,
        card_identification_code=v.card_identification_code if holder else None,
        kind=v.kind, status=v.status, province_code=v.province_code,
        holder_name=v.holder_name if holder else None,
        holder_citizen_id_masked=v.holder_citizen_id_masked if holder else None,
        issue_date=v.issue_date, expiry_date=v.expiry_date, chip_apps=v.chip_apps,
        pins={name: PinStateOut(
            state="blocked" if p.blocked else ("unknown" if p.tries_left is None else "usable"),
            tries_left=p.tries_left, unblocks=p.unblocks, seen_at=p.seen_at,
        ) for name, p in v.pins.items()},
    )  # fmt: skip


async def _holder_proven(
    request: Request, principal: Principal, card_number: str, body: LossIn | UnreportIn
) -> bool:
    """An agency's system (a hotline, a website) must prove the holder: their full ID number
    and name, or the one-time code sent to their phone
    (:func:`issuance.services.loss.holder_proven`); its own ``identity_checked`` flag is no
    evidence. Checked in a transaction of its own (a code's try counts whatever follows); a
    failure counts against the caller and gets one answer. Staff check the identity card
    themselves: False, nothing to prove here."""
    if principal.staff_id is not None:
        return False
    settings = ctx_of(request).settings

    def prove(s: Session) -> bool:
        card = _card(s, card_number)
        return holder_proven(s, settings, card, principal.actor, body.holder_citizen_id,
                             body.holder_name, body.one_time_code)  # fmt: skip

    if not await domain(request, principal, prove):
        await auth_of(request).limiter.fail(f"client:{principal.client_id}")
        raise holder_mismatch()
    return True


@router.get("/cards/{card_number}", response_model=CardOut, responses=_ERR)
async def get_card(
    card_number: CardNo,
    request: Request,
    principal: Annotated[Principal, Depends(need("cards:read"))],
) -> CardOut:
    """A card's status and chip applications (holder number masked)."""

    def fn(s: Session) -> CardOut:
        from issuance import audit

        out = card_out(s, _card(s, card_number).id, principal)
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
    actor = await actor_for(request, principal, body.channel)
    settings = ctx_of(request).settings

    checked = await _holder_proven(request, principal, card_number, body)

    def fn(s: Session) -> LossOut:
        card = _card(s, card_number)
        r = services.report_loss(
            s, settings, card.id, actor, identity_checked=checked or body.identity_checked,
            note=body.note,
        )  # fmt: skip
        return LossOut(
            report_id=r.id, card_number=card.card_number, kind=str(r.kind), status=str(r.status),
            card_status=str(card.status), lapses_at=r.lapses_at,
        )  # fmt: skip

    return await domain(request, principal, fn)


@router.post(
    "/cards/{card_number}/loss-codes", response_model=LossCodeOut, status_code=202,
    responses=_ERR,
)  # fmt: skip
async def loss_code(
    card_number: CardNo,
    request: Request,
    principal: Annotated[Principal, Depends(need("cards:loss"))],
) -> LossCodeOut:
    """Send a one-time code to the phone on file of the card's holder: the holder reads it
    to the hotline, which quotes it (``one_time_code``) to report the card lost or withdraw
    the report. The answer is the same whether a code was sent or not (no phone on file,
    enough codes this hour): it tells nothing about the holder."""
    # the project's one one-time code (issuance.services.otp), purpose loss_hotline
    settings = ctx_of(request).settings

    def fn(s: Session) -> LossCodeOut:
        card = _card(s, card_number)
        otp.send_card_code(s, settings, card.id, otp.Purpose.LOSS_HOTLINE, principal.actor)
        return LossCodeOut(accepted=True)

    return await domain(request, principal, fn)


@router.post("/cards/{card_number}/unreport", response_model=CardOut, responses=_ERR)
async def unreport(
    card_number: CardNo,
    body: UnreportIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("cards:loss"))],
) -> CardOut:
    """Withdraw a loss report (the card was found), while no replacement was applied for."""
    actor = await actor_for(request, principal, body.channel)

    checked = await _holder_proven(request, principal, card_number, body)

    def fn(s: Session) -> CardOut:
        card = _card(s, card_number)
        services.unreport_loss(
            s, card.id, actor, identity_checked=checked or body.identity_checked, note=body.note
        )
        return card_out(s, card.id, principal)

    return await domain(request, principal, fn)


def _simple(event: str, doc: str) -> None:
    """Register ``POST /cards/{n}/<event>`` for a lifecycle action with a reason."""

    async def handler(
        card_number: CardNo,
        body: ReasonIn,
        request: Request,
        principal: Annotated[Principal, Depends(need("cards:lifecycle"))],
    ) -> CardOut:
        actor = await actor_for(request, principal, body.channel)

        def fn(s: Session) -> CardOut:
            card = _card(s, card_number)
            action = {
                "suspend": services.suspend_card,
                "lift-suspension": services.lift_suspension,
                "cancel": services.cancel_card,
                "damaged": services.report_damaged,
            }[event]
            action(s, card.id, actor, body.reason)
            return card_out(s, card.id, principal)

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
    body: CollectIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("cards:lifecycle"))],
) -> CollectOut:
    """Hand the formal card to its holder. The holder's live temporary card is cancelled; its
    deposit is refunded only if ``temporary_card_returned`` says it was handed back now."""
    actor = await actor_for(request, principal, body.channel)

    def fn(s: Session) -> CollectOut:
        r = services.collect_card(
            s, _card(s, card_number).id, actor, temporary_handed_back=body.temporary_card_returned
        )
        return CollectOut(
            card=card_out(s, r.card.id, principal),
            temporary_cards_returned=r.temporary_cards_returned,
            deposits_refunded_fen=r.deposits_refunded_fen,
            temporary_cards_kept=r.temporary_cards_kept,
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
    actor = await actor_for(request, principal, body.channel)

    def fn(s: Session) -> CardOut:
        card = _card(s, card_number)
        services.activate_card(s, card.id, actor)
        return card_out(s, card.id, principal)

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
    actor = await actor_for(request, principal, None)

    def fn(s: Session) -> CardOut:
        new = services.replace_card(
            s, settings, _card(s, card_number).id, actor, reason=body.reason, fee_fen=body.fee_fen
        )
        return card_out(s, new.id, principal)

    return await domain(request, principal, fn)


@router.post("/cards/{card_number}/financial-activation", response_model=CardOut, responses=_ERR)
async def financial_activation(
    card_number: CardNo,
    body: FinancialIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("financial:activate"))],
) -> CardOut:
    """A bank branch activates the financial function after checking the holder's identity
    (the holder set the PIN on the card; the PIN never reaches this service). The card must be
    presented: its INTERNAL AUTHENTICATE answer to a verification challenge is checked in the
    HSM first (a ``card.verified`` audit event, the challenge used up), and a bank's system
    activates only the cards issued for that bank (``ykt api bind-bank``)."""
    actor = await actor_for(request, principal, Channel.BANK)
    ctx = ctx_of(request)
    codec = await ctx.challenge_codec()

    def check(ref: CardKeyRef, factor: bytes, rnd: bytes, resp: bytes) -> None:
        ctx.hsm.call(check_internal_auth, ref, factor, rnd, resp)

    def present(s: Session) -> verification.Verdict:
        return verification.verify_card(
            s, challenge_id=body.challenge_id.lower(), credential_id=principal.credential_id,
            card_identification_code=body.card_identification_code, card_number=card_number,
            response=bytes.fromhex(body.response), application=ChipAppKind.FINANCIAL,
            check=check, actor=actor, codec=codec,
        )  # fmt: skip

    # its own transaction: the challenge is used up and the verdict audited whatever follows
    verdict = await domain(request, principal, present)
    if verdict.reason not in (None, verification.Reason.NOT_ACTIVATED):
        raise ValidationError(
            "the card presented did not prove itself",
            [FieldProblem("response", f"chip cryptogram refused ({verdict.reason})")],
        )

    def fn(s: Session) -> CardOut:
        card = _card(s, card_number)
        if (card.card_identification_code or "").upper() != verdict.card_identification_code:
            raise ValidationError(
                "the card presented is not this card",
                [FieldProblem("card_identification_code", "another card's chip answered")],
            )
        services.activate_financial(
            s, card.id, actor, identity_checked=body.identity_checked, pin_set=body.pin_set,
            bank_agency_id=principal.agency_id,
        )  # fmt: skip
        return card_out(s, card.id, principal)

    return await domain(request, principal, fn)


DeskFactory = Callable[[KeyService], AbstractContextManager[TemporaryChipDesk]]


def _desk(ctx: ApiContext, wanted: bool) -> DeskFactory | None:
    """The server's counter desk when ``chip`` is asked for (refused when it has none)."""
    if not wanted:
        return None
    factory = ctx.extra.get("desk_factory")
    if factory is None:
        raise ValidationError(
            "this server has no desk reader",
            [FieldProblem("chip", "no counter desk (reader and printer) is configured here")],
        )
    return cast(DeskFactory, factory)


def _with_desk(factory: DeskFactory, keys: KeyService, fn: Callable[[TemporaryChipDesk], T]) -> T:
    """``fn(desk)`` with the desk open on ``keys`` (run on the HSM thread: every HSM call of
    the personalisation on the one key service of this process)."""
    with factory(keys) as desk:
        return fn(desk)


@router.post("/temporary-cards", response_model=CardOut, status_code=201, responses=_ERR)
async def temporary_card(
    body: TemporaryIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("cards:lifecycle"))],
) -> CardOut:
    """Issue a temporary card on the spot (medical function only, deposit taken); with
    ``chip``, personalised in the desk reader with its face printed (one transaction)."""
    ctx = ctx_of(request)
    settings = ctx.settings
    actor = await actor_for(request, principal, None)
    desk = _desk(ctx, body.chip)

    def fn(s: Session) -> CardOut:
        if desk is None:
            card = services.issue_temporary_card(s, settings, body.person_id, actor)
        else:
            card = ctx.hsm.call(
                lambda keys: _with_desk(
                    desk,
                    keys,
                    lambda d: services.issue_temporary_card(
                        s, settings, body.person_id, actor, desk=d
                    ),
                )
            )
        return card_out(s, card.id, principal)

    return await domain(request, principal, fn)


@router.post("/cards/{card_number}/hand-back", response_model=HandBackOut, responses=_ERR)
async def hand_back(
    card_number: CardNo,
    body: HandBackIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("cards:lifecycle"))],
) -> HandBackOut:
    """The holder hands a temporary card back: it is cancelled and its deposit refunded
    (also possible when collecting the formal card, with ``temporary_card_returned``); with
    ``chip``, the returned chip in the desk reader is blocked first."""
    ctx = ctx_of(request)
    actor = await actor_for(request, principal, body.channel)
    desk = _desk(ctx, body.chip)

    def fn(s: Session) -> HandBackOut:
        card = _card(s, card_number)
        if desk is None:
            refunded = services.hand_back_temporary_card(s, card, actor)
        else:
            refunded = ctx.hsm.call(
                lambda keys: _with_desk(
                    desk, keys, lambda d: services.hand_back_temporary_card(s, card, actor, desk=d)
                )
            )
        return HandBackOut(card=card_out(s, card.id, principal), deposit_refunded_fen=refunded)

    return await domain(request, principal, fn)


MAX_DEATH_FILE_BYTES = 20 * 1024 * 1024


@router.post("/death-records", response_model=DeathFeedOut, tags=["cards"], responses=_ERR)
async def death_records(
    request: Request,
    principal: Annotated[Principal, Depends(need("deaths:write"))],
    file: Annotated[
        UploadFile, File(description="CSV, UTF-8: citizen_id,death_date (YYYY-MM-DD) per line")
    ],
) -> DeathFeedOut:
    """A death-record file from the police or civil affairs: each valid line records the death
    and cancels the person's cards and live applications (benefits stop); each bad line is
    listed with its reasons. Uploading the same file again changes nothing."""
    raw = await file.read(MAX_DEATH_FILE_BYTES + 1)
    if len(raw) > MAX_DEATH_FILE_BYTES:
        raise ValidationError("file too large", [FieldProblem("file", "larger than 20 MB")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError(
            "unreadable file", [FieldProblem("file", f"not UTF-8 (byte offset {exc.start})")]
        ) from exc
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines
    if "\x00" in text:
        raise ValidationError("unreadable file", [FieldProblem("file", "contains NUL bytes")])
    try:  # a malformed CSV is refused as a whole, before any line is applied
        for _ in csv.reader(io.StringIO(text)):
            pass
    except csv.Error as exc:
        problem = FieldProblem("file", f"malformed CSV: {exc}")
        raise ValidationError("unreadable file", [problem]) from exc
    actor = principal.actor.via(Channel.FEED)

    def fn(s: Session) -> DeathFeedOut:
        r = services.cancel_deaths(s, text, actor)
        return DeathFeedOut(
            persons_recorded=r.persons_recorded, cards_cancelled=r.cards_cancelled,
            already_done=r.already_done,
            rejected=[
                DeathLineOut(line=x.line, problems=[
                    FieldProblemOut(field=p.field, reason=p.reason) for p in x.problems
                ])
                for x in r.rejected
            ],
        )  # fmt: skip

    return await domain(request, principal, fn)
