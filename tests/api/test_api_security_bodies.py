"""Issue 15 item 5 (and the malformed-JSON answer of item 9), replayed against the app: an
anonymous body is refused before it is read or parsed; bodies past their route's cap answer
413 in the project's error shape (declared or streamed); deeply nested JSON answers 400."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator

import pytest
from api_helpers import ApiEnv

from api.gate import body_cap, json_depth

pytestmark = pytest.mark.softhsm

#: the tester's body: about 10 MB of 900,000 keys
BIG = json.dumps({f"k{i}": i for i in range(900_000)}).encode()


def test_an_anonymous_body_is_refused_before_it_is_read(api_env: ApiEnv) -> None:
    c = api_env.client
    tracemalloc.start()
    try:
        for path in ("/v1/applications", "/v1/cards/A00000019/loss-reports", "/v1/verifications"):
            r = c.post(path, content=BIG, headers={"Content-Type": "application/json"})
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the client side holds BIG once; the server never parsed it into 900,000 objects
    assert peak < 3 * len(BIG), peak


def test_bodies_past_the_route_cap_answer_413(api_env: ApiEnv) -> None:
    c, clerk = api_env.client, api_env.auth("clerk")
    cap = api_env.settings.api.body_limits["default"]
    body = b'{"reason": "' + b"x" * cap + b'"}'
    r = c.post("/v1/cards/A00000019/suspend", content=body,
               headers={**clerk, "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield b'{"reason": "'
        for _ in range(cap // 4096 + 2):
            yield b"y" * 4096
        yield b'"}'

    r = c.post("/v1/cards/A00000019/suspend", content=chunks(),
               headers={**clerk, "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
    # the verification routes (hot path first) obey the same cap
    r = c.post("/v1/verifications", content=body,
               headers={**api_env.auth("hospital"), "Content-Type": "application/json"},
               )  # fmt: skip
    assert r.status_code == 413, r.text
    # a larger route keeps its larger cap
    assert body_cap(api_env.settings.api.body_limits, "/v1/applications") > 20_000_000
    assert body_cap(api_env.settings.api.body_limits, "/v1/applications/7/photo") > 20_000_000
    assert body_cap(api_env.settings.api.body_limits, "/v1/applications/7/review") == cap


def test_deep_json_and_malformed_json(api_env: ApiEnv) -> None:
    c, clerk = api_env.client, api_env.auth("clerk")
    deep = b'{"reason": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert json_depth(deep) == 5001
    assert json_depth(b'{"a": "[[[[[[", "b": [1, {"c": 2}]}') == 3  # strings do not count
    r = c.post("/v1/cards/A00000019/suspend", content=deep,
               headers={**clerk, "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400, r.text
    assert "deeper" in r.json()["error"]["message"]
    r = c.post("/v1/cards/A00000019/suspend", content=b'{"reason": "x", oops}',
               headers={**clerk, "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == "body" and "malformed JSON at offset 16" in err["message"]
