"""Verifications in flight together on PostgreSQL share their statements (the card reads, the
challenges' uses with their audit events: :class:`issuance.services.verification.
VerificationStore`), and each still gets its own verdict: a challenge answered once verifies,
every replay of it - even inside the same group - is ``challenge_reused``, an unknown card is
``unknown_card``, and every attempt has its own ``card.verified`` audit event."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv
from test_api_verification import answer

from cardspec.reader import InProcessReader
from issuance.models import AuditEvent, Card

pytestmark = pytest.mark.softhsm


@pytest.mark.parametrize(
    "db_backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_concurrent_verifications_share_statements_with_their_own_verdicts(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader]
) -> None:
    _card, chip = card_and_chip
    headers = api_env.auth("hospital")
    ctx = api_env.client.app.state.ctx
    store = ctx.verifications
    assert store is not None  # PostgreSQL: the grouped path
    # its write lingers under load as [api] write_linger_ms says (milliseconds), reads do not
    assert store.uses.linger == api_env.client.app.state.ctx.settings.api.write_linger_ms / 1000
    assert store.uses.linger > 0 and store.lookups.linger == 0
    bodies: list[dict[str, Any]] = []
    for _ in range(24):
        ch = api_env.client.post("/v1/verifications/challenge", headers=headers).json()
        cic, number, resp = answer(chip, ch["challenge"])
        bodies.append({"challenge_id": ch["challenge_id"], "response": resp.hex(),
                       "card_identification_code": cic, "card_number": number})  # fmt: skip
    replays = [bodies[0]] * 6  # the same answer six more times, in the same burst
    ch = api_env.client.post("/v1/verifications/challenge", headers=headers).json()
    cic = bodies[1]["card_identification_code"]
    other = cic[:-1] + ("0" if cic[-1] != "0" else "1")  # no such card
    unknown = {**bodies[1], "challenge_id": ch["challenge_id"], "card_identification_code": other}
    burst = [*bodies, *replays, unknown]
    batches_before, items_before = store.uses.batches, store.uses.items
    lookups_before = store.lookups.batches

    async def post_all() -> list[dict[str, Any]]:
        transport = httpx.ASGITransport(app=api_env.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            answers = await asyncio.gather(
                *(http.post("/v1/verifications", json=b, headers=headers) for b in burst)
            )
        assert [a.status_code for a in answers] == [200] * len(burst)
        return [a.json() for a in answers]

    verdicts = asyncio.run(post_all())
    first = [v for v, b in zip(verdicts, burst, strict=True)
             if b["challenge_id"] == bodies[0]["challenge_id"]]  # fmt: skip
    assert sum(v["valid"] is True for v in first) == 1
    assert sorted(str(v.get("reason")) for v in first) == ["None"] + ["challenge_reused"] * 6
    assert all(v["valid"] is True for v in verdicts[1:24])
    assert verdicts[-1] == {"valid": False, "reason": "unknown_card",
                            "application": "social_security",
                            "card_number": unknown["card_number"],
                            "card_identification_code": other.upper()}  # fmt: skip
    # grouped: fewer writes than verifications; one use (and one event) per verification
    used = store.uses.items - items_before
    assert used == len(burst)
    assert store.uses.batches - batches_before < used
    assert store.lookups.batches - lookups_before < len(burst)
    with api_env.session() as s:  # type: ignore[attr-defined]
        events = s.execute(
            sa.select(AuditEvent.after, AuditEvent.details).where(
                AuditEvent.action == "card.verified"
            )
        ).all()
    ours = [e for e in events if any(b["challenge_id"] in e.details for b in burst)]
    assert sorted(e.after for e in ours) == sorted(["valid"] * 24 + ["invalid"] * 7)
