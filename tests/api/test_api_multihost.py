"""Issue 20: the deployment on several hosts (network namespaces on this machine, made and
removed by the test: :mod:`devstack.hosts`), and the faults it must survive.

Topology (one /24 on a bridge; the test itself runs in the root namespace, the bridge's first
address, like an operator's machine or a hospital's terminals)::

    db1, db2   PostgreSQL primary + streaming replica, managed by Patroni (synchronous mode),
               etcd member
    lb1, lb2   HAProxy on each: PostgreSQL on :5000 to whichever node Patroni's ``/primary``
               says is the primary; the API on :8080 balanced over api1/api2 (``/healthz``);
               keepalived (VRRP) keeps one floating address on one of them (lb1 first) and
               the clients (terminals, API nodes, the operator) use only that address; lb2 is
               an etcd member
    api1, api2 ``ykt serve``, each with its own SoftHSM token loaded by the same key ceremony
               (components and KCVs: no key copied in clear)

Faults, one after the other on one stack, under verification load from the test's threads
(each a terminal with its own card, through HAProxy; a terminal whose verification got a 5xx
or no answer sends the same answer again until it gets one, as the client kit does):

1. api1 killed (every process of the host, its link down): HAProxy sends everything to api2;
   a 5xx only for a request sent before the kill and still open at it (counted); no challenge
   accepted twice (``card.verified`` with ``valid`` at most once per challenge in the audit
   log, and exactly the ones the terminals were told were valid, plus those whose answer was
   lost in the kill and that the retry found used).
2. lb1 killed (the balancer holding the floating address: HAProxy, keepalived, its link):
   keepalived on lb2 takes the address over and announces it; the requests open on lb1 get
   no answer (the terminal sends them again), and so may a verification whose database
   connection went through lb1 (503); no challenge accepted twice, nothing lost; the time
   until the address moved and until verifications were answered again is printed.
3. the PostgreSQL primary killed (the host: Patroni, PostgreSQL, its etcd member): Patroni
   promotes the synchronous replica, HAProxy follows, api2 reconnects by itself; every
   verification a terminal was told was valid is in the audit log afterwards (synchronous
   replication: nothing committed is lost); the time to recover is measured and printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from api_helpers import active_card, emulator_for, make_hsm, staff

from cardspec.cardops import internal_authenticate, read_card_public
from cardspec.reader import InProcessReader
from devstack import hosts as H
from issuance import audit, services
from issuance.db import make_engine, make_sessionmaker, transaction
from issuance.models import Agency, AgencyKind, AuditEvent
from issuance.services import credentials
from yikatong.settings import load_settings

pytestmark = [
    pytest.mark.softhsm, pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(600),
]  # fmt: skip

PROJECT = Path(__file__).resolve().parents[2]
API_PORT = 8000
TERMINALS = 6


def ykt(*args: str) -> list[str]:
    return [sys.executable, "-m", "yikatong.cli.main", *args]


def host_env(data_dir: Path, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YKT_") and k != "SOFTHSM2_CONF"}
    return env | {"YKT_DATA_DIR": str(data_dir), "YKT_DATABASE__URL": db_url,
                  "PYTHONUNBUFFERED": "1"}  # fmt: skip


@dataclass
class Stack:
    lan: H.Lan
    db: list[H.Host]
    lbs: list[H.Host]  # the balancers alive
    vip: str  # their floating address
    api: list[H.Host]
    db_url: str
    log: list[str] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://{self.vip}:{H.API_PORT}"

    def note(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        self.log.append(line)
        print(line, flush=True)

    def primary(self) -> H.Host:
        return next(h for h in self.db if H.patroni_role(h) == "primary")

    def haproxy_routes_to(self, proxy: str, names: set[str]) -> bool:
        """Every balancer alive sends ``proxy``'s traffic to ``names`` only."""
        for lb in self.lbs:
            status = H.haproxy_status(lb)
            up = {srv for (px, srv), st in status.items() if px == proxy and st == "UP"}
            if up != names:
                return False
        return True


def start_api(host: H.Host, db_url: str, balancers: list[H.Host]) -> None:
    host.start(
        ykt("serve", "--host", host.address, "--port", str(API_PORT), "--workers", "1",
            "--forwarded-allow-ips", ",".join(b.address for b in balancers)),
        "serve", env=host_env(host.dir / "data", db_url), cwd=PROJECT,
    )  # fmt: skip


