"""No code changes a status outside the transition tables (:mod:`issuance.lifecycle`).

Walks the syntax tree of every top-level package of the project and finds every write of a
``status`` or ``stage``: an assignment to a ``.status`` / ``.stage`` attribute (tuple targets
and ``setattr`` included), ``status=`` / ``stage=`` (or a ``"status"`` / ``"stage"`` key) in an
``update(...)`` / ``insert(...)`` / ``values(...)`` / ``execute(...)`` call, a column list
naming ``status`` / ``stage``, SQL text that sets one (``UPDATE ... SET stage = ...``,
``INSERT INTO t (..., status, ...)``), and the state a tabled entity is created in. Allowed:

* anything in :mod:`issuance.lifecycle` (its ``apply_*_event`` functions are the one place a
  status changes);
* a bulk statement whose value is a declared transition's ``to_state`` (the statement takes
  its stages from the table, :func:`issuance.lifecycle.item_transition`), and a column list
  or SQL text in a function that does so;
* a tabled entity created in its declared initial state (``lifecycle.*_INITIAL``);
* the writes listed in :data:`NOT_TABLED`: states of things that have no transition table (a
  blank chip's fate, a chip of the delivered stock, a loss report) and attributes that are no
  entity's state (an HTTP status). Each entry says why; an entry that matches nothing fails.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIFECYCLE = "issuance/lifecycle.py"
#: Alembic revisions are history: their data migrations stay as they ran.
SKIP = ("issuance/migrations/",)
STATE = {"status", "stage"}
#: Models whose status is in a transition table (created only in a declared initial state).
TABLED = {"Application", "Batch", "BatchItem", "Card", "ChipApplication"}
SQL_WRITE = re.compile(
    r"\bUPDATE\b.*\bSET\b.*\b(status|stage)\s*=|\bINSERT\s+INTO\s+\w+\s*\([^)]*\b(status|stage)\b",
    re.IGNORECASE | re.DOTALL,
)
WRITERS = {"update", "insert", "values", "execute", "executemany", "exec_driver_sql"}

#: (file, function) -> why its status write is not through a table.
NOT_TABLED: dict[tuple[str, str], str] = {
    ("issuance/batches/blanks.py", "DeliveredBlankStock.bind"): "a stock chip bound to a card",
    ("issuance/batches/items.py", "spoil"): "a blank chip's fate (spoiled) and its stock chip",
    ("issuance/batches/pipeline.py", "mark_good"): "a blank chip's fate (good)",
    ("issuance/batches/deliveries.py", "import_delivery"): "stock chips of a delivery",
    ("issuance/services/card_steps.py", "close_open_reports"): "loss reports closed",
    ("issuance/services/loss.py", "formalise_loss"): "a provisional loss report made formal",
    ("issuance/services/loss.py", "unreport_loss"): "a loss report withdrawn",
    ("issuance/services/card_steps.py", "lapse_if_due"): "a provisional loss report lapsed",
    ("issuance/services/loss.py", "replace_card"): "a loss report closed by replacement",
    ("issuance/services/common.py", "create_card"): (
        "a card and its chip applications created (audited card.created): number_allocated, "
        "or active for a temporary card issued on the spot"
    ),
    ("cardspec/emulator/emv.py", "EmvCommands._generate_ac"): (
        "the emulated chip's own EMV transaction step (first or second GENERATE AC)"
    ),
    ("api/client.py", "ApiClientError.__init__"): "an HTTP status",
    ("api/errors.py", "ApiError.__init__"): "an HTTP status",
    ("api/calllog.py", "<module>"): "the columns of the API call log (an HTTP status)",
    ("issuance/services/verification.py", "<module>"): "columns read (SELECT), not written",
}


@dataclass(frozen=True)
class Write:
    file: str
    function: str
    line: int
    what: str
    allowed: bool

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.function}): {self.what}"


def _packages() -> list[Path]:
    return sorted(
        p for p in ROOT.iterdir()
        if (p / "__init__.py").is_file() and p.name not in ("tests", "bench", "scripts")
    )  # fmt: skip


def _from_table(node: ast.AST) -> bool:
    """The value is a declared transition's ``to_state`` or a lifecycle initial state."""
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute) and n.attr == "to_state":
            return True
        if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                and n.value.id == "lifecycle" and n.attr.endswith("_INITIAL")):  # fmt: skip
            return True
    return False


def _text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


