"""The signed status feed: full list, deltas, signature check, tampering detected."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import ApiEnv
from fastapi.testclient import TestClient

from api.client import UnpinnedFeedKeyWarning, YktClient
from hsm.service import verify_signature
from issuance.errors import IntegrityError
from issuance.services import status_feed

pytestmark = pytest.mark.softhsm


def test_full_and_delta_feeds_are_signed_and_follow_the_lifecycle(
    api_env: ApiEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_feed, "SETTLE", status_feed.timedelta(0))
    c = YktClient(TestClient(api_env.client.app, headers=api_env.auth("hospital")))
    cards = [api_env.new_card() for _ in range(3)]
    pem = c.public_key_pem()
    assert c.http.get("/v1/status-feed/public-key").json()["key_id"]
    with pytest.warns(UnpinnedFeedKeyWarning):  # fetched from the same server: said loudly
        base = c.status_feed()
    assert base.kind == "full" and base.count == 0
    # lose one, suspend one
    clerk, fund = api_env.auth("clerk"), api_env.auth("fund_supervisor")
    n0, n1 = cards[0].card_number, cards[1].card_number
    assert api_env.client.post(f"/v1/cards/{n0}/loss-reports", json={"channel": "phone"},
                               headers=clerk).status_code == 201  # fmt: skip
    assert api_env.client.post(f"/v1/cards/{n1}/suspend", json={"reason": "x"},
                               headers=fund).status_code == 200  # fmt: skip
    seen: list[dict[str, Any]] = []
    full = c.status_feed(on_entry=seen.append, public_key_pem=pem)
    assert full.count == 2 and full.refused == 2
    assert {(e["card_number"], e["reason"]) for e in seen} == {(n0, "lost"), (n1, "suspended")}
    # delta after un-reporting: the card is acceptable again
    r = api_env.client.post(
        f"/v1/cards/{n0}/unreport", json={"channel": "phone", "identity_checked": True},
        headers=clerk,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    delta_seen: list[dict[str, Any]] = []
    delta = c.status_feed(since=full.sequence, on_entry=delta_seen.append, public_key_pem=pem)
    assert delta.kind == "delta" and delta.since == full.sequence
    assert [(e["card_number"], e["refused"]) for e in delta_seen] == [(n0, False)]
    assert delta.sequence > full.sequence
    # nothing new since then
    assert c.status_feed(since=delta.sequence, public_key_pem=pem).count == 0
    # ahead of the feed: a clear 422 naming the field
    r = c.http.get("/v1/status-feed", params={"since": delta.sequence + 100})
    assert r.status_code == 422 and r.json()["error"]["field"] == "since"


def test_tampered_feed_is_detected(api_env: ApiEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_feed, "SETTLE", status_feed.timedelta(0))
    card = api_env.new_card()
    api_env.client.post(
        f"/v1/cards/{card.card_number}/suspend", json={"reason": "x"},
        headers=api_env.auth("fund_supervisor"),
    )  # fmt: skip
    r = api_env.client.get("/v1/status-feed", headers=api_env.auth("bank"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = r.content.splitlines(keepends=True)
    assert len(lines) == 3
    pem = api_env.client.get("/v1/status-feed/public-key").json()["public_key_pem"].encode()
    assert status_feed.verify_feed(lines, pem).count == 1
    trailer = lines[-1]
    import json

    t = json.loads(trailer)
    verify_signature(
        pem,
        status_feed.signed_message(t["count"], t["sequence"], t["sha256"]),
        __import__("base64").b64decode(t["signature"]),
    )
    forged = lines[1].replace(b'"refused":true', b'"refused":false')
    with pytest.raises(IntegrityError):
        status_feed.verify_feed([lines[0], forged, lines[2]], pem)
    with pytest.raises(IntegrityError):
        status_feed.verify_feed([lines[0], lines[2]], pem)  # an entry removed
    with pytest.raises(IntegrityError):
        status_feed.verify_feed(lines[:2], pem)  # truncated


def test_feed_needs_its_scope(api_env: ApiEnv) -> None:
    r = api_env.client.get("/v1/status-feed", headers=api_env.auth("reviewer"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
