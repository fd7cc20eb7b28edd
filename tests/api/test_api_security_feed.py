"""Issue 15 item 8, replayed: the feed client accepted bytes after the trailer, blank lines and
CRLF, had no freshness check, and trusted a key fetched from the feed's own server silently.
Each is refused now, by :func:`verify_feed` and through :meth:`YktClient.status_feed`."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from api_helpers import ApiEnv

from api.client import UnpinnedFeedKeyWarning, YktClient, _lines
from issuance.errors import IntegrityError
from issuance.models import utcnow
from issuance.services import status_feed

pytestmark = pytest.mark.softhsm


def _feed(env: ApiEnv, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, bytes]:
    monkeypatch.setattr(status_feed, "SETTLE", timedelta(0))
    card = env.new_card()
    env.client.post(f"/v1/cards/{card.card_number}/suspend", json={"reason": "x"},
                    headers=env.auth("fund_supervisor"))  # fmt: skip
    r = env.client.get("/v1/status-feed", headers=env.auth("bank"))
    assert r.status_code == 200
    pem = env.client.get("/v1/status-feed/public-key").json()["public_key_pem"].encode()
    return r.content, pem


def _client(body: bytes) -> YktClient:
    """A client whose server answers ``body`` as the feed (what a tampering proxy sends)."""
    return YktClient(
        httpx.Client(
            base_url="http://feed.test",
            transport=httpx.MockTransport(lambda _r: httpx.Response(200, content=body)),
        )
    )


def test_a_lenient_feed_is_refused(api_env: ApiEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    good, pem = _feed(api_env, monkeypatch)
    assert status_feed.verify_feed(_lines([good]), pem).count == 1
    assert _client(good).status_feed(public_key_pem=pem).count == 1
    lines = good.splitlines(keepends=True)
    bad = {
        "bytes after the trailer": good + b'{"type":"entry"}\n',
        "junk after the trailer": good + b"junk",
        "a blank line": lines[0] + b"\n" + b"".join(lines[1:]),
        "CRLF": good.replace(b"\n", b"\r\n"),
        "no final LF": good[:-1],
    }
    for body in bad.values():
        with pytest.raises(IntegrityError):
            status_feed.verify_feed(_lines([body]), pem)
        with pytest.raises(IntegrityError):
            _client(body).status_feed(public_key_pem=pem)


def test_a_stale_feed_is_refused(api_env: ApiEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    good, pem = _feed(api_env, monkeypatch)
    later = utcnow() + timedelta(hours=2)
    with pytest.raises(IntegrityError, match="stale"):
        status_feed.verify_feed(_lines([good]), pem, max_age=timedelta(hours=1), now=later)
    assert status_feed.verify_feed(_lines([good]), pem, max_age=timedelta(hours=3), now=later)
    with pytest.raises(IntegrityError, match="stale"):  # the client's own default: one hour
        monkeypatch.setattr(status_feed, "utcnow", lambda: later)
        _client(good).status_feed(public_key_pem=pem)


def test_an_unpinned_key_is_said_loudly(
    api_env: ApiEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    good, pem = _feed(api_env, monkeypatch)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/public-key"):
            return httpx.Response(200, json={"public_key_pem": pem.decode()})
        return httpx.Response(200, content=good)

    client = YktClient(httpx.Client(base_url="http://feed.test",
                                    transport=httpx.MockTransport(answer)))  # fmt: skip
    with pytest.warns(UnpinnedFeedKeyWarning, match="no pinned public key"):
        assert client.status_feed().count == 1
    assert "no pinned public key" in caplog.text
