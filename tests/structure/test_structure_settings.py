"""Only the composition root sees the whole settings (issue 13).

The root schema :class:`yikatong.settings.Settings` (every section) is named only in
``yikatong`` (and by tests, benchmarks and the throwaway servers); every other package is typed
against its own frozen config: the domain against :class:`issuance.settings.IssuanceConfig`,
the console against :class:`console.config.ConsoleConfig`, the API against
:class:`api.config.ApiConfig`, the HSM against :class:`hsm.config.HsmConfig`, the printers and
the stations against their protocols. mypy then refuses a read of a section that is not the
package's own; this test refuses the import that would get round it. (import-linter's layers
already keep them from importing ``yikatong`` at all but for the Alembic script; this holds
for that one too, and for ``scripts/``.)
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Where the root schema may be named: the composition root and what stands outside the product.
ALLOWED = ("yikatong", "tests", "bench", "devstack")
#: Everything else that holds Python source.
CHECKED = ("api", "console", "issuance", "printers", "readers", "hsm", "cardspec", "scripts")
ROOT_MODULE = "yikatong.settings"


def root_settings_imports(root: Path = ROOT, folders: tuple[str, ...] = CHECKED) -> list[str]:
    """Every import of the root ``Settings`` (or of the module, which hands it out) outside
    the composition root. ``from yikatong.settings import get_settings`` (a loader, as the
    Alembic script uses) is not one."""
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    for alias in node.names:
                        if node.module == ROOT_MODULE and alias.name in ("Settings", "*"):
                            found.append(f"{where} imports {ROOT_MODULE}.{alias.name}")
                        if node.module == "yikatong" and alias.name == "settings":
                            found.append(f"{where} imports the module {ROOT_MODULE}")
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name == ROOT_MODULE:
                            found.append(f"{where} imports the module {ROOT_MODULE}")
    return found


def test_only_the_composition_root_imports_the_root_settings() -> None:
    assert root_settings_imports() == []


def test_the_checker_sees_every_way_in(tmp_path: Path) -> None:
    pkg = tmp_path / "issuance"
    pkg.mkdir()
    (pkg / "a.py").write_text("from yikatong.settings import Settings\n")
    (pkg / "b.py").write_text("def f():\n    from yikatong.settings import Settings as S\n")
    (pkg / "c.py").write_text("import yikatong.settings\n")
    (pkg / "d.py").write_text("from yikatong import settings\n")
    (pkg / "e.py").write_text("from yikatong.settings import get_settings\n")
    (pkg / "f.py").write_text("from issuance.settings import IssuanceConfig\n")
    allowed = tmp_path / "yikatong"
    allowed.mkdir()
    (allowed / "wiring.py").write_text("from yikatong.settings import Settings\n")
    assert root_settings_imports(tmp_path, ("issuance",)) == [
        "issuance/a.py:1 imports yikatong.settings.Settings",
        "issuance/b.py:2 imports yikatong.settings.Settings",
        "issuance/c.py:1 imports the module yikatong.settings",
        "issuance/d.py:1 imports the module yikatong.settings",
    ]


def test_every_folder_with_python_source_is_checked_or_allowed() -> None:
    skipped = {"var", "site", "build", "dist"}  # data, the built docs, packaging output
    folders = {
        d.name
        for d in ROOT.iterdir()
        if d.is_dir()
        and not d.name.startswith(".")
        and d.name not in skipped
        and not d.name.endswith(".egg-info")
        and next(d.rglob("*.py"), None) is not None
    }
    assert folders <= set(ALLOWED) | set(CHECKED), sorted(folders - set(ALLOWED) - set(CHECKED))
