"""The verification hot path and the stateless challenges: the hot path answers exactly what the
FastAPI routes answer (bodies, errors, audit events, call-log records), the challenge ids are
MAC'd, bound to their caller, expiring and single-use, the challenge key comes from the HSM and
agrees with a software oracle, used challenges are pruned. On SQLite and PostgreSQL."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv, master_key
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from api.routes_verify import challenge_json, verification_json
from api.schemas import ChallengeOut, HolderOut, VerificationOut
from cardspec.cardops import internal_authenticate, read_card_public
from cardspec.keyscheme import Algorithm
from cardspec.reader import InProcessReader
from hsm import ceremony
from hsm.internal_auth import CHALLENGE_KEY_DATA, challenge_key
from hsm.service import SoftwareKeyService
from issuance import audit
from issuance.audit import Actor
from issuance.models import (
    ApiCall,
    AuditEvent,
    Card,
    Channel,
    ChipAppKind,
    StaffRole,
    UsedChallenge,
    utcnow,
)
from issuance.services import verification as v
from issuance.services.verification import ChallengeCodec, Reason, Verdict

pytestmark = pytest.mark.softhsm


# --- the codec ------------------------------------------------------------------------------
def test_challenge_ids_are_bound_expiring_and_unforgeable() -> None:
    codec = ChallengeCodec(os.urandom(32))
    now = utcnow()
    ch = codec.issue(7, 60, now=now)
    assert len(ch.id) == 32 and len(ch.challenge) == 16
    assert ch.expires_at > now and (ch.expires_at - now).total_seconds() <= 60
    assert codec.open(ch.id, 7, now=now) == ch.challenge  # the same 16 bytes, recomputed
    assert codec.open(ch.id.upper(), 7, now=now) == ch.challenge
    assert codec.open(ch.id, 8, now=now) is Reason.CHALLENGE_UNKNOWN  # another caller's
    assert codec.open(ch.id, 7, now=ch.expires_at) is Reason.CHALLENGE_EXPIRED
    assert ChallengeCodec(os.urandom(32)).open(ch.id, 7, now=now) is Reason.CHALLENGE_UNKNOWN
    raw = bytearray(bytes.fromhex(ch.id))
    for i in range(16):  # any changed bit (expiry, nonce or tag) makes it unknown
        raw[i] ^= 0x01
        assert codec.open(raw.hex(), 7, now=now) is Reason.CHALLENGE_UNKNOWN
        raw[i] ^= 0x01
    for garbage in ("", "zz" * 16, "00" * 15, "00" * 17):
        assert codec.open(garbage, 7, now=now) is Reason.CHALLENGE_UNKNOWN
    many = [codec.issue(7, 60, now=now) for _ in range(2000)]
    assert len({c.id for c in many}) == 2000 and len({c.challenge for c in many}) == 2000
    # the expiry leads the id (big-endian Unix seconds): pruning is a key range
    assert int(ch.id[:8], 16) == int(ch.expires_at.replace(tzinfo=UTC).timestamp())


def test_challenge_key_comes_from_the_hsm_and_agrees_with_the_software_oracle(
    api_env: ApiEnv,
) -> None:
    service = api_env.hsm.service
    key = challenge_key(service)
    assert len(key) == 32 and challenge_key(service) == key  # stable: every node derives it
    twin = SoftwareKeyService(
        {
            (slot, Algorithm.DES3, 1): master_key(slot, Algorithm.DES3)
            for slot in ceremony.CENTRE_SLOTS
        }
    )
    assert challenge_key(twin) == key
    other = SoftwareKeyService(
        {(slot, Algorithm.DES3, 1): os.urandom(16) for slot in ceremony.CENTRE_SLOTS}
    )
    assert challenge_key(other) != key
    # its derivation data is no card's or region's (those are f || ~f): no card key is it
    data = CHALLENGE_KEY_DATA
    assert len(data) == 16 and data[8:] != bytes(b ^ 0xFF for b in data[:8])


# --- the hot path's answers are the routes' ----------------------------------------------------
def _holder_verdict(photo: bool) -> Verdict:
    from datetime import date

    return Verdict(
        True, None, ChipAppKind.MEDICAL, "B00000013", "330100D156000005" + "00" * 8,
        "formal", "active", "active", date(2036, 1, 2),
        v.HolderView("张三", "3301**********0011", "1", date(1980, 1, 1)),
        b"\xff\xd8jpeg" if photo else None,
    )  # fmt: skip


@pytest.mark.parametrize(
    "verdict",
    [
        _holder_verdict(True),
        _holder_verdict(False),
        Verdict(False, Reason.CHALLENGE_REUSED, ChipAppKind.SOCIAL_SECURITY),
        Verdict(False, Reason.UNKNOWN_CARD, ChipAppKind.MEDICAL, "B00000013", "AB" * 16),
        Verdict(
            False,
            Reason.LOST,
            ChipAppKind.MEDICAL,
            "B00000013",
            "AB" * 16,
            "formal",
            "lost_formal",
            "active",
            None,
        ),
    ],
)
def test_answers_are_serialised_as_pydantic_does(verdict: Verdict) -> None:
    import base64

    model = VerificationOut(
        valid=verdict.valid, reason=verdict.reason and str(verdict.reason),
        application=verdict.application, card_number=verdict.card_number,
        card_identification_code=verdict.card_identification_code,
        card_kind=verdict.card_kind, card_status=verdict.card_status,
        application_status=verdict.application_status, expiry_date=verdict.expiry_date,
        holder=None if verdict.holder is None else HolderOut(
            name=verdict.holder.name, citizen_id=verdict.holder.citizen_id,
            sex=verdict.holder.sex, birth_date=verdict.holder.birth_date),
        photo_jpeg_base64=None if verdict.photo_jpeg is None
        else base64.b64encode(verdict.photo_jpeg).decode(),
    )  # fmt: skip
    assert verification_json(verdict) == model.model_dump_json(exclude_none=True).encode()
    ch = ChallengeCodec(os.urandom(32)).issue(3, 60)
    out = ChallengeOut(
        challenge_id=ch.id, challenge=ch.challenge.hex(),
        apdu="0088000010" + ch.challenge.hex().upper() + "00", expires_at=ch.expires_at,
    )  # fmt: skip
    assert challenge_json(ch) == out.model_dump_json().encode()


@settings(max_examples=300, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=64),
    credential_id=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    ttl=st.integers(min_value=1, max_value=10**6),
    now=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)),
)
def test_challenges_and_their_json_are_pydantics(
    key: bytes, credential_id: int, ttl: int, now: datetime
) -> None:
    """The challenge's JSON, formatted directly (:func:`challenge_json`), is what pydantic
    writes for :class:`ChallengeOut`; its expiry is the whole second ``ttl`` after ``now``
    (the codec reads the clock in Unix seconds)."""
    codec = ChallengeCodec(key)
    ch = codec.issue(credential_id, ttl, now=now)
    whole = now.replace(microsecond=0, tzinfo=UTC)
    assert ch.expires_at == (whole + timedelta(seconds=ttl)).replace(tzinfo=None)
    assert ch.expires_at.tzinfo is None
    assert codec.open(ch.id, credential_id, now=now) == ch.challenge
    out = ChallengeOut(
        challenge_id=ch.id, challenge=ch.challenge.hex(),
        apdu="0088000010" + ch.challenge.hex().upper() + "00", expires_at=ch.expires_at,
    )  # fmt: skip
    assert challenge_json(ch) == out.model_dump_json().encode()


@pytest.mark.parametrize("challenge_id", ["00" * 16, "110101199003070011 " + "ab" * 7])
def test_audit_values_are_the_generic_event_row(challenge_id: str) -> None:
    actor = Actor("agency:hz-1", StaffRole.SYSTEM, Channel.SYSTEM)
    now = utcnow()
    for verdict in (_holder_verdict(True), Verdict(False, Reason.NOT_GENUINE, ChipAppKind.MEDICAL)):
        generic = audit.event_row(
            actor, "card.verified", "card", "CIC",
            after="valid" if verdict.valid else "invalid",
            details=v._audit_details(verdict, ChipAppKind.MEDICAL, "B00000013", challenge_id),
            occurred_at=now,
        )  # fmt: skip
        fast = v._audit_values(actor, "CIC", verdict, ChipAppKind.MEDICAL, "B00000013",
                               challenge_id, now)  # fmt: skip
        assert fast == tuple(generic[c] for c in audit.EVENT_COLUMNS)
    assert ("*" in audit.scrub(challenge_id)) is (challenge_id != "00" * 16)  # both cases seen
    # 18 digits inside a hexadecimal identifier are not a citizen ID: kept as they are
    hexa = "110101199003070011" + "ab" * 7
    assert audit.scrub(hexa) == hexa and audit.scrub(f"ab{hexa}") == f"ab{hexa}"


def _flows(env: ApiEnv, chip: InProcessReader) -> list[tuple[int, Any]]:
    """One sequence of calls covering the hot path's cases and its hand-overs to FastAPI."""
    http = TestClient(env.client.app)
    hospital, other = env.auth("hospital"), env.auth("selfservice")
    out: list[tuple[int, Any]] = []

    def keep(r: Any) -> None:
        body = r.json()
        for k in ("challenge_id", "challenge", "apdu", "expires_at"):
            body.pop(k, None)
        out.append((r.status_code, body))

    def flow(headers: dict[str, str], **extra: Any) -> tuple[str, dict[str, Any]]:
        r = http.post("/v1/verifications/challenge", headers=headers)
        keep(r)
        ch = r.json()
        pub = read_card_public(chip)
        c = bytes.fromhex(ch["challenge"])
        resp = internal_authenticate(chip, c[:8], c[8:])
        chip.disconnect()
        body = {"challenge_id": ch["challenge_id"], "response": resp.hex(),
                "card_identification_code": pub.card_identification_code,
                "card_number": pub.card_number, **extra}  # fmt: skip
        keep(http.post("/v1/verifications", json=body, headers=headers))
        return ch["challenge_id"], body

    _, body = flow(hospital, application="medical", include_holder=True, include_photo=True)
    keep(http.post("/v1/verifications", json=body, headers=hospital))  # replay
    flow(hospital, application="financial")  # sealed until a bank activates it
    flow(other, include_photo=True)  # 403, audited (FastAPI)
    keep(http.post("/v1/verifications", json={**body, "x": 1}, headers=hospital))  # 422
    keep(http.post("/v1/verifications", json=body))  # 401
    keep(http.post("/v1/verifications/challenge", headers={"Authorization": "Bearer nope"}))
    keep(http.post("/v1/verifications", content=b"{", headers={**hospital,
                   "Content-Type": "application/json"}))  # fmt: skip
    return out


