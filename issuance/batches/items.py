"""Batch items: the stage table, worker leases and claims.

Design notes: ``docs/design/batches.md`` (section ``issuance.batches.items``).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance import lifecycle
from issuance.audit import Actor
from issuance.db import flush
from issuance.errors import IssuanceError, TransitionError
from issuance.lifecycle import CardEvent, ChipEvent, ItemEvent
from issuance.models import (
    BatchItem,
    BatchStage,
    BlankChip,
    Card,
    ChipStatus,
    StockChip,
    StockChipStatus,
    utcnow,
)

S = BatchStage

#: Stages in which the chip is physically in a station: an interrupted card there is spoiled.
IN_STATION = lifecycle.ITEM_IN_STATION
#: Move an item by an event of the table and audit it (the one function that changes a stage).
advance = lifecycle.apply_item_event
#: Stages a station takes an item from.
READY = (S.PREPARED, S.SELECTED)
#: Stages of a card still being made in house (the stations' work).
IN_PRODUCTION = (S.SELECTED, S.PREPARED, *IN_STATION)
#: Stages of a card not finished yet: in house or at the bureau (anything else is good,
#: shipped, issued, failed or withdrawn).
UNFINISHED = (*IN_PRODUCTION, S.AT_BUREAU)
#: Stages of a good card (passed quality control, in house or at the bureau).
GOOD = (S.CHECKED, S.SHIPPED, S.ISSUED)

DEFAULT_LEASE_SECONDS = 120
DEFAULT_MAX_ATTEMPTS = 3


def _start_time(pid: int) -> str | None:
    """The start time (clock ticks since boot) of process ``pid``, None if it does not exist."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


_HOST = socket.gethostname()[:40]


def worker_id(station: str | None = None) -> str:
    """This worker's lease owner id: ``host:pid:start-time[:thread or station]`` (the start time
    tells a live process from a later one that got the same pid)."""
    pid = os.getpid()
    suffix = station or threading.current_thread().name
    return f"{_HOST}:{pid}:{_start_time(pid) or 0}:{suffix}"[:100]


def owner_alive(owner: str) -> bool:
    """False when ``owner`` names a process of this machine that is gone; True otherwise (a
    process elsewhere is presumed alive until its lease expires)."""
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != _HOST or not parts[1].isdigit():
        return True
    return _start_time(int(parts[1])) == parts[2]


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def claim(
    session: Session,
    batch_id: int,
    owner: str,
    *,
    stages: Iterable[BatchStage] = READY,
    limit: int = 1,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
    now: datetime | None = None,
) -> list[BatchItem]:
    """Lease up to ``limit`` free items of ``stages`` (oldest first) to ``owner``."""
    ids = claim_ids(session, batch_id, owner, stages=stages, limit=limit,
                    lease_seconds=lease_seconds, now=now)  # fmt: skip
    if not ids:
        return []
    items = session.scalars(
        sa.select(BatchItem).where(BatchItem.id.in_(ids)).order_by(BatchItem.id)
        .execution_options(populate_existing=True)
    ).all()  # fmt: skip
    return list(items)


