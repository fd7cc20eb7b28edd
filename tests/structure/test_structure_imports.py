"""The import rules of the layout (issue 13) that import-linter does not check itself.

The layers, the devstack boundary and the absence of cycles inside each package are
import-linter contracts in pyproject.toml (``lint-imports`` in ``./run test``); this test
runs them too, so that ``pytest`` alone catches a broken contract, and adds the rule no
contract expresses: no module imports another module's private (``_name``) names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "yikatong",
    "devstack",
    "api",
    "console",
    "issuance",
    "printers",
    "readers",
    "hsm",
    "cardspec",
)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(root: Path = ROOT) -> list[str]:
    """Every ``from x import _name`` (and import of a ``_private`` module) across modules."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            importer = _module_name(path, root)
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.ImportFrom):
                    source = _absolute(importer, path.name == "__init__.py", node)
                    if any(_private(p) for p in source.split(".")):
                        found.append(f"{where} imports private module {source}")
                    for alias in node.names:
                        if _private(alias.name) and source != importer:
                            found.append(f"{where} imports {source}.{alias.name}")
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if any(_private(p) for p in alias.name.split(".")):
                            found.append(f"{where} imports private module {alias.name}")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_imports() == []


def test_the_checker_sees_a_private_import(tmp_path: Path) -> None:
    pkg = tmp_path / "hsm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("_SECRET = 1\n")
    (pkg / "b.py").write_text("def f():\n    from hsm.a import _SECRET\n    return _SECRET\n")
    (pkg / "c.py").write_text("from .a import _SECRET as S\n")
    for other in PACKAGES:
        (tmp_path / other).mkdir(exist_ok=True)
    assert private_imports(tmp_path) == [
        "hsm/b.py:2 imports hsm.a._SECRET",
        "hsm/c.py:1 imports hsm.a._SECRET",
    ]


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout
