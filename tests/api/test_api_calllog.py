"""The call log: every API call recorded with the caller's identity (api_calls), failures and
token grants included; bodies and concrete paths never; a verification recorded once, by its
card.verified audit event. On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from api.calllog import CALLS, CallRecord
from api.client import YktClient, verify_card_in_reader
from cardspec.reader import InProcessReader
from issuance.models import ApiCall, AuditEvent, Card

pytestmark = pytest.mark.softhsm


def calls(env: ApiEnv) -> list[ApiCall]:
    with env.session() as s:  # type: ignore[attr-defined]
        return list(s.scalars(sa.select(ApiCall).order_by(ApiCall.id)).all())


def test_every_call_is_recorded_with_its_caller(api_env: ApiEnv) -> None:
    client = api_env.client
    before = len(calls(api_env))
    cid, secret = api_env.clients["hospital"]
    # token grants: a good one and a wrong secret
    assert client.post("/v1/oauth/token", data={"grant_type": "client_credentials",
                       "client_id": cid, "client_secret": secret}).status_code == 200  # fmt: skip
    assert client.post("/v1/oauth/token", data={"grant_type": "client_credentials",
                       "client_id": cid, "client_secret": "wrong"}).status_code == 401  # fmt: skip
    # an unknown card (404), an unknown path (404), a malformed body (422), out of scope (403)
    hospital = api_env.auth("hospital")
    assert client.get("/v1/cards/X00000019", headers=api_env.auth("clerk")).status_code == 404
    assert client.get("/v1/no/such/thing/330106198503140011").status_code == 404
    bad = client.post("/v1/verifications", json={"challenge_id": "zz"}, headers=hospital)
    assert bad.status_code == 422
    denied = client.post(
        "/v1/cards/X00000019/loss-reports", json={"channel": "phone"}, headers=hospital
    )
    assert denied.status_code == 403
    assert client.post("/v1/verifications/challenge").status_code == 401  # no token
    assert client.post("/v1/verifications/challenge", headers=hospital).status_code == 200
    # liveness and the benchmark's hello-world are not logged
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/hello").status_code == 200

    got = calls(api_env)[before:]
    seen = [(c.method, c.route, c.status, c.error_code, c.caller, c.client_id) for c in got]
    agency = next(c.caller for c in got if c.client_id == cid and c.caller != "anonymous")
    clerk = api_env.actors["clerk"].username
    assert seen == [
        ("POST", "/v1/oauth/token", 200, None, "anonymous", cid),
        ("POST", "/v1/oauth/token", 401, "invalid_client", "anonymous", cid),
        ("GET", "/v1/cards/{card_number}", 404, "not_found", clerk, seen[2][5]),
        ("GET", "(no route)", 404, "not_found", "anonymous", None),
        ("POST", "/v1/verifications", 422, "validation_error", agency, cid),
        ("POST", "/v1/cards/{card_number}/loss-reports", 403, "forbidden", agency, cid),
        ("POST", "/v1/verifications/challenge", 401, "unauthorized", "anonymous", None),
        ("POST", "/v1/verifications/challenge", 200, None, agency, cid),
    ]
    assert agency.startswith("agency:")
    for c in got:  # never a card number, an ID number or a body
        assert "X00000019" not in c.route and "330106" not in c.route
        assert c.client_ip == "testclient" and c.duration_us >= 0 and c.at is not None
    staff_call = got[2]
    assert staff_call.credential_id is not None


def test_a_verification_is_recorded_once_by_its_audit_event(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader]
) -> None:
    _card, chip = card_and_chip
    hospital = YktClient(TestClient(api_env.client.app, headers=api_env.auth("hospital")))
    before = len(calls(api_env))
    assert verify_card_in_reader(hospital, chip)["valid"] is True
    got = [(c.method, c.route, c.status) for c in calls(api_env)[before:]]
    # the challenge is a logged call; the verification itself is its card.verified event
    assert got == [("POST", "/v1/verifications/challenge", 200)]
    with api_env.session() as s:  # type: ignore[attr-defined]
        verified = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "card.verified"))
        assert len(verified.all()) == 1


@settings(max_examples=200, deadline=None)
@given(
    values=st.tuples(
        st.datetimes(),
        st.one_of(st.none(), st.integers()),
        st.text(),
        st.none() | st.text(),
        st.none() | st.text(),
        st.text(),
        st.text(),
        st.integers(),
        st.none() | st.text(),
        st.integers(),
    )
)
def test_a_records_values_are_its_columns_in_order(values: tuple[Any, ...]) -> None:
    """:meth:`CallRecord.values` (what the PostgreSQL path writes) is the record's fields in
    the column order of ``CALLS``, as a row of them by name would be."""
    rec = CallRecord(*values)
    assert rec.values() == tuple(getattr(rec, c) for c in CALLS.columns)
    assert rec.values() == values
