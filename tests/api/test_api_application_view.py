"""``GET /v1/applications/{id}`` (issue 16): the checker sees what they approve, every field
and the processed photo on request; audited; the full ID number only for deciders."""

from __future__ import annotations

import base64

import pytest
import sqlalchemy as sa
from api_helpers import PHOTO, ApiEnv, fake_photo, make_cid

from issuance import services
from issuance.models import AuditEvent

pytestmark = pytest.mark.softhsm


def test_reviewer_sees_every_field_and_the_photo(api_env: ApiEnv) -> None:
    cid = make_cid()
    with api_env.session() as s:  # type: ignore[attr-defined]
        app = services.submit_application(
            s, api_env.settings,
            services.ApplicationInput(citizen_id=cid, name="陈建国", phone="13800138062",
                                      photo=PHOTO, ethnicity="01", address="杭州市西湖区文三路1号"),
            api_env.actors["clerk"], photo_processor=fake_photo,
        )  # fmt: skip
        services.process_application(s, app.id, api_env.actors["clerk"])
        app_id, sha = app.id, app.photo_sha256
    c = api_env.client
    r = c.get(f"/v1/applications/{app_id}", headers=api_env.auth("reviewer"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["citizen_id"] == cid and body["name"] == "陈建国"
    assert body["address"] == "杭州市西湖区文三路1号" and body["ethnicity"] == "01"
    assert body["sex"] in ("1", "2") and body["phone"] == "13800138062"
    assert body["received_by"] == api_env.actors["clerk"].username
    assert body["processed_by"] == api_env.actors["clerk"].username
    assert body["reviewed_by"] is None and body["status"] == "processed"
    assert body["photo_base64"] is None and body["photo_sha256"] == sha
    r = c.get(f"/v1/applications/{app_id}?photo=true", headers=api_env.auth("reviewer"))
    assert r.status_code == 200
    assert base64.b64decode(r.json()["photo_base64"]) == fake_photo(PHOTO, None).jpeg
    # an auditor reads it with the number masked
    r = c.get(f"/v1/applications/{app_id}", headers=api_env.auth("auditor"))
    assert r.status_code == 200 and r.json()["citizen_id"] != cid
    assert "*" in r.json()["citizen_id"]
    # agencies: no scope
    assert c.get(f"/v1/applications/{app_id}", headers=api_env.auth("bank")).status_code == 403
    with api_env.session() as s:  # type: ignore[attr-defined]
        evs = list(s.scalars(sa.select(AuditEvent).where(
            AuditEvent.action == "application.viewed").order_by(AuditEvent.id)))  # fmt: skip
    assert [e.actor_name for e in evs] == [
        api_env.actors["reviewer"].username, api_env.actors["reviewer"].username,
        api_env.actors["auditor"].username,
    ]  # fmt: skip
    assert [e.details.strip("{}") for e in evs] == [
        '"photo":false',
        '"photo":true',
        '"photo":false',
    ]
