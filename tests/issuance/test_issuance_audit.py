"""The hash-chained audit log: sealing, signed checkpoints, tamper detection."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from issuance import audit
from issuance.audit import SYSTEM_ACTOR, SoftwareSigner, seal, verify_chain
from issuance.errors import IntegrityError
from issuance.models import AuditCheckpoint, AuditEvent

NOW = timedelta(0)


def _events(session, n: int) -> list[AuditEvent]:
    evs = [
        audit.record(
            session,
            SYSTEM_ACTOR,
            "test.event",
            "thing",
            i,
            details={"i": i, "note": "id 330106198503140011 must be masked"},
        )
        for i in range(n)
    ]
    session.flush()
    return evs


def test_seal_and_verify_with_signed_checkpoints(session):
    signer = SoftwareSigner()
    _events(session, 25)
    res = seal(session, signer, delay=NOW, checkpoint_every=10)
    assert res.sealed >= 25 and res.checkpoints[-1] == res.last_seq
    report = verify_chain(session, signer.public_key_pem())
    assert report.last_seq == res.last_seq and report.signed_checkpoints == len(res.checkpoints)
    assert report.unsealed == 0
    ev = session.scalars(sa.select(AuditEvent).where(AuditEvent.action == "test.event")).first()
    assert "330106198503140011" not in ev.details and "3301**********0011" in ev.details
    # a second run continues the chain
    _events(session, 3)
    assert seal(session, signer, delay=NOW).sealed == 3
    verify_chain(session, signer.public_key_pem())


def test_delay_leaves_fresh_events_unsealed(session):
    _events(session, 2)
    res = seal(session, delay=timedelta(hours=1))
    assert res.sealed == 0
    assert verify_chain(session).unsealed >= 2


def _sealed(session, n=6):
    evs = _events(session, n)
    seal(session, delay=NOW)
    return evs


def test_edited_event_is_detected(session):
    evs = _sealed(session)
    session.execute(
        sa.update(AuditEvent).where(AuditEvent.id == evs[3].id).values(reason="nothing happened")
    )
    with pytest.raises(IntegrityError, match=f"event id {evs[3].id}") as err:
        verify_chain(session)
    assert err.value.details["event_id"] == evs[3].id


def test_deleted_event_is_detected(session):
    evs = _sealed(session)
    session.execute(sa.delete(AuditEvent).where(AuditEvent.id == evs[2].id))
    with pytest.raises(IntegrityError, match=f"sequence {evs[2].chain_seq} is missing"):
        verify_chain(session)


def test_deleted_tail_is_detected(session):
    evs = _sealed(session)
    session.execute(sa.delete(AuditEvent).where(AuditEvent.id == evs[-1].id))
    with pytest.raises(IntegrityError, match="deleted"):
        verify_chain(session)


def test_forged_checkpoint_signature_is_detected(session):
    signer, other = SoftwareSigner(), SoftwareSigner()
    _events(session, 3)
    seal(session, signer, delay=NOW)
    with pytest.raises(IntegrityError, match="signature"):
        verify_chain(session, other.public_key_pem())
    cp = session.scalars(sa.select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc())).first()
    cp.signature = other.sign(b"something else")
    session.flush()
    with pytest.raises(IntegrityError, match="signature"):
        verify_chain(session)
