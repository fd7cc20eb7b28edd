"""Running a domain action for a caller: one transaction in the threadpool; a refusal by the
domain (role, maker-checker, channel) is audited with the caller's identity and counted."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import audit_denial_from_domain, auth_of, ctx_of
from api.errors import ApiError
from issuance.audit import Actor
from issuance.errors import PermissionDenied
from issuance.models import AgencyKind, Channel
from issuance.services.credentials import Principal

T = TypeVar("T")

#: Channels an "other" agency (a self-service platform: hotline, website, app) may act through.
SELF_SERVICE_CHANNELS = {Channel.PHONE, Channel.WEB, Channel.APP, Channel.WECHAT, Channel.SMS}


def actor_for(principal: Principal, channel: Channel | None) -> Actor:
    """Staff choose the channel they act through; an agency acts through its own."""
    actor = principal.actor
    if channel is None:
        return actor
    if principal.staff_id is not None:
        return actor.via(channel)
    if principal.agency_kind == AgencyKind.OTHER and channel in SELF_SERVICE_CHANNELS:
        return actor.via(channel)
    if channel in (actor.channel, Channel.COUNTER):
        return actor  # COUNTER is the schema default: an agency keeps its own channel
    raise ApiError(403, "forbidden", f"this client cannot act through the {channel} channel")


async def domain(request: Request, principal: Principal, fn: Callable[[Session], T]) -> T:
    ctx = ctx_of(request)

    def work() -> T:
        with ctx.tx() as session:
            return fn(session)

    try:
        return await run_in_threadpool(work)
    except PermissionDenied as exc:
        auth_of(request).limiter.fail(f"client:{principal.client_id}")
        await run_in_threadpool(audit_denial_from_domain, ctx, principal, exc, request.url.path)
        raise
