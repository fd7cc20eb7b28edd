"""Running a domain action for a caller: one transaction in the threadpool. Every refusal of a
known caller (the channel it may not act through here; a role or maker-checker refusal by the
domain) goes through :meth:`api.auth.Authenticator.refuse`: audited with the caller's identity
and counted against its failure rate limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import auth_of, ctx_of
from issuance.audit import Actor
from issuance.errors import NotFound, PermissionDenied
from issuance.models import AgencyKind, Channel
from issuance.services.credentials import Principal

T = TypeVar("T")

#: Channels an "other" agency (a self-service platform: hotline, website, app) may act through.
SELF_SERVICE_CHANNELS = frozenset(
    {Channel.PHONE, Channel.WEB, Channel.APP, Channel.WECHAT, Channel.SMS}
)


def channel_allowed(principal: Principal, channel: Channel) -> bool:
    """Staff choose the channel they act through; a self-service platform its remote
    channels; any other agency acts through its own channel only."""
    if principal.staff_id is not None:
        return True
    if principal.agency_kind == AgencyKind.OTHER and channel in SELF_SERVICE_CHANNELS:
        return True
    # COUNTER is the request schemas' default: an agency that leaves it keeps its own channel
    return channel in (principal.actor.channel, Channel.COUNTER)


async def actor_for(request: Request, principal: Principal, channel: Channel | None) -> Actor:
    """The actor the domain sees for this call; a channel the caller may not use is refused
    (403 ``forbidden``, audited and counted)."""
    actor = principal.actor
    if channel is None:
        return actor
    if not channel_allowed(principal, channel):
        await auth_of(request).deny(
            request, principal, None,
            f"this client cannot act through the {channel} channel", channel=str(channel),
        )  # fmt: skip
    if principal.staff_id is not None or channel != Channel.COUNTER:
        return actor.via(channel)
    return actor


async def domain(request: Request, principal: Principal, fn: Callable[[Session], T]) -> T:
    ctx = ctx_of(request)

    def work() -> T:
        with ctx.tx() as session:
            return fn(session)

    try:
        return await run_in_threadpool(work)
    except NotFound:
        # a miss (a number that is no card) counts against the caller's limit: enumeration
        # by guessing runs into 429
        await auth_of(request).limiter.fail(f"client:{principal.client_id}")
        raise
    except PermissionDenied as exc:
        await auth_of(request).refuse(
            request, principal, exc.message, refused_by="domain", **_str_details(exc)
        )
        raise


def _str_details(exc: PermissionDenied) -> dict[str, str]:
    return {k: str(v) for k, v in exc.details.items() if k in ("role", "event", "channel")}
