"""Card verification end to end: emulated chip personalised with HSM keys, the real app, on
SQLite and PostgreSQL; replays, expiry, lifecycle changes, temporary cards, scopes."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv
from fastapi.testclient import TestClient

from api.client import YktClient, verify_card_in_reader
from cardspec.cardops import internal_authenticate, read_card_public
from cardspec.reader import InProcessReader
from issuance import services
from issuance.models import ApiCredential, AuditEvent, Card, utcnow

pytestmark = pytest.mark.softhsm


def client_for(env: ApiEnv, who: str) -> YktClient:
    return YktClient(TestClient(env.client.app, headers=env.auth(who)))


def answer(chip: InProcessReader, challenge_hex: str) -> tuple[str, str, bytes]:
    pub = read_card_public(chip)
    ch = bytes.fromhex(challenge_hex)
    resp = internal_authenticate(chip, ch[:8], ch[8:])
    chip.disconnect()
    return pub.card_identification_code, pub.card_number, resp


def test_genuine_active_card_verifies_with_holder_and_photo(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader]
) -> None:
    card, chip = card_and_chip
    hospital = client_for(api_env, "hospital")
    v = verify_card_in_reader(
        hospital, chip, application="medical", include_holder=True, include_photo=True
    )
    assert v["valid"] is True and "reason" not in v
    assert v["card_number"] == card.card_number
    assert v["holder"]["name"] == "张三"
    assert "*" in v["holder"]["citizen_id"]  # masked for a hospital
    assert base64.b64decode(v["photo_jpeg_base64"]).startswith(b"\xff\xd8")
    # a supervisor (holder:full_id) sees the full number
    sup = verify_card_in_reader(client_for(api_env, "supervisor"), chip, include_holder=True)
    assert sup["valid"] and "*" not in sup["holder"]["citizen_id"]
    with api_env.session() as s:  # type: ignore[attr-defined]
        events = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "card.verified")).all()
    assert len(events) == 2
    assert {e.actor_name for e in events} == {
        f"agency:{api_env.clients['hospital'][0].rsplit('-', 1)[0]}",
        api_env.actors["supervisor"].username,
    }


def test_replayed_expired_unknown_challenges_are_refused(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader]
) -> None:
    _card, chip = card_and_chip
    c = client_for(api_env, "hospital")
    ch = c.challenge()
    cic, number, resp = answer(chip, ch["challenge"])
    assert c.verify(ch["challenge_id"], cic, number, resp)["valid"] is True
    again = c.verify(ch["challenge_id"], cic, number, resp)
    assert again == {"valid": False, "reason": "challenge_reused", "application": "social_security"}
    # a challenge issued to the hospital is unknown to the bank
    ch2 = c.challenge()
    cic, number, resp = answer(chip, ch2["challenge"])
    assert (
        client_for(api_env, "bank").verify(ch2["challenge_id"], cic, number, resp)["reason"]
        == "challenge_unknown"
    )
    # expiry: a challenge the app itself issued for this caller a while ago
    codec = api_env.client.app.state.ctx.challenges
    assert codec is not None  # derived from the HSM at the first challenge
    with api_env.session() as s:  # type: ignore[attr-defined]
        cred = s.scalar(
            sa.select(ApiCredential.id).where(
                ApiCredential.client_id == api_env.clients["hospital"][0]
            )
        )
    ttl = api_env.settings.api.challenge_ttl_seconds
    old = codec.issue(cred, ttl, now=utcnow() - timedelta(seconds=ttl + 1))
    cic, number, resp = answer(chip, old.challenge.hex())
    assert c.verify(old.id, cic, number, resp)["reason"] == "challenge_expired"
    fresh = codec.issue(cred, ttl)  # the same codec's fresh one verifies: only time differs
    cic, number, resp = answer(chip, fresh.challenge.hex())
    assert c.verify(fresh.id, cic, number, resp)["valid"] is True
    # a forged id (one bit of its tag changed) and garbage are unknown, never a 500 or a 422
    forged = fresh.id[:-1] + format(int(fresh.id[-1], 16) ^ 1, "x")
    assert c.verify(forged, cic, number, resp)["reason"] == "challenge_unknown"
    assert c.verify("0" * 32, cic, number, resp)["reason"] == "challenge_unknown"


def test_forged_answers_and_unknown_cards(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader]
) -> None:
    card, chip = card_and_chip
    c = client_for(api_env, "hospital")
    ch = c.challenge()
    cic, number, resp = answer(chip, ch["challenge"])
    forged = bytes([resp[0] ^ 1]) + resp[1:]
    assert c.verify(ch["challenge_id"], cic, number, forged)["reason"] == "not_genuine"
    ch = c.challenge()
    cic, number, resp = answer(chip, ch["challenge"])
    other = services.allocate_card_numbers  # a card number that is not this chip's
    assert other is not None
    from cardspec.ids import make_card_number

    a, b = make_card_number("A0000001"), make_card_number("A0000002")  # valid, not this chip's
    v = c.verify(ch["challenge_id"], cic, a if number != a else b, resp)
    assert v["reason"] == "not_genuine" and "card_status" not in v
    ch = c.challenge()
    v = c.verify(ch["challenge_id"], "330100D156000005" + "00" * 8, number, resp)
    assert v["reason"] == "unknown_card"
    assert card.card_number == number


@pytest.mark.parametrize(
    ("action", "reason"),
    [("loss", "lost"), ("suspend", "suspended"), ("cancel", "cancelled")],
)
def test_lifecycle_change_makes_the_next_verification_fail(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader], action: str, reason: str
) -> None:
    card, chip = card_and_chip
    hospital = client_for(api_env, "hospital")
    assert verify_card_in_reader(hospital, chip)["valid"] is True
    n = card.card_number
    if action == "loss":
        r = api_env.client.post(
            f"/v1/cards/{n}/loss-reports", json={"channel": "phone"}, headers=api_env.auth("clerk")
        )
    elif action == "suspend":
        r = api_env.client.post(
            f"/v1/cards/{n}/suspend", json={"reason": "fraud"},
            headers=api_env.auth("fund_supervisor"),
        )  # fmt: skip
    else:
        r = api_env.client.post(
            f"/v1/cards/{n}/cancel", json={"reason": "death record"},
            headers=api_env.auth("supervisor"),
        )  # fmt: skip
    assert r.status_code in (200, 201), r.text
    v = verify_card_in_reader(hospital, chip)
    assert v["valid"] is False and v["reason"] == reason
    if action == "loss":  # withdrawn: valid again
        r = api_env.client.post(
            f"/v1/cards/{n}/unreport",
            json={"channel": "phone", "identity_checked": True},
            headers=api_env.auth("clerk"),
        )
        assert r.status_code == 200, r.text
        assert verify_card_in_reader(hospital, chip)["valid"] is True


def test_temporary_card_verifies_for_medical_only(api_env: ApiEnv) -> None:
    with api_env.session() as s:  # type: ignore[attr-defined]
        from api_helpers import PHOTO, fake_photo, make_cid

        app = services.submit_application(
            s, api_env.settings,
            services.ApplicationInput(citizen_id=make_cid(), name="李四", phone="13800138001",
                                      photo=PHOTO, ethnicity="01"),
            api_env.actors["clerk"], photo_processor=fake_photo,
        )  # fmt: skip
        person_id = app.person_id
    r = api_env.client.post(
        "/v1/temporary-cards", json={"person_id": person_id}, headers=api_env.auth("clerk")
    )
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "temporary" and r.json()["chip_apps"] == {"medical": "active"}
    with api_env.session() as s:  # type: ignore[attr-defined]
        temp = services.find_card(s, card_number=r.json()["card_number"])
    chip = api_env.chip(temp)
    hospital = client_for(api_env, "hospital")
    assert verify_card_in_reader(hospital, chip, application="medical")["valid"] is True
    for app_kind in ("social_security", "financial", "pension"):
        v = verify_card_in_reader(hospital, chip, application=app_kind)
        assert v == v | {"valid": False, "reason": "wrong_application"}


def test_holder_and_photo_need_their_scopes(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader]
) -> None:
    _card, chip = card_and_chip
    other = client_for(api_env, "selfservice")  # an "other" agency: verify without holder
    assert verify_card_in_reader(other, chip)["valid"] is True
    ch = other.challenge()
    cic, number, resp = answer(chip, ch["challenge"])
    r = other.http.post(
        "/v1/verifications",
        json={"challenge_id": ch["challenge_id"], "card_identification_code": cic,
              "card_number": number, "response": resp.hex(), "include_photo": True},
    )  # fmt: skip
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    with api_env.session() as s:  # type: ignore[attr-defined]
        denied = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "api.denied")).all()
    assert any("holder:photo" in (e.details or "") for e in denied)


def test_fast_hsm_check_agrees_with_the_key_scheme(api_env: ApiEnv) -> None:
    """hsm.internal_auth (direct PKCS#11 calls) against the software oracle of the test keys,
    for a city card (card factor) and a province card (region factor first)."""
    import os

    from api_helpers import REGION, master_key

    from cardspec import keyscheme
    from cardspec.keyscheme import Algorithm, KeySlot
    from hsm.errors import CryptogramMismatch
    from hsm.internal_auth import check_internal_auth
    from hsm.service import CardKeyRef

    service = api_env.hsm.service
    cic = "330100D156000005" + os.urandom(8).hex().upper()
    for region_factor in (False, True):
        ref = CardKeyRef(cic, region_factor=region_factor)
        factors = [keyscheme.card_factor(cic)]
        if region_factor:
            factors.insert(0, keyscheme.region_factor(REGION))
        irk = keyscheme.derive_card_key(
            master_key(KeySlot.IRK, Algorithm.DES3), factors, Algorithm.DES3
        )
        for _ in range(3):
            factor, rnd = os.urandom(8), os.urandom(8)
            good = keyscheme.internal_auth_response(irk, factor, rnd, Algorithm.DES3)
            check_internal_auth(service, ref, factor, rnd, good)
            service.verify_internal_auth(ref, factor, rnd, good)  # the reference path agrees
            with pytest.raises(CryptogramMismatch):
                check_internal_auth(service, ref, factor, rnd, bytes([good[0] ^ 0x80]) + good[1:])


def test_hsm_runner_serves_loops_and_threads_in_batches() -> None:
    import asyncio
    import threading

    from api.context import HsmRunner

    seen_threads: set[str] = set()

    class Service:
        def work(self, n: int) -> int:
            seen_threads.add(threading.current_thread().name)
            if n < 0:
                raise ValueError("negative")
            return n * n

    runner = HsmRunner(lambda: Service())  # type: ignore[arg-type, return-value]

    async def many() -> list[int]:
        return list(await asyncio.gather(*(runner.run(Service.work, i) for i in range(200))))

    assert asyncio.run(many()) == [i * i for i in range(200)]
    assert runner.call(Service.work, 7) == 49  # from a plain thread
    with pytest.raises(ValueError, match="negative"):
        asyncio.run(runner.run(Service.work, -1))
    assert seen_threads == {"hsm"}  # one owner
    runner.shutdown()


def test_hsm_runner_runs_a_short_call_on_the_loop_only_when_the_hsm_is_free() -> None:
    """run_short: the first call opens the key service on the HSM thread; then the call runs
    on the loop's thread under the PKCS#11 lock, except while another thread holds that lock
    (queued for the HSM thread: the loop never waits for the lock) or after shutdown."""
    import asyncio
    import threading

    from api.context import HsmRunner
    from hsm.errors import HsmUnavailable
    from hsm.pkcs11 import LOCK

    opened_in: list[str] = []

    class Service:
        def __init__(self) -> None:
            opened_in.append(threading.current_thread().name)

        def where(self, n: int) -> tuple[str, bool, int]:
            held = LOCK.acquire(blocking=False)  # re-entrant: True if this thread holds it
            if held:
                LOCK.release()
            if n < 0:
                raise ValueError("negative")
            return threading.current_thread().name, held, n * n

    runner = HsmRunner(lambda: Service())  # type: ignore[arg-type, return-value]
    me = threading.current_thread().name

    async def short(n: int) -> tuple[str, bool, int]:
        return await runner.run_short(Service.where, n)

    async def scenario() -> None:
        assert (await short(2))[0] == "hsm"  # the service is opened on the HSM thread
        assert opened_in == ["hsm"]
        assert await short(3) == (me, True, 9)  # now on the loop's thread, under the lock
        with pytest.raises(ValueError, match="negative"):
            await short(-1)
        taken, release = threading.Event(), threading.Event()

        def hold() -> None:
            with LOCK:
                taken.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        taken.wait(10)
        try:
            where, _, square = await short(4)  # HSM busy: queued, the loop did not wait
            assert (where, square) == ("hsm", 16)
        finally:
            release.set()
            holder.join()
        assert (await short(5))[0] == me
        assert (await runner.run(Service.where, 6))[0] == "hsm"  # run: always the thread
        runner.shutdown()
        with pytest.raises(HsmUnavailable):
            await short(7)

    asyncio.run(scenario())
    assert opened_in == ["hsm"]


def test_replays_racing_for_one_challenge_verify_once(
    api_env: ApiEnv, card_and_chip: tuple[Card, InProcessReader]
) -> None:
    """Eight concurrent posts of the same answer: exactly one is valid, the others are refused
    as replays, and each attempt has its audit event."""
    from concurrent.futures import ThreadPoolExecutor

    _card, chip = card_and_chip
    c = client_for(api_env, "hospital")
    ch = c.challenge()
    cic, number, resp = answer(chip, ch["challenge"])

    def post(_: int) -> dict[str, object]:
        return client_for(api_env, "hospital").verify(ch["challenge_id"], cic, number, resp)

    with ThreadPoolExecutor(8) as pool:
        verdicts = list(pool.map(post, range(8)))
    assert sum(v["valid"] is True for v in verdicts) == 1
    assert all(v["reason"] == "challenge_reused" for v in verdicts if v["valid"] is not True)
    with api_env.session() as s:  # type: ignore[attr-defined]
        events = s.scalars(
            sa.select(AuditEvent).where(
                AuditEvent.action == "card.verified",
                AuditEvent.details.contains(ch["challenge_id"]),
            )
        ).all()
    assert sorted(e.after for e in events) == ["invalid"] * 7 + ["valid"]
