"""The console's page modules beyond :mod:`console.web`: each holds an ``APIRouter`` (prefix
:data:`console.common.PREFIX`) built on :mod:`console.common`, listed here once so that
:func:`console.web.install` mounts it."""

from __future__ import annotations

from fastapi import APIRouter

from console.pages import admin, branch, cdesk, centre, ecard, ecardres, resident

PAGE_ROUTERS: list[APIRouter] = [
    ecardres.router,  # before resident's: its /self/{purpose}/go would take /self/ecard/go
    resident.router,
    cdesk.router,  # the counter clerk's pages
    centre.router,
    admin.router,
    branch.router,
    ecard.router,
]
