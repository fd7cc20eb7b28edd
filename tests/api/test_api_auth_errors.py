"""Authentication, scopes, rate limiting, the error shape, and domain rules over HTTP."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv

from api.auth import SOURCE_FACTOR
from issuance.models import ApiCredential, ApiToken, AuditEvent
from issuance.services.credentials import check_secret

pytestmark = pytest.mark.softhsm


def test_secrets_and_tokens_are_stored_hashed(api_env: ApiEnv) -> None:
    cid, secret = api_env.clients["hospital"]
    with api_env.session() as s:  # type: ignore[attr-defined]
        cred = s.scalars(sa.select(ApiCredential).where(ApiCredential.client_id == cid)).one()
        assert cred.secret_hash is not None and secret not in cred.secret_hash
        assert cred.secret_hash.startswith("scrypt$") and check_secret(secret, cred.secret_hash)
        assert not check_secret(secret + "x", cred.secret_hash)
        hashes = set(s.scalars(sa.select(ApiToken.token_hash)))
    assert api_env.tokens["hospital"] not in hashes and len(hashes) >= 3


def test_token_endpoint_basic_auth_scopes_and_failures(api_env: ApiEnv) -> None:
    cid, secret = api_env.clients["hospital"]
    c = api_env.client
    r = c.post("/v1/oauth/token", data={"grant_type": "client_credentials", "scope": "verify"},
               auth=(cid, secret))  # fmt: skip
    assert r.status_code == 200 and r.json()["scope"] == "verify"
    narrow = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert c.post("/v1/verifications/challenge", headers=narrow).status_code == 200
    assert c.get("/v1/status-feed", headers=narrow).status_code == 403
    r = c.post("/v1/oauth/token", data={"grant_type": "client_credentials",
                                         "scope": "audit:read"}, auth=(cid, secret))  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_scope"  # RFC 6749
    r = c.post("/v1/oauth/token", data={"grant_type": "password"}, auth=(cid, secret))
    assert r.status_code == 400 and r.json()["error"]["field"] == "grant_type"
    r = c.post("/v1/oauth/token", data={"grant_type": "client_credentials"}, auth=(cid, "bad"))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_client"


def test_missing_bad_tokens_and_rate_limit(api_env: ApiEnv) -> None:
    c = api_env.client
    r = c.post("/v1/verifications/challenge")
    assert r.status_code == 401 and r.json() == {
        "error": {"code": "unauthorized", "message": "a bearer token is required"}
    }
    assert r.headers["www-authenticate"].startswith("Bearer")
    # a source address may fail SOURCE_FACTOR times the per-caller limit (shared addresses)
    limit = api_env.settings.api.auth_failures_per_minute * SOURCE_FACTOR
    codes = [
        c.post(
            "/v1/verifications/challenge", headers={"Authorization": f"Bearer nope{i}"}
        ).status_code
        for i in range(limit + 2)
    ]
    assert codes[: limit - 1].count(401) == limit - 1
    assert codes[-1] == 429
    # a good token from the same address is limited too while the window lasts
    r = c.get("/v1/cards/A00000019", headers={"Authorization": "Bearer x"})
    assert r.status_code == 429 and "retry-after" in r.headers


def test_out_of_scope_calls_are_refused_and_audited(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    c = api_env.client
    cases = [
        ("hospital", "post", f"/v1/cards/{card.card_number}/cancel", {"reason": "x"}),
        ("hospital", "get", "/v1/audit/events", None),
        ("bank", "post", "/v1/applications", {"citizen_id": "1", "name": "x"}),
        ("auditor", "post", f"/v1/cards/{card.card_number}/suspend", {"reason": "x"}),
        ("reviewer", "post", "/v1/verifications/challenge", None),
    ]
    for who, method, url, body in cases:
        r = c.request(method.upper(), url, json=body, headers=api_env.auth(who))
        assert r.status_code == 403, (who, url, r.text)
        assert r.json()["error"]["code"] == "forbidden"
    with api_env.session() as s:  # type: ignore[attr-defined]
        denied = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "api.denied")).all()
    assert len(denied) == len(cases)
    # the domain's own role rule (a clerk may not suspend) is refused and audited as well
    r = c.post(f"/v1/cards/{card.card_number}/suspend", json={"reason": "x"},
               headers=api_env.auth("clerk"))  # fmt: skip
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"


def test_error_shape_for_malformed_input(api_env: ApiEnv) -> None:
    c, h = api_env.client, api_env.auth("clerk")
    r = c.post("/v1/verifications", json={"challenge_id": "zz"}, headers=api_env.auth("hospital"))
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "validation_error" and err["field"] == "challenge_id"
    assert {p["field"] for p in err["problems"]} >= {"challenge_id", "card_number", "response"}
    r = c.post("/v1/verifications", content=b"{not json", headers=api_env.auth("hospital"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    from cardspec.ids import make_card_number

    r = c.get(f"/v1/cards/{make_card_number('A9999999')}", headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = c.get("/v1/cards/NOSUCHONE", headers=h)  # its check character is wrong: no lookup
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    assert "check character does not match" in r.json()["error"]["message"]
    assert c.get("/nowhere").json()["error"]["code"] == "not_found"
    assert c.delete("/v1/hello").status_code == 405
    r = c.post("/v1/applications", json={"citizen_id": "123", "name": "9x", "phone": "1"},
               headers=h)  # fmt: skip
    assert r.status_code == 422
    fields = {p["field"] for p in r.json()["error"]["problems"]}
    assert {"citizen_id", "name", "phone", "photo", "ethnicity"} <= fields
    r = c.post("/v1/applications", json={"citizen_id": "1", "name": "x", "photo_base64": "@@"},
               headers=h)  # fmt: skip
    problems = {p["field"] for p in r.json()["error"]["problems"]}
    assert r.status_code == 422 and {"photo_base64", "citizen_id", "name"} <= problems
    r = c.post("/v1/applications", json={"citizen_id": "1\x00", "name": "x"}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["field"] == "citizen_id"
    assert "Traceback" not in r.text


def test_application_flow_with_maker_checker(api_env: ApiEnv) -> None:
    import base64

    from api_helpers import PHOTO, make_cid

    c = api_env.client
    body = {"citizen_id": make_cid(), "name": "王五", "phone": "13900139000", "ethnicity": "01",
            "photo_base64": base64.b64encode(PHOTO).decode()}  # fmt: skip
    r = c.post("/v1/applications", json=body, headers=api_env.auth("clerk"))
    assert r.status_code == 201, r.text
    app_id = r.json()["id"]
    assert (
        c.post(f"/v1/applications/{app_id}/process", headers=api_env.auth("clerk")).json()["status"]
        == "processed"
    )
    # the receiving clerk's colleague role cannot review; a reviewer can
    r = c.post(f"/v1/applications/{app_id}/review", headers=api_env.auth("clerk"))
    assert r.status_code == 403
    assert (
        c.post(f"/v1/applications/{app_id}/review", headers=api_env.auth("reviewer")).json()[
            "status"
        ]
        == "reviewed"
    )
    r = c.post(f"/v1/applications/{app_id}/approve", headers=api_env.auth("approver"))
    assert r.status_code == 200 and len(r.json()["card_number"]) == 9
    r = c.post(f"/v1/applications/{app_id}/approve", headers=api_env.auth("approver"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "transition_not_allowed"
    listed = c.get("/v1/applications", params={"status": "approved"},
                   headers=api_env.auth("auditor"))  # fmt: skip
    assert app_id in [a["id"] for a in listed.json()]


def test_bank_activation_and_audit(api_env: ApiEnv) -> None:
    from test_api_security_bank import bind, presented

    card = api_env.new_card()
    chip = api_env.chip(card)
    bind(api_env, card)
    c, n = api_env.client, card.card_number
    url, bank = f"/v1/cards/{n}/financial-activation", api_env.auth("bank")
    r = c.post(url, json={**presented(api_env, chip), "identity_checked": False}, headers=bank)
    assert r.status_code == 422 and r.json()["error"]["field"] == "identity_checked"
    r = c.post(url, json=presented(api_env, chip), headers=bank)
    assert r.status_code == 200 and r.json()["chip_apps"]["financial"] == "active"
    events = c.get("/v1/audit/events", params={"action": "chip.activate"},
                   headers=api_env.auth("auditor")).json()  # fmt: skip
    assert any(e["actor"].startswith("agency:bank-") and e["channel"] == "bank" for e in events)
    assert c.get("/v1/audit/verify", headers=api_env.auth("auditor")).status_code == 200
    r = c.get("/v1/batches/999999", headers=api_env.auth("auditor"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
