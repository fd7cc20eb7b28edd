"""The card centre's pages (``/console/centre``): a batch created from a selection, run or
resumed, its stages watched live; failed cards retried or withdrawn; the blank stock, the
bureau files, the printer and the readers.

Every action calls the services ``ykt batch``, ``ykt stock`` and ``ykt bureau`` call
(:mod:`issuance.batches`); who may do what is theirs to decide. A run is started through the
host (:attr:`console.common.HostContext.batch_runs`: a background thread of the service,
see :mod:`api.batchruns`), so the page answers at once and the batch page polls the stages.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

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
from hsm.errors import HsmError
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


def _own_keys(request: Request) -> tuple[Any, Any]:
    """A key service of its own (the production line's, as a batch run opens it: long HSM
    work stays off the service's one HSM thread) and the line's adapters."""
    from issuance.errors import ConfigError

    runs = ctx_of(request).batch_runs
    adapters = runs.adapters if runs is not None else None
    if runs is None or adapters is None:
        raise ConfigError("this service has no production line: use ykt bureau and ykt stock")
    return adapters.key_service(), adapters


def _hsm_labels(request: Request, kind: str) -> tuple[list[str], list[Problem]]:
    """The names of the HSM's keys of ``kind`` (``transport``: ``ykt:transport:NAME``,
    ``supplier``: ``ykt:supplier:NAME:...``); labels only, never a secret."""

    def names(service: Any) -> list[str]:
        from hsm import ceremony

        found = set()
        for k in ceremony.list_keys(service.token):
            if k.kind == kind == "transport":
                found.add(k.label.removeprefix(ceremony.transport_label("")))
            elif k.kind == kind:  # ykt:supplier:NAME:kmc|klk:ALG:vN
                found.add(k.label.split(":")[2])
        return sorted(found)

    try:
        return ctx_of(request).hsm.call(names), []
    except Exception as exc:  # the HSM away: the page says so, the rest still shows
        return [], [Problem(f"HSM: {type(exc).__name__}: {exc}")]


async def _save_upload(data: FormData, name: str, into: Path) -> Path:
    """The uploaded file ``name`` of the form, copied into the private directory ``into``
    under its own name's safe characters (the services read a file by its suffix)."""
    upload = data.get(name)
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise ValidationError("no file", [FieldProblem(name, "choose the file to upload")])
    given = Path(upload.filename)
    stem = "".join(ch for ch in given.stem if ch.isascii() and (ch.isalnum() or ch in "_-"))
    suffix = (
        given.suffix.lower() if given.suffix[1:].isascii() and given.suffix[1:].isalnum() else ""
    )
    path = into / f"{stem[:80] or 'upload'}{suffix}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := await upload.read(1 << 20):
            out.write(chunk)
    return path


@router.get("/centre/stock")
@page("batches:read")
async def stock(request: Request, user: SignedIn) -> Response:
    """Blank chips by supplier, lot and state; the chips the stations refused (``ykt stock
    status``); a supplier's delivery file imported (``ykt stock import``)."""
    return await _stock_page(request, user)


