"""The hash-chained audit log: sealing, signed checkpoints, tamper detection."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from cardspec.ids import citizen_id_check_char
from issuance import audit
from issuance.audit import SYSTEM_ACTOR, Actor, SoftwareSigner, seal, verify_chain
from issuance.errors import IntegrityError
from issuance.models import AuditChainHead, AuditCheckpoint, AuditEvent, Channel, StaffRole

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


# --- forgeries by someone who can write the database but not use the signing key -----------
def _rehash_from(session, seq: int) -> str:
    """Recompute every hash from ``seq`` on (what a forger does after editing an event)."""
    prev = session.scalar(sa.select(AuditEvent.prev_hash).where(AuditEvent.chain_seq == seq))
    for ev in session.scalars(
        sa.select(AuditEvent).where(AuditEvent.chain_seq >= seq).order_by(AuditEvent.chain_seq)
    ):
        ev.prev_hash, ev.hash = prev, audit.chain_hash(prev, ev)
        prev = ev.hash
    session.flush()
    return prev


def _set_head(session, seq: int, hash_hex: str) -> None:
    session.execute(
        sa.update(AuditChainHead)
        .where(AuditChainHead.id == 1)
        .values(last_seq=seq, last_hash=hash_hex)
    )


def _signed_chain(session, n: int = 30, every: int = 10) -> tuple[SoftwareSigner, list[int]]:
    signer = SoftwareSigner()
    _events(session, n)
    res = seal(session, signer, delay=NOW, checkpoint_every=every)
    return signer, res.checkpoints


def test_edit_rehash_and_checkpoints_deleted_from_there_is_detected(session):
    signer, cps = _signed_chain(session)
    target = session.scalars(sa.select(AuditEvent).where(AuditEvent.chain_seq == cps[0] + 3)).one()
    target.reason = "forged"
    session.flush()
    last_hash = _rehash_from(session, target.chain_seq)
    _set_head(session, cps[-1], last_hash)
    session.execute(sa.delete(AuditCheckpoint).where(AuditCheckpoint.chain_seq > target.chain_seq))
    session.expire_all()
    # the hashes agree again, but the newest checkpoint no longer covers the head
    for key in (None, signer.public_key_pem()):
        with pytest.raises(IntegrityError, match="no checkpoint covers the head"):
            verify_chain(session, key)
    # ...and a checkpoint the forger writes at the head is not signed by the trusted key
    session.add(AuditCheckpoint(chain_seq=cps[-1], hash=last_hash))
    session.flush()
    with pytest.raises(IntegrityError, match=f"checkpoint at sequence {cps[-1]} is not signed"):
        verify_chain(session, signer.public_key_pem())


def test_every_checkpoint_deleted_is_detected(session):
    signer, _cps = _signed_chain(session)
    session.execute(sa.delete(AuditCheckpoint))
    with pytest.raises(IntegrityError, match="no checkpoint covers the head"):
        verify_chain(session)
    with pytest.raises(IntegrityError, match="no checkpoint covers the head"):
        verify_chain(session, signer.public_key_pem())


def test_head_row_tail_and_last_checkpoint_deleted_is_detected(session):
    _signer, cps = _signed_chain(session)
    session.execute(sa.delete(AuditChainHead))
    session.execute(sa.delete(AuditEvent).where(AuditEvent.chain_seq > cps[-2]))
    session.execute(sa.delete(AuditCheckpoint).where(AuditCheckpoint.chain_seq > cps[-2]))
    with pytest.raises(IntegrityError, match=r"head row .* is missing"):
        verify_chain(session)
    # and the sealer refuses to start a new chain on top of it
    with pytest.raises(IntegrityError, match="head is missing"):
        seal(session, delay=NOW)


def test_trusted_key_requires_a_signed_checkpoint(session):
    signer = SoftwareSigner()
    _events(session, 5)
    seal(session, None, delay=NOW)  # unsigned
    assert verify_chain(session).signed_checkpoints == 0  # consistent, but vouched by nobody
    with pytest.raises(IntegrityError, match="not signed"):
        verify_chain(session, signer.public_key_pem())


def test_tail_cut_off_with_head_rewound_is_caught_by_the_pinned_checkpoint(session):
    signer, cps = _signed_chain(session)
    pin = audit.last_checkpoint(session)
    assert pin is not None and pin.chain_seq == cps[-1] and pin.signature is not None
    pin = audit.PinnedCheckpoint.from_json(pin.to_json())  # what the auditor keeps
    report = verify_chain(session, signer.public_key_pem(), expect=pin)
    assert report.pinned_seq == cps[-1]
    # cut the newest events and their checkpoint, rewind the head to the previous checkpoint
    keep = cps[-2]
    kept_hash = session.scalar(sa.select(AuditEvent.hash).where(AuditEvent.chain_seq == keep))
    session.execute(sa.delete(AuditEvent).where(AuditEvent.chain_seq > keep))
    session.execute(sa.delete(AuditCheckpoint).where(AuditCheckpoint.chain_seq > keep))
    _set_head(session, keep, kept_hash)
    session.expire_all()
    verify_chain(session, signer.public_key_pem())  # the database alone cannot tell
    with pytest.raises(IntegrityError, match=f"ends at sequence {keep} but the pinned"):
        verify_chain(session, signer.public_key_pem(), expect=pin)


def test_unsealing_everything_is_caught_by_the_pinned_checkpoint(session):
    _signer, _cps = _signed_chain(session)
    pin = audit.last_checkpoint(session)
    session.execute(sa.update(AuditEvent).values(chain_seq=None, prev_hash=None, hash=None))
    session.execute(sa.delete(AuditCheckpoint))
    _set_head(session, 0, audit.GENESIS_HASH)
    session.expire_all()
    assert verify_chain(session).last_seq == 0  # looks like a log never sealed
    with pytest.raises(IntegrityError, match="pinned checkpoint"):
        verify_chain(session, expect=pin)


def test_pinned_checkpoint_that_disagrees_or_is_forged(session):
    signer, _cps = _signed_chain(session)
    pin = audit.last_checkpoint(session)
    assert pin is not None
    wrong = audit.PinnedCheckpoint(pin.chain_seq, "ab" * 32, pin.signature, pin.public_key_pem)
    with pytest.raises(IntegrityError, match="differs from the pinned checkpoint"):
        verify_chain(session, expect=wrong)
    other = SoftwareSigner()
    forged = audit.PinnedCheckpoint(
        pin.chain_seq, pin.hash, other.sign(audit.checkpoint_message(pin.chain_seq, pin.hash))
    )
    verify_chain(session, expect=forged)  # without a trusted key the pin's signature is unused
    with pytest.raises(IntegrityError, match=r"pinned checkpoint .*signature"):
        verify_chain(session, signer.public_key_pem(), expect=forged)
    for bad in ("", "{}", '{"format": "yikatong-audit-checkpoint/1", "chain_seq": 0}'):
        with pytest.raises(IntegrityError, match="unreadable"):
            audit.PinnedCheckpoint.from_json(bad)


def test_seal_in_batches_keeps_one_chain_and_ends_with_a_checkpoint(session):
    _events(session, 23)
    res = seal(session, None, delay=NOW, checkpoint_every=10, batch=7)
    assert res.sealed >= 23
    assert res.checkpoints[-1] == res.last_seq
    seqs = session.scalars(
        sa.select(AuditEvent.chain_seq).where(AuditEvent.chain_seq.is_not(None))
    ).all()
    assert sorted(seqs) == list(range(1, res.last_seq + 1))
    assert verify_chain(session).events == res.last_seq
    assert seal(session, None, delay=NOW, limit=5).sealed == 0  # nothing left


def test_cli_seal_export_and_verify_expect_checkpoint(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from yikatong.cli import audit as cli_audit
    from yikatong.cli import db as cli_db
    from yikatong.cli.db import session_scope
    from yikatong.settings import get_settings

    monkeypatch.setenv("YKT_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    runner = CliRunner()
    pin_file = tmp_path / "pin.json"

    def run(*args: str) -> tuple[int, str]:
        res = runner.invoke(cli_audit.app, list(args))
        return res.exit_code, " ".join(res.output.split())  # rich wraps long lines

    try:
        assert runner.invoke(cli_db.app, ["upgrade"]).exit_code == 0
        with session_scope() as s:
            _events(s, 12)
        code, out = run("seal", "--unsigned", "--delay", "0", "--checkpoint-every", "5",
                        "--export", str(pin_file))  # fmt: skip
        assert code == 0, out
        assert "written to" in out and '"chain_seq"' in pin_file.read_text()
        pin = audit.PinnedCheckpoint.from_json(pin_file.read_text())
        code, out = run("verify", "--chain-only", "--expect-checkpoint", str(pin_file))
        assert code == 0 and f"reaches the pinned checkpoint {pin.chain_seq}" in out, out
        # cut the tail with its checkpoint and rewind the head: only the pin tells
        with session_scope() as s:
            keep = pin.chain_seq - 3
            h = s.scalar(sa.select(AuditEvent.hash).where(AuditEvent.chain_seq == keep))
            s.execute(sa.delete(AuditEvent).where(AuditEvent.chain_seq > keep))
            s.execute(sa.delete(AuditCheckpoint).where(AuditCheckpoint.chain_seq > keep))
            s.add(AuditCheckpoint(chain_seq=keep, hash=h))
            _set_head(s, keep, h)
        assert run("verify", "--chain-only")[0] == 0
        code, out = run("verify", "--chain-only", "--expect-checkpoint", str(pin_file))
        assert code == 1 and "pinned checkpoint" in out, out
        pin_file.write_text("not json")
        code, out = run("verify", "--chain-only", "--expect-checkpoint", str(pin_file))
        assert code == 1 and "unreadable" in out, out
    finally:
        get_settings.cache_clear()


# --- one builder, one writer -----------------------------------------------------------------

_CITIZEN_IDS = st.builds(
    lambda head, birth, seq: (
        head + f"{birth:%Y%m%d}{seq:03d}" + citizen_id_check_char(head + f"{birth:%Y%m%d}{seq:03d}")
    ),
    st.sampled_from(["110105", "330106", "440305", "650102"]),
    st.dates(date(1900, 1, 1), date(2025, 12, 31)),
    st.integers(0, 999),
)
#: free text as the audit details carry it: CJK names, long names, citizen ID numbers inside
_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), min_size=1, max_size=60),
    st.builds(
        lambda a, cid, b: a + cid + b, st.text(max_size=5), _CITIZEN_IDS, st.text(max_size=5)
    ),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    _TEXT,
    st.dates(),
    st.floats(allow_nan=False),
)
_JSONABLE = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)
_ACTORS = st.builds(
    Actor,
    _TEXT,
    st.sampled_from(list(StaffRole)),
    st.sampled_from(list(Channel)),
    st.none() | st.integers(1, 10**6),
)


@settings(max_examples=300, deadline=None)
@given(_JSONABLE)
def test_canonical_json_is_the_json_dumps_the_chain_was_written_with(value: object) -> None:
    reference = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    assert audit.canonical_json(value) == reference


@settings(max_examples=120, deadline=None)
@given(
    actor=_ACTORS,
    action=st.sampled_from(["batch_item.prepare", "card.verified", "x.y"]),
    fixed=st.dictionaries(st.text(min_size=1, max_size=12), _JSONABLE, max_size=4),
    varying=st.dictionaries(st.text(min_size=1, max_size=12), st.none(), min_size=1, max_size=5),
    events=st.lists(
        st.tuples(st.integers(0, 10**12) | _TEXT, st.lists(_JSONABLE, min_size=5, max_size=5)),
        min_size=1,
        max_size=6,
    ),
    before=st.none() | _TEXT,
    reason=st.none() | _TEXT,
)
def test_event_template_rows_are_event_values_byte_for_byte(
    actor: Actor,
    action: str,
    fixed: dict,
    varying: dict,
    events: list,
    before: object,
    reason: object,
) -> None:
    names = tuple(k for k in varying if k not in fixed)
    if not names:
        return
    at = datetime(2026, 3, 4, 5, 6, 7, 891011)
    tmpl = audit.EventTemplate(
        actor,
        action,
        "batch_item",
        varying=names,
        before=before,
        after="prepared",
        reason=reason,
        details=fixed,
        occurred_at=at,
    )
    for entity, values in events * 2:  # twice: the remembered encodings too
        vals = values[: len(names)]
        expected = audit.event_values(
            actor,
            action,
            "batch_item",
            entity,
            before=before,
            after="prepared",
            reason=reason,
            details={**fixed, **dict(zip(names, vals, strict=True))},
            occurred_at=at,
        )
        assert tmpl.row(entity, *vals) == expected
        assert tmpl.row(entity, *vals)[-1].encode() == expected[-1].encode()


def test_record_writes_what_event_values_builds(session) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5)
    details = {"note": "id 330106198503140011", "n": 3}
    ev = audit.record(session, SYSTEM_ACTOR, "test.event", "thing", 7, after="x", details=details)
    ev.occurred_at = at
    session.flush()
    row = session.execute(
        sa.select(*(AuditEvent.__table__.c[c] for c in audit.EVENT_COLUMNS)).where(
            AuditEvent.id == ev.id
        )
    ).one()
    assert tuple(row) == audit.event_values(
        SYSTEM_ACTOR, "test.event", "thing", 7, after="x", details=details, occurred_at=at
    )
