"""Cash that adds up (issue 16): a numbered receipt per counter for every fee, deposit and
refund; the day's reconciliation per counter and per staff member, balanced to the fen and
checked against the money rows; the receipt as a PDF."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance import services
from issuance.audit import Actor
from issuance.errors import PermissionDenied
from issuance.models import AgencyKind, AuditEvent, Card, Deposit, Receipt, Staff
from issuance.services import cash
from yikatong.settings import Settings


def _today(settings: Settings) -> date:
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo(settings.issuer.time_zone)).date()


def test_receipts_numbered_per_counter_and_the_day_balances(
    session: Session, settings: Settings, actors: dict[str, Actor], new_card: Callable[..., Card]
) -> None:
    clerk, clerk2 = actors["clerk"], actors["clerk2"]
    branch = services.create_agency(session, "WS-01", "文三社区服务中心", AgencyKind.COMMUNITY,
                                    "330106")  # fmt: skip
    session.get(Staff, clerk2.staff_id).agency_id = branch.id  # type: ignore[union-attr]
    before = {
        c: session.scalar(sa.select(sa.func.count()).where(Receipt.counter == c))
        for c in (cash.CENTRE, "WS-01")
    }
    card = new_card("active")
    services.report_loss(session, settings, card.id, clerk, identity_checked=True)
    temp = services.issue_temporary_card(session, settings, card.person_id, clerk2)
    new = services.replace_card(session, settings, card.id, clerk)
    services.hand_back_temporary_card(session, temp, clerk)
    rs = list(session.scalars(sa.select(Receipt).order_by(Receipt.id)))[-3:]
    deposit_fen = settings.lifecycle.temporary_card_deposit_fen
    fee_fen = settings.lifecycle.replacement_fee_fen
    assert [(r.kind, r.amount_fen, r.counter) for r in rs] == [
        ("deposit", deposit_fen, "WS-01"), ("fee", fee_fen, cash.CENTRE),
        ("refund", deposit_fen, cash.CENTRE),
    ]  # fmt: skip
    assert rs[0].number == f"WS-01-{before['WS-01'] + 1:08d}"
    assert rs[1].number == f"{cash.CENTRE}-{before[cash.CENTRE] + 1:08d}"
    assert rs[2].number == f"{cash.CENTRE}-{before[cash.CENTRE] + 2:08d}"
    assert rs[1].card_id == new.id and rs[0].staff_name == clerk2.username
    assert session.scalar(
        sa.select(sa.func.count()).where(AuditEvent.action == "receipt.issued")
    ) >= 3  # fmt: skip

    rec = cash.reconcile_day(session, settings, _today(settings))
    assert rec.balanced, rec.problems
    assert rec.by_counter["WS-01"].deposits_fen >= deposit_fen
    mine = rec.by_staff[(cash.CENTRE, clerk.username)]
    assert (mine.fees_fen, mine.refunds_fen) >= (fee_fen, deposit_fen)
    assert rec.total.net_fen == rec.source.net_fen
    assert rec.total.net_fen == sum(t.net_fen for t in rec.by_counter.values())
    # a deposit taken without its receipt: the day no longer balances, and says why
    session.add(Deposit(card_id=new.id, amount_fen=123))
    session.flush()
    bad = cash.reconcile_day(session, settings, _today(settings))
    assert not bad.balanced and any("money rows" in p for p in bad.problems)
    # yesterday (the issuer's zone) has none of it
    assert cash.reconcile_day(session, settings, _today(settings) - timedelta(days=1)
                              ).total.receipts == 0  # fmt: skip


def test_receipt_pdf_and_who_may_reconcile(
    session: Session, settings: Settings, actors: dict[str, Actor], new_card: Callable[..., Card]
) -> None:
    card = new_card("active")
    services.report_loss(session, settings, card.id, actors["clerk"], identity_checked=True)
    temp = services.issue_temporary_card(session, settings, card.person_id, actors["clerk"])
    r = cash.latest_receipt(session, temp.id)
    assert r is not None and r.kind == "deposit"
    pdf = cash.receipt_pdf(session, r, settings)
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") >= 1
    assert cash.receipt_pdf(session, r, settings) == pdf  # the same receipt, the same bytes
    assert cash.get_receipt(session, r.number.lower()).id == r.id
    for role in ("reviewer", "approver"):
        with pytest.raises(PermissionDenied):
            cash.check_may_reconcile(actors[role])
    cash.check_may_reconcile(actors["supervisor"])
    assert cash.issue_receipt(session, actors["clerk"], cash.ReceiptKind.FEE, 0, card, "x") is None


def test_day_range_is_the_issuers_day() -> None:
    start, end = cash.day_range(date(2026, 12, 6), Settings())
    assert start == datetime(2026, 12, 5, 16, 0) and end == datetime(2026, 12, 6, 16, 0)
