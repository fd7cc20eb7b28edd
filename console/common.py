"""What every console page shares: the host it is mounted in, sign-in before the body,
the role's scope, CSRF, rendering with the catalogs and the issuer's time zone, and the
refusals of the services as a page shows them.

Page modules (``console/web.py`` and ``console/pages/*.py``) each hold an ``APIRouter`` with
``prefix=PREFIX`` and use :func:`page`, :func:`render`, :func:`tx` and :func:`problems_of`; their
templates live in ``console/templates`` (a module's own in a sub-folder) and their messages in
``console/locale/<locale>/LC_MESSAGES/*.po`` (one catalog file per module is fine: all are read).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from cardspec.errors import InvalidIdentifier
from console import i18n
from console.config import ConsoleConfig
from console.sessions import SignedIn, csrf_ok, resume
from issuance import audit
from issuance.audit import Actor
from issuance.errors import ConflictError, IssuanceError, ValidationError
from issuance.lifecycle import APPLICATION_TRANSITIONS, ApplicationEvent
from issuance.services.credentials import STAFF_SCOPES

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from issuance.batches.adapters import BatchAdapters

T = TypeVar("T")
HERE = Path(__file__).parent
PREFIX = "/console"
SESSION_COOKIE = "ykt_console"
LOGIN_CSRF_COOKIE = "ykt_console_login"
LANG_COOKIE = "ykt_console_lang"
#: Sent by the pages' own polling (``hx-headers``): it does not keep a session from idling out.
POLL_HEADER = "X-Console-Poll"

#: Content-Security-Policy of every console response: nothing inline, nothing from elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

# --- plumbing -------------------------------------------------------------------------------


class _Hsm(Protocol):
    def call(self, fn: Callable[..., Any], *args: Any) -> Any: ...


class BatchRunsPort(Protocol):
    """Batch runs in the service's background (:class:`api.batchruns.BatchRuns`)."""

    @property
    def available(self) -> bool: ...

    def state(self, batch_id: int) -> Any: ...

    def start(self, batch_id: int, actor: Actor, *, resume: bool) -> Any: ...

    @property
    def adapters(self) -> BatchAdapters | None:
        """The production line's adapters (a key service of its own for the bureau export and
        the delivery import: long HSM work off the service's one HSM thread)."""

    @property
    def engine(self) -> Engine: ...


class HostContext(Protocol):
    """What the console needs of the service it is mounted in (``app.state.ctx``: the API's
    :class:`api.context.ApiContext`, which the console does not import: it sits below ``api``
    in the layers)."""

    settings: ConsoleConfig
    hsm: _Hsm

    def tx(self) -> AbstractContextManager[Session]: ...

    @property
    def batch_runs(self) -> BatchRunsPort | None: ...


def ctx_of(request: Request) -> HostContext:
    ctx: HostContext = request.app.state.ctx
    return ctx


def locale_of(request: Request) -> str:
    default = ctx_of(request).settings.console.default_locale
    return i18n.pick(request.cookies.get(LANG_COOKIE), default)


def source_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def is_secure(request: Request) -> bool:
    return request.url.scheme == "https"


async def tx(request: Request, fn: Callable[[Session], T]) -> T:
    ctx = ctx_of(request)

    def work() -> T:
        with ctx.tx() as session:
            return fn(session)

    return await run_in_threadpool(work)


def render(
    request: Request,
    template: str,
    user: SignedIn | None,
    status: int = 200,
    **values: Any,
) -> HTMLResponse:
    locale = locale_of(request)
    tr = i18n.translations(locale)
    zone = ctx_of(request).settings.issuer.time_zone
    # the page to come back to (language switch): a POST's answer names its GET page
    here = values.pop("here", None) or (
        request.url.path if request.method == "GET" else f"{PREFIX}/home"
    )
    page = _env.get_template(template).render(
        _=tr.gettext, locale=locale, user=user, prefix=PREFIX, request_path=here,
        when=lambda v: i18n.when(v, locale, zone), scopes=scopes_of(user), zone=zone,
        issuer=ctx_of(request).settings.issuer, has_queue=bool(user and queue_states(user)),
        **values,
    )  # fmt: skip
    resp = HTMLResponse(page, status_code=status)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def scopes_of(user: SignedIn | None) -> frozenset[str]:
    return frozenset(STAFF_SCOPES.get(user.actor.role, ())) if user else frozenset()


#: How many times the session's resume-and-touch is tried when it loses the database.
SESSION_TRIES = 3


