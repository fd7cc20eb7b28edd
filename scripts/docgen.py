"""The docs site's generated parts, built from the code at every ``mkdocs build`` (a mkdocs hook).

``mkdocs.yml`` names this file under ``hooks:``. Pages under ``docs/`` hold markers that the
hook replaces with text made from the code, so the reference can never disagree with it:

* ``<!-- ykt:cli -->``: every ``ykt`` command with its usage, help and options, walked from the
  click command tree of the ``ykt`` console script (found through its entry point, so the CLI
  module may move);
* ``<!-- ykt:settings -->``: every settings section and key from the settings model, with its
  type, default, constraints, ``YKT_*`` variable and the ``#:`` comment beside it;
* ``<!-- ykt:openapi -->``: every route of the OpenAPI document, written by ``ykt api openapi``
  (the document itself is published beside the page as ``reference/openapi.json``);
* ``<!-- ykt:transitions -->``: every ``*_TRANSITIONS`` table of the lifecycle module(s);
* ``<!-- ykt:choices -->``: every ``CHOICE`` note in the code, with the paragraph around it;
* ``<!-- ykt:docstring MODULE -->``: a module's docstring (design notes kept beside the code).

``tests/test_docs.py`` uses :func:`cli_root` and :func:`settings_model` to check every command,
option and setting the README and the pages show.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import pkgutil
import re
import sys
import tempfile
import textwrap
import tokenize
import typing
from collections.abc import Iterator
from enum import Enum
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import typer
from pydantic import BaseModel, SecretStr

ROOT = Path(__file__).resolve().parent.parent
#: The console script whose command tree is documented.
CLI_SCRIPT = "ykt"
#: Where the settings model lives ("module:attribute").
SETTINGS_MODEL = "yikatong.settings:Settings"
#: The module (or package) whose ``*_TRANSITIONS`` tables are documented.
LIFECYCLE_MODULE = "issuance.lifecycle"
#: Files the hook adds to the site beside the pages (relative to ``docs/``).
GENERATED_FILES = ("reference/openapi.json",)
#: Top-level directories not searched for ``CHOICE`` notes.
NOT_PRODUCT = {"tests", "bench", "scripts", "docs", "var", "site"}

MARKER = re.compile(r"<!--\s*ykt:(\w+)(?:\s+([\w.]+))?\s*-->")


# ---------------------------------------------------------------------------------------------
# Finding the code
# ---------------------------------------------------------------------------------------------
class _Captured(BaseException):
    def __init__(self, command: Any) -> None:
        self.command = command


def cli_root() -> Any:
    """The command tree behind the ``ykt`` console script (a click-style ``Command``).

    The entry point may be a click command, a Typer app, or a ``main()`` that builds the tree
    and runs it: then it is called with the step that runs the tree held back (Typer's
    ``get_command``, click's ``Command.__call__``), so nothing runs, and the tree is kept.
    """
    (ep,) = entry_points(group="console_scripts", name=CLI_SCRIPT)
    target = ep.load()
    if isinstance(target, click.Command):
        return target
    if isinstance(target, typer.Typer):
        return typer.main.get_command(target)

    def hold_typer(app: typer.Typer) -> Any:
        raise _Captured(get_command(app))

    def hold_click(self: click.Command, *args: Any, **kwargs: Any) -> Any:
        raise _Captured(self)

    get_command = typer.main.get_command
    call, excepthook = click.Command.__call__, sys.excepthook
    typer.main.get_command = hold_typer  # type: ignore[assignment]
    click.Command.__call__ = hold_click  # type: ignore[method-assign]
    try:
        target()
    except _Captured as captured:
        return captured.command
    finally:
        typer.main.get_command = get_command
        click.Command.__call__ = call  # type: ignore[method-assign]
        sys.excepthook = excepthook
    raise RuntimeError(f"the {CLI_SCRIPT} entry point {ep.value} ran no command")


def is_group(command: Any) -> bool:
    return hasattr(command, "list_commands")


def context(command: Any, info_name: str) -> Any:
    return command.context_class(command, info_name=info_name)


def subcommands(command: Any, info_name: str) -> list[tuple[str, Any]]:
    """The visible subcommands of a group, in the order ``--help`` lists them."""
    ctx = context(command, info_name)
    found = [(name, command.get_command(ctx, name)) for name in command.list_commands(ctx)]
    return [(name, sub) for name, sub in found if sub is not None and not sub.hidden]


def walk_commands(
    command: Any, path: tuple[str, ...] = (CLI_SCRIPT,)
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command of the tree, depth first, with its path (``("ykt", "hsm", "init")``)."""
    yield path, command
    if is_group(command):
        for name, sub in subcommands(command, path[-1]):
            yield from walk_commands(sub, (*path, name))


def is_option(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "option"


def settings_model() -> type[BaseModel]:
    module, _, attribute = SETTINGS_MODEL.partition(":")
    model = getattr(importlib.import_module(module), attribute)
    assert issubclass(model, BaseModel)
    return model


def settings_sections() -> dict[str, type[BaseModel]]:
    """Section name -> its model (the fields of the settings model that are models)."""
    out: dict[str, type[BaseModel]] = {}
    for name, field in settings_model().model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out[name] = annotation
    return out


def product_packages() -> list[Path]:
    return sorted(
        p.parent
        for p in ROOT.glob("*/__init__.py")
        if p.parent.name not in NOT_PRODUCT and not p.parent.name.startswith(".")
    )


# ---------------------------------------------------------------------------------------------
# Markdown helpers
# ---------------------------------------------------------------------------------------------
def _esc_plain(text: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("|", "\\|").replace("*", "\\*")
    return text.replace("[", "\\[").replace("]", "\\]")


def _esc(text: str) -> str:
    """Docstring or help text for a Markdown paragraph or table cell: code spans kept."""
    pieces = re.split(r"(`[^`]+`)", rst_to_md(text))
    return "".join(
        piece.replace("|", "\\|") if piece.startswith("`") else _esc_plain(piece)
        for piece in pieces
    )


def prose(text: str) -> str:
    """Docstring or comment prose as Markdown: markup converted, ``<`` and ``>`` kept visible."""
    out, fenced = [], False
    for line in rst_to_md(text).splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            pieces = re.split(r"(`[^`]+`)", line)
            line = "".join(
                p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;")
                for p in pieces
            )
        out.append(line)
    return "\n".join(out)


def _cell(text: str) -> str:
    return _esc(" ".join(text.split()))


def rst_to_md(text: str) -> str:
    """Docstring markup to Markdown: ``code``, :role:`target` and ``::`` literal blocks."""
    text = re.sub(r":(?:\w+:)?\w+:`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and not line.strip().startswith(".."):
            out.append(line.rstrip()[:-1])
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            out += ["", "```text", textwrap.dedent("\n".join(block)).strip("\n"), "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _code(value: object) -> str:
    return "`" + str(value).replace("`", "'") + "`"


# ---------------------------------------------------------------------------------------------
# ykt commands
# ---------------------------------------------------------------------------------------------
def _param_type(param: Any) -> str:
    if getattr(param, "type", None) is not None and hasattr(param.type, "name"):
        return str(param.type.name)
    annotation = param.type_descriptor.annotation
    if typing.get_origin(annotation) in (list, tuple):
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " or ".join(str(m.value) for m in annotation)
    return _type_name(annotation)


def _param_row(param: Any) -> str:
    if is_option(param):
        names = ", ".join(_code(o) for o in [*param.opts, *param.secondary_opts])
        kind = "flag" if param.is_flag else _param_type(param)
    else:
        names = _code(param.metavar or (param.name or "").upper())
        kind = f"argument ({_param_type(param)})"
    if param.nargs == -1 or getattr(param, "multiple", False):
        kind += ", repeatable"
    default = param.default
    if callable(default) or default is None or default is False or param.required:
        shown = "required" if param.required else ""
    elif is_option(param) and param.is_flag and param.secondary_opts:
        shown = _code(param.opts[0] if default else param.secondary_opts[0])
    elif isinstance(default, Enum):
        shown = _code(default.value)
    elif default in ((), []):
        shown = ""
    else:
        shown = _code(default)
    help_text = getattr(param, "help", None) or ""
    return f"| {names} | {_cell(kind)} | {shown} | {_cell(help_text)} |"


def cli_markdown() -> str:
    root = cli_root()
    parts: list[str] = []
    for path, command in walk_commands(root):
        depth = len(path)
        if depth == 1:
            parts.append(_cell(command.help or ""))
            continue
        ctx = context(command, " ".join(path))
        parts.append(f"{'#' * min(depth, 4)} {' '.join(path)}")
        parts.append("")
        usage = " ".join(command.collect_usage_pieces(ctx))
        parts.append(f"```text\n{' '.join(path)} {usage}\n```")
        parts.append("")
        if command.help:
            help_text = inspect.cleandoc(command.help).split("\f")[0]
            parts.append(_esc(help_text))
            parts.append("")
        if is_group(command):
            parts.append("| command | what |")
            parts.append("|---|---|")
            for name, sub in subcommands(command, path[-1]):
                anchor = "-".join([*path, name]).lower()
                short = sub.get_short_help_str(limit=200)
                parts.append(f"| [`{name}`](#{anchor}) | {_cell(short)} |")
            parts.append("")
            continue
        params = [p for p in command.get_params(ctx) if p.name != "help"]
        if params:
            parts.append("| option | type | default | what |")
            parts.append("|---|---|---|---|")
            parts += [_param_row(p) for p in params]
            parts.append("")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
def _field_comments(cls: type) -> dict[str, str]:
    """``#:`` comments above each field of a class, as Sphinx reads them."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"\s+(\w+)\s*:", line)
        if match and pending:
            comments[match.group(1)] = " ".join(pending)
        pending = []
    return comments


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " or ".join(_code(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" (optional)" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if annotation is SecretStr:
        return "secret string"
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "bool": "boolean", "Path": "path"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def _constraints(field: Any) -> str:
    words = []
    for item in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None:
                words.append(f"{sign} {value}")
    return ", ".join(words)


def _default(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "(secret)"
    if value is None or value == "":
        return "empty"
    if isinstance(value, Path):
        text = str(value)
        if text.startswith(str(ROOT)):
            text = "<checkout>" + text[len(str(ROOT)) :]
        return _code(text)
    if isinstance(value, Enum):
        return _code(value.value)
    if isinstance(value, (list, tuple)):
        return _code(json.dumps(list(value), ensure_ascii=False))
    if isinstance(value, bool):
        return _code(str(value).lower())
    return _code(value)


def settings_markdown() -> str:
    model = settings_model()
    sections = settings_sections()
    parts = ["| top-level key | type | default | variable |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name not in sections:
            variable = f"YKT_{name.upper()}"
            parts.append(
                f"| `{name}` | {_type_name(field.annotation)} | {_default(field.default)} "
                f"| `{variable}` |"
            )
    parts.append("")
    for section, cls in sections.items():
        parts.append(f"## [{section}]")
        parts.append("")
        doc = vars(cls).get("__doc__")  # the section's own docstring, not an inherited one
        if doc:
            parts += [_esc(inspect.cleandoc(doc)), ""]
        comments = _field_comments(cls)
        parts.append("| key | type | default | variable | what |")
        parts.append("|---|---|---|---|---|")
        for name, field in cls.model_fields.items():
            kind = _type_name(field.annotation)
            limits = _constraints(field)
            if limits:
                kind += f" ({limits})"
            variable = f"YKT_{section.upper()}__{name.upper()}"
            parts.append(
                f"| `{name}` | {kind} | {_default(field.default)} | `{variable}` "
                f"| {_cell(comments.get(name, ''))} |"
            )
        parts.append("")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# OpenAPI
# ---------------------------------------------------------------------------------------------
def openapi_document() -> dict[str, Any]:
    """The document as ``ykt api openapi FILE`` writes it (on an empty data directory)."""
    with tempfile.TemporaryDirectory(prefix="ykt-docs-") as tmp:
        out = Path(tmp) / "openapi.json"
        saved = os.environ.get("YKT_DATA_DIR")
        os.environ["YKT_DATA_DIR"] = tmp
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                cli_root().main(["api", "openapi", str(out)], CLI_SCRIPT, standalone_mode=False)
        finally:
            if saved is None:
                del os.environ["YKT_DATA_DIR"]
            else:
                os.environ["YKT_DATA_DIR"] = saved
        document: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        return document


def _schema_name(schema: dict[str, Any] | None) -> str:
    if not schema:
        return ""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if schema.get("type") == "array" and "items" in schema:
        return f"list of {_schema_name(schema['items'])}"
    return str(schema.get("type", schema.get("title", "")))


def openapi_markdown(document: dict[str, Any]) -> str:
    info = document.get("info", {})
    parts = [
        f"**{_esc(info.get('title', ''))}** {_esc(str(info.get('version', '')))}, "
        f"OpenAPI {document.get('openapi', '')}: the whole document is "
        "[openapi.json](openapi.json).",
        "",
        _esc(info.get("description", "")),
        "",
    ]
    tags: dict[str, list[str]] = {}
    for route, methods in document.get("paths", {}).items():
        for method, op in methods.items():
            tag = (op.get("tags") or ["other"])[0]
            body = op.get("requestBody", {}).get("content", {})
            body_text = ", ".join(
                f"{kind}: {_schema_name(spec.get('schema'))}".rstrip(": ")
                for kind, spec in body.items()
            )
            params = ", ".join(
                f"{p['name']} ({p['in']})"
                for p in op.get("parameters", [])
                if p.get("in") in ("query", "path")
            )
            codes = ", ".join(sorted(op.get("responses", {})))
            summary = op.get("summary") or ""
            tags.setdefault(tag, []).append(
                f"| `{method.upper()}` | `{route}` | {_cell(summary)} | {_cell(params)} "
                f"| {_cell(body_text)} | {codes} |"
            )
    for tag, rows in tags.items():
        parts += [f"## {tag}", "", "| method | route | what | parameters | body | answers |"]
        parts += ["|---|---|---|---|---|---|", *rows, ""]
    schemas = document.get("components", {}).get("schemas", {})
    if schemas:
        parts += ["## Schemas", "", "| schema | fields |", "|---|---|"]
        for name, schema in sorted(schemas.items()):
            required = set(schema.get("required", []))
            fields = ", ".join(
                f"{key}{'' if key in required else '?'}" for key in schema.get("properties", {})
            )
            if "enum" in schema:
                fields = "one of " + ", ".join(str(v) for v in schema["enum"])
            parts.append(f"| `{name}` | {_cell(fields)} |")
        parts.append("")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Transition tables
# ---------------------------------------------------------------------------------------------
def _modules(name: str) -> Iterator[Any]:
    module = importlib.import_module(name)
    yield module
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=f"{name}."):
        yield importlib.import_module(info.name)


def _text(value: Any) -> str:
    if value is None:
        return "any"
    if isinstance(value, (set, frozenset, list, tuple)):
        return ", ".join(sorted(_text(v) for v in value)) or "none"
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def transition_tables() -> dict[str, tuple[str, list[Any]]]:
    """``NAME -> (module, rows)`` for every ``*_TRANSITIONS`` table of the lifecycle module(s)."""
    tables: dict[str, tuple[str, list[Any]]] = {}
    for module in _modules(LIFECYCLE_MODULE):
        for name, value in vars(module).items():
            if not name.endswith("_TRANSITIONS") or name in tables:
                continue
            rows = list(value.values()) if isinstance(value, dict) else list(value)
            if rows and all(hasattr(r, "from_state") and hasattr(r, "to_state") for r in rows):
                tables[name] = (module.__name__, rows)
    return tables


def transitions_markdown() -> str:
    parts = []
    for name, (module, rows) in transition_tables().items():
        columns = [c for c in ("roles", "channels", "kinds") if any(hasattr(r, c) for r in rows)]
        if "kinds" in columns and all(getattr(r, "kinds", None) is None for r in rows):
            columns.remove("kinds")
        parts += [f"## {name}", "", f"`{module}.{name}`: {len(rows)} transitions.", ""]
        parts.append("| from | event | to | " + " | ".join(columns) + " |")
        parts.append("|---|---|---|" + "---|" * len(columns))
        for row in rows:
            event = getattr(row, "event", "")
            cells = [_text(row.from_state), _text(event), _text(row.to_state)]
            cells += [_text(getattr(row, c, None)) for c in columns]
            parts.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        parts.append("")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# CHOICE notes and module docstrings
# ---------------------------------------------------------------------------------------------
def _paragraphs_with_choice(text: str) -> Iterator[tuple[int, str]]:
    """(line offset, paragraph) for every paragraph or bullet of ``text`` naming CHOICE."""
    lines = text.splitlines()
    start = 0
    for i in range(len(lines) + 1):
        end_here = i == len(lines) or not lines[i].strip()
        bullet_here = i < len(lines) and re.match(r"\s*[*-] ", lines[i]) is not None
        if (end_here or bullet_here) and i > start:
            block = "\n".join(lines[start:i])
            if "CHOICE" in block:
                offset = start + next(n for n, t in enumerate(lines[start:i]) if "CHOICE" in t)
                yield offset, textwrap.dedent(block).strip()
        if end_here:
            start = i + 1
        elif bullet_here:
            start = i


def choices(path: Path) -> Iterator[tuple[int, str]]:
    """(line, note) for every CHOICE note of a Python file: its comment block or paragraph."""
    source = path.read_text(encoding="utf-8")
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    comment_block: list[tuple[int, str]] = []

    def flush() -> Iterator[tuple[int, str]]:
        if comment_block:
            text = "\n".join(t for _, t in comment_block)
            for offset, note in _paragraphs_with_choice(text):
                yield comment_block[0][0] + offset, note
            comment_block.clear()

    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            if comment_block and line != comment_block[-1][0] + 1:
                yield from flush()
            text = re.sub(r"^#:?\s?", "", tok.string)
            text = re.sub(r"^-{3,}\s*(.*?)\s*-{3,}$", r"**\1**", text)  # a banner line
            comment_block.append((line, text))
        elif tok.type in (tokenize.NL, tokenize.NEWLINE):
            continue
        else:
            yield from flush()
            if tok.type == tokenize.STRING and "CHOICE" in tok.string:
                body = ast.literal_eval(tok.string) if not tok.string.startswith("f") else ""
                if isinstance(body, str):
                    first, _, rest = body.partition("\n")
                    body = first + "\n" + textwrap.dedent(rest)
                    for offset, note in _paragraphs_with_choice(body):
                        yield tok.start[0] + offset, note
    yield from flush()


def choices_markdown() -> str:
    parts = []
    count = 0
    for package in product_packages():
        for path in sorted(package.rglob("*.py")):
            notes = list(choices(path))
            if not notes:
                continue
            rel = path.relative_to(ROOT).as_posix()
            parts += [f"## `{rel}`", ""]
            for line, note in notes:
                count += 1
                body = prose(note).replace("\n", "\n> ")
                parts += [f"`{rel}:{line}`", "", f"> {body}", ""]
    for page in sorted((ROOT / "docs" / "design").glob("*.md")):
        # design notes moved out of module docstrings keep their CHOICE paragraphs
        text = page.read_text(encoding="utf-8")
        if "<!-- ykt:" in text:
            text = re.sub(r"<!-- ykt:[^>]*-->", "", text)
        notes = list(_paragraphs_with_choice(text))
        if not notes:
            continue
        rel = page.relative_to(ROOT).as_posix()
        parts += [f"## `{rel}`", ""]
        for line, note in notes:
            count += 1
            body = note.replace("\n", "\n> ")
            parts += [f"`{rel}:{line + 1}`", "", f"> {body}", ""]
    return f"{count} notes.\n\n" + "\n".join(parts)


def docstring_markdown(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"no module {module} (named in a ykt:docstring marker)")
    origin = Path(spec.origin)
    doc = ast.get_docstring(ast.parse(origin.read_text(encoding="utf-8")))
    if not doc:
        raise RuntimeError(f"module {module} has no docstring")
    rel = origin.relative_to(ROOT).as_posix()
    return f"## {module}\n\n*From the docstring of `{rel}`.*\n\n{prose(doc)}\n"


# ---------------------------------------------------------------------------------------------
# The mkdocs hook
# ---------------------------------------------------------------------------------------------
_cache: dict[str, Any] = {}


def _generated(kind: str, argument: str | None) -> str:
    if kind == "cli":
        return cli_markdown()
    if kind == "settings":
        return settings_markdown()
    if kind == "openapi":
        return openapi_markdown(_cache["openapi"])
    if kind == "transitions":
        return transitions_markdown()
    if kind == "choices":
        return choices_markdown()
    if kind == "docstring" and argument:
        return docstring_markdown(argument)
    raise ValueError(f"unknown docs marker ykt:{kind}")


def on_files(files: Any, config: Any) -> Any:
    """Publish the OpenAPI document beside its reference page."""
    from mkdocs.structure.files import File

    _cache["openapi"] = openapi_document()
    content = json.dumps(_cache["openapi"], indent=1, ensure_ascii=False)
    (name,) = GENERATED_FILES
    files.append(File.generated(config, name, content=content))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return MARKER.sub(lambda m: _generated(m.group(1), m.group(2)), markdown)
