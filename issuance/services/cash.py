"""Cash that adds up: a numbered receipt for every fee, deposit and refund, and the day's
reconciliation per counter and per staff member, balanced to the fen.

* A **counter** is where the money changed hands: the collection point (agency) of the staff
  user who took it, or ``CENTRE`` for staff of the card centre itself. Receipts are numbered
  per counter without gaps (``<counter>-<8 digits>``; one ``UPDATE ... RETURNING`` on the
  counter's row of ``receipt_series``, as card numbers are allocated: a rolled-back receipt
  gives its number back).
* :func:`issue_receipt` is called by the services that move money, in their transaction: the
  replacement fee (:func:`issuance.services.loss.replace_card`), the temporary card's deposit
  (:func:`issuance.services.temporary.issue_temporary_card`) and its refund
  (:func:`issuance.services.temporary.refund_deposit`). Audited ``receipt.issued``.
* :func:`reconcile_day` adds up one day (the issuer's time zone) by counter and by staff
  member from the receipts, and checks them against the money rows themselves (card fees,
  deposits taken, deposits refunded): every total must agree to the fen, else ``balanced`` is
  False and the differences are listed.
* :func:`receipt_pdf` gives a receipt's words to :mod:`printers.receipts`, which lays out the
  one-page PDF.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance import audit
from issuance.audit import Actor
from issuance.db import flush
from issuance.errors import NotFound, PermissionDenied
from issuance.models import (
    Agency,
    Card,
    Deposit,
    Person,
    Receipt,
    ReceiptSeries,
    Staff,
    StaffRole,
    utcnow,
)
from issuance.settings import IssuanceConfig

#: The counter of the card centre's own staff (no collection point).
CENTRE = "CENTRE"


class ReceiptKind(enum.StrEnum):
    FEE = "fee"  # money in: a replacement fee
    DEPOSIT = "deposit"  # money in: a temporary card's deposit
    REFUND = "refund"  # money out: a deposit given back

    @property
    def sign(self) -> int:
        return -1 if self is ReceiptKind.REFUND else 1


def counter_of(session: Session, actor: Actor) -> str:
    """The counter where ``actor`` takes money: their collection point's code, or CENTRE."""
    if actor.staff_id is None:
        return CENTRE
    code = session.scalar(
        sa.select(Agency.code).join(Staff, Staff.agency_id == Agency.id).where(
            Staff.id == actor.staff_id
        )
    )  # fmt: skip
    return code or CENTRE


def _next_number(session: Session, counter: str) -> int:
    table = cast(sa.Table, ReceiptSeries.__table__)
    stmt = (
        sa.update(table)
        .where(table.c.counter == counter)
        .values(next_value=table.c.next_value + 1)
        .returning(table.c.next_value)
    )
    end = session.execute(stmt).scalar_one_or_none()
    if end is None:
        dialect = session.get_bind().dialect.name
        ins: Any
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            ins = pg_insert(table).values(counter=counter, next_value=1).on_conflict_do_nothing()
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            ins = sqlite_insert(table).values(counter=counter, next_value=1)
            ins = ins.on_conflict_do_nothing()
        session.execute(ins)
        end = session.execute(stmt).scalar_one()
    return int(end) - 1


def issue_receipt(
    session: Session,
    actor: Actor,
    kind: ReceiptKind,
    amount_fen: int,
    card: Card,
    what: str,
    *,
    at: datetime | None = None,
) -> Receipt | None:
    """A numbered receipt for money that changed hands (None for a zero amount: nothing was
    paid). Called in the transaction that moves the money; ``at``: the money row's own time
    (so the day's receipts and money rows fall on the same day, to the microsecond)."""
    if amount_fen <= 0:
        return None
    counter = counter_of(session, actor)
    seq = _next_number(session, counter)
    receipt = Receipt(
        number=f"{counter}-{seq:08d}", counter=counter, seq=seq, kind=str(kind),
        amount_fen=amount_fen, card_id=card.id, person_id=card.person_id,
        staff_id=actor.staff_id, staff_name=actor.username, what=what[:100],
        issued_at=at or utcnow(),
    )  # fmt: skip
    session.add(receipt)
    flush(session)
    audit.record(
        session, actor, "receipt.issued", "card", card.id,
        details={"receipt": receipt.number, "kind": str(kind), "amount_fen": amount_fen},
    )  # fmt: skip
    return receipt


# --- the day's reconciliation ----------------------------------------------------------------
def day_range(day: date, settings: IssuanceConfig) -> tuple[datetime, datetime]:
    """The UTC (naive) range of ``day`` in the issuer's time zone."""
    zone = ZoneInfo(settings.issuer.time_zone)
    start = datetime.combine(day, time(), zone).astimezone(UTC).replace(tzinfo=None)
    end = datetime.combine(day + timedelta(days=1), time(), zone).astimezone(UTC)
    return start, end.replace(tzinfo=None)


@dataclass
class Totals:
    fees_fen: int = 0
    deposits_fen: int = 0
    refunds_fen: int = 0
    receipts: int = 0

    @property
    def net_fen(self) -> int:
        return self.fees_fen + self.deposits_fen - self.refunds_fen

    def add(self, kind: str, amount: int) -> None:
        self.receipts += 1
        if kind == ReceiptKind.FEE:
            self.fees_fen += amount
        elif kind == ReceiptKind.DEPOSIT:
            self.deposits_fen += amount
        else:
            self.refunds_fen += amount

    def key(self) -> tuple[int, int, int]:
        return (self.fees_fen, self.deposits_fen, self.refunds_fen)