def claim_ids(
    session: Session,
    batch_id: int,
    owner: str,
    *,
    stages: Iterable[BatchStage] = READY,
    limit: int = 1,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
    now: datetime | None = None,
    not_in_file: str | None = None,
) -> list[int]:
    """:func:`claim` without loading the items: their ids, in id order. One statement per
    stage, PREPARED first (finish cards whose chip is ready before preparing new ones), each
    an index range scan of ``(batch_id, stage, id)``: the cost of a claim does not grow with
    the batch (a million-card batch is claimed chunk after chunk in constant time).
    ``not_in_file``: skip items already written to this bureau file (an export running)."""
    now = now or utcnow()
    table = cast(sa.Table, BatchItem.__table__)
    wanted = [BatchStage(s) for s in stages]
    order = sorted(set(wanted), key=lambda st: (st != S.PREPARED, wanted.index(st)))
    out: list[int] = []
    for stage in order:
        if len(out) >= limit:
            break
        sub = (
            sa.select(table.c.id)
            .where(
                table.c.batch_id == batch_id,
                table.c.stage == str(stage),
                sa.or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at < now),
                *(()
                  if not_in_file is None
                  else (sa.or_(table.c.bureau_file_id.is_(None),
                               table.c.bureau_file_id != not_in_file),)),
            )
            .order_by(table.c.id)
            .limit(limit - len(out))
        )  # fmt: skip
        if _is_postgres(session):
            # the ids locked as an array (``= ANY(ARRAY(SELECT ...))``), then each row found
            # by its primary key: with ``IN (SELECT ...)`` the planner joined the ids with a
            # scan of the whole table (its cost grew with the table, not the chunk)
            sub = sub.with_for_update(skip_locked=True)
            chosen = table.c.id == sa.any_(sa.func.array(sub.scalar_subquery()))
        else:
            chosen = table.c.id.in_(sub.scalar_subquery())
        stmt = (
            sa.update(table)
            .where(chosen)
            .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds))
            .returning(table.c.id)
        )
        out.extend(int(i) for i in session.execute(stmt).scalars().all())
    return sorted(out)


class LeaseLost(IssuanceError):
    """This worker no longer holds the lease of the item (it expired and another worker took
    or voided it): the worker must stop working on that card and change nothing."""

    code = "lease_lost"


def renew_lease(
    session: Session, item_id: int, owner: str, lease_seconds: int = DEFAULT_LEASE_SECONDS
) -> bool:
    """Extend ``owner``'s lease of the item; False if ``owner`` does not hold it any more."""
    table = cast(sa.Table, BatchItem.__table__)
    result = session.execute(
        sa.update(table)
        .where(table.c.id == item_id, table.c.lease_owner == owner)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    )
    return bool(cast(sa.CursorResult[Any], result).rowcount)


def hold(
    session: Session, item_id: int, owner: str, lease_seconds: int = DEFAULT_LEASE_SECONDS
) -> BatchItem:
    """The item, after renewing ``owner``'s lease (a write as the transaction's first
    statement: on SQLite it takes the write lock before reading, no stale snapshot). Raises
    :class:`LeaseLost` if ``owner`` does not hold the lease."""
    if not renew_lease(session, item_id, owner, lease_seconds):
        raise LeaseLost(f"batch item {item_id} is no longer leased to {owner}", item_id=item_id)
    item = session.get(BatchItem, item_id, populate_existing=True)
    assert item is not None
    return item


def release(item: BatchItem) -> None:
    item.lease_owner = None
    item.lease_expires_at = None


@dataclass(frozen=True)
class SpoilResult:
    stage: BatchStage
    chip_serial: str | None


def spoil(
    session: Session,
    item: BatchItem,
    actor: Actor,
    reason: str,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    station: str | None = None,
    count_attempt: bool = True,
) -> SpoilResult:
    """The item's chip is spoiled (``reason`` recorded on the chip); the card goes back to the
    queue for a fresh blank, or to ``failed`` after ``max_attempts`` spoiled chips. The card
    loses the chip's identification code (a new chip gives a new one; a code is never reused
    because chip serials are unique).

    ``count_attempt=False``: the chip was lost to an interruption (power cut, killed worker),
    not to the card: it does not bring the card closer to ``failed``."""
    serial = item.chip_serial
    if serial is not None:
        chip = session.scalars(
            sa.select(BlankChip).where(BlankChip.chip_serial == serial)
        ).one_or_none()
        if chip is not None and chip.status == ChipStatus.ASSIGNED:
            chip.status, chip.reason, chip.closed_at = ChipStatus.SPOILED, reason[:500], utcnow()
            chip.station = station or chip.station
        # a supplier's chip (delivered stock) is spoiled in the stock too: never fed again
        session.execute(
            sa.update(StockChip)
            .where(StockChip.chip_serial == serial, StockChip.status == StockChipStatus.USED)
            .values(status=StockChipStatus.SPOILED)
        )
        card = session.get(Card, item.card_id)
        if card is not None:
            card.card_identification_code = None
    if count_attempt:
        item.attempts += 1
    item.last_error = reason[:500]
    item.chip_serial = None
    item.printed_card_number = None
    item.print_ref = None
    event = ItemEvent.FAIL if count_attempt and item.attempts >= max_attempts else ItemEvent.SPOIL
    to = advance(
        session, item, event, actor, reason=reason,
        details={"spoiled_chip": serial, "attempts": item.attempts, "station": station},
    )  # fmt: skip
    release(item)
    flush(session)
    return SpoilResult(to, serial)


