"""The console's page modules beyond :mod:`console.web`: each holds an ``APIRouter`` (prefix
:data:`console.common.PREFIX`) built on :mod:`console.common`, listed here once so that
:func:`console.web.install` mounts it."""

from __future__ import annotations

from fastapi import APIRouter

from console.pages import cdesk

PAGE_ROUTERS: list[APIRouter] = []
PAGE_ROUTERS.append(cdesk.router)  # the counter clerk's pages
