"""Driving the ``ykt`` sub-commands in tests as authenticated staff (importable:
``from cli_helpers import Cli``). Every ``--as USER`` invocation gets that user's password in
``$YKT_STAFF_PASSWORD``, as an operator's shell would."""

from __future__ import annotations

from typing import Any

from click.testing import Result
from typer.testing import CliRunner

from yikatong.cli import db as cli_db

runner = CliRunner()
ADMIN = "admin0"


class Cli:
    def __init__(self) -> None:
        self.passwords: dict[str, str] = {}

    def invoke(
        self, app: Any, *args: str, input: str | None = None, env: dict[str, str] | None = None,
        catch: bool = True,
    ) -> Result:  # fmt: skip
        env = dict(env or {})
        if "--as" in args:
            user = args[args.index("--as") + 1]
            if user in self.passwords:
                env.setdefault("YKT_STAFF_PASSWORD", self.passwords[user])
        return runner.invoke(app, list(args), input=input, env=env, catch_exceptions=catch)

    def ok(self, app: Any, *args: str, **kw: Any) -> str:
        res = self.invoke(app, *args, catch=False, **kw)
        assert res.exit_code == 0, res.output
        return res.output

    def bootstrap(self) -> str:
        """The first user (admin0): created by the system, its password generated and shown."""
        out = self.ok(cli_db.app, "create-staff", ADMIN, "--role", "admin")
        self.passwords[ADMIN] = out.split("give it to them): ")[1].split()[0]
        return out

    def staff(self, users: dict[str, str]) -> None:
        """Create users (name -> role) as admin0, each with a password of their own."""
        if ADMIN not in self.passwords:
            self.bootstrap()
        for name, role in users.items():
            pw = f"pw-of-{name}-secret"
            self.ok(cli_db.app, "create-staff", name, "--role", role, "--password-stdin",
                    "--as", ADMIN, input=pw + "\n")  # fmt: skip
            self.passwords[name] = pw