async def _stock_page(
    request: Request, user: SignedIn, status: int = 200, *, done: Any = None,
    problems: list[Problem] | None = None, form: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    from issuance.batches.deliveries import stock_status
    from issuance.models import StockChipStatus

    def fn(s: Session) -> Any:
        audit.record(s, user.actor, "console.stock_read", "stock", "status")
        return stock_status(s, recent=20)

    st = await tx(request, fn)
    suppliers, hsm_problems = ([], []) if not _may_produce(user) else await run_in_threadpool(
        _hsm_labels, request, "supplier")  # fmt: skip
    return render(request, "centre/stock.html", user, status, st=st, states=list(StockChipStatus),
                  backend=ctx_of(request).settings.stock.backend, suppliers=suppliers,
                  may_produce=_may_produce(user), done=done,
                  problems=[*(problems or []), *hsm_problems],
                  form=form or dict.fromkeys(DELIVERY_FIELDS, ""),
                  here=f"{HERE}/stock")  # fmt: skip


DELIVERY_FIELDS = ("supplier", "lot", "algorithm", "key_version")
#: Catalog sentences for a delivery file's refusals, by the words of the service's reason
#: (the reason itself is shown too, word for word).
DELIVERY_KEYS = (
    ("also at", "This chip serial is in the file twice."),
    ("is already in stock", "This chip is already in stock (an earlier delivery)."),
    ("is not 16 hex characters", "A chip serial is 16 hexadecimal characters."),
    (
        "does not match the key set",
        "The check value does not match the supplier's key set in the HSM.",
    ),
    ("is not 6 hex characters", "A check value is 6 hexadecimal characters."),
    (
        "a lot of 1-64 characters",
        "Each chip needs a lot: a lot column in the file, or the lot field of this form.",
    ),
    ("unknown", "The file has a column or field the delivery format does not know."),
    ("more fields than the header", "This line has more fields than the header line."),
    ("the file is from", "The file is from another supplier."),
    (" is not '", "The file is from another supplier."),
    ("1-40 lower-case", "Choose the supplier."),
    ("the file says", "The file and this form disagree."),
    ("not UTF-8", "The file is not UTF-8 text."),
    ("must end in .json or .csv", "A delivery file is a .csv or a .json file."),
    ("lists no chips", "The file lists no chip."),
)


def _delivery_problems(exc: IssuanceError) -> list[Problem]:
    out = []
    for p in problems_of(exc):
        key = next((k for words, k in DELIVERY_KEYS if words in p.text), p.key)
        out.append(Problem(p.text, key))
    return out


@router.post("/centre/stock/import")
@page("batches:read", form=True)
async def stock_import(request: Request, user: SignedIn) -> Response:
    """A supplier's delivery file checked, or imported (all or nothing, every problem listed):
    :func:`issuance.batches.deliveries.import_delivery`, the check values verified in the
    HSM; audited (``stock.delivery_imported`` per lot)."""
    from issuance.batches.deliveries import import_delivery, parse_delivery

    data: FormData = request.state.form
    form = {k: field(data, k, 64) or "" for k in DELIVERY_FIELDS}
    write = field(data, "action") == "import"
    ctx = ctx_of(request)
    with tempfile.TemporaryDirectory(prefix="ykt-delivery-") as tmp:
        try:
            path = await _save_upload(data, "delivery", Path(tmp))
            version = form["key_version"]
            if version and not version.isdigit():
                raise ValidationError("invalid key set version",
                                      [FieldProblem("key_version", "a whole number")])  # fmt: skip

            def work() -> Any:
                delivery = parse_delivery(
                    path, form["supplier"], lot=form["lot"] or None,
                    algorithm=form["algorithm"] or None,
                    key_version=int(version) if version else None,
                )  # fmt: skip
                keys, _ = _own_keys(request)
                with ctx.tx() as s:
                    result = import_delivery(s, keys, ctx.settings.issuer.region_code, delivery,
                                             user.actor, write=write)  # fmt: skip
                    if not write:
                        audit.record(s, user.actor, "console.delivery_checked", "stock", "delivery",
                                     details={"supplier": delivery.supplier,
                                              "chips": len(delivery.chips),
                                              "file_sha256": delivery.sha256})  # fmt: skip
                return result

            result = await run_in_threadpool(work)
        except IssuanceError as exc:
            why = str(exc.message)[:500]
            await tx(request, lambda s: audit.record(
                s, user.actor, "console.delivery_refused", "stock", "delivery", reason=why,
                details={"import": write},
            ))  # fmt: skip
            return await _stock_page(request, user, 422, problems=_delivery_problems(exc),
                                     form=form, done={"refused": True})  # fmt: skip
    return await _stock_page(request, user, done={"result": result})


# --- bureau files ---------------------------------------------------------------------------


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


def _exportable(s: Session) -> list[dict[str, Any]]:
    """The batches with cards a bureau export takes (selected, or prepared)."""
    from issuance.batches.pipeline import BUREAU_STAGES

    rows = s.execute(
        sa.select(Batch.id, Batch.name, sa.func.count())
        .join(BatchItem, BatchItem.batch_id == Batch.id)
        .where(BatchItem.stage.in_([str(st) for st in BUREAU_STAGES]))
        .group_by(Batch.id, Batch.name).order_by(Batch.id.desc()).limit(100)
    ).all()  # fmt: skip
    return [{"id": i, "name": name, "cards": int(n)} for i, name, n in rows]


async def _bureau_page(
    request: Request, user: SignedIn, status: int = 200, *, exported: Any = None,
    checked: Any = None, problems: list[Problem] | None = None,
    form: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    def fn(s: Session) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return _bureau_files(s), _exportable(s)

    files, exportable = await tx(request, fn)
    transports, hsm_problems = ([], []) if not _may_produce(user) else await run_in_threadpool(
        _hsm_labels, request, "transport")  # fmt: skip
    return render(request, "centre/bureau.html", user, status, files=files,
                  exportable=exportable, transports=transports, may_produce=_may_produce(user),
                  exported=exported, checked=checked, line_keys=RESULT_LINE_KEYS,
                  shown_lines=SHOWN_LINES,
                  problems=[*(problems or []), *hsm_problems], form=form or {},
                  here=f"{HERE}/bureau")  # fmt: skip


@router.get("/centre/bureau")
@page("batches:read")
async def bureau(request: Request, user: SignedIn) -> Response:
    """The bureau files exported and what came back of their cards (``ykt bureau``); a batch
    exported into a bureau file, a result file imported."""
    return await _bureau_page(request, user)


def _producer(user: SignedIn, what: str) -> None:
    from issuance.errors import PermissionDenied

    if not _may_produce(user):
        raise PermissionDenied(f"role {user.actor.role} may not {what}")


@router.post("/centre/bureau/export")
@page("batches:read", form=True)
async def bureau_export(request: Request, user: SignedIn) -> Response:
    """A batch into a signed bureau file (``ykt bureau export``:
    :func:`issuance.batches.pipeline.export_batch_to_bureau`) kept by the service for its
    download; the cards go ``at_bureau`` (audited ``batch.bureau_exported``)."""
    from issuance.batches.bureau import bureau_dir
    from issuance.batches.pipeline import export_batch_to_bureau
    from issuance.db import make_sessionmaker

    data: FormData = request.state.form
    form = {
        "batch": field(data, "batch", 12) or "",
        "transport": field(data, "transport", 64) or "",
    }
    ctx = ctx_of(request)

    def work() -> dict[str, Any]:
        _producer(user, "export bureau files")
        if not form["batch"].isdigit():
            raise ValidationError("no batch", [FieldProblem("batch", "choose a batch")])
        if not form["transport"]:
            raise ValidationError(
                "no transport key", [FieldProblem("transport", "choose the bureau's transport key")]
            )
        with ctx.tx() as s:
            found = get_batch(s, int(form["batch"]))
            bi.recover_interrupted(s, found.id, user.actor)
            batch_id, name = found.id, found.name
        where = bureau_dir(ctx.settings.data_dir)
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        keys, adapters = _own_keys(request)
        assert ctx.batch_runs is not None
        info, moved, refused = export_batch_to_bureau(
            ctx.settings, make_sessionmaker(ctx.batch_runs.engine), keys, batch_id,
            where / f"batch-{batch_id}-{stamp}.jsonl", form["transport"], user.actor,
            adapters=adapters,
        )  # fmt: skip
        return {"file_id": info.file_id, "batch": name, "batch_id": batch_id, "count": info.count,
                "sha256": info.sha256, "moved": moved, "refused": refused}  # fmt: skip

    try:
        exported = await run_in_threadpool(work)
    except (IssuanceError, HsmError) as exc:
        problems = (problems_of(exc) if isinstance(exc, IssuanceError)
                    else [Problem(f"HSM: {exc}", TRANSPORT_KEY)])  # fmt: skip
        return await _bureau_page(request, user, 422, problems=problems, form=form)
    return await _bureau_page(request, user, exported=exported)


TRANSPORT_KEY = "The HSM refused: is the bureau's transport key there (ykt hsm transport-key)?"


@router.get("/centre/bureau/files/{file_id}")
@page("batches:read")
async def bureau_download(request: Request, user: SignedIn) -> Response:
    """The bureau file to hand to the bureau (its keys wrapped under the transport key, signed
    by the issuer), checked against the issuer's signature first; audited
    (``console.bureau_file_downloaded``)."""
    from issuance.batches.bureau import exported_path, verify_bureau_file

    file_id = str(request.path_params["file_id"])[:40]
    ctx = ctx_of(request)

    def work() -> tuple[Path, str]:
        _producer(user, "download bureau files")
        with ctx.tx() as s:
            path = exported_path(s, file_id)
        info = verify_bureau_file(path, ctx.hsm.call(_public_pem))
        with ctx.tx() as s:
            audit.record(s, user.actor, "console.bureau_file_downloaded", "bureau_file", file_id,
                         details={"batch": info.batch, "cards": info.count,
                                  "sha256": info.sha256})  # fmt: skip
        return path, info.batch

    try:
        path, batch_name = await run_in_threadpool(work)
    except IssuanceError as exc:
        return render(request, "message.html", user, 404, problems=_bureau_file_problems(exc))
    name = "".join(ch for ch in batch_name if ch.isascii() and (ch.isalnum() or ch in "-_"))
    return FileResponse(path, media_type="application/x-ndjson",
                        filename=f"{name or 'batch'}-{file_id}.bureau.jsonl",
                        headers={"Cache-Control": "no-store"})  # fmt: skip


def _public_pem(service: Any) -> bytes:
    pem: bytes = service.public_key_pem()
    return pem


#: Refused lines of a result file listed on the page (the count is always shown).
SHOWN_LINES = 1000
#: Catalog sentences for the bureau import's refusals.
BUREAU_FILE_KEY = (
    "The bureau file kept by this service does not pass its check (format, "
    "digest, the issuer's signature): it was altered. Export the batch again."
)
RESULT_FILE_KEY = (
    "The result file is refused as a whole: it is not a bureau result file, or it "
    "answers another bureau file (another batch or another export)."
)
RESULT_LINE_KEYS = {
    "malformed": "Not a result line: JSON with card_id, result (made or spoiled) and the "
    "chip_serial or the reason.",
    "unknown_card": "This card is not in the bureau file.",
    "duplicate": "This card is reported again: its first line counts.",
    "serial_mismatch": "Made on another chip than the one its keys were prepared for.",
}


def _bureau_file_problems(exc: IssuanceError) -> list[Problem]:
    from issuance.batches.bureau import BureauFileInvalid

    if isinstance(exc, BureauFileInvalid):
        return [Problem(exc.message, BUREAU_FILE_KEY)]
    return problems_of(exc)


@router.post("/centre/bureau/import")
@page("batches:read", form=True)
async def bureau_import(request: Request, user: SignedIn) -> Response:
    """The bureau's result file checked line by line against the bureau file it answers (the
    one this service exported, its signature verified), then applied (``ykt bureau import``:
    made cards good, spoiled ones requeued; idempotent): nothing is applied if a line is
    refused, unless the operator asks for the good lines only (``--partial``)."""
    from issuance.batches.bureau import BureauFileInvalid, expected_cards, exported_path
    from issuance.batches.bureau_result import apply_bureau_result, import_bureau_result
    from issuance.db import with_retry

    data: FormData = request.state.form
    file_id = field(data, "file_id", 40) or ""
    partial = field(data, "partial") == "yes"
    apply = field(data, "action") == "import"
    form = {"file_id": file_id, "partial": "yes" if partial else ""}
    ctx = ctx_of(request)

    def run_txn(fn: Any) -> object:
        def once() -> object:
            with ctx.tx() as s:
                return fn(s)

        return with_retry(once)

    with tempfile.TemporaryDirectory(prefix="ykt-bureau-result-") as tmp:
        stage = "upload"
        try:
            result_path = await _save_upload(data, "result", Path(tmp))

            def work() -> dict[str, Any]:
                nonlocal stage
                _producer(user, "import bureau results")
                if not file_id:
                    raise ValidationError(
                        "no bureau file", [FieldProblem("file_id", "choose the bureau file")]
                    )
                with ctx.tx() as s:
                    path = exported_path(s, file_id)
                stage = "bureau_file"
                expected = expected_cards(path, ctx.hsm.call(_public_pem))
                stage = "result_file"
                checked = import_bureau_result(result_path, expected, file_id)
                stage = "apply"
                out: dict[str, Any] = {"r": checked, "applied": None, "apply": apply,
                                       "partial": partial}  # fmt: skip
                if apply and (partial or not checked.problems):
                    out["applied"] = apply_bureau_result(run_txn, ctx.settings, checked,
                                                         user.actor)  # fmt: skip
                else:
                    run_txn(lambda s: audit.record(
                        s, user.actor, "console.bureau_result_checked", "bureau_file", file_id,
                        details={"made": len(checked.made), "spoiled": len(checked.spoiled),
                                 "refused_lines": len(checked.problems),
                                 "not_reported": len(checked.missing), "applied": False},
                    ))  # fmt: skip
                return out

            checked = await run_in_threadpool(work)
        except IssuanceError as exc:
            if isinstance(exc, BureauFileInvalid):
                key = BUREAU_FILE_KEY if stage == "bureau_file" else RESULT_FILE_KEY
                problems = [Problem(exc.message, key)]
            else:
                problems = problems_of(exc)
            why = str(exc.message)[:500]
            await tx(request, lambda s: audit.record(
                s, user.actor, "console.bureau_result_refused", "bureau_file", file_id or "-",
                reason=why, details={"import": apply},
            ))  # fmt: skip
            return await _bureau_page(request, user, 422, problems=problems, form=form)
    status = 422 if checked["r"].problems and checked["applied"] is None else 200
    return await _bureau_page(request, user, status, checked=checked, form=form)


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
