"""Routes: production batches (read-only: list, status, report) and audit queries."""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy.orm import Session

from api.auth import ctx_of, need
from api.calls import domain
from api.errors import responses
from api.schemas import (
    AuditEventOut,
    AuditVerifyOut,
    BatchOut,
    BatchReportOut,
    PrincipalStateOut,
)
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


@router.get(
    "/audit/verify", response_model=AuditVerifyOut, tags=["audit"],
    responses=responses(400, 401, 403, 404, 409, 422, 429, 503),
)  # fmt: skip
async def audit_verify(
    request: Request,
    principal: Annotated[Principal, Depends(need("audit:read"))],
) -> AuditVerifyOut:
    """Recompute the audit hash chain and check every checkpoint's signature against the
    issuer's signing key held in the HSM (the key the service trusts, never the key stored
    beside a checkpoint): 409 ``integrity_error`` if an event was edited, deleted or re-hashed,
    if a checkpoint is unsigned or signed by any other key. ``ykt audit verify`` does the same
    from the command line."""
    from api.routes_verify import public_key_pem

    trusted = await public_key_pem(ctx_of(request))  # 503 when the HSM is not there

    def fn(s: Session) -> AuditVerifyOut:
        r = audit.verify_chain(s, trusted)
        return AuditVerifyOut(
            events=r.events, last_seq=r.last_seq, checkpoints=r.checkpoints,
            signed_checkpoints=r.signed_checkpoints, unsealed=r.unsealed,
            verified_against="hsm_signing_key",
        )  # fmt: skip

    return await domain(request, principal, fn)


PrincipalKind = Literal["clients", "agencies", "staff"]
_NAME = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^\x00/]+$")]


@router.post(
    "/principals/{kind}/{name}/{action}",
    response_model=PrincipalStateOut,
    tags=["admin"],
    responses=_ERR,
)
async def set_principal_active(
    kind: PrincipalKind,
    name: _NAME,
    action: Literal["disable", "enable"],
    request: Request,
    principal: Annotated[Principal, Depends(need("principals:manage"))],
) -> PrincipalStateOut:
    """Disable or enable an API client (by client id), an agency (by code) or a staff user
    (by username); audited. A disabled principal gets no token, and every token it holds
    stops at once on every worker and node (``ykt api client-disable`` ... do the same)."""
    from issuance.services import credentials

    active = action == "enable"
    setter = {
        "clients": credentials.set_client_active,
        "agencies": credentials.set_agency_active,
        "staff": credentials.set_staff_active,
    }[kind]

    def fn(s: Session) -> PrincipalStateOut:
        setter(s, name, active, principal.actor)
        return PrincipalStateOut(kind=kind, name=name, active=active)

    return await domain(request, principal, fn)