@contextmanager
def stack(base: Path) -> Iterator[Stack]:
    with H.Lan(base / "hosts") as lan:
        names = ("db1", "db2", "lb1", "lb2", "api1", "api2")
        db1, db2, lb1, lb2, api1, api2 = (lan.host(n) for n in names)
        s = Stack(lan, [db1, db2], [lb1, lb2], lan.spare_address(), [api1, api2], "")
        address = H.start_database_tier([db1, db2], s.lbs, [api1, api2], API_PORT, vip=s.vip)
        s.db_url = H.database_url(address, "ykt", "postgresql+psycopg")
        subprocess.run(
            ykt("db", "upgrade"), env=host_env(base / "operator", s.db_url), cwd=PROJECT,
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        for api in s.api:  # each node's own token, the same ceremony (components and KCVs)
            make_hsm(api.dir / "data")
            start_api(api, s.db_url, s.lbs)
        H.wait_for("HAProxy on both API nodes",
                   lambda: s.haproxy_routes_to("api", {"api1", "api2"}), 120)  # fmt: skip
        s.note(f"stack up on {lan.net}: db1 primary, db2 sync replica, lb1 + lb2 sharing "
               f"{s.vip} (on lb1), api1, api2")  # fmt: skip
        yield s


@dataclass
class Call:
    terminal: int
    challenge_id: str
    started: float
    ended: float
    statuses: list[int]  # every answer to the verification, retries included (0: no answer)
    verdict: dict[str, object] | None


def _answer(chip: InProcessReader, challenge_hex: str) -> tuple[str, str, str]:
    pub = read_card_public(chip)
    ch = bytes.fromhex(challenge_hex)
    resp = internal_authenticate(chip, ch[:8], ch[8:])
    chip.disconnect()
    return pub.card_identification_code, pub.card_number, resp.hex()


class Terminals:
    """``TERMINALS`` threads verifying their own card in a loop through HAProxy."""

    def __init__(self, url: str, token: str, chips: list[InProcessReader]) -> None:
        self.url, self.token, self.chips = url, token, chips
        self.calls: list[Call] = []
        #: every request answered 5xx or not at all: (when, its X-Call header, status or 0)
        self.failed: list[tuple[float, str, int]] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(len(chips))]

    def __enter__(self) -> Terminals:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def _post(
        self, http: httpx.Client, path: str, call: str, body: object = None
    ) -> httpx.Response | None:
        try:
            r = http.post(path, json=body, headers={"X-Call": call})
        except httpx.HTTPError:
            r = None
        if r is None or r.status_code >= 500:
            with self._lock:
                self.failed.append((time.monotonic(), call, r.status_code if r else 0))
        return r

    def _run(self, i: int) -> None:
        chip = self.chips[i]
        headers = {"Authorization": f"Bearer {self.token}"}
        # a terminal gives up on an answer after 10 s of silence (the client kit: httpx's 5 s):
        # a request the dead balancer had taken gets no word from anyone
        with httpx.Client(base_url=self.url, headers=headers, timeout=10) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                r = self._post(http, "/v1/verifications/challenge", f"ch-{i}-{n}")
                if r is None or r.status_code != 200:
                    time.sleep(0.2)
                    continue
                ch = r.json()
                cic, number, resp = _answer(chip, ch["challenge"])
                body = {"challenge_id": ch["challenge_id"], "card_identification_code": cic,
                        "card_number": number, "response": resp}  # fmt: skip
                started = time.monotonic()
                statuses: list[int] = []
                verdict = None
                for attempt in range(200):  # the same answer again until one comes
                    r = self._post(http, "/v1/verifications", f"{ch['challenge_id']}-{attempt}",
                                   body)  # fmt: skip
                    statuses.append(r.status_code if r is not None else 0)
                    if r is not None and r.status_code < 500:
                        verdict = r.json()
                        break
                    time.sleep(0.3)
                with self._lock:
                    self.calls.append(Call(i, ch["challenge_id"], started, time.monotonic(),
                                           statuses, verdict))  # fmt: skip

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)


def _verified_in_audit(db_url: str) -> dict[str, int]:
    """challenge id -> number of ``card.verified`` events that said valid."""
    engine = make_engine(url=db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(AuditEvent.details).where(AuditEvent.action == "card.verified")
            ).scalars()
            out: dict[str, int] = {}
            for d in rows:
                details = json.loads(d) if isinstance(d, str) else d
                if details["valid"]:
                    out[details["challenge"]] = out.get(details["challenge"], 0) + 1
            return out
    finally:
        engine.dispose()


