"""The card centre's pages (``/console/centre``): a batch created from a selection, run or
resumed, its stages watched live; failed cards retried or withdrawn; the blank stock, the
bureau files, the printer and the readers.

Every action calls the services ``ykt batch``, ``ykt stock`` and ``ykt bureau`` call
(:mod:`issuance.batches`); who may do what is theirs to decide. A run is started through the
host (:attr:`console.common.HostContext.batch_runs`: a background thread of the service,
see :mod:`api.batchruns`), so the page answers at once and the batch page polls the stages.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from cardspec.errors import InvalidIdentifier
from console.common import (
    PREFIX,
    Problem,
    ctx_of,
    field,
    page,
    problems_of,
    render,
    tx,
)
from console.config import ConsoleConfig
from console.sessions import SignedIn
from issuance import audit
from issuance.batches import items as bi
from issuance.batches.selection import BATCH_STAFF, BatchFilter, create_batch, get_batch
from issuance.errors import FieldProblem, IssuanceError, NotFound, ValidationError
from issuance.models import Batch, BatchItem, BatchStage, Card

router = APIRouter(prefix=PREFIX, include_in_schema=False)
HERE = f"{PREFIX}/centre"


def _may_produce(user: SignedIn) -> bool:
    """The roles that make batches (the selection's own list; the services check it again)."""
    return user.actor.role in BATCH_STAFF


# --- a new batch from a selection -----------------------------------------------------------

FILTER_FIELDS = ("name", "region", "collective", "approved_from", "approved_to", "limit")


def _date(value: str | None, name: str, problems: list[FieldProblem]) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        problems.append(FieldProblem(name, "a date YYYY-MM-DD"))
        return None


def _filter(data: FormData) -> tuple[str, BatchFilter]:
    """The form's selection as the service's filter; ValidationError lists every bad field."""
    problems: list[FieldProblem] = []
    name = field(data, "name", 100) or ""
    limit: int | None = None
    if raw := field(data, "limit", 12):
        if not raw.isdigit():
            problems.append(FieldProblem("limit", "a whole number"))
        else:
            limit = int(raw)
    flt = BatchFilter(
        region_code=field(data, "region", 12) or None,
        collective=field(data, "collective", 200) or None,
        approved_from=_date(field(data, "approved_from", 10), "approved_from", problems),
        approved_to=_date(field(data, "approved_to", 10), "approved_to", problems),
        limit=limit,
    )  # fmt: skip
    if problems:
        raise ValidationError("invalid batch selection", problems)
    return name, flt


@router.get("/centre")
@page("batches:read")
async def centre(request: Request, user: SignedIn) -> Response:
    return render(request, "centre/new_batch.html", user, form=dict.fromkeys(FILTER_FIELDS, ""),
                  problems=[],
                  may_produce=_may_produce(user))  # fmt: skip


@router.post("/centre/batches")
@page("batches:read", form=True)
async def new_batch(request: Request, user: SignedIn) -> Response:
    data: FormData = request.state.form
    form = {k: field(data, k, 200) or "" for k in FILTER_FIELDS}

    def fn(s: Session) -> int:
        name, flt = _filter(data)
        batch = create_batch(s, user.actor, name, flt)
        return batch.id

    try:
        batch_id = await tx(request, fn)
    except IssuanceError as exc:
        return render(request, "centre/new_batch.html", user, 422, form=form,
                      problems=problems_of(exc), may_produce=_may_produce(user),
                      here=HERE)  # fmt: skip
    return RedirectResponse(f"{HERE}/batches/{batch_id}?created=1", status_code=303)


# --- a batch: run, resume, failed cards -----------------------------------------------------


def _run_view(request: Request, batch_id: int) -> dict[str, Any]:
    runs = ctx_of(request).batch_runs
    state = runs.state(batch_id) if runs is not None else None
    return {"run": state, "runs_available": bool(runs is not None and runs.available)}


def _batch_view(s: Session, batch_id: int) -> dict[str, Any]:
    from issuance.batches.report import build_report

    batch = get_batch(s, batch_id)
    counts = bi.stage_counts(s, batch.id)
    from issuance.services.places import list_collection_points

    return {
        "points": [(p.code, p.name) for p in list_collection_points(s)],
        "checked": counts[BatchStage.CHECKED],
        "r": build_report(s, batch.id),
        "todo": sum(counts[st] for st in bi.IN_PRODUCTION),
        "failed": counts[BatchStage.FAILED],
        "batch_status": str(batch.status),
    }


async def _batch_page(
    request: Request, user: SignedIn, batch_id: int, *, status: int = 200,
    done: str | None = None, problems: list[Problem] | None = None, shipped: int = 0,
    point: str = "",
) -> Response:  # fmt: skip
    try:
        view = await tx(request, lambda s: _batch_view(s, batch_id))
    except IssuanceError as exc:
        return render(request, "message.html", user, 404, problems=problems_of(exc))
    if done is None and request.query_params.get("created") == "1":
        done = "created"
    return render(request, "centre/batch.html", user, status, **view,
                  **_run_view(request, batch_id), done=done, problems=problems or [],
                  may_produce=_may_produce(user), shipped=shipped, point=point,
                  here=f"{HERE}/batches/{batch_id}")  # fmt: skip


@router.get("/centre/batches/{batch_id:int}")
@page("batches:read")
async def batch(request: Request, user: SignedIn) -> Response:
    return await _batch_page(request, user, int(request.path_params["batch_id"]))


@router.get("/centre/batches/{batch_id:int}/run")
@page("batches:read")
async def run_state(request: Request, user: SignedIn) -> Response:
    """The run's part of the batch page (polled)."""
    batch_id = int(request.path_params["batch_id"])
    return render(request, "centre/_run.html", user, batch_id=batch_id,
                  **_run_view(request, batch_id))  # fmt: skip


@router.post("/centre/batches/{batch_id:int}/run")
@page("batches:read", form=True)
async def start_run(request: Request, user: SignedIn) -> Response:
    """Run (or resume) the batch in the service's background: the page answers at once."""
    batch_id = int(request.path_params["batch_id"])
    data: FormData = request.state.form
    resume = field(data, "resume") == "yes"
    runs = ctx_of(request).batch_runs

    def fn(s: Session) -> int:
        from issuance.errors import ConfigError, ConflictError, PermissionDenied

        batch = get_batch(s, batch_id)
        if not _may_produce(user):
            raise PermissionDenied(f"role {user.actor.role} may not run production batches")
        if runs is None or not runs.available:
            raise ConfigError("this service has no production line: run ykt batch run")
        state = runs.state(batch.id)
        if state is not None and state.running:
            raise ConflictError(f"batch {batch.name} is running in this service already")
        audit.record(s, user.actor, "console.batch_run_started", "batch", batch.id,
                     details={"name": batch.name, "resume": resume})  # fmt: skip
        return batch.id

    try:
        found = await tx(request, fn)
        # after the commit: the run's own transactions never wait for this request's
        assert runs is not None
        runs.start(found, user.actor, resume=resume)
    except IssuanceError as exc:
        return await _batch_page(request, user, batch_id, status=409, problems=problems_of(exc))
    return await _batch_page(request, user, batch_id, done="resumed" if resume else "started")


def _failed_items(s: Session, batch_id: int, card: str | None) -> list[BatchItem]:
    """The batch's failed items (one card's when ``card`` is given, its check character
    first)."""
    found = get_batch(s, batch_id)
    stmt = (sa.select(BatchItem).join(Card, Card.id == BatchItem.card_id)
            .where(BatchItem.batch_id == found.id).order_by(BatchItem.id))  # fmt: skip
    if card is not None:
        from cardspec.ids import parse_card_number

        number = parse_card_number(card)
        items = list(s.scalars(stmt.where(Card.card_number == number)))
        if not items:
            raise NotFound(f"card {card} is not in batch {found.name}")
        return items
    return list(s.scalars(stmt.where(BatchItem.stage == BatchStage.FAILED)))


@router.post("/centre/batches/{batch_id:int}/retry")
@page("batches:read", form=True)
async def retry(request: Request, user: SignedIn) -> Response:
    """Every failed card of the batch back to production (``ykt batch retry``)."""
    batch_id = int(request.path_params["batch_id"])

    def fn(s: Session) -> int:
        items = _failed_items(s, batch_id, None)
        for item in items:
            bi.retry(s, item, user.actor, reason="retried by a supervisor (console)")
        return len(items)

    try:
        await tx(request, fn)
    except IssuanceError as exc:
        return await _batch_page(request, user, batch_id, status=409, problems=problems_of(exc))
    return await _batch_page(request, user, batch_id, done="retried")


@router.post("/centre/batches/{batch_id:int}/withdraw")
@page("batches:read", form=True)
async def withdraw(request: Request, user: SignedIn) -> Response:
    """One failed card out of production for good (``ykt batch withdraw``): cancelled."""
    batch_id = int(request.path_params["batch_id"])
    data: FormData = request.state.form
    card = (field(data, "card", 20) or "").upper()
    reason = field(data, "reason") or ""

    def fn(s: Session) -> None:
        (item,) = _failed_items(s, batch_id, card)
        bi.withdraw(s, item, user.actor, reason=reason)

    try:
        await tx(request, fn)
    except InvalidIdentifier as exc:
        return await _batch_page(request, user, batch_id, status=422, problems=problems_of(exc))
    except IssuanceError as exc:
        return await _batch_page(request, user, batch_id, status=409, problems=problems_of(exc))
    return await _batch_page(request, user, batch_id, done="withdrawn")


@router.post("/centre/batches/{batch_id:int}/ship")
@page("batches:read", form=True)
async def ship(request: Request, user: SignedIn) -> Response:
    """The batch's good cards to a collection point (``ykt batch ship``), one transaction per
    card as the CLI does."""
    from issuance.batches.shipping import ship_batch

    batch_id = int(request.path_params["batch_id"])
    data: FormData = request.state.form
    point = field(data, "point", 32) or ""
    ctx = ctx_of(request)

    def run_txn(fn: Any) -> object:
        with ctx.tx() as s:
            return fn(s)

    def work() -> int:
        if not _may_produce(user):
            from issuance.errors import PermissionDenied

            raise PermissionDenied(f"role {user.actor.role} may not ship production batches")
        with ctx.tx() as s:
            found = get_batch(s, batch_id).id
        return ship_batch(run_txn, ctx.settings, found, point, user.actor).shipped

    try:
        shipped = await run_in_threadpool(work)
    except IssuanceError as exc:
        return await _batch_page(request, user, batch_id, status=409, problems=problems_of(exc))
    return await _batch_page(request, user, batch_id, done="shipped", shipped=shipped,
                             point=point)  # fmt: skip


# --- stock, bureau files, printer, readers --------------------------------------------------


@router.get("/centre/stock")
@page("batches:read")
async def stock(request: Request, user: SignedIn) -> Response:
    """Blank chips by supplier, lot and state; the chips the stations refused (``ykt stock
    status``)."""
    from issuance.batches.deliveries import stock_status
    from issuance.models import StockChipStatus

    def fn(s: Session) -> Any:
        audit.record(s, user.actor, "console.stock_read", "stock", "status")
        return stock_status(s, recent=20)

    st = await tx(request, fn)
    return render(request, "centre/stock.html", user, st=st, states=list(StockChipStatus),
                  backend=ctx_of(request).settings.stock.backend)  # fmt: skip


def _bureau_files(s: Session) -> list[dict[str, Any]]:
    rows = s.execute(
        sa.select(BatchItem.bureau_file_id, Batch.id, Batch.name, BatchItem.stage,
                  sa.func.count(), sa.func.max(BatchItem.stage_changed_at))
        .join(Batch, Batch.id == BatchItem.batch_id)
        .where(BatchItem.bureau_file_id.is_not(None))
        .group_by(BatchItem.bureau_file_id, Batch.id, Batch.name, BatchItem.stage)
        .order_by(Batch.id.desc())
    ).all()  # fmt: skip
    files: dict[str, dict[str, Any]] = {}
    for file_id, batch_id, name, stage, n, changed in rows:
        f = files.setdefault(file_id, {"file_id": file_id, "batch_id": batch_id, "batch": name,
                                       "stages": {}, "changed": changed})  # fmt: skip
        f["stages"][str(stage)] = int(n)
        f["changed"] = max(f["changed"], changed)
    return list(files.values())


@router.get("/centre/bureau")
@page("batches:read")
async def bureau(request: Request, user: SignedIn) -> Response:
    """The bureau files exported and what came back of their cards (``ykt bureau``)."""
    files = await tx(request, _bureau_files)
    return render(request, "centre/bureau.html", user, files=files)


def _printer(settings: ConsoleConfig) -> dict[str, Any]:
    """What ``ykt print spool-status`` says, under the page's own names."""
    backend = settings.printer.backend
    if backend == "file":
        from printers.spool import FileSpool

        st = FileSpool(settings.spool_dir).status()
        return {"backend": backend, "directory": st["directory"], "jobs_done": st["jobs"],
                "incomplete": st["incomplete"], "bytes": st["bytes"],
                "latest": st.get("latest")}  # fmt: skip
    from printers.cups import CupsPrinter

    st = CupsPrinter(settings.printer.cups_server, settings.printer.cups_queue).queue_status()
    jobs = st["jobs"]
    return {"backend": backend, "server": st["server"], "queue": st["queue"],
            "state": st["state"], "accepting": st["accepting"], "message": st["message"],
            "jobs_pending": len(jobs) if isinstance(jobs, list) else jobs}  # fmt: skip


def _readers(settings: ConsoleConfig) -> dict[str, Any]:
    conf = settings.readers
    found: list[str] = []
    if conf.backend == "pcsc":
        from readers.pcsc import list_readers

        found = list_readers(conf.csock)
        if conf.names:
            found = [n for n in found if any(want in n for want in conf.names)]
    return {"backend": conf.backend, "count": conf.count, "names": list(conf.names),
            "found": found, "feed_timeout": conf.feed_timeout_seconds}  # fmt: skip


@router.get("/centre/equipment")
@page("batches:read")
async def equipment(request: Request, user: SignedIn) -> Response:
    """The printer (file spool or CUPS queue) and the encoding stations' readers."""
    settings = ctx_of(request).settings
    problems: list[Problem] = []
    printer: dict[str, Any] | None = None
    readers: dict[str, Any] | None = None
    try:
        printer = await run_in_threadpool(_printer, settings)
    except Exception as exc:  # a printer away must not hide the readers
        problems.append(Problem(f"printer: {type(exc).__name__}: {exc}"))
    try:
        readers = await run_in_threadpool(_readers, settings)
    except Exception as exc:
        problems.append(Problem(f"readers: {type(exc).__name__}: {exc}"))
    return render(request, "centre/equipment.html", user, printer=printer, readers=readers,
                  problems=problems)  # fmt: skip