class _Finder(ast.NodeVisitor):
    def __init__(self, file: str) -> None:
        self.file = file
        self.stack: list[str] = []
        self.uses_table: list[bool] = []
        self.writes: list[Write] = []

    def _add(self, node: ast.AST, what: str, allowed: bool) -> None:
        name = ".".join(self.stack) or "<module>"
        self.writes.append(Write(self.file, name, getattr(node, "lineno", 0), what, allowed))

    def _scope(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.stack.append(node.name)
        self.uses_table.append(_from_table(node))
        self.generic_visit(node)
        self.stack.pop()
        self.uses_table.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scope

    def _in_table_function(self) -> bool:
        return bool(self.uses_table) and self.uses_table[-1]

    def _targets(self, targets: list[ast.expr], value: ast.AST | None) -> None:
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Attribute) and n.attr in STATE:
                    ok = value is not None and _from_table(value)
                    self._add(n, f"assigns .{n.attr}", ok)

    def visit_Assign(self, node: ast.Assign) -> None:
        self._targets(node.targets, node.value)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._targets([node.target], None)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self._targets([node.target], node.value)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _call_name(node)
        if name == "setattr" and len(node.args) == 3:
            attr = _text(node.args[1])
            if attr in STATE:
                self._add(node, f"setattr({ast.unparse(node.args[1])})", _from_table(node.args[2]))
        if name in WRITERS:
            for k in node.keywords:
                if k.arg in STATE:
                    self._add(node, f"{name}({k.arg}=...)", _from_table(k.value))
            for arg in node.args:
                for d in ast.walk(arg):
                    if isinstance(d, ast.Dict):
                        for key, value in zip(d.keys, d.values, strict=True):
                            if key is not None and _text(key) in STATE:
                                self._add(d, f"{name}({{{_text(key)!r}: ...}})",
                                          _from_table(value))  # fmt: skip
        if name in TABLED:
            for k in node.keywords:
                if k.arg in STATE:
                    self._add(node, f"creates {name}({k.arg}=...)", _from_table(k.value))
        self.generic_visit(node)

    def _columns(self, node: ast.List | ast.Tuple) -> None:
        for e in node.elts:
            if _text(e) in STATE:
                self._add(node, f"column list naming {_text(e)!r}", self._in_table_function())
        self.generic_visit(node)

    visit_List = visit_Tuple = _columns

    def _sql(self, node: ast.AST) -> None:
        text = _text(node)
        if text is not None and SQL_WRITE.search(text):
            self._add(node, "SQL text sets a status", self._in_table_function())

    def visit_Constant(self, node: ast.Constant) -> None:
        self._sql(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self._sql(node)  # its constant parts are not visited on their own


def _writes() -> list[Write]:
    out: list[Write] = []
    for pkg in _packages():
        for path in sorted(pkg.rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(SKIP):
                continue
            finder = _Finder(rel)
            finder.visit(ast.parse(path.read_text(encoding="utf-8"), rel))
            out.extend(finder.writes)
    return out


WRITES = _writes()


def test_the_scan_sees_the_packages_and_the_lifecycle():
    names = {p.name for p in _packages()}
    assert {"issuance", "api", "printers", "hsm", "cardspec"} <= names
    here = {w.function for w in WRITES if w.file == LIFECYCLE}
    assert {"apply_card_event", "apply_chip_event", "apply_application_event",
            "apply_batch_event", "apply_item_event"} <= here  # fmt: skip


def test_no_status_is_written_outside_the_tables():
    bad = [
        w for w in WRITES
        if w.file != LIFECYCLE and not w.allowed and (w.file, w.function) not in NOT_TABLED
    ]  # fmt: skip
    assert not bad, "status written outside issuance.lifecycle:\n" + "\n".join(map(str, bad))


def test_lifecycle_writes_only_in_its_apply_functions():
    wrong = [
        w for w in WRITES
        if w.file == LIFECYCLE and not w.function.startswith("apply_")
        and (w.file, w.function) not in NOT_TABLED
    ]  # fmt: skip
    assert not wrong, "\n".join(map(str, wrong))


def test_every_exception_is_still_needed():
    hit = {(w.file, w.function) for w in WRITES if not w.allowed}
    stale = sorted(set(NOT_TABLED) - hit)
    assert not stale, f"NOT_TABLED entries that match no write any more: {stale}"


def test_bulk_statements_take_their_stages_from_the_table():
    """The bulk movers are seen, and allowed only because their values come from a declared
    transition (the scan is not blind to them)."""
    bulk = {(w.file, w.function) for w in WRITES if w.allowed and w.file != LIFECYCLE}
    assert ("issuance/batches/bureau.py", "mark_exported") in bulk
    assert ("issuance/batches/bulkprep.py", "Preparer._commit") in bulk


@pytest.mark.parametrize(
    "source",
    [
        "item.stage = BatchStage.PREPARED",
        "app.status, app.decided_at = 'rejected', now",
        "setattr(batch, 'status', 'produced')",
        "s.execute(sa.update(BatchItem).values(stage='checked'))",
        "s.execute(sa.insert(Batch), [{'name': n, 'status': 'open'}])",
        "conn.exec_driver_sql(\"UPDATE batches SET status = 'produced' WHERE id = ?\", (1,))",
        "conn.exec_driver_sql(f\"UPDATE batch_items SET stage = '{to}' WHERE id = ?\", (1,))",
        "Application(person=p, status=ApplicationStatus.APPROVED)",
    ],
)
def test_the_scan_catches_each_shape(source):
    finder = _Finder("x.py")
    finder.visit(ast.parse(f"def f():\n    {source}\n"))
    assert [w for w in finder.writes if not w.allowed], source


@pytest.mark.parametrize(
    "source",
    [
        "item.stage = t.to_state",
        "s.execute(sa.update(items).values(stage=str(export.to_state)))",
        "BatchItem(card_id=1, stage=lifecycle.ITEM_INITIAL)",
        "x = item.stage == 'prepared'",
    ],
)
def test_the_scan_allows_the_table(source):
    finder = _Finder("x.py")
    finder.visit(ast.parse(f"def f():\n    {source}\n"))
    assert all(w.allowed for w in finder.writes), source
