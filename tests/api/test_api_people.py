"""``POST /v1/people/search`` and ``GET /v1/people/{id}`` (issue 16): counter staff find a
resident by ID number and see the whole record; agencies never list people (no scope, and the
scope is never granted to them); the full ID number only with holder:full_id."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv

from issuance import services
from issuance.errors import ValidationError
from issuance.models import Agency, AgencyKind, AuditEvent, StaffRole
from issuance.services import credentials
from issuance.services.people import PEOPLE_ROLES

pytestmark = pytest.mark.softhsm


def test_counter_finds_a_resident_by_id_number_and_sees_everything(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    with api_env.session() as s:  # type: ignore[attr-defined]
        cid = services.find_card(s, card_number=card.card_number).person.citizen_id
    c, clerk = api_env.client, api_env.auth("clerk")
    r = c.post("/v1/people/search", json={"citizen_id": cid}, headers=clerk)
    assert r.status_code == 200, r.text
    [match] = r.json()
    assert match["card_number"] == card.card_number and match["card_status"] == "active"
    assert match["citizen_id"] != cid and "*" in match["citizen_id"]
    # the loss report, by the number the search gave
    r = c.post(f"/v1/cards/{card.card_number}/loss-reports", json={"identity_checked": True},
               headers=clerk)  # fmt: skip
    assert r.status_code in (200, 201), r.text
    r = c.get(f"/v1/people/{match['person_id']}", headers=clerk)
    assert r.status_code == 200, r.text
    rec = r.json()
    assert rec["citizen_id"] != cid  # a clerk sees it masked
    [cd] = [x for x in rec["cards"] if x["card_number"] == card.card_number]
    assert cd["status"] == "lost_formal"
    assert {a["kind"]: a["status"] for a in cd["chip_apps"]}["social_security"] == "blocked"
    assert [(x["card_number"], x["kind"], x["status"]) for x in rec["losses"]] == [
        (card.card_number, "formal", "open")
    ]
    actions = [e["action"] for e in rec["timeline"]]
    assert "application.received" in actions and "card.created" in actions
    assert rec["timeline"][0]["occurred_at"].endswith("Z")
    # a supervisor sees the full number
    r = c.get(f"/v1/people/{match['person_id']}", headers=api_env.auth("supervisor"))
    assert r.status_code == 200 and r.json()["citizen_id"] == cid
    # searched and viewed: audited, the value never in the event
    with api_env.session() as s:  # type: ignore[attr-defined]
        evs = list(s.scalars(sa.select(AuditEvent).where(
            AuditEvent.action.in_(["person.searched", "person.viewed"]))))  # fmt: skip
    assert [e.action for e in evs] == ["person.searched", "person.viewed", "person.viewed"]
    assert all(cid not in e.details for e in evs)


def test_bad_searches_and_who_may_search(api_env: ApiEnv) -> None:
    c = api_env.client
    r = c.post("/v1/people/search", json={"name": "王伟"}, headers=api_env.auth("clerk"))
    assert r.status_code == 422 and "too broad" in r.text
    r = c.post("/v1/people/search", json={"citizen_id": "330106199003151237"},
               headers=api_env.auth("clerk"))  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["field"] == "citizen_id"
    for agency in ("hospital", "bank", "selfservice"):
        r = c.post("/v1/people/search", json={"phone": "13800138000"},
                   headers=api_env.auth(agency))  # fmt: skip
        assert r.status_code == 403, (agency, r.text)
        assert c.get("/v1/people/1", headers=api_env.auth(agency)).status_code == 403
    for role in ("reviewer", "approver"):
        r = c.post("/v1/people/search", json={"phone": "13800138000"},
                   headers=api_env.auth(role))  # fmt: skip
        assert r.status_code == 403, role
    assert c.get("/v1/people/999999", headers=api_env.auth("clerk")).status_code == 404


def test_people_scope_follows_the_domain_roles_and_is_never_an_agencys(
    api_env: ApiEnv,
) -> None:
    holders = {r for r, scopes in credentials.STAFF_SCOPES.items() if "people:read" in scopes}
    assert holders == set(PEOPLE_ROLES)
    from issuance.services.cash import RECONCILERS

    cash_holders = {r for r, scopes in credentials.STAFF_SCOPES.items() if "cash:read" in scopes}
    assert cash_holders == set(RECONCILERS)
    assert StaffRole.SYSTEM not in holders
    assert all("people:read" not in s for s in credentials.AGENCY_DEFAULT_SCOPES.values())
    with api_env.session() as s:  # type: ignore[attr-defined]
        agency = s.get(Agency, api_env.agencies["hospital"])
        assert agency is not None and agency.kind == AgencyKind.HOSPITAL
        with pytest.raises(ValidationError) as e:
            credentials.register_agency_client(s, agency, scopes=["verify", "people:read"])
        assert "never granted to an agency" in e.value.problems[0].reason


def test_a_counter_visit_over_the_api_by_id_number_only(api_env: ApiEnv) -> None:
    """Search by ID number, report the card lost, issue a temporary card, replace the card,
    hand the temporary card back: the person view shows all of it, with the money."""
    card = api_env.new_card()
    with api_env.session() as s:  # type: ignore[attr-defined]
        cid = services.find_card(s, card_number=card.card_number).person.citizen_id
    c, clerk = api_env.client, api_env.auth("clerk")
    [m] = c.post("/v1/people/search", json={"citizen_id": cid}, headers=clerk).json()
    number, person_id = m["card_number"], m["person_id"]
    r = c.post(f"/v1/cards/{number}/loss-reports", json={"identity_checked": True},
               headers=clerk)  # fmt: skip
    assert r.status_code == 201, r.text
    r = c.post("/v1/temporary-cards", json={"person_id": person_id}, headers=clerk)
    assert r.status_code == 201, r.text
    temp = r.json()["card_number"]
    r = c.post(f"/v1/cards/{number}/replace", json={}, headers=clerk)
    assert r.status_code == 201, r.text
    new = r.json()["card_number"]
    r = c.post(f"/v1/cards/{temp}/hand-back", json={}, headers=clerk)
    assert r.status_code == 200, r.text
    rec = c.get(f"/v1/people/{person_id}", headers=clerk).json()
    statuses = {x["card_number"]: (x["kind"], x["status"]) for x in rec["cards"]}
    assert statuses[number] == ("formal", "replaced")
    assert statuses[new] == ("formal", "number_allocated")
    assert statuses[temp] == ("temporary", "cancelled")
    fee = api_env.settings.lifecycle.replacement_fee_fen
    assert rec["fees_fen"] == fee and rec["deposits_held_fen"] == 0
    [dep] = rec["deposits"]
    assert dep["refunded_at"] is not None and dep["returned_at"] is not None
    assert [x["status"] for x in rec["losses"]] == ["replaced"]
    actions = [e["action"] for e in rec["timeline"]]
    for action in ("card.created", "deposit.taken", "deposit.refunded", "receipt.issued"):
        assert action in actions, action
    # the day's cash over the API: balanced, the receipts printable again
    from issuance.display import local_iso
    from issuance.models import Receipt

    with api_env.session() as s:  # type: ignore[attr-defined]
        receipts = list(s.scalars(sa.select(Receipt).order_by(Receipt.id)))
    today = (local_iso(receipts[0].issued_at, api_env.settings) or "")[:10]  # the issuer's day
    assert [(r.kind, r.amount_fen) for r in receipts] == [
        ("deposit", api_env.settings.lifecycle.temporary_card_deposit_fen), ("fee", fee),
        ("refund", api_env.settings.lifecycle.temporary_card_deposit_fen),
    ]  # fmt: skip
    r = c.get(f"/v1/cash/days/{today}", headers=api_env.auth("supervisor"))
    assert r.status_code == 200, r.text
    day = r.json()
    assert day["balanced"] and day["problems"] == [] and day["total"]["net_fen"] == fee
    money = ("fees_fen", "deposits_fen", "refunds_fen", "net_fen")
    assert [day["money_rows"][k] for k in money] == [day["total"][k] for k in money]
    assert day["total"]["receipts"] == 3 and day["time_zone"] == "Asia/Shanghai"
    r = c.get(f"/v1/cash/receipts/{receipts[1].number}", headers=clerk)
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF")
    assert c.get("/v1/cash/receipts/NOPE-1", headers=clerk).status_code == 404
    for agency in ("hospital", "bank", "selfservice"):
        assert c.get(f"/v1/cash/days/{today}", headers=api_env.auth(agency)).status_code == 403
