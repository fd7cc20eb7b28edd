"""Intake over HTTP says what the CLI and the file import say: the same normaliser (trimmed,
upper-cased), every reason of a record at once, the photo's reason code, card numbers' check
character validated before any lookup."""

from __future__ import annotations

import base64
from pathlib import Path

import sqlalchemy as sa
from api_helpers import ApiEnv, make_cid

from issuance.models import Application

PHOTOS = Path(__file__).resolve().parents[1] / "fixtures" / "photos"


def test_photo_replacement_names_its_reason_once_with_a_code(api_env: ApiEnv) -> None:
    c, clerk = api_env.client, api_env.auth("clerk")
    ctx = api_env.client.app.state.ctx  # type: ignore[attr-defined]
    fake = ctx.extra.pop("photo_processor")  # the real pipeline for this test
    try:
        r = c.post("/v1/applications", json={"citizen_id": make_cid(), "name": "冯九",
                                              "phone": "13800138051", "ethnicity": "01"},
                   headers=clerk)  # fmt: skip
        assert r.status_code == 422  # an adult needs a photo: the reason says so
        assert [p["field"] for p in r.json()["error"]["problems"]] == ["photo"]
        photo = base64.b64encode((PHOTOS / "astronaut.jpg").read_bytes()).decode()
        r = c.post("/v1/applications", json={"citizen_id": make_cid(), "name": "冯九",
                                              "phone": "13800138051", "photo_base64": photo,
                                              "ethnicity": "01"},
                   headers=clerk)  # fmt: skip
        assert r.status_code == 201, r.text
        url = f"/v1/applications/{r.json()['id']}/photo"
        two = (PHOTOS / "two_faces.jpg").read_bytes()
        r = c.put(url, files={"photo": ("two.jpg", two, "image/jpeg")}, headers=clerk)
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["code"] == "photo_rejected" and err["field"] == "photo"
        reason = "2 faces were found: the photo must show the holder alone"
        assert err["message"] == f"photo rejected: {reason}"  # said once
        assert err["problems"] == [{"field": "photo", "reason": reason, "code": "several_faces"}]
    finally:
        ctx.extra["photo_processor"] = fake


def test_submit_trims_like_the_cli_and_lists_every_reason(api_env: ApiEnv) -> None:
    c, clerk = api_env.client, api_env.auth("clerk")
    cid = make_cid()
    padded = f"  {cid.lower()}  "  # 22 characters: the old schema refused it as too long
    body = {"citizen_id": padded, "name": " 冯十 ", "phone": "12345", "sex": " 9x ",
            "birth_date": "1990-13-01", "region_code": " 9901 "}  # fmt: skip
    r = c.post("/v1/applications", json=body, headers=clerk)
    assert r.status_code == 422
    fields = {p["field"] for p in r.json()["error"]["problems"]}
    # every bad field at once; the padded ID is not among them
    assert {"phone", "sex", "birth_date", "region_code", "photo"} <= fields
    assert "citizen_id" not in fields and "name" not in fields
    # a photo that is not even base64 is one more reason among the others, not instead of them
    r = c.post("/v1/applications", json=body | {"photo_base64": "not base64!"}, headers=clerk)
    problems = r.json()["error"]["problems"]
    assert r.status_code == 422
    assert {"phone", "sex", "birth_date", "region_code", "photo_base64"} <= {
        p["field"] for p in problems
    }
    assert {"field": "photo_base64", "reason": "is not base64", "code": "not_base64"} in problems
    assert "photo" not in {p["field"] for p in problems}  # not also "required"
    long_name = {"citizen_id": make_cid(), "name": "A" * 70, "phone": "1"}
    r = c.post("/v1/applications", json=long_name, headers=clerk)
    reasons = {p["field"]: p["reason"] for p in r.json()["error"]["problems"]}
    assert r.status_code == 422 and {"name", "phone", "photo"} <= set(reasons)
    assert reasons["name"] == "a Latin-script name must have 2 to 60 characters"
    fake_jpeg = base64.b64encode(b"\xff\xd8\xff\xe0 fake photo \xff\xd9").decode()
    good = {"citizen_id": padded, "name": " 冯十 ", "phone": " 138 0013 8052 ",
            "ethnicity": "01", "photo_base64": fake_jpeg}  # fmt: skip
    r = c.post("/v1/applications", json=good, headers=clerk)
    assert r.status_code == 201, r.text
    with api_env.session() as s:  # type: ignore[attr-defined]
        app = s.get(Application, r.json()["id"])
        assert app is not None
        assert app.person.citizen_id == cid.upper() and app.person.name == "冯十"
        assert app.phone == "13800138052"
        assert s.scalar(sa.select(sa.func.count()).select_from(Application)) >= 1


def test_card_number_check_character_is_checked_before_any_lookup(api_env: ApiEnv) -> None:
    from cardspec.ids import make_card_number

    c, h = api_env.client, api_env.auth("clerk")
    good = make_card_number("A0000001")
    wrong = good[:8] + ("0" if good[8] != "0" else "1")
    r = c.get(f"/v1/cards/{wrong}", headers=h)
    assert r.status_code == 422
    err = r.json()["error"]
    assert "check character does not match" in err["message"]
    r = c.get("/v1/cards/A000000", headers=h)
    assert r.status_code == 422 and "must be 9 characters, got 7" in r.json()["error"]["message"]
    r = c.get(f"/v1/cards/{good.lower()}", headers=h)
    assert r.status_code == 404  # well formed: looked up (and not found)