@dataclass
class Reconciliation:
    day: date
    by_counter: dict[str, Totals] = field(default_factory=dict)
    by_staff: dict[tuple[str, str], Totals] = field(default_factory=dict)  # (counter, staff)
    total: Totals = field(default_factory=Totals)
    #: The same three sums taken from the money rows themselves (cards' fees, deposits).
    source: Totals = field(default_factory=Totals)
    problems: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return not self.problems


#: Roles that may see the day's cash (every counter's totals).
RECONCILERS = frozenset(
    {StaffRole.CLERK, StaffRole.SUPERVISOR, StaffRole.ADMIN, StaffRole.FUND_SUPERVISOR,
     StaffRole.AUDITOR, StaffRole.BANK_TELLER}
)  # fmt: skip


def check_may_reconcile(actor: Actor) -> None:
    if actor.staff_id is None or actor.role not in RECONCILERS:
        raise PermissionDenied(f"role {actor.role} may not see the day's cash")


def reconcile_day(session: Session, settings: IssuanceConfig, day: date) -> Reconciliation:
    """Add up ``day``'s receipts by counter and by staff member and check every total against
    the others and against the money rows (see the module docstring)."""
    start, end = day_range(day, settings)
    rec = Reconciliation(day)
    rows = session.execute(
        sa.select(Receipt.counter, Receipt.staff_name, Receipt.kind, Receipt.amount_fen)
        .where(Receipt.issued_at >= start, Receipt.issued_at < end)
        .order_by(Receipt.counter, Receipt.seq)
    )
    for counter, staff, kind, amount in rows:
        rec.by_counter.setdefault(counter, Totals()).add(kind, amount)
        rec.by_staff.setdefault((counter, staff), Totals()).add(kind, amount)
        rec.total.add(kind, amount)
    # the money rows themselves
    fees = session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(Card.fee_fen), 0)).where(
            Card.created_at >= start, Card.created_at < end, Card.fee_fen > 0
        )
    )  # fmt: skip
    taken = session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(Deposit.amount_fen), 0)).where(
            Deposit.taken_at >= start, Deposit.taken_at < end, Deposit.amount_fen > 0
        )
    )  # fmt: skip
    refunded = session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(Deposit.amount_fen), 0)).where(
            Deposit.refunded_at >= start, Deposit.refunded_at < end, Deposit.amount_fen > 0
        )
    )  # fmt: skip
    rec.source = Totals(int(fees or 0), int(taken or 0), int(refunded or 0))
    sums: dict[str, tuple[int, int, int]] = {
        "counters": _sum(rec.by_counter.values()),
        "staff": _sum(rec.by_staff.values()),
        "receipts": rec.total.key(),
        "money rows": rec.source.key(),
    }
    for name, value in sums.items():
        if value != rec.total.key():
            rec.problems.append(
                f"{name} add up to fees/deposits/refunds {value}, the receipts to "
                f"{rec.total.key()} (fen)"
            )
    return rec


def _sum(totals: Any) -> tuple[int, int, int]:
    acc: dict[int, int] = defaultdict(int)
    for t in totals:
        for i, v in enumerate(t.key()):
            acc[i] += v
    return (acc[0], acc[1], acc[2])


def receipts_of_day(session: Session, settings: IssuanceConfig, day: date) -> list[Receipt]:
    start, end = day_range(day, settings)
    return list(
        session.scalars(
            sa.select(Receipt)
            .where(Receipt.issued_at >= start, Receipt.issued_at < end)
            .order_by(Receipt.counter, Receipt.seq)
        )
    )


# --- the PDF ---------------------------------------------------------------------------------


def receipt_pdf(session: Session, receipt: Receipt, settings: IssuanceConfig) -> bytes:
    """The receipt as a one-page PDF (laid out by :func:`printers.receipts.receipt_pdf`):
    issuer, number, counter, what, amount in yuan, card number, holder (ID masked), staff, time
    in the issuer's zone."""
    from cardspec.ids import mask_citizen_id
    from issuance.display import local_time, yuan
    from printers import receipts

    card = session.get(Card, receipt.card_id)
    person = session.get(Person, receipt.person_id)
    assert card is not None and person is not None
    return receipts.receipt_pdf(
        receipts.ReceiptText(
            issuer=settings.issuer.name, kind=receipt.kind, number=receipt.number,
            counter=receipt.counter, time=local_time(receipt.issued_at, settings),
            what=receipt.what, card_number=card.card_number,
            holder=f"{person.name} {mask_citizen_id(person.citizen_id)}",
            amount=yuan(receipt.amount_fen), staff=receipt.staff_name,
        )
    )  # fmt: skip


def get_receipt(session: Session, number: str) -> Receipt:
    r = session.scalars(sa.select(Receipt).where(Receipt.number == number.upper())).one_or_none()
    if r is None:
        raise NotFound(f"no receipt {number}")
    return r


def latest_receipt(session: Session, card_id: int) -> Receipt | None:
    """The newest receipt of a card (the one a command just issued)."""
    return session.scalars(
        sa.select(Receipt).where(Receipt.card_id == card_id).order_by(Receipt.id.desc()).limit(1)
    ).first()