def recover_interrupted(
    session: Session,
    batch_id: int,
    actor: Actor,
    *,
    now: datetime | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> list[tuple[int, str | None]]:
    """Void the leases of dead workers (expired, or a process of this machine that is gone).
    An item whose chip was in a station is spoiled and requeued ("interrupted"); an item
    merely leased (selected / prepared) is released. Returns ``[(item id, spoiled chip)]``."""
    now = now or utcnow()
    query = sa.select(BatchItem).where(
        BatchItem.batch_id == batch_id, BatchItem.lease_owner.is_not(None)
    ).order_by(BatchItem.id)  # fmt: skip
    if _is_postgres(session):
        # each row locked as it is read, rows another transaction holds skipped: a worker
        # renewing its lease meanwhile is never overwritten from a stale read, and a row locked
        # by a worker cut off from the database (its transaction open until the server drops
        # it) does not hold this recovery up; it is voided by a later one
        query = query.with_for_update(skip_locked=True)
    leased = session.scalars(query.execution_options(populate_existing=True)).all()
    spoiled: list[tuple[int, str | None]] = []
    for item in leased:
        expired = item.lease_expires_at is None or item.lease_expires_at < now
        if not expired and owner_alive(item.lease_owner or ""):
            continue
        if item.stage in IN_STATION:
            res = spoil(
                session, item, actor,
                f"interrupted in stage {item.stage} (worker {item.lease_owner} gone)",
                max_attempts=max_attempts, station=item.station, count_attempt=False,
            )  # fmt: skip
            spoiled.append((item.id, res.chip_serial))
        else:
            release(item)
    flush(session)
    return spoiled


def stage_counts(session: Session, batch_id: int) -> dict[BatchStage, int]:
    rows = session.execute(
        sa.select(BatchItem.stage, sa.func.count())
        .where(BatchItem.batch_id == batch_id)
        .group_by(BatchItem.stage)
    ).all()
    counts = {s: 0 for s in BatchStage}
    for stage, n in rows:
        counts[BatchStage(stage)] = int(n)
    return counts


def retry(session: Session, item: BatchItem, actor: Actor, *, reason: str | None = None) -> None:
    """A supervisor sends a failed card back to production: ``selected`` again with its
    attempts reset (its spoiled chips stay recorded)."""
    previous = item.attempts
    item.attempts = 0
    advance(session, item, ItemEvent.RETRY, actor, reason=reason,
            details={"previous_attempts": previous, "last_error": item.last_error})  # fmt: skip


def withdraw(session: Session, item: BatchItem, actor: Actor, *, reason: str) -> Card:
    """A supervisor takes a failed card out of production for good: the item is
    ``withdrawn`` and the card cancelled with all its functions (its number is never reused;
    the holder needs a new card)."""
    if not reason.strip():
        raise TransitionError("a withdrawal needs a reason", from_state=str(item.stage),
                              event="withdraw")  # fmt: skip
    card = session.get(Card, item.card_id)
    assert card is not None
    advance(session, item, ItemEvent.WITHDRAW, actor, reason=reason)
    lifecycle.apply_card_event(session, card, CardEvent.CANCEL, actor,
                               reason=f"withdrawn from production: {reason}")  # fmt: skip
    lifecycle.cascade_chips(session, card, ChipEvent.CANCEL, actor, reason="card withdrawn")
    flush(session)
    return card
