"""The verification hot path (:mod:`api.hotpath`) is the FastAPI routes, proved on generated
call sequences (issue 13: a fast path only beside its reference, with a Hypothesis test proving
them equal).

Hypothesis draws sequences of challenge and verification calls - callers with and without the
``verify``, ``holder:read``, ``holder:photo`` and ``holder:full_id`` scopes, no or a bad token,
genuine and wrong cryptograms, replays, another card's number, every application, holder and
photo asked for, unknown fields, missing fields, bodies that are not JSON, other content types,
bodies beyond the hot path's own cap - and each
sequence runs twice on the same app and database: every call through FastAPI (hot path off),
then through the hot path (cold token cache). The answers (status and body, less the fresh
challenge's own values), the call-log records and the audit events must be the same.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardspec.cardops import internal_authenticate, read_card_public
from cardspec.reader import InProcessReader
from issuance.models import ApiCall, AuditEvent, Card

pytestmark = pytest.mark.softhsm

#: agencies (hospital: every verification scope; selfservice: ``verify`` alone), staff (a
#: supervisor sees full citizen ids; an auditor has no ``verify``), no token, a bad token
WHO = ("hospital", "selfservice", "bank", "supervisor", "auditor", "none", "bad")
APPLICATIONS = ("medical", "social_security", "pension", "financial", "nonsense")
BODIES = ("genuine", "replay", "wrong_response", "other_number", "extra_field", "missing_field",
          "not_json", "text_plain", "too_big", "upper_id", "bad_hex")  # fmt: skip

call = st.one_of(
    st.tuples(st.just("challenge"), st.sampled_from(WHO)),
    st.tuples(
        st.just("verify"), st.sampled_from(WHO), st.sampled_from(BODIES),
        st.sampled_from(APPLICATIONS), st.booleans(), st.booleans(),
    ),
)  # fmt: skip


def _headers(env: ApiEnv, who: str) -> dict[str, str]:
    if who == "none":
        return {}
    if who == "bad":
        return {"Authorization": "Bearer not-a-token"}
    return env.auth(who)


def _run(env: ApiEnv, chip: InProcessReader, calls: list[tuple[Any, ...]]) -> list[Any]:
    http = TestClient(env.client.app, raise_server_exceptions=False)
    out: list[Any] = []
    last: dict[str, Any] | None = None
    hospital = env.auth("hospital")
    for c in calls:
        if c[0] == "challenge":
            r = http.post("/v1/verifications/challenge", headers=_headers(env, c[1]))
            body = r.json()
            for k in ("challenge_id", "challenge", "apdu", "expires_at"):
                body.pop(k, None)
            out.append((r.status_code, body))
            continue
        _, who, kind, application, holder, photo = c
        if kind == "replay" and last is not None:
            payload = dict(last)
        else:  # a fresh challenge of the hospital, answered by the chip
            ch = http.post("/v1/verifications/challenge", headers=hospital).json()
            pub = read_card_public(chip)
            challenge = bytes.fromhex(ch["challenge"])
            resp = internal_authenticate(chip, challenge[:8], challenge[8:])
            chip.disconnect()
            payload = {"challenge_id": ch["challenge_id"], "response": resp.hex(),
                       "card_identification_code": pub.card_identification_code,
                       "card_number": pub.card_number, "application": application,
                       "include_holder": holder, "include_photo": photo}  # fmt: skip
            last = dict(payload)
        headers = {**_headers(env, who), "Content-Type": "application/json"}
        if kind == "wrong_response":
            payload["response"] = "00" * (len(payload["response"]) // 2)
        elif kind == "other_number":
            payload["card_number"] = "B00000013" if payload["card_number"] != "B00000013" else (
                "B00000021")  # fmt: skip
        elif kind == "extra_field":
            payload["x"] = 1
        elif kind == "missing_field":
            payload.pop("response")
        elif kind == "upper_id":
            payload["challenge_id"] = payload["challenge_id"].upper()
        elif kind == "bad_hex":
            payload["response"] = "zz" + payload["response"][2:]
        content = json.dumps(payload).encode()
        if kind == "not_json":
            content = content[:-1]
        elif kind == "text_plain":
            headers["Content-Type"] = "text/plain"
        elif kind == "too_big":
            content = json.dumps({**payload, "pad": " " * 5000}).encode()
        r = http.post("/v1/verifications", content=content, headers=headers)
        out.append((r.status_code, r.json()))
    return out


def _records(env: ApiEnv, since: tuple[int, int]) -> tuple[list[Any], list[Any]]:
    with env.session() as s:  # type: ignore[attr-defined]
        calls = s.execute(
            sa.select(ApiCall.method, ApiCall.route, ApiCall.status, ApiCall.error_code,
                      ApiCall.caller).where(ApiCall.id > since[0]).order_by(ApiCall.id)
        ).all()  # fmt: skip
        events = s.execute(
            sa.select(AuditEvent.actor_name, AuditEvent.action, AuditEvent.entity_type,
                      AuditEvent.after, AuditEvent.reason)
            .where(AuditEvent.id > since[1]).order_by(AuditEvent.id)
        ).all()  # fmt: skip
        # what each path counted against the callers is forgotten before the other runs: a
        # hold (429) after the first path's failures would differ for the second one
        s.execute(sa.text("DELETE FROM api_rate_counters"))
    return [tuple(c) for c in calls], [tuple(e) for e in events]


def _marks(env: ApiEnv) -> tuple[int, int]:
    with env.session() as s:  # type: ignore[attr-defined]
        return (
            s.scalar(sa.select(sa.func.coalesce(sa.func.max(ApiCall.id), 0))) or 0,
            s.scalar(sa.select(sa.func.coalesce(sa.func.max(AuditEvent.id), 0))) or 0,
        )


@settings(
    max_examples=15, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(calls=st.lists(call, min_size=1, max_size=4))
def test_hot_path_equals_the_routes_on_generated_calls(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader], calls: list[tuple[Any, ...]]
) -> None:
    _card, chip = card_and_chip
    app = api_env.client.app
    seen = []
    for enabled in (False, True):
        app.hot.enabled = enabled
        app.state.auth.forget()
        mark = _marks(api_env)
        answers = _run(api_env, chip, calls)
        seen.append((answers, *_records(api_env, mark)))
    app.hot.enabled = True
    (fast_answers, fast_calls, fast_events) = seen[1]
    assert fast_answers == seen[0][0]
    assert fast_calls == seen[0][1]
    assert fast_events == seen[0][2]
    # the sequence did what it says: one answer per call, every call recorded somewhere
    assert len(fast_answers) == len(calls)
    assert len(fast_calls) + len(fast_events) >= len(calls)
