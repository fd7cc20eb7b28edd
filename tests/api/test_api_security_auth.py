"""Issue 15 items 2, 6 and the token endpoint's answers of item 9, replayed against the app:

* revocation and disabling stop a principal: no new token, and every token it holds stops at
  once (no cache delay), on every app sharing the database (two apps here stand for two
  workers or nodes);
* the failure limit: wrong secrets from many sources do not lock the right secret out; bad
  bearer tokens from one source do not block another client's token request from it; counts
  are shared by every app on the database; unknown and known client ids take the same time;
* RFC 6749 5.2: ``invalid_scope`` and ``unsupported_grant_type`` answer 400.
"""

from __future__ import annotations

import statistics
import time

import pytest
from api_helpers import ApiEnv, fake_photo
from fastapi.testclient import TestClient

from api.app import create_app
from issuance import services
from issuance.models import StaffRole
from issuance.services import credentials

pytestmark = pytest.mark.softhsm


def token(client: TestClient, cid: str, secret: str, **extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = client.post(
        "/v1/oauth/token",
        data={"grant_type": "client_credentials", "client_id": cid, "client_secret": secret,
              **extra},
    )  # fmt: skip
    return r.status_code, r.json()


def challenge(client: TestClient, bearer: str) -> int:
    r = client.post("/v1/verifications/challenge", headers={"Authorization": f"Bearer {bearer}"})
    return r.status_code


def second_app(env: ApiEnv) -> TestClient:
    """Another worker (or node) on the same database: its own caches and counters."""
    app = create_app(
        env.settings, engine=env.engine, key_service_factory=lambda: env.hsm.service,
        photo_processor=fake_photo,
    )  # fmt: skip
    return TestClient(app, raise_server_exceptions=False)


def test_revoke_disables_the_client_at_once_everywhere(api_env: ApiEnv) -> None:
    cid, secret = api_env.clients["hospital"]
    bearer = api_env.tokens["hospital"]
    with second_app(api_env) as other:
        assert challenge(api_env.client, bearer) == 200  # cached in both "workers"
        assert challenge(other, bearer) == 200
        with api_env.session() as s:  # type: ignore[attr-defined]
            credentials.revoke_tokens(s, cid)
        assert challenge(api_env.client, bearer) == 401  # hot path, no cache delay
        assert challenge(other, bearer) == 401
        status, body = token(api_env.client, cid, secret)
        assert (status, body["error"]["code"]) == (401, "invalid_client")
        with api_env.session() as s:  # type: ignore[attr-defined]
            credentials.set_client_active(s, cid, True)
        status, body = token(other, cid, secret)
        assert status == 200 and challenge(api_env.client, body["access_token"]) == 200


def test_disable_and_enable_through_the_api_audited(api_env: ApiEnv) -> None:
    c, admin = api_env.client, api_env.auth("admin")
    cid, secret = api_env.clients["bank"]
    bank_token = api_env.tokens["bank"]
    assert challenge(c, bank_token) == 200
    agency = cid.rsplit("-", 1)[0]
    r = c.post(f"/v1/principals/agencies/{agency}/disable", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json() == {"kind": "agencies", "name": agency, "active": False}
    assert challenge(c, bank_token) == 401
    assert token(c, cid, secret)[0] == 401
    assert c.post(f"/v1/principals/agencies/{agency}/enable", headers=admin).status_code == 200
    assert token(c, cid, secret)[0] == 200
    # a bank teller employed by that bank stops with it
    with api_env.session() as s:  # type: ignore[attr-defined]
        teller = services.create_staff(
            s, "teller-of-bank", StaffRole.BANK_TELLER, agency_id=api_env.agencies["bank"]
        )
        teller_token = credentials.staff_token(s, teller.username).access_token
    assert challenge(c, teller_token) == 200
    assert c.post(f"/v1/principals/agencies/{agency}/disable", headers=admin).status_code == 200
    assert challenge(c, teller_token) == 401
    with api_env.session() as s, pytest.raises(credentials.PermissionDenied):  # type: ignore[attr-defined]
        credentials.staff_token(s, "teller-of-bank")
    assert c.post(f"/v1/principals/agencies/{agency}/enable", headers=admin).status_code == 200
    # a staff user: the clerk's token stops at once
    clerk = api_env.actors["clerk"].username
    assert c.get("/v1/applications", headers=api_env.auth("clerk")).status_code == 200
    assert c.post(f"/v1/principals/staff/{clerk}/disable", headers=admin).status_code == 200
    assert c.get("/v1/applications", headers=api_env.auth("clerk")).status_code == 401
    # only a principal manager may do it (the clerk's scopes lack it: 403, audited)
    r = c.post(f"/v1/principals/clients/{cid}/disable", headers=api_env.auth("auditor"))
    assert r.status_code == 403
    events = c.get("/v1/audit/events", headers=api_env.auth("auditor")).json()
    actions = [e["action"] for e in events]
    assert {"agency.disabled", "agency.enabled", "staff.disabled"} <= set(actions)
    r = c.post("/v1/principals/clients/nobody-1/disable", headers=admin)
    assert r.status_code == 404


def test_wrong_secrets_from_many_sources_do_not_lock_the_client_out(api_env: ApiEnv) -> None:
    app = api_env.client.app
    cid, secret = api_env.clients["hospital"]
    limit = api_env.settings.api.auth_failures_per_minute
    for i in range(limit * 3):
        with TestClient(app, client=(f"10.9.{i // 250}.{i % 250}", 1000)) as attacker:
            assert token(attacker, cid, "wrong")[0] == 401
    with TestClient(app, client=("10.8.0.1", 1000)) as legit:
        assert token(legit, cid, secret)[0] == 200
    # one source failing for the pair (client, source) is held there, and only there
    with TestClient(app, client=("10.7.0.1", 1000)) as attacker:
        # (a few more than the limit: the one-minute window is weighted, so failures made
        # just before a minute ends count a little less once it has ended)
        codes = [token(attacker, cid, "wrong")[0] for _ in range(limit + 3)]
        assert codes[-1] == 429 and codes[0] == 401 and codes.count(401) <= limit + 2, codes
        other_cid, other_secret = api_env.clients["bank"]
        assert token(attacker, other_cid, other_secret)[0] == 200  # another client from there


def test_bad_tokens_do_not_block_token_requests_and_counts_are_shared(api_env: ApiEnv) -> None:
    app = api_env.client.app
    limit = api_env.settings.api.auth_failures_per_minute
    cid, secret = api_env.clients["bank"]
    with TestClient(app, client=("10.6.0.1", 1000), raise_server_exceptions=False) as nat:
        codes = [challenge(nat, f"bad-{i}") for i in range(limit * 3)]
        assert set(codes) == {401}
        assert token(nat, cid, secret)[0] == 200
    # counts live in the database: two "workers" add up
    with second_app(api_env) as other:
        hosp, _ = api_env.clients["hospital"]
        half = limit // 2
        for _ in range(half):
            assert token(api_env.client, hosp, "wrong")[0] == 401
        # alone, this worker would answer 401 `limit` times; shared, it stops well before
        # (a few more allowed: the one-minute window is weighted and may move meanwhile)
        codes = [token(other, hosp, "wrong")[0] for _ in range(limit - half + 4)]
        assert codes[-1] == 429 and codes.count(401) <= limit - half + 3, codes


def test_unknown_and_known_client_ids_take_the_same_time(api_env: ApiEnv) -> None:
    cid, _ = api_env.clients["hospital"]

    def timed(client_id: str) -> float:
        # this thread's CPU time: the work done (one scrypt either way), not the waits a
        # loaded machine adds to one sample and not the next
        with api_env.session() as s:  # type: ignore[attr-defined]
            start = time.thread_time()
            with pytest.raises(credentials.PermissionDenied):
                credentials.issue_token(s, client_id, "wrong")
            return time.thread_time() - start

    timed("warm-up")
    known: list[float] = []
    unknown: list[float] = []
    for _ in range(7):  # interleaved: a drift in the machine's speed touches both alike
        known.append(timed(cid))
        unknown.append(timed("nobody-00000000"))
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.5 < ratio < 2.0, (known, unknown)


def test_token_errors_follow_rfc_6749(api_env: ApiEnv) -> None:
    cid, secret = api_env.clients["hospital"]
    status, body = token(api_env.client, cid, secret, scope="audit:read")
    assert (status, body["error"]["code"]) == (400, "invalid_scope")
    r = api_env.client.post("/v1/oauth/token", data={"grant_type": "password"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "unsupported_grant_type")
    doc = api_env.client.get("/openapi.json").json()
    assert "400" in doc["paths"]["/v1/oauth/token"]["post"]["responses"]


def test_a_cached_token_in_its_last_seconds_is_resolved_again_behind_the_requests(
    api_env: ApiEnv,
) -> None:
    """A cached token used in its last ``REFRESH_SECONDS`` keeps answering from the cache
    while it is resolved again in the background: the new entry has a full lifetime and the
    epoch its lookup read; a token revoked meanwhile is forgotten by that lookup, and its next
    request is refused the ordinary way (the revocation's epoch stops it at once anyway)."""
    import asyncio

    from api.auth import CACHE_SECONDS, REFRESH_SECONDS

    auth = api_env.client.app.state.auth  # type: ignore[attr-defined]
    bearer = api_env.tokens["hospital"]
    assert challenge(api_env.client, bearer) == 200  # resolved and cached
    principal, _, epoch = auth._cache[bearer]

    async def in_last_seconds() -> tuple[object, asyncio.Task[None] | None]:
        auth._cache[bearer] = (principal, time.monotonic() + REFRESH_SECONDS / 2, epoch)
        hit = auth.resolved(bearer)  # still answered from the cache ...
        task = auth._refreshing.get(bearer)  # ... while it is resolved again
        if task is not None:
            await task
        return hit, task

    hit, task = asyncio.run(in_last_seconds())
    assert hit == (principal, epoch) and task is not None and not auth._refreshing
    again, until, epoch_again = auth._cache[bearer]
    assert again.credential_id == principal.credential_id and epoch_again == epoch
    assert until - time.monotonic() > CACHE_SECONDS - REFRESH_SECONDS  # a full lifetime
    assert challenge(api_env.client, bearer) == 200
    cid, _ = api_env.clients["hospital"]
    with api_env.session() as s:  # type: ignore[attr-defined]
        credentials.revoke_tokens(s, cid)
    hit, task = asyncio.run(in_last_seconds())
    assert task is not None and bearer not in auth._cache  # the lookup refused it: forgotten
    assert challenge(api_env.client, bearer) == 401
