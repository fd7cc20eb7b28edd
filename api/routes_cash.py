"""Routes: the day's cash and the receipts (staff; scope ``cash:read``, never granted to an
agency; the rules are :mod:`issuance.services.cash`)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api.auth import ctx_of, need
from api.calls import domain
from api.errors import responses
from issuance.services import cash
from issuance.services.credentials import Principal

router = APIRouter(prefix="/v1", tags=["cash"])
_ERR = responses(400, 401, 403, 404, 422, 429)
ReceiptNo = Annotated[str, Path(min_length=3, max_length=48, pattern=r"^[A-Za-z0-9_.-]+$")]


class TotalsOut(BaseModel):
    receipts: int
    fees_fen: int
    deposits_fen: int
    refunds_fen: int
    net_fen: int


class StaffTotalsOut(TotalsOut):
    counter: str
    staff: str


class CounterTotalsOut(TotalsOut):
    counter: str


class CashDayOut(BaseModel):
    day: date
    time_zone: str
    counters: list[CounterTotalsOut]
    staff: list[StaffTotalsOut]
    total: TotalsOut
    money_rows: TotalsOut
    balanced: bool
    problems: list[str]


def _t(t: cash.Totals) -> dict[str, int]:
    return {"receipts": t.receipts, "fees_fen": t.fees_fen, "deposits_fen": t.deposits_fen,
            "refunds_fen": t.refunds_fen, "net_fen": t.net_fen}  # fmt: skip


@router.get("/cash/days/{day}", response_model=CashDayOut, responses=_ERR)
async def cash_day(
    day: date,
    request: Request,
    principal: Annotated[Principal, Depends(need("cash:read"))],
) -> CashDayOut:
    """The day's cash (the issuer's time zone) per counter and per staff member, checked
    against the money rows: ``balanced`` is false, with the differences, if anything does not
    add up to the fen."""
    settings = ctx_of(request).settings

    def fn(s: Session) -> CashDayOut:
        cash.check_may_reconcile(principal.actor)
        rec = cash.reconcile_day(s, settings, day)
        return CashDayOut(
            day=day, time_zone=settings.issuer.time_zone,
            counters=[CounterTotalsOut(counter=c, **_t(t))
                      for c, t in sorted(rec.by_counter.items())],
            staff=[StaffTotalsOut(counter=c, staff=st, **_t(t))
                   for (c, st), t in sorted(rec.by_staff.items())],
            total=TotalsOut(**_t(rec.total)), money_rows=TotalsOut(**_t(rec.source)),
            balanced=rec.balanced, problems=rec.problems,
        )  # fmt: skip

    return await domain(request, principal, fn)


@router.get(
    "/cash/receipts/{number}",
    response_class=Response,
    responses={**_ERR, 200: {"content": {"application/pdf": {}}, "description": "the receipt"}},
)
async def receipt(
    number: ReceiptNo,
    request: Request,
    principal: Annotated[Principal, Depends(need("cash:read"))],
) -> Response:
    """One receipt as a PDF (printed again)."""
    settings = ctx_of(request).settings

    def fn(s: Session) -> bytes:
        cash.check_may_reconcile(principal.actor)
        return cash.receipt_pdf(s, cash.get_receipt(s, number), settings)

    pdf = await domain(request, principal, fn)
    return Response(pdf, media_type="application/pdf")