def _check_no_double_and_nothing_lost(calls: list[Call], db_url: str) -> dict[str, int]:
    # the audit log holds each challenge id as audit.scrub leaves it (the identity for a hex
    # id: 18 digits inside one are not taken for a citizen ID number)
    accepted = _verified_in_audit(db_url)
    doubled = {c: n for c, n in accepted.items() if n > 1}
    assert not doubled, f"challenges accepted more than once: {doubled}"
    told_valid = {
        audit.scrub(c.challenge_id) for c in calls if c.verdict and c.verdict.get("valid")
    }
    lost = told_valid - set(accepted)
    assert not lost, f"verifications answered valid, not in the audit log: {lost}"
    for c in calls:
        assert c.verdict is not None, f"terminal {c.terminal} never got an answer: {c.statuses}"
        if c.verdict.get("valid"):
            continue
        # refused only as a replay of its own earlier attempt whose answer was lost
        assert c.verdict.get("reason") == "challenge_reused", c
        assert len(c.statuses) > 1 and audit.scrub(c.challenge_id) in accepted, c
    return accepted


def test_api_node_balancer_and_database_primary_killed_under_verification_load(
    tmp_path: Path,
) -> None:
    with stack(tmp_path) as s:
        settings = load_settings(environ={"YKT_DATA_DIR": str(tmp_path / "operator")})
        driver_hsm = make_hsm(tmp_path / "bureau")  # personalises the terminals' cards
        engine = make_engine(url=s.db_url)
        with transaction(make_sessionmaker(engine)) as db:
            actors = staff(db, "mh")
            agency: Agency = services.create_agency(
                db, "hospital-mh", "hospital", AgencyKind.HOSPITAL, "330100"
            )
            client = credentials.register_agency_client(db, agency)
            cards = [active_card(db, settings, actors) for _ in range(TERMINALS)]
        engine.dispose()
        chips = [emulator_for(driver_hsm, card) for card in cards]
        r = httpx.post(
            f"{s.api_url}/v1/oauth/token", timeout=30,
            data={"grant_type": "client_credentials", "client_id": client.client_id,
                  "client_secret": client.client_secret},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]

        # -- fault 1: an API node dies under load -----------------------------------------
        with Terminals(s.api_url, token, chips) as terms:
            time.sleep(4)
            before = len(terms.snapshot())
            killed_at = time.monotonic()
            s.api[0].kill()
            s.note(f"api1 killed after {before} verifications")
            down = H.wait_for("HAProxy marks api1 down",
                              lambda: s.haproxy_routes_to("api", {"api2"}), 30)  # fmt: skip
            s.note(f"HAProxy took api1 out after {down:.1f} s")
            time.sleep(5)
        calls = terms.snapshot()
        in_flight = [c for c in calls if c.started < killed_at < c.ended]
        after = [c for c in calls if c.started > killed_at + down + 1]
        # every request that got a 5xx or no answer was one HAProxy had on api1 (the dead
        # node) when it took api1 out: HAProxy counts them ("N sessions active") and cuts them
        downs = re.findall(
            r"Server api/api1 is DOWN, .* (\d+) sessions active", s.lbs[0].log("haproxy")
        )
        on_dead = int(downs[-1])  # the last time: the earlier ones were before it started
        s.note(f"{len(calls)} verifications ({len(in_flight)} open at the kill, "
               f"{len(after)} after api1 was out); {len(terms.failed)} request(s) answered "
               f"5xx or not at all; HAProxy had {on_dead} in flight on api1 when it cut "
               "them")  # fmt: skip
        for when, call, st in terms.failed:
            s.note(f"  {when - killed_at:+.2f} s {call} -> {st or 'connection closed'}")
        # each terminal has one request open at a time: at most one failure each, all of them
        # cut when HAProxy took api1 out (HAProxy's count leaves out a request it was still
        # connecting to api1 when the node vanished)
        assert len(terms.failed) <= TERMINALS and on_dead <= len(terms.failed)
        assert all(0 < when - killed_at < down + 0.5 for when, *_x in terms.failed)
        assert len(after) > 10 and all(c.statuses == [200] for c in after)
        accepted = _check_no_double_and_nothing_lost(calls, s.db_url)
        s.note(f"fault 1: {len(accepted)} challenges accepted once each, none twice, none lost")

        # -- fault 2: the balancer holding the floating address dies under load ----------
        lb1, lb2 = s.lbs
        assert H.holds_address(lb1, s.vip) and not H.holds_address(lb2, s.vip)
        with Terminals(s.api_url, token, chips) as terms:
            time.sleep(3)
            before = len(terms.snapshot())
            killed_at = time.monotonic()
            lb1.kill()
            s.lbs = [lb2]
            s.note(f"lb1 (holding {s.vip}) killed after {before} verifications")
            moved = H.wait_for(f"{s.vip} on lb2", lambda: H.holds_address(lb2, s.vip), 30, 0.1)
            switched = time.monotonic()
            s.note(f"keepalived moved {s.vip} to lb2 after {moved:.1f} s")

            def served_again() -> bool:
                return any(c.started > switched and c.verdict and c.verdict.get("valid")
                           for c in terms.snapshot())  # fmt: skip

            H.wait_for("verifications again", served_again, 60, 0.05)
            time.sleep(max(4.0, switched + 20 - time.monotonic()))  # past the timeouts
        calls = terms.snapshot()
        kinds = Counter(st for _w, _c, st in terms.failed)
        first_ok = min(c.ended for c in calls if c.started > switched and c.statuses == [200])
        s.note(f"{len(calls)} verifications; {len(terms.failed)} request(s) answered 5xx or not "
               f"at all {dict(kinds)}; first verification sent after the move answered "
               f"{first_ok - killed_at:.1f} s after the kill")  # fmt: skip
        for when, call, st in terms.failed:
            s.note(f"  {when - killed_at:+.2f} s {call} -> {st or 'connection closed'}")
        # a request open on lb1 gets no answer (reset once the address moved, or silence until
        # the terminal's 10 s timeout if lb1 had taken all of it); one whose database
        # connection went through lb1 gets 503 (never a 500); all of it at the fault, none once
        # the address moved and the API nodes' connections were made again
        assert set(kinds) <= {0, 503}, kinds
        assert all(0 < when - killed_at < moved + 15 for when, *_x in terms.failed)
        late = [c for c in calls if c.started > switched + 15]
        assert late and all(c.statuses == [200] for c in late)
        assert first_ok - killed_at < 30
        accepted = _check_no_double_and_nothing_lost(calls, s.db_url)
        s.note(f"fault 2: {len(accepted)} challenges accepted in all, once each, none lost")

        # -- fault 3: the PostgreSQL primary dies under load ------------------------------
        old = s.primary()
        assert old.name == "db1"
        with Terminals(s.api_url, token, chips) as terms:
            time.sleep(3)
            killed_at = time.monotonic()
            old.kill()
            s.note(f"{old.name} (primary) killed")
            promoted = H.wait_for("db2 promoted", lambda: H.patroni_role(s.db[1]) == "primary",
                                  90, 0.1)  # fmt: skip
            s.note(f"db2 promoted after {promoted:.1f} s")
            routed = H.wait_for(
                "HAProxy on db2", lambda: s.haproxy_routes_to("postgres", {"db2"}), 30, 0.1
            )
            s.note(f"HAProxy sends PostgreSQL to db2 after {promoted + routed:.1f} s")

            switched = time.monotonic()

            def served_again() -> bool:
                return any(c.started > switched and c.verdict and c.verdict.get("valid")
                           for c in terms.snapshot())  # fmt: skip

            H.wait_for("verifications again", served_again, 90, 0.05)
            time.sleep(4)
        calls = terms.snapshot()
        failed = [c for c in calls if any(st >= 500 or st == 0 for st in c.statuses)]
        last_error = max((when for when, *_x in terms.failed), default=killed_at) - killed_at
        first_ok = min(c.ended for c in calls if c.started > switched and c.statuses == [200])
        recovered = first_ok - killed_at
        kinds = Counter(st for _w, _c, st in terms.failed)
        s.note(f"failed requests by status (0: no answer): {dict(kinds)}")
        # without a database the API says so (503 service_unavailable), never a 500
        assert set(kinds) <= {0, 503}, kinds
        s.note(f"{len(calls)} verifications; {len(terms.failed)} request(s) answered 5xx or "
               f"not at all ({len(failed)} verifications retried), the last {last_error:.1f} s "
               f"after the kill; first verification sent after the switch answered "
               f"{recovered:.1f} s after the kill")  # fmt: skip
        accepted = _check_no_double_and_nothing_lost(calls, s.db_url)
        s.note(f"fault 3: {len(accepted)} challenges accepted in all, once each, none lost")
        assert recovered < 60
        # the audit chain over everything before, during and after both faults
        engine = make_engine(url=s.db_url)
        with transaction(make_sessionmaker(engine)) as db:
            sealed = audit.seal(db, delay=timedelta(0)).sealed
        with transaction(make_sessionmaker(engine)) as db:
            report = audit.verify_chain(db)
        engine.dispose()
        s.note(f"audit chain sealed ({sealed} events) and verified: {report}")
