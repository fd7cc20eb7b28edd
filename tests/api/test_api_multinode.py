"""Issue 20, shared state: two API nodes over one PostgreSQL, each with its own SoftHSM token
loaded by the same key ceremony (components and KCVs: no key copied between the tokens).

Every piece of state a verification or an authentication depends on must hold across nodes:

* a challenge issued by node A is answered on node B (the challenge is stateless, its key is
  derived inside each node's HSM from the same IRK master);
* a verification done on A and replayed on B is refused (``used_challenges``, one table);
* a known caller refused often enough on A is held (429) on B at its next request (failure
  counts in ``api_rate_counters``; the hold bumps the authentication epoch every node reads);
* a revocation on A stops the caller's token on B at once (the epoch again).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv, Hsm, fake_photo, make_hsm
from fastapi.testclient import TestClient

from api.app import create_app
from api.client import YktClient
from cardspec.cardops import internal_authenticate, read_card_public
from cardspec.keyscheme import Algorithm
from cardspec.reader import InProcessReader
from hsm import ceremony
from issuance.models import ApiCall, AuditEvent, Card, UsedChallenge
from issuance.services import credentials

pytestmark = [pytest.mark.softhsm, pytest.mark.postgres]


@pytest.fixture
def node_b(api_env: ApiEnv, tmp_path: Path) -> Iterator[tuple[TestClient, Hsm]]:
    """A second node: its own app, caches and counters, and its own HSM token."""
    hsm_b = make_hsm(tmp_path / "node-b")
    app = create_app(
        api_env.settings, engine=api_env.engine, key_service_factory=lambda: hsm_b.service,
        photo_processor=fake_photo,
    )  # fmt: skip
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, hsm_b


@pytest.fixture(scope="session")
def db_backend() -> str:
    return "postgres"


def _answer(chip: InProcessReader, challenge_hex: str) -> tuple[str, str, bytes]:
    pub = read_card_public(chip)
    ch = bytes.fromhex(challenge_hex)
    resp = internal_authenticate(chip, ch[:8], ch[8:])
    chip.disconnect()
    return pub.card_identification_code, pub.card_number, resp


def test_the_nodes_tokens_hold_the_same_keys_loaded_apart(
    api_env: ApiEnv, node_b: tuple[TestClient, Hsm]
) -> None:
    _client, hsm_b = node_b
    assert hsm_b.config.tokens_dir != api_env.hsm.config.tokens_dir  # two tokens, two stores
    keys_a = {k.label: k for k in ceremony.list_keys(api_env.hsm.token)}
    keys_b = {k.label: k for k in ceremony.list_keys(hsm_b.token)}
    masters = [ceremony.master_label(slot, Algorithm.DES3, 1) for slot in ceremony.CENTRE_SLOTS]
    # the card centre's key set in both (node A's token is the tests' shared one: other tests
    # may have added a bank's keys or a transport key to it)
    assert set(masters) <= set(keys_a) and set(masters) <= set(keys_b)
    for label in masters:
        a, b = keys_a[label], keys_b[label]
        assert a.kcv == b.kcv and a.sensitive and b.sensitive
        assert not a.extractable and not b.extractable


def test_challenge_on_a_answered_on_b_replay_on_b_refused(
    api_env: ApiEnv, node_b: tuple[TestClient, Hsm], card_and_chip: tuple[Card, InProcessReader]
) -> None:
    client_b, _ = node_b
    card, chip = card_and_chip
    auth = api_env.auth("hospital")
    a = YktClient(TestClient(api_env.client.app, headers=auth))
    b = YktClient(TestClient(client_b.app, headers=auth))
    ch = a.challenge()
    cic, number, resp = _answer(chip, ch["challenge"])
    assert b.verify(ch["challenge_id"], cic, number, resp)["valid"] is True
    assert b.verify(ch["challenge_id"], cic, number, resp)["reason"] == "challenge_reused"
    assert a.verify(ch["challenge_id"], cic, number, resp)["reason"] == "challenge_reused"
    # and the other way round: issued by B, verified by A, replayed on B
    ch = b.challenge()
    cic, number, resp = _answer(chip, ch["challenge"])
    assert a.verify(ch["challenge_id"], cic, number, resp)["valid"] is True
    assert b.verify(ch["challenge_id"], cic, number, resp)["reason"] == "challenge_reused"
    with api_env.session() as s:  # type: ignore[attr-defined]
        used = s.scalar(sa.select(sa.func.count()).select_from(UsedChallenge))
        events = s.execute(
            sa.select(AuditEvent.action, AuditEvent.details).where(
                AuditEvent.action == "card.verified"
            )
        ).all()
    assert used == 2
    details = [json.loads(d) if isinstance(d, str) else d for _a, d in events]
    valid = [d for d in details if d["valid"]]
    assert len(valid) == 2 and {d["card_number"] for d in valid} == {card.card_number}
    assert [d["reason"] for d in details if not d["valid"]] == ["challenge_reused"] * 3


def test_a_caller_held_on_a_is_held_on_b_and_a_revocation_on_a_stops_b(
    api_env: ApiEnv, node_b: tuple[TestClient, Hsm]
) -> None:
    client_b, _ = node_b
    bank = api_env.auth("bank")
    assert client_b.post("/v1/verifications/challenge", headers=bank).status_code == 200
    limit = api_env.settings.api.auth_failures_per_minute
    # refusals of a known caller (a scope it lacks) count against it, on node A only
    codes = [api_env.client.get("/v1/audit/events", headers=bank).status_code
             for _ in range(limit + 2)]  # fmt: skip
    assert codes[0] == 403 and codes[-1] == 429, codes
    # node B had the token cached: it is held there too, at the next request
    assert client_b.post("/v1/verifications/challenge", headers=bank).status_code == 429
    # a revocation on A stops the hospital's token on B at once
    hospital = api_env.auth("hospital")
    assert client_b.post("/v1/verifications/challenge", headers=hospital).status_code == 200
    r = api_env.client.post(
        f"/v1/principals/clients/{api_env.clients['hospital'][0]}/disable",
        headers=api_env.auth("admin"),
    )
    assert r.status_code == 200, r.text
    assert client_b.post("/v1/verifications/challenge", headers=hospital).status_code == 401
    with api_env.session() as s:  # type: ignore[attr-defined]
        credentials.set_client_active(s, api_env.clients["hospital"][0], True)


def test_a_challenge_after_a_revocation_elsewhere_is_refused_and_recorded_once(
    api_env: ApiEnv, node_b: tuple[TestClient, Hsm]
) -> None:
    """The hot path's challenge call checks a cached token's epoch in the statement that
    writes the call's record: after a revocation on A, B's first attempt writes nothing and
    answers nothing; the call is refused (401) the ordinary way and recorded once, as 401."""
    client_b, _ = node_b
    hospital = api_env.auth("hospital")
    client_id = api_env.clients["hospital"][0]
    route = "/v1/verifications/challenge"

    def records() -> list[int]:
        with api_env.session() as s:  # type: ignore[attr-defined]
            return list(
                s.scalars(
                    sa.select(ApiCall.status)
                    .where(ApiCall.client_id == client_id, ApiCall.route == route)
                    .order_by(ApiCall.id)
                )
            )

    assert client_b.post(route, headers=hospital).status_code == 200  # B caches the token
    assert client_b.post(route, headers=hospital).status_code == 200  # checked with its record
    assert records() == [200, 200]
    r = api_env.client.post(
        f"/v1/principals/clients/{client_id}/disable", headers=api_env.auth("admin")
    )
    assert r.status_code == 200, r.text

    def refusals() -> list[str | None]:
        with api_env.session() as s:  # type: ignore[attr-defined]
            return list(
                s.scalars(
                    sa.select(ApiCall.error_code)
                    .where(ApiCall.route == route, ApiCall.status == 401)
                    .order_by(ApiCall.id)
                )
            )

    before = refusals()
    refused = client_b.post(route, headers=hospital)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    assert records() == [200, 200]  # nothing written for the token's first, unchecked try
    assert refusals() == [*before, "unauthorized"]
    with api_env.session() as s:  # type: ignore[attr-defined]
        credentials.set_client_active(s, client_id, True)


def test_a_verification_after_a_revocation_elsewhere_writes_nothing_and_is_refused(
    api_env: ApiEnv, node_b: tuple[TestClient, Hsm], card_and_chip: tuple[Card, InProcessReader]
) -> None:
    """The hot path's verification checks a cached token's epoch in its card read: after a
    revocation on A, B's next verification with the token writes nothing (no challenge used,
    no audit event), answers 401 the ordinary way (the body replayed to FastAPI) and is
    recorded once, as 401. After an epoch change that leaves the caller valid (another client
    disabled), the same hand-off verifies it once: used once, audited once, valid."""
    client_b, _ = node_b
    _card, chip = card_and_chip
    hospital = api_env.auth("hospital")
    client_id = api_env.clients["hospital"][0]
    b = YktClient(TestClient(client_b.app, headers=hospital))

    def written() -> tuple[int, int, list[int]]:
        with api_env.session() as s:  # type: ignore[attr-defined]
            used = s.scalar(sa.select(sa.func.count()).select_from(UsedChallenge))
            events = s.scalar(
                sa.select(sa.func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "card.verified")
            )
            calls = s.scalars(  # (a refused token's record names no client)
                sa.select(ApiCall.status)
                .where(ApiCall.route == "/v1/verifications")
                .order_by(ApiCall.id)
            )
            return int(used or 0), int(events or 0), list(calls)

    def body(ch: dict[str, str]) -> dict[str, str]:
        cic, number, resp = _answer(chip, ch["challenge"])
        return {
            "challenge_id": ch["challenge_id"], "card_identification_code": cic,
            "card_number": number, "response": resp.hex(), "application": "medical",
        }  # fmt: skip

    # B caches the token; a verification on B with it (the epoch checked by the card read)
    ch = b.challenge()
    assert client_b.post("/v1/verifications", json=body(ch), headers=hospital).json()["valid"]
    base = written()
    # an unrelated change of the epoch: B's cached entry is stale, the call goes the ordinary
    # way and is verified there, once
    other = api_env.clients["bank"][0]
    admin = api_env.auth("admin")
    assert api_env.client.post(f"/v1/principals/clients/{other}/disable", headers=admin).is_success
    ch = b.challenge()  # (re-resolves the token on B: the challenge call's own check)
    with api_env.session() as s:  # type: ignore[attr-defined]
        credentials.set_client_active(s, other, True)  # the epoch moves on again
    r = client_b.post("/v1/verifications", json=body(ch), headers=hospital)
    assert r.status_code == 200 and r.json()["valid"] is True, r.text
    used, events, calls = written()
    assert (used, events) == (base[0] + 1, base[1] + 1) and calls == base[2]  # audited only
    # the hospital revoked on A: B's next verification writes nothing and is refused
    ch = b.challenge()
    r = api_env.client.post(f"/v1/principals/clients/{client_id}/disable", headers=admin)
    assert r.status_code == 200, r.text
    refused = client_b.post("/v1/verifications", json=body(ch), headers=hospital)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "unauthorized"
    assert written() == (base[0] + 1, base[1] + 1, [*base[2], 401])
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.get(UsedChallenge, bytes.fromhex(ch["challenge_id"])) is None
        credentials.set_client_active(s, client_id, True)
