"""README.md and docs/ say only what exists.

Every ``ykt`` command and option shown is checked against the real command tree (found through
the ``ykt`` entry point, as the docs build finds it), every repository path against the tree,
every settings key and ``YKT_*`` variable against the settings model and the code that reads
it, every ``make`` target against the Makefile, and every relative link and anchor against the
files and their headings.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from markdown.extensions.toc import slugify, unique

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: Top-level folders and files that a path in the docs may start with.
TREE_PREFIXES = ("cardspec", "hsm", "issuance", "printers", "api", "yikatong", "devstack", "bench")
TREE_PREFIXES += ("scripts", "tests")
TREE_PREFIXES += ("docs", ".ci", "console")
SHELL_LANGS = {"", "sh", "bash", "shell", "console"}
SHELL_STOPS = {"|", "||", "&&", ";", "&", ")", "2>&1"}
#: Files that read YKT_* variables (this checker and the docs generator do not count).
NOT_READERS = {"tests/test_docs.py", "scripts/docgen.py"}


def _load_docgen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docgen", ROOT / "scripts" / "docgen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docgen = _load_docgen()


@dataclass
class Page:
    path: Path
    text: str
    #: (language, line number, text) of every fenced block
    blocks: list[tuple[str, int, str]] = field(default_factory=list)
    #: (line number, text) of every inline code span outside fenced blocks
    spans: list[tuple[int, str]] = field(default_factory=list)
    #: (line number, target) of every Markdown link outside code
    links: list[tuple[int, str]] = field(default_factory=list)
    headings: list[str] = field(default_factory=list)

    @property
    def code(self) -> list[tuple[int, str]]:
        """(line number, text) of every inline code span and fenced block."""
        return self.spans + [(number, text) for _, number, text in self.blocks]

    @property
    def name(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


def parse(path: Path) -> Page:
    page = Page(path, path.read_text(encoding="utf-8"))
    fence: tuple[str, int, list[str]] | None = None
    for number, line in enumerate(page.text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            if fence is None:
                fence = (line.strip()[3:].strip(), number, [])
            else:
                page.blocks.append((fence[0], fence[1], "\n".join(fence[2])))
                fence = None
            continue
        if fence is not None:
            fence[2].append(line)
            continue
        heading = re.match(r"#{1,6} (.*)", line)
        if heading:
            page.headings.append(heading.group(1).strip())
        page.spans += [(number, s) for s in re.findall(r"`([^`]+)`", line)]
        outside = re.sub(r"`[^`]+`", "", line)
        page.links += [(number, t) for t in re.findall(r"\]\(([^)\s]+)\)", outside)]
    assert fence is None, f"{path}: unclosed code block from line {fence[1]}"
    return page


@pytest.fixture(scope="module")
def pages() -> list[Page]:
    return [parse(p) for p in PAGES]


def code_lines(page: Page) -> Iterator[tuple[int, str]]:
    """Inline spans, and the command lines of shell blocks (continuations joined)."""
    yield from page.spans
    for lang, start, text in page.blocks:
        if lang not in SHELL_LANGS:
            continue
        joined = ""
        for offset, line in enumerate(text.splitlines(), start=1):
            if line.lstrip().startswith("#"):
                continue
            joined += line
            if joined.endswith("\\"):
                joined = joined[:-1] + " "
                continue
            yield start + offset, re.split(r"\s#\s|\s#$", joined)[0]
            joined = ""


# ---------------------------------------------------------------------------------------------
# ykt commands and options
# ---------------------------------------------------------------------------------------------
YKT = re.compile(r"(?:^|(?<=[\s|;&(]))(?:\.venv/bin/)?ykt(?=\s|$)")


def ykt_invocations(line: str) -> Iterator[list[str]]:
    for match in YKT.finditer(line):
        rest = line[match.end() :]
        try:
            tokens = shlex.split(rest, comments=False)
        except ValueError:
            tokens = rest.split()
        words: list[str] = []
        for token in tokens:
            if token in SHELL_STOPS or token.startswith((">", "<", "2>")):
                break
            if token.rstrip("\"'").endswith(")"):  # the end of a $(...)
                words.append(token.rstrip("\"')"))
                break
            words.append(token.strip("[]"))
        yield words


def _option_names(command: Any) -> dict[str, Any]:
    ctx = docgen.context(command, "ykt")
    names: dict[str, Any] = {}
    for param in command.get_params(ctx):
        if docgen.is_option(param):
            for name in [*param.opts, *param.secondary_opts]:
                names[name] = param
    return names


def check_invocation(root: Any, words: list[str]) -> tuple[list[str], int]:
    """(problems, options checked) of one ``ykt`` command line as the docs show it."""
    command, path, checked = root, ["ykt"], 0
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            break
        if word.startswith("-") and word != "-" and not word.startswith("--="):
            name = word.split("=", 1)[0]
            options = _option_names(command)
            if name not in options:
                return [f"{' '.join(path)}: no option {name}"], checked
            checked += 1
            param = options[name]
            if "=" not in word and not param.is_flag and not getattr(param, "count", False):
                i += 1  # its value
            continue
        if docgen.is_group(command):
            subs = dict(docgen.subcommands(command, path[-1]))
            if word not in subs:
                if word in ("...", "COMMAND"):
                    break
                return [f"{' '.join(path)}: no command {word!r}"], checked
            command = subs[word]
            path.append(word)
    return [], checked


def test_every_ykt_command_and_option_exists(pages: list[Page]) -> None:
    root = docgen.cli_root()
    problems: list[str] = []
    commands = options = 0
    for page in pages:
        for number, line in code_lines(page):
            for words in ykt_invocations(line):
                found, checked = check_invocation(root, words)
                problems += [f"{page.name}:{number}: {p}  ({line.strip()})" for p in found]
                commands += 1
                options += checked
    assert not problems, "\n".join(problems)
    assert commands > 150 and options > 150, (commands, options)


def test_the_checker_refuses_what_does_not_exist() -> None:
    root = docgen.cli_root()
    assert check_invocation(root, ["hsm", "init", "--if-missing"])[0] == []
    assert check_invocation(root, ["hsm", "initialise"])[0] == ["ykt hsm: no command 'initialise'"]
    assert check_invocation(root, ["hsm", "init", "--if-absent"])[0] == [
        "ykt hsm init: no option --if-absent"
    ]
    assert list(ykt_invocations("x=1 .venv/bin/ykt db upgrade && .venv/bin/ykt db check")) == [
        ["db", "upgrade"],
        ["db", "check"],
    ]


# ---------------------------------------------------------------------------------------------
# Paths, settings, variables, make targets
# ---------------------------------------------------------------------------------------------
TREE_PATH = re.compile(
    r"(?<![\w./$~-])((?:" + "|".join(re.escape(p) for p in TREE_PREFIXES) + r")/[\w./-]*)"
)


def test_every_path_mentioned_exists(pages: list[Page]) -> None:
    problems, seen = [], set()
    for page in pages:
        for number, text in page.code:
            for match in TREE_PATH.finditer(text):
                path = match.group(1).rstrip(".,:;")
                end = match.end()
                if text[end : end + 1] in ("<", "{", "*") or "..." in path:
                    continue  # a pattern, not a path
                seen.add(path)
                if not (ROOT / path).exists():
                    problems.append(f"{page.name}:{number}: {path} does not exist")
    assert not problems, "\n".join(problems)
    assert len(seen) > 30, sorted(seen)


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def check_dotted(name: str) -> str | None:
    """A problem with a dotted Python name (``pkg.module.attribute``), or None.

    The longest prefix of two or more parts that is a module must exist, and the next part must
    be defined at its top level. Names whose first two parts are no module (audit event names
    such as ``api.denied``) are not Python names and are left alone.
    """
    parts = name.split(".")
    for cut in range(len(parts), 1, -1):
        module = ".".join(parts[:cut])
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is None or spec.origin is None:
            continue
        if cut < len(parts) and parts[cut] not in _top_level_names(Path(spec.origin)):
            return f"{module} defines no {parts[cut]}"
        return None
    return None


def test_every_python_name_mentioned_exists(pages: list[Page]) -> None:
    problems, seen = [], set()
    for page in pages:
        for number, text in page.code:
            for module in re.findall(r"python -m ([\w.]+)", text):
                seen.add(module)
                if importlib.util.find_spec(module) is None:
                    problems.append(f"{page.name}:{number}: no module {module}")
        for number, span in page.spans:
            match = re.fullmatch(
                r"((?:cardspec|hsm|issuance|printers|api|bench)(?:\.\w+)+)(?:\(\))?", span
            )
            if match:
                seen.add(match.group(1))
                problem = check_dotted(match.group(1))
                if problem:
                    problems.append(f"{page.name}:{number}: {problem}")
    assert not problems, "\n".join(problems)
    assert len(seen) > 10, sorted(seen)


def _sections() -> dict[str, set[str]]:
    return {name: set(model.model_fields) for name, model in docgen.settings_sections().items()}


def test_every_settings_key_exists(pages: list[Page]) -> None:
    sections = _sections()
    problems: list[str] = []
    checked = 0

    def check(where: str, section: str, key: str | None) -> None:
        nonlocal checked
        checked += 1
        if section not in sections:
            problems.append(f"{where}: no settings section [{section}]")
        elif key is not None and key not in sections[section]:
            problems.append(f"{where}: no setting [{section}] {key}")

    for page in pages:
        tomls = [(start, text) for lang, start, text in page.blocks if lang == "toml"]
        for lang, start, text in page.blocks:  # a settings file written by a shell heredoc
            if lang in SHELL_LANGS:
                for heredoc in re.finditer(r"<<'?TOML'?\n(.*?)\nTOML$", text, re.S | re.M):
                    tomls.append((start + text[: heredoc.start(1)].count("\n"), heredoc.group(1)))
        for start, text in tomls:
            section = None
            for offset, line in enumerate(text.splitlines(), start=1):
                where = f"{page.name}:{start + offset}"
                head = re.match(r"\[(\w+)\]", line.strip())
                item = re.match(r"(\w+)\s*=", line.strip())
                if head:
                    section = head.group(1)
                    check(where, section, None)
                elif item:
                    assert section is not None, f"{where}: a key outside any section"
                    check(where, section, item.group(1))
        for number, span in page.spans:  # `[section] key`, `[section] a/b`, `[s] key = v`
            match = re.fullmatch(r"\[(\w+)\]\s+([\w/]+)(?:\s*=.*)?", span.strip())
            if match:
                for key in match.group(2).split("/"):
                    check(f"{page.name}:{number}", match.group(1), key)
        for number, line in enumerate(page.text.splitlines(), start=1):
            row = re.match(r"\| `\[(\w+)\]` \|", line)  # a table of sections
            if row:
                check(f"{page.name}:{number}", row.group(1), None)
    assert not problems, "\n".join(problems)
    assert checked > 60, checked


def _readers_text() -> str:
    files = [ROOT / "Makefile", ROOT / "run", *ROOT.glob(".ci/*")]
    for folder in (*TREE_PREFIXES[:-2], "bench", "scripts"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".sh", ".lua")]
    return "\n".join(
        p.read_text(encoding="utf-8", errors="replace")
        for p in files
        if p.is_file() and p.relative_to(ROOT).as_posix() not in NOT_READERS
    )


def test_every_ykt_variable_exists(pages: list[Page]) -> None:
    sections = _sections()
    code = _readers_text()
    problems, seen = [], set()
    for page in pages:
        for number, line in enumerate(page.text.splitlines(), start=1):
            for name in re.findall(r"\bYKT_[A-Z0-9_]*[A-Z0-9]_*", line):
                seen.add(name)
                where = f"{page.name}:{number}: {name}"
                if "__" in name:
                    section, _, key = name[4:].lower().partition("__")
                    if section not in sections:
                        problems.append(f"{where}: no settings section [{section}]")
                    elif key and key not in sections[section]:
                        problems.append(f"{where}: no setting [{section}] {key}")
                elif not re.search(rf"\b{name}\b", code):
                    problems.append(f"{where}: no code reads it")
    assert not problems, "\n".join(problems)
    assert len(seen) > 20, sorted(seen)


def test_every_make_target_exists(pages: list[Page]) -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, re.MULTILINE))
    problems, seen = [], set()
    for page in pages:
        for number, text in page.code:
            for target in re.findall(r"(?:^|[\s;&(])make\s+([a-z][\w-]*)", text):
                seen.add(target)
                if target not in targets:
                    problems.append(f"{page.name}:{number}: no make target {target}")
    assert not problems, "\n".join(problems)
    assert {"setup", "test", "bench", "reliability", "clean"} <= seen, seen


# ---------------------------------------------------------------------------------------------
# Links
# ---------------------------------------------------------------------------------------------
def anchors(page: Page) -> set[str]:
    ids: set[str] = set()
    for text in page.headings:
        plain = re.sub(r"[`*]", "", text)
        ids.add(unique(slugify(plain, "-"), ids))
    return ids


def test_every_internal_link_resolves(pages: list[Page]) -> None:
    by_path = {p.path: p for p in pages}
    generated = {ROOT / "docs" / f for f in docgen.GENERATED_FILES}
    problems: list[str] = []
    checked = 0
    for page in pages:
        for number, target in page.links:
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            checked += 1
            file_part, _, anchor = target.partition("#")
            dest = (page.path.parent / file_part).resolve() if file_part else page.path
            where = f"{page.name}:{number}: {target}"
            if not dest.exists() and dest not in generated:
                problems.append(f"{where}: no such file")
                continue
            in_pages = dest.suffix == ".md" and dest in by_path
            if anchor and in_pages and anchor not in anchors(by_path[dest]):
                problems.append(f"{where}: no heading with that anchor")
    assert not problems, "\n".join(problems)
    assert checked > 60, checked


def test_readme_is_short_and_keeps_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    assert "./run demo" in readme and "./run test" in readme


FAKE_CLI = '''
import click
import typer

sub = typer.Typer()


@sub.command("go")
def go(fast: bool = typer.Option(False, "--fast")) -> None:
    """Go."""


@sub.command("stay")
def stay() -> None:
    """Stay."""


app = typer.Typer()
app.add_typer(sub, name="moved")


@click.group()
def group() -> None:
    pass


@group.command("go")
@click.option("--fast", is_flag=True)
def click_go(fast: bool) -> None:
    pass


def main() -> None:
    built = typer.Typer()
    built.add_typer(sub, name="moved")
    built()
'''


@pytest.mark.parametrize("attribute", ["main", "app", "group"])
def test_the_command_tree_is_found_wherever_the_cli_lives(
    attribute: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry point may name a main() that builds the tree, a Typer app or a click group."""
    from importlib.metadata import EntryPoint

    (tmp_path / "fake_moved_cli.py").write_text(FAKE_CLI, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    point = EntryPoint("ykt", f"fake_moved_cli:{attribute}", "console_scripts")
    monkeypatch.setattr(docgen, "entry_points", lambda **kwargs: [point])
    root = docgen.cli_root()
    found = [" ".join(path) for path, _ in docgen.walk_commands(root)]
    expected = "ykt go" if attribute == "group" else "ykt moved go"
    assert expected in found
    assert check_invocation(root, [*expected.split()[1:], "--fast"]) == ([], 1)
    assert check_invocation(root, [*expected.split()[1:], "--slow"])[0] != []
