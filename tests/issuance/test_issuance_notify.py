"""The notification gateway chosen by ``[notify] backend``: a real SMTP conversation with a
local aiosmtpd server, a real HTTP webhook on a local server, failures counted and retried."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from typer.testing import CliRunner

from devstack.dbserver import free_port
from issuance import services
from issuance.errors import ConfigError
from issuance.models import OutboxMessage
from yikatong.cli import outbox as cli_outbox
from yikatong.settings import get_settings, load_settings
from yikatong.wiring import sink_from_settings

CID = "330106199001011234"


class Inbox:
    """aiosmtpd handler: keeps what it receives; refuses recipients starting with 'refuse'."""

    def __init__(self) -> None:
        self.mails: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.startswith("refuse"):
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.mails.append((str(envelope.mail_from), list(envelope.rcpt_tos),
                           bytes(envelope.content)))  # fmt: skip
        return "250 Message accepted"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], dict[str, Any]]]] = []
    status: ClassVar[int] = 202

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), json.loads(body)))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[type[_Hook], str]]:
    hook = type("Hook", (_Hook,), {"received": [], "status": 202})
    server = ThreadingHTTPServer(("127.0.0.1", 0), hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook, f"http://127.0.0.1:{server.server_address[1]}/sms"
    finally:
        server.shutdown()
        server.server_close()


def _queue(session, *recipients: str) -> list[OutboxMessage]:
    msgs = [
        services.enqueue(session, "card.ready_for_collection", recipient=r,
                         payload={"card_number": "A0000001X", "citizen_id": CID, "name": "张三"})
        for r in recipients
    ]  # fmt: skip
    session.flush()
    return msgs


def _settings(tmp_path: Path, **notify: str):
    env = {"YKT_DATA_DIR": str(tmp_path)}
    env |= {f"YKT_NOTIFY__{k.upper()}": v for k, v in notify.items()}
    return load_settings(environ=env)


def test_smtp_gateway_delivers_and_counts_failures(session, tmp_path, smtp_server):
    inbox, port = smtp_server
    cfg = _settings(tmp_path, backend="smtp", smtp_host="127.0.0.1", smtp_port=str(port),
                    smtp_from="cards@ykt.example", smtp_to="{recipient}@sms.example")  # fmt: skip
    sink = sink_from_settings(cfg)
    assert isinstance(sink, services.SmtpSink)
    good, bad = _queue(session, "13800138000", "refuse-13900000000")
    try:
        sent = services.drain_outbox(session, sink)
    finally:
        sink.close()
    assert sent == 1 and good.sent_at is not None and bad.sent_at is None
    assert bad.attempts == 1 and "refused the recipient" in bad.last_error
    assert "13900000000" not in bad.last_error  # no phone number in the stored error
    (frm, rcpts, raw), = inbox.mails  # fmt: skip
    assert frm == "cards@ykt.example" and rcpts == ["13800138000@sms.example"]
    mail = message_from_bytes(raw)
    assert mail["Subject"] == "card.ready_for_collection"
    assert mail["X-Yikatong-Outbox-Id"] == str(good.id)
    body = mail.get_payload(decode=True).decode()
    assert "A0000001X" in body and CID not in body  # masked when queued
    # the relay is down: the message stays pending, counted, and goes out once it is back
    late = _queue(session, "13700000000")[0]
    down = services.SmtpSink(_settings(tmp_path, smtp_host="127.0.0.1",
                                       smtp_port=str(port + 1)).notify)  # fmt: skip
    assert services.drain_outbox(session, down) == 0
    assert late.attempts == 1 and "SMTP relay" in late.last_error
    assert services.drain_outbox(session, sink) == 1 and late.sent_at is not None
    sink.close()


def test_http_gateway_posts_json_with_token(session, tmp_path, webhook):
    hook, url = webhook
    cfg = _settings(tmp_path, backend="http", http_url=url, http_token="s3cret-token")
    sink = sink_from_settings(cfg)
    assert isinstance(sink, services.HttpSink)
    (msg,) = _queue(session, "13800138000")
    try:
        assert services.drain_outbox(session, sink) == 1
        ((headers, body),) = hook.received
        assert headers["Authorization"] == "Bearer s3cret-token"
        assert headers["Idempotency-Key"] == f"outbox-{msg.id}"
        assert body["topic"] == "card.ready_for_collection" and body["recipient"] == "13800138000"
        assert body["payload"]["card_number"] == "A0000001X"
        assert CID not in json.dumps(body, ensure_ascii=False)
        hook.status = 503  # the gateway is overloaded: counted, retried later
        (again,) = _queue(session, "13800138001")
        assert services.drain_outbox(session, sink) == 0
        assert again.attempts == 1 and again.last_error == "gateway answered HTTP 503"
        hook.status = 200
        assert services.drain_outbox(session, sink) == 1 and again.attempts == 2
    finally:
        sink.close()


def test_backend_by_configuration(tmp_path):
    assert isinstance(sink_from_settings(_settings(tmp_path)), services.LogSink)
    with pytest.raises(ConfigError, match="http_url"):
        sink_from_settings(_settings(tmp_path, backend="http"))
    with pytest.raises(ConfigError, match=r"notify\.backend"):
        _settings(tmp_path, backend="pigeon")


def test_outbox_drain_command_uses_the_configured_gateway(tmp_path, monkeypatch, webhook):
    from yikatong.cli import db as cli_db

    hook, url = webhook
    monkeypatch.setenv("YKT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("YKT_NOTIFY__BACKEND", "http")
    monkeypatch.setenv("YKT_NOTIFY__HTTP_URL", url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        assert runner.invoke(cli_db.app, ["upgrade"]).exit_code == 0
        with cli_db.session_scope() as s:
            _queue(s, "13800138000", "13800138001")
        res = runner.invoke(cli_outbox.app, ["drain"], catch_exceptions=False)
        assert "2 notifications sent, 0 pending" in res.output
        assert len(hook.received) == 2
        with cli_db.session_scope() as s:
            assert s.scalar(sa.select(sa.func.count()).where(OutboxMessage.sent_at.is_(None))) == 0
    finally:
        get_settings.cache_clear()
