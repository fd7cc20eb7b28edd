"""Issue 15 item 1: ``GET /v1/audit/verify`` checks the chain against the issuer's key held in
the HSM, never the key stored beside a checkpoint. The attacks replayed: a ``card.verified``
event flipped from invalid to valid with every later hash, the head and the checkpoint
recomputed and re-signed with a key of the attacker's own; a checkpoint whose signature was set
to NULL. Both answered 200 before; both must answer 409 ``integrity_error``."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv
from test_api_verification_reasons import verdict

from issuance import audit
from issuance.audit import SoftwareSigner
from issuance.models import AuditChainHead, AuditCheckpoint, AuditEvent

pytestmark = pytest.mark.softhsm


def _sealed_log_with_a_refused_verification(env: ApiEnv) -> int:
    """A sealed log (signed by the HSM) with one ``card.verified`` event ``invalid``; its id."""
    card = env.new_card()
    chip = env.chip(card)
    assert verdict(env, chip, "financial")["valid"] is False  # sealed: refused
    with env.session() as s:  # type: ignore[attr-defined]
        audit.seal(s, env.hsm.service, delay=timedelta(0))
        return int(
            s.scalars(
                sa.select(AuditEvent.id).where(
                    AuditEvent.action == "card.verified", AuditEvent.after == "invalid"
                )
            ).one()
        )


def _forge(env: ApiEnv, event_id: int) -> None:
    """Flip the event to valid, recompute every later hash and the head, re-sign every
    checkpoint with the attacker's own key stored beside it."""
    attacker = SoftwareSigner()
    with env.session() as s:  # type: ignore[attr-defined]
        ev = s.get(AuditEvent, event_id)
        assert ev is not None
        ev.after = "valid"
        ev.details = ev.details.replace('"valid":false', '"valid":true')
        s.flush()
        prev = audit.GENESIS_HASH
        for row in s.scalars(
            sa.select(AuditEvent)
            .where(AuditEvent.chain_seq.is_not(None))
            .order_by(AuditEvent.chain_seq)
        ):
            row.prev_hash = prev
            row.hash = prev = audit.chain_hash(prev, row)
        hashes = dict(s.execute(sa.select(AuditEvent.chain_seq, AuditEvent.hash)).tuples().all())
        head = s.get(AuditChainHead, 1)
        assert head is not None
        head.last_hash = hashes[head.last_seq]
        pem = attacker.public_key_pem().decode("ascii")
        for cp in s.scalars(sa.select(AuditCheckpoint)):
            cp.hash = hashes[cp.chain_seq]
            cp.signature = attacker.sign(audit.checkpoint_message(cp.chain_seq, cp.hash))
            cp.public_key_pem = pem


def test_a_log_re_signed_with_another_key_is_not_intact(api_env: ApiEnv) -> None:
    event_id = _sealed_log_with_a_refused_verification(api_env)
    auditor = api_env.auth("auditor")
    r = api_env.client.get("/v1/audit/verify", headers=auditor)
    assert r.status_code == 200, r.text
    assert r.json()["signed_checkpoints"] >= 1
    assert r.json()["verified_against"] == "hsm_signing_key"
    _forge(api_env, event_id)
    with api_env.session() as s:  # type: ignore[attr-defined]
        audit.verify_chain(s)  # consistent in itself: the forgery is a good one
    r = api_env.client.get("/v1/audit/verify", headers=auditor)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "integrity_error"
    assert "signature" in r.json()["error"]["message"]


def test_an_unsigned_checkpoint_is_not_intact(api_env: ApiEnv) -> None:
    _sealed_log_with_a_refused_verification(api_env)
    with api_env.session() as s:  # type: ignore[attr-defined]
        s.execute(sa.update(AuditCheckpoint).values(signature=None))
    r = api_env.client.get("/v1/audit/verify", headers=api_env.auth("auditor"))
    assert r.status_code == 409, r.text
    body = r.json()["error"]
    assert body["code"] == "integrity_error" and "not signed" in body["message"]