async def current_user(request: Request) -> SignedIn | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    conf = ctx_of(request).settings.console
    touch = request.headers.get(POLL_HEADER) != "1"  # a page polling by itself
    for attempt in range(1, SESSION_TRIES + 1):
        try:
            return await tx(request, lambda s: resume(s, conf, token, touch=touch))
        except ConflictError:
            # SQLite: the touch (a read, then a write) lost the database to a write that
            # came between them, such as the call-log row of the page sent just before (a
            # stale snapshot cannot wait its turn). The transaction rolled back whole:
            # resuming again is safe.
            if attempt == SESSION_TRIES:
                raise
            await asyncio.sleep(0.02 * attempt)
    raise AssertionError("unreachable")


def to_login(request: Request) -> Response:
    target = quote(request.url.path, safe="/")
    resp = RedirectResponse(f"{PREFIX}/login?next={target}", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return resp


Handler = Callable[[Request, SignedIn], Awaitable[Response]]


def page(scope: str | None = None, *, form: bool = False) -> Callable[[Handler], Any]:
    """A console page: signed in first (before the body is read), then the scope the role
    needs, then (a form) the CSRF token."""

    def wrap(fn: Handler) -> Any:
        async def endpoint(request: Request) -> Response:
            user = await current_user(request)
            if user is None:
                if request.headers.get("HX-Request"):
                    return Response(status_code=401, headers={"HX-Redirect": f"{PREFIX}/login"})
                return to_login(request)
            if scope is not None and scope not in scopes_of(user):
                await tx(request, lambda s: audit.record(
                    s, user.actor, "console.refused", "page", request.url.path[:40],
                    reason=f"role {user.actor.role} lacks {scope}",
                ))  # fmt: skip
                return render(request, "refused.html", user, 403, scope=scope)
            if form:
                data = await request.form()
                if not csrf_ok(user.csrf_token, field(data, "csrf")):
                    await tx(request, lambda s: audit.record(
                        s, user.actor, "console.refused", "page", request.url.path[:40],
                        reason="CSRF token missing or wrong",
                    ))  # fmt: skip
                    return render(request, "refused.html", user, 403, scope=None, csrf=True)
                request.state.form = data
            return await fn(request, user)

        endpoint.__name__ = fn.__name__
        return endpoint

    return wrap


def field(data: FormData, name: str, limit: int = 500) -> str | None:
    value = data.get(name)
    if not isinstance(value, str):
        return None
    return value.strip()[:limit]


@dataclass(frozen=True)
class Problem:
    """A refusal as the page shows it: the service's own words (``text``) under a sentence of
    the catalog (``key``) that says it in the reader's language, when the page knows one."""

    text: str
    key: str | None = None


#: Catalog sentences for the fields the services name in their refusals.
FIELD_KEYS = {
    "identity_checked": "Check the holder's identity first and tick the box.",
    "reason": "Say why.",
    "kind": "Choose formal or provisional.",
    "card_number": "The card number is wrong (length or check character): check it character "
    "by character.",
}
#: Catalog sentences for the kinds of refusal.
REFUSAL_KEYS = {
    "maker_checker": "Maker-checker: whoever did an earlier step of this application may not do "
    "this one.",
    "denied": "Refused: your role or this channel may not do this.",
    "state": "Not possible in the present state.",
    "not_found": "Not found.",
}


def problems_of(exc: IssuanceError | InvalidIdentifier) -> list[Problem]:
    """What a page shows for a refusal of the services (their message kept, word for word)."""
    from issuance.errors import NotFound, PermissionDenied, TransitionError

    if isinstance(exc, InvalidIdentifier):
        return [Problem(f"{exc.field}: {exc.reason}", FIELD_KEYS.get(exc.field))]
    if isinstance(exc, ValidationError) and exc.problems:
        return [Problem(f"{p.field}: {p.reason}", FIELD_KEYS.get(p.field)) for p in exc.problems]
    key: str | None = None
    if isinstance(exc, PermissionDenied):
        key = REFUSAL_KEYS["maker_checker" if "step" in exc.details else "denied"]
    elif isinstance(exc, TransitionError):
        key = REFUSAL_KEYS["state"]
    elif isinstance(exc, NotFound):
        key = REFUSAL_KEYS["not_found"]
    return [Problem(exc.message, key)]


#: The steps of the queue (an application waits for the role that may take it).
QUEUE_EVENTS = (ApplicationEvent.REVIEW, ApplicationEvent.APPROVE)


def queue_states(user: SignedIn) -> list[str]:
    return [t.from_state for t in APPLICATION_TRANSITIONS
            if t.event in QUEUE_EVENTS and user.actor.role in t.roles]  # fmt: skip
