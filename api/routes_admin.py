"""Routes: production batches (read-only: list, status, report) and audit queries."""

from __future__ import annotations

from typing import Annotated, Any, cast

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy.orm import Session

from api.auth import need
from api.calls import domain
from api.errors import responses
from api.schemas import AuditEventOut, AuditVerifyOut, BatchOut, BatchReportOut
from issuance import audit
from issuance.errors import NotFound
from issuance.models import Batch, Card
from issuance.services.credentials import Principal

router = APIRouter(prefix="/v1")
_ERR = responses(400, 401, 403, 404, 422, 429)
BatchId = Annotated[int, Path(ge=1, le=2**31 - 1)]
_NO_NUL = r"^[^\x00]*$"


def _batch(s: Session, batch_id: int) -> BatchOut:
    t = cast(sa.Table, Batch.__table__)
    row = s.execute(
        sa.select(t.c.id, t.c.name, t.c.status, t.c.created_at).where(t.c.id == batch_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"no batch {batch_id}")
    cards = s.scalar(sa.select(sa.func.count()).where(Card.batch_id == batch_id)) or 0
    return BatchOut(
        id=row.id, name=row.name, status=str(row.status), created_at=row.created_at,
        cards=int(cards),
    )  # fmt: skip


@router.get("/batches/{batch_id}", response_model=BatchOut, tags=["batches"], responses=_ERR)
async def get_batch(
    batch_id: BatchId,
    request: Request,
    principal: Annotated[Principal, Depends(need("batches:read"))],
) -> BatchOut:
    """A production batch and its size."""
    return await domain(request, principal, lambda s: _batch(s, batch_id))


@router.get("/batches", response_model=list[BatchOut], tags=["batches"], responses=_ERR)
async def list_batches(
    request: Request,
    principal: Annotated[Principal, Depends(need("batches:read"))],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[BatchOut]:
    """The latest production batches."""

    def fn(s: Session) -> list[BatchOut]:
        ids = s.scalars(sa.select(Batch.id).order_by(Batch.id.desc()).limit(limit)).all()
        return [_batch(s, i) for i in ids]

    return await domain(request, principal, fn)


@router.get(
    "/batches/{batch_id}/report", response_model=BatchReportOut, tags=["batches"], responses=_ERR
)
async def batch_report(
    batch_id: BatchId,
    request: Request,
    principal: Annotated[Principal, Depends(need("batches:read"))],
) -> BatchReportOut:
    """The batch report (what ``ykt batch report`` prints): items by stage, cards by status,
    chips used and spoiled with their reasons, spoil rate, mean time per stage, APDUs per
    card."""
    from issuance.batches.report import build_report

    def fn(s: Session) -> BatchReportOut:
        batch = _batch(s, batch_id)  # NotFound first
        r = build_report(s, batch_id)
        return BatchReportOut(
            batch=batch, cards_by_status=r.card_statuses, stages=r.stages, good=r.good,
            chips=r.chips, spoil_reasons=r.spoil_reasons, spoil_rate=r.spoil_rate,
            mean_seconds=r.mean_seconds, apdus_per_card=r.apdus_per_card,
            spoiled_cards_shipped=r.spoiled_cards_shipped, completed_at=r.completed_at,
            selection=r.filters,
        )  # fmt: skip

    return await domain(request, principal, fn)


@router.get("/audit/events", response_model=list[AuditEventOut], tags=["audit"], responses=_ERR)
async def audit_events(
    request: Request,
    principal: Annotated[Principal, Depends(need("audit:read"))],
    entity_type: Annotated[str | None, Query(max_length=32, pattern=_NO_NUL)] = None,
    entity_id: Annotated[str | None, Query(max_length=40, pattern=_NO_NUL)] = None,
    action: Annotated[str | None, Query(max_length=64, pattern=_NO_NUL)] = None,
    actor: Annotated[str | None, Query(max_length=64, pattern=_NO_NUL)] = None,
    after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEventOut]:
    """Audit events in id order, filtered (page with ``after_id``)."""

    def fn(s: Session) -> list[AuditEventOut]:
        filters: dict[str, Any] = {
            "entity_type": entity_type, "entity_id": entity_id, "action": action,
            "actor_name": actor,
        }  # fmt: skip
        events = audit.search(s, filters, after_id=after_id, limit=limit)
        out = [
            AuditEventOut(
                id=e.id,
                occurred_at=e.occurred_at,
                actor=e.actor_name,
                role=e.actor_role,
                channel=e.channel,
                action=e.action,
                entity_type=e.entity_type,
                entity_id=e.entity_id,
                before=e.before,
                after=e.after,
                reason=e.reason,
                details=e.details,
                chain_seq=e.chain_seq,
            )
            for e in events
        ]
        audit.record(
            s, principal.actor, "api.audit_query", "audit", "events",
            details={"filters": {k: v for k, v in filters.items() if v}, "count": len(out)},
        )  # fmt: skip
        return out

    return await domain(request, principal, fn)


@router.get("/audit/verify", response_model=AuditVerifyOut, tags=["audit"], responses=_ERR)
async def audit_verify(
    request: Request,
    principal: Annotated[Principal, Depends(need("audit:read"))],
) -> AuditVerifyOut:
    """Recompute the audit hash chain and its checkpoints (409 integrity_error if tampered)."""

    def fn(s: Session) -> AuditVerifyOut:
        r = audit.verify_chain(s)
        return AuditVerifyOut(
            events=r.events, last_seq=r.last_seq, checkpoints=r.checkpoints,
            signed_checkpoints=r.signed_checkpoints, unsealed=r.unsealed,
        )  # fmt: skip

    return await domain(request, principal, fn)