def _records(env: ApiEnv, since: tuple[int, int]) -> tuple[list[Any], list[Any]]:
    with env.session() as s:  # type: ignore[attr-defined]
        calls = s.execute(
            sa.select(ApiCall.method, ApiCall.route, ApiCall.status, ApiCall.error_code,
                      ApiCall.caller).where(ApiCall.id > since[0]).order_by(ApiCall.id)
        ).all()  # fmt: skip
        events = s.execute(
            sa.select(AuditEvent.actor_name, AuditEvent.action, AuditEvent.after,
                      AuditEvent.reason).where(AuditEvent.id > since[1]).order_by(AuditEvent.id)
        ).all()  # fmt: skip
    return [tuple(c) for c in calls], [tuple(e) for e in events]


def _marks(env: ApiEnv) -> tuple[int, int]:
    with env.session() as s:  # type: ignore[attr-defined]
        return (
            s.scalar(sa.select(sa.func.coalesce(sa.func.max(ApiCall.id), 0))) or 0,
            s.scalar(sa.select(sa.func.coalesce(sa.func.max(AuditEvent.id), 0))) or 0,
        )


def test_hot_path_answers_and_records_what_the_routes_do(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader]
) -> None:
    _card, chip = card_and_chip
    hot = api_env.client.app.hot
    seen = {}
    for enabled in (False, True, True):  # FastAPI only; hot path (cold cache, then warm)
        hot.enabled = enabled
        if enabled and len(seen) == 1:
            api_env.client.app.state.auth.forget()
        mark = _marks(api_env)
        answers = _flows(api_env, chip)
        seen[len(seen)] = (answers, *_records(api_env, mark))
    hot.enabled = True
    # both paths authenticate before the body is read (api.gate): a malformed JSON body's
    # 422 is recorded with its caller on either path (issue 15)
    fastapi_calls, hot_calls = seen[0][1], seen[1][1]
    assert fastapi_calls[-1] == hot_calls[-1]
    assert fastapi_calls[-1][:4] == ("POST", "/v1/verifications", 422, "validation_error")
    assert hot_calls[-1][4].startswith("agency:hospital")
    for i in (1, 2):
        assert seen[i][0] == seen[0][0]  # the answers
        assert seen[i][1] == seen[0][1]  # the call-log records
        assert seen[i][2] == seen[0][2]  # the audit events
    answers, calls, events = seen[0]
    assert [s for s, _ in answers] == [200, 200, 200, 200, 200, 200, 403, 422, 401, 401, 422]
    assert answers[1][1]["valid"] is True and "holder" in answers[1][1]
    assert answers[2][1]["reason"] == "challenge_reused"
    assert answers[4][1]["valid"] is False and answers[4][1]["reason"] == "not_activated"
    # every challenge and every refusal is a call-log record; verdicts are audit events
    assert [c[1] for c in calls].count("/v1/verifications/challenge") == 4  # 3 + one 401
    assert [e[2] for e in events if e[1] == "card.verified"] == ["valid", "invalid", "invalid"]
    assert any(e[1] == "api.denied" for e in events)


