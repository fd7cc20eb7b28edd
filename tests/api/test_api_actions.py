"""Domain actions over HTTP beyond the basic lifecycle: bulk import (CSV/XLSX + photo zip),
photo replacement, the real batch report, temporary card hand-back with its deposit, the
death-record feed, suspension lift, self-service loss reports; and the channel refusal, which
is audited and counted like every other refusal."""

from __future__ import annotations

import io
import json
import os
import zipfile
from datetime import date

import pytest
import sqlalchemy as sa
from api_helpers import PHOTO, ApiEnv, make_cid

from issuance import services
from issuance.batches.selection import BatchFilter, create_batch
from issuance.models import Application, AuditEvent, Card, CardStatus, Deposit, Person

pytestmark = pytest.mark.softhsm


def _denials(env: ApiEnv) -> list[AuditEvent]:
    with env.session() as s:  # type: ignore[attr-defined]
        return list(
            s.scalars(
                sa.select(AuditEvent)
                .where(AuditEvent.action == "api.denied")
                .order_by(AuditEvent.id)
            )
        )


def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    for r in rows:
        out.write(",".join(r) + "\r\n")
    return out.getvalue().encode("utf-8")


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_channel_refusal_is_audited_and_rate_limited(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    c, n = api_env.client, card.card_number
    h = api_env.auth("selfservice")
    r = c.post(f"/v1/cards/{n}/loss-reports", json={"channel": "bank"}, headers=h)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert "bank channel" in r.json()["error"]["message"]
    denied = _denials(api_env)
    assert len(denied) == 1
    details = json.loads(denied[0].details)
    assert details["channel"] == "bank" and details["path"] == f"/v1/cards/{n}/loss-reports"
    assert denied[0].actor_name.startswith("agency:selfservice-")
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.get(Card, card.id).status == CardStatus.ACTIVE  # type: ignore[union-attr]
    # refusals count against the caller: past the limit it gets 429, even for a good call
    limit = api_env.settings.api.auth_failures_per_minute
    codes = [
        c.post(f"/v1/cards/{n}/unreport", json={"channel": "kiosk"}, headers=h).status_code
        for _ in range(limit + 1)
    ]
    assert codes[: limit - 1] == [403] * (limit - 1) and codes[-1] == 429
    r = c.post(f"/v1/cards/{n}/loss-reports", json={"channel": "phone"}, headers=h)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert len(_denials(api_env)) == limit  # 1 + (limit - 1); the 429s were not let in


def test_self_service_platform_reports_and_withdraws_a_loss(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    c, n, h = api_env.client, card.card_number, api_env.auth("selfservice")
    with api_env.session() as s:  # type: ignore[attr-defined]
        person = s.get(Card, card.id).person  # type: ignore[union-attr]
        proof = {"holder_citizen_id": person.citizen_id, "holder_name": person.name}
    r = c.post(f"/v1/cards/{n}/loss-reports", json={"channel": "phone", **proof}, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "provisional" and r.json()["card_status"] == "lost_provisional"
    # the platform proves the holder's identity by naming them (issue 15): its own
    # identity_checked flag is no evidence
    r = c.post(
        f"/v1/cards/{n}/unreport", json={"channel": "app", "identity_checked": True}, headers=h
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "holder_citizen_id"
    r = c.post(f"/v1/cards/{n}/unreport", json={"channel": "app", **proof}, headers=h)
    assert r.status_code == 200 and r.json()["status"] == "active"
    events = c.get(
        "/v1/audit/events", params={"entity_type": "card", "entity_id": str(card.id)},
        headers=api_env.auth("auditor"),
    ).json()  # fmt: skip
    assert [(e["action"], e["channel"]) for e in events][-2:] == [
        ("card.report_loss_provisional", "phone"),
        ("card.unreport", "app"),
    ]


def test_bulk_import_csv_with_photos_is_per_record_and_idempotent(api_env: ApiEnv) -> None:
    c, h = api_env.client, api_env.auth("clerk")
    good1, good2 = make_cid(), make_cid()
    rows = [
        ["citizen_id", "姓名", "phone", "photo"],
        [good1, "赵一", "13800138011", "a.jpg"],
        ["110105194912310021", "x1", "12", "b.jpg"],  # bad check char, name, phone
        [good2, "钱二", "13800138012", "missing.jpg"],  # photo not in the archive
        [make_cid(), "孙三", "13800138013", "b.jpg"],  # photo is not a JPEG
        ["12345", "李四", "13800138014", ""],  # bad number, and no photo for an adult
    ]
    files = {
        "file": ("staff.csv", _csv(rows), "text/csv"),
        "photos": ("photos.zip", _zip({"a.jpg": PHOTO, "b.jpg": b"GIF89a..."}), "application/zip"),
    }
    form = {"collective": "杭州某某科技有限公司", "kind": "employer"}
    r = c.post("/v1/imports", files=files, data=form, headers=h)
    assert r.status_code == 200, r.text
    out = r.json()
    assert [x["line"] for x in out["accepted"]] == [2]
    assert out["duplicates"] == []
    rejected = {
        x["line"]: {(p["field"], p["reason"]) for p in x["problems"]} for x in out["rejected"]
    }
    assert set(rejected) == {3, 4, 5, 6}
    assert {f for f, _ in rejected[3]} >= {"citizen_id", "name", "phone"}  # every reason
    assert ("photo", "file not found in the photo archive") in rejected[4]
    assert {f for f, _ in rejected[5]} == {"photo"}
    assert {f for f, _ in rejected[6]} >= {"citizen_id", "photo"}
    assert "*" in out["accepted"][0]["citizen_id_masked"]
    assert good1 not in r.text  # full ID numbers never echoed
    app_id = out["accepted"][0]["application_id"]
    got = c.get(f"/v1/applications/{app_id}", headers=h).json()
    assert got["channel"] == "employer" and got["photo_sha256"] is not None
    # the same file again: nothing new, the accepted record is a duplicate
    again = c.post("/v1/imports", files=files, data=form, headers=h).json()
    assert again["accepted"] == [] and [x["line"] for x in again["duplicates"]] == [2]
    assert again["collective_id"] == out["collective_id"]
    with api_env.session() as s:  # type: ignore[attr-defined]
        n = s.scalar(
            sa.select(sa.func.count())
            .select_from(Application)
            .where(Application.collective_id == out["collective_id"])
        )
    assert n == 1


def test_bulk_import_xlsx_for_a_community(api_env: ApiEnv) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["公民身份号码", "姓名", "联系电话", "照片"])
    cids = [make_cid(), make_cid()]
    ws.append([cids[0], "周五", "13800138021", "p1.jpg"])
    ws.append([cids[1], "吴六", "0571-87654321", "p2.jpg"])
    buf = io.BytesIO()
    wb.save(buf)
    r = api_env.client.post(
        "/v1/imports",
        files={"file": ("members.xlsx", buf.getvalue(), "application/octet-stream"),
               "photos": ("p.zip", _zip({"dir/p1.jpg": PHOTO, "p2.jpg": PHOTO}))},
        data={"collective": "西湖区某社区", "kind": "community"},
        headers=api_env.auth("clerk"),
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert len(r.json()["accepted"]) == 2 and r.json()["rejected"] == []
    listed = api_env.client.get("/v1/applications", headers=api_env.auth("clerk")).json()
    assert {a["channel"] for a in listed[:2]} == {"collective"}


def test_bulk_import_refusals(api_env: ApiEnv) -> None:
    c = api_env.client
    ok_csv = _csv([["citizen_id", "name", "phone"], [make_cid(), "郑七", "13800138031"]])
    form = {"collective": "某学校", "kind": "school"}
    # a reviewer holds applications:write but may not receive: refused by the domain, audited
    before = len(_denials(api_env))
    r = c.post("/v1/imports", files={"file": ("a.csv", ok_csv)}, data=form,
               headers=api_env.auth("reviewer"))  # fmt: skip
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    assert len(_denials(api_env)) == before + 1
    h = api_env.auth("clerk")
    cases = [
        ({"file": ("a.csv", ok_csv), "photos": ("p.zip", b"not a zip")}, form, "photos"),
        ({"file": ("a.csv", b"foo,bar\r\n1,2\r\n")}, form, "header"),
        ({"file": ("a.csv", b"\x81\x30\xff\xfe")}, form, "file"),
        ({"file": ("a.xlsx", b"PK\x03\x04broken")}, form, "file"),
        ({"file": ("a.csv", b"")}, form, "file"),
        ({"file": ("a.csv", ok_csv)}, {"collective": "某学校", "kind": "employer"}, "kind"),
    ]
    c.post("/v1/imports", files={"file": ("a.csv", _csv([["citizen_id", "name"]]))},
           data=form, headers=h)  # fmt: skip  # registers 某学校 as a school
    for files, data, field in cases:
        r = c.post("/v1/imports", files=files, data=data, headers=h)
        assert r.status_code == 422, (field, r.text)
        assert r.json()["error"]["field"] == field, r.text
    # a damaged member (CRC) in an otherwise valid zip
    z = bytearray(_zip({"a.jpg": PHOTO}))
    z[z.index(b"api-test-photo") + 3] ^= 0xFF
    r = c.post("/v1/imports", files={"file": ("a.csv", ok_csv), "photos": ("p.zip", bytes(z))},
               data=form, headers=h)  # fmt: skip
    assert r.status_code == 422 and "damaged" in r.json()["error"]["message"] + r.text
    # nothing of the refused uploads was recorded
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.scalar(sa.select(sa.func.count()).select_from(Application)) == 0


def test_photo_upload_and_replacement(api_env: ApiEnv) -> None:
    c, clerk = api_env.client, api_env.auth("clerk")
    cid = make_cid()
    r = c.post("/v1/applications", json={"citizen_id": cid, "name": "冯八", "phone": "13800138041",
                                          "ethnicity": "01",
                                          "photo_base64": __import__("base64").b64encode(PHOTO)
                                          .decode()}, headers=clerk)  # fmt: skip
    assert r.status_code == 201, r.text
    app_id, old_sha = r.json()["id"], r.json()["photo_sha256"]
    new_photo = PHOTO[:-2] + b"new-photo\xff\xd9"
    url = f"/v1/applications/{app_id}/photo"
    r = c.put(url, files={"photo": ("new.jpg", new_photo, "image/jpeg")}, headers=clerk)
    assert r.status_code == 200, r.text
    assert r.json()["photo_sha256"] not in (None, old_sha)
    r = c.put(url, files={"photo": ("x.gif", b"GIF89a", "image/gif")}, headers=clerk)
    assert r.status_code == 422 and r.json()["error"]["field"] == "photo"
    r = c.put(url, files={"photo": ("new.jpg", new_photo)}, headers=api_env.auth("auditor"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    with api_env.session() as s:  # type: ignore[attr-defined]
        app = s.get(Application, app_id)
        assert app is not None and app.photo_jpeg == new_photo
        ev = s.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == "application.photo_replaced")
        ).one()
        assert json.loads(ev.details)["before_sha256"] == old_sha
    # after review the photo is frozen (the reviewer saw it)
    assert c.post(f"/v1/applications/{app_id}/process", headers=clerk).status_code == 200
    assert c.post(f"/v1/applications/{app_id}/review",
                  headers=api_env.auth("reviewer")).status_code == 200  # fmt: skip
    r = c.put(url, files={"photo": ("new.jpg", PHOTO)}, headers=clerk)
    assert r.status_code == 409 and r.json()["error"]["code"] == "transition_not_allowed"
    r = c.put("/v1/applications/999999/photo", files={"photo": ("a.jpg", PHOTO)}, headers=clerk)
    assert r.status_code == 404


def test_batch_list_and_report_are_the_real_report(api_env: ApiEnv) -> None:
    from api_helpers import fake_photo

    with api_env.session() as s:  # type: ignore[attr-defined]
        a = api_env.actors
        for i in range(2):
            app = services.submit_application(
                s, api_env.settings,
                services.ApplicationInput(citizen_id=make_cid(), name="陈九", photo=PHOTO,
                                          phone=f"1380013805{i}", ethnicity="01"),
                a["clerk"], photo_processor=fake_photo,
            )  # fmt: skip
            services.process_application(s, app.id, a["clerk"])
            services.review_application(s, app.id, a["reviewer"])
            services.approve_application(s, api_env.settings, app.id, a["approver"])
        batch = create_batch(s, a["clerk"], "api-report-batch", BatchFilter())
        bid = batch.id
    c, h = api_env.client, api_env.auth("auditor")
    listed = c.get("/v1/batches", headers=h).json()
    assert [b["name"] for b in listed] == ["api-report-batch"] and listed[0]["cards"] == 2
    rep = c.get(f"/v1/batches/{bid}/report", headers=h)
    assert rep.status_code == 200, rep.text
    body = rep.json()
    assert body["stages"]["selected"] == 2 and body["good"] == 0
    assert body["cards_by_status"] == {"in_production": 2}
    assert body["chips"] == {} and body["spoil_rate"] == 0.0
    assert set(body["mean_seconds"]) == {"prepare", "personalise", "print", "check", "ship",
                                         "issue"}  # fmt: skip
    assert c.get("/v1/batches/999999/report", headers=h).status_code == 404


def test_temporary_card_hand_back_refunds_the_deposit(api_env: ApiEnv) -> None:
    from api_helpers import fake_photo

    with api_env.session() as s:  # type: ignore[attr-defined]
        app = services.submit_application(
            s, api_env.settings,
            services.ApplicationInput(citizen_id=make_cid(), name="褚十", phone="13800138061",
                                      photo=PHOTO, ethnicity="01"),
            api_env.actors["clerk"], photo_processor=fake_photo,
        )  # fmt: skip
        person_id = app.person_id
    c, clerk = api_env.client, api_env.auth("clerk")
    r = c.post("/v1/temporary-cards", json={"person_id": person_id}, headers=clerk)
    assert r.status_code == 201, r.text
    number = r.json()["card_number"]
    r = c.post(f"/v1/cards/{number}/hand-back", json={}, headers=clerk)
    assert r.status_code == 200, r.text
    assert r.json()["deposit_refunded_fen"] == api_env.settings.lifecycle.temporary_card_deposit_fen
    assert r.json()["card"]["status"] == "cancelled"
    r = c.post(f"/v1/cards/{number}/hand-back", json={}, headers=clerk)
    assert r.status_code == 409
    with api_env.session() as s:  # type: ignore[attr-defined]
        dep = s.scalars(sa.select(Deposit).join(Card).where(Card.card_number == number)).one()
        assert dep.refunded_at is not None
    # a formal card cannot be "handed back"
    formal = api_env.new_card()
    r = c.post(f"/v1/cards/{formal.card_number}/hand-back", json={}, headers=clerk)
    assert r.status_code == 422 and r.json()["error"]["field"] == "card"


def test_suspension_and_its_lift(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    c, fund, n = api_env.client, api_env.auth("fund_supervisor"), card.card_number
    r = c.post(f"/v1/cards/{n}/suspend", json={"reason": "benefit fraud"}, headers=fund)
    assert r.status_code == 200 and r.json()["chip_apps"]["social_security"] == "suspended"
    r = c.post(f"/v1/cards/{n}/lift-suspension", json={"reason": "cleared"}, headers=fund)
    assert r.status_code == 200 and r.json()["status"] == "active"
    assert r.json()["chip_apps"]["social_security"] == "active"
    r = c.post(f"/v1/cards/{n}/lift-suspension", json={"reason": "again"}, headers=fund)
    assert r.status_code == 409


def test_death_record_upload_cancels_cards(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    with api_env.session() as s:  # type: ignore[attr-defined]
        cid = s.get(Person, card.person_id).citizen_id  # type: ignore[union-attr]
    text = (
        "citizen_id,death_date\n"
        f"{cid},{date.today().isoformat()}\n"
        "110105194912310021,2020-01-01\n"  # bad check character
        f"{make_cid()},2020-13-01\n"
    )
    c, sup = api_env.client, api_env.auth("supervisor")
    files = {"file": ("deaths.csv", text.encode(), "text/csv")}
    r = c.post("/v1/death-records", files=files, headers=sup)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["persons_recorded"] == 1 and out["cards_cancelled"] == 1
    reasons = {x["line"]: {p["field"] for p in x["problems"]} for x in out["rejected"]}
    assert reasons[3] == {"citizen_id"} and "death_date" in reasons[4]
    assert cid not in r.text
    got = c.get(f"/v1/cards/{card.card_number}", headers=sup).json()
    assert got["status"] == "cancelled" and set(got["chip_apps"].values()) == {"cancelled"}
    again = c.post("/v1/death-records", files=files, headers=sup).json()
    assert again["persons_recorded"] == 0 and again["already_done"] == 1
    # scope: a clerk may not feed death records; bad encodings are refused as a whole
    r = c.post("/v1/death-records", files=files, headers=api_env.auth("clerk"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = c.post("/v1/death-records", files={"file": ("d.csv", b"\xff\xfe\x81")}, headers=sup)
    assert r.status_code == 422 and r.json()["error"]["field"] == "file"
    with api_env.session() as s:  # type: ignore[attr-defined]
        ev = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "card.cancel")).one()
        assert ev.actor_name == api_env.actors["supervisor"].username and ev.channel == "feed"


@pytest.mark.parametrize("returned", [True, False], ids=["handed-back", "not-brought"])
def test_collect_refunds_the_temporary_deposit_only_if_handed_back(
    api_env: ApiEnv, returned: bool
) -> None:
    from api_helpers import fake_photo

    with api_env.session() as s:  # type: ignore[attr-defined]
        app = services.submit_application(
            s, api_env.settings,
            services.ApplicationInput(citizen_id=make_cid(), name="卫十一", phone="13800138062",
                                      photo=PHOTO, ethnicity="01"),
            api_env.actors["clerk"], photo_processor=fake_photo,
        )  # fmt: skip
        services.process_application(s, app.id, api_env.actors["clerk"])
        services.review_application(s, app.id, api_env.actors["reviewer"])
        formal = services.approve_application(
            s, api_env.settings, app.id, api_env.actors["approver"]
        )
        person_id, formal_id, formal_number = app.person_id, formal.id, formal.card_number
    c, clerk = api_env.client, api_env.auth("clerk")
    r = c.post("/v1/temporary-cards", json={"person_id": person_id}, headers=clerk)
    assert r.status_code == 201, r.text
    temporary = r.json()["card_number"]
    with api_env.session() as s:  # type: ignore[attr-defined]
        for step in ("start_production", "personalise", "ship"):
            services.advance_production(
                s, api_env.settings, formal_id, step, api_env.actors["clerk"],
                chip_serial=os.urandom(8),
            )  # fmt: skip
    r = c.post(
        f"/v1/cards/{formal_number}/collect", json={"temporary_card_returned": returned},
        headers=clerk,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["card"]["status"] == "issued"
    deposit = api_env.settings.lifecycle.temporary_card_deposit_fen
    assert body["deposits_refunded_fen"] == (deposit if returned else 0)
    assert body["temporary_cards_returned"] == ([temporary] if returned else [])
    assert body["temporary_cards_kept"] == ([] if returned else [temporary])
    with api_env.session() as s:  # type: ignore[attr-defined]
        temp = s.scalars(sa.select(Card).where(Card.card_number == temporary)).one()
        assert temp.status == CardStatus.CANCELLED
        dep = s.scalars(sa.select(Deposit).where(Deposit.card_id == temp.id)).one()
        assert (dep.refunded_at is not None) is returned
    if not returned:  # brought back later: refunded then
        r = c.post(f"/v1/cards/{temporary}/hand-back", json={}, headers=clerk)
        assert r.status_code == 200, r.text
        assert r.json()["deposit_refunded_fen"] == deposit