# --- single use, pruning ----------------------------------------------------------------------
def test_used_challenges_are_pruned_once_long_expired(api_env: ApiEnv) -> None:
    codec = ChallengeCodec(os.urandom(32))
    now = utcnow()
    old = codec.issue(1, 60, now=now - timedelta(hours=1))
    recent = codec.issue(1, 60, now=now - timedelta(minutes=2))  # expired, inside the margin
    live = codec.issue(1, 60, now=now)
    with api_env.session() as s:  # type: ignore[attr-defined]
        for ch in (old, recent, live):
            assert v.mark_used(s, ch.id) is True
        assert v.mark_used(s, live.id) is False  # single use
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert v.prune_used_challenges(s, now) == 1
    with api_env.session() as s:  # type: ignore[attr-defined]
        left = set(s.scalars(sa.select(UsedChallenge.id)).all())
    assert left == {bytes.fromhex(recent.id), bytes.fromhex(live.id)}


def test_worker_prunes_used_challenges(api_env: ApiEnv) -> None:
    from issuance.db import make_sessionmaker
    from issuance.worker import Worker

    codec = ChallengeCodec(os.urandom(32))
    with api_env.session() as s:  # type: ignore[attr-defined]
        v.mark_used(s, codec.issue(1, 60, now=utcnow() - timedelta(days=1)).id)
    worker = Worker(api_env.settings, make_sessionmaker(api_env.engine), seal=False)
    assert worker.run_round().done["prune_challenges"] == 1
    assert "prune_challenges" not in worker.run_round().done  # at most once a minute
