"""A name outside GBK (生僻字, issue 16): 王𠮷 (U+20BB7, CJK Extension B) through the API intake,
stored as it is, written to the chip's GBK name with the substitution rule (read back by the
independent client, conformance/terminal.py), printed with the true character on the face, and
shown with the recorded substitution in the person view and the audit trail."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import PHOTO, ApiEnv, make_cid
from PIL import Image, ImageChops

from issuance import services
from issuance.batches.counter import CounterDesk
from issuance.batches.stations import open_stations
from issuance.batches.stock import VirtualBlankStock, ensure_manufacturer_key
from issuance.models import AuditEvent, Card, Person
from printers.faces import CardFace, lacks_glyph, render_front, text_runs
from printers.layout import TEMPORARY_LAYOUT
from printers.spool import FileSpool
from yikatong.settings import load_settings

pytestmark = [pytest.mark.softhsm, pytest.mark.pcsc, pytest.mark.slow]

TERMINAL = Path(__file__).resolve().parents[1] / "cardspec" / "conformance" / "terminal.py"
RARE = "\U00020bb7"  # 𠮷, outside GBK


def test_rare_name_from_intake_to_chip_face_and_person_view(
    api_env: ApiEnv, tmp_path: Path
) -> None:
    settings = api_env.settings
    assert settings.issuer.gbk_placeholder == "*" and not settings.issuer.gbk_substitutes
    clerk = api_env.auth("clerk")
    name = "王" + RARE
    r = api_env.client.post(
        "/v1/applications",
        json={"citizen_id": make_cid(), "name": name, "phone": "13800138077",
              "ethnicity": "01", "photo_base64": base64.b64encode(PHOTO).decode()},
        headers=clerk,
    )  # fmt: skip
    assert r.status_code == 201, r.text
    person_id = r.json()["person_id"]
    with api_env.session() as s:  # type: ignore[attr-defined]
        person = s.get(Person, person_id)
        assert person is not None
        assert (person.name, person.card_name) == (name, "王*")
        subst = s.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == "person.card_name_substituted")
        ).one()
        assert subst.entity_id == str(person_id)
        assert json.loads(subst.details or "{}") == {
            "application_id": r.json()["id"], "characters": ["U+20BB7"], "substitutes": ["*"],
        }  # fmt: skip

    # the person view shows the true name and what the chip holds
    view = api_env.client.get(f"/v1/people/{person_id}", headers=clerk)
    assert view.status_code == 200, view.text
    assert view.json()["name"] == name and view.json()["card_name"] == "王*"

    # a card for this person, made at the counter's desk (virtual reader, HSM keys)
    assert api_env.hsm.config.tokens_dir is not None
    hsm_settings = load_settings(
        environ={"YKT_DATA_DIR": str(api_env.hsm.config.tokens_dir.parent.parent)}
    )
    ensure_manufacturer_key(hsm_settings)
    stock = VirtualBlankStock(hsm_settings, api_env.hsm.service)
    spool = tmp_path / "spool"
    with open_stations(settings, 2, run_dir=tmp_path / "pcsc") as stations:
        desk = CounterDesk(settings, api_env.hsm.service, stock, stations[0], FileSpool(spool))
        with api_env.session() as s:  # type: ignore[attr-defined]
            card = services.issue_temporary_card(
                s, settings, person_id, api_env.actors["clerk"], desk=desk
            )
            card_id, cic = card.id, card.card_identification_code
        assert cic is not None
        # the independent client (no project import) reads EF06's name: GBK "王*"
        stack = stations[1].feeder.stack  # type: ignore[attr-defined]
        stack.insert(1, stock.image(cic[-16:]))
        name_field = ("王*".encode("gbk") + bytes(30)).hex().upper()[:60]
        vector = {
            "name": "the holder's name on a card of a rare-character name",
            "source": {"cite": "vectors/hiquotion_decard.json (the DeCard reader's EF06 read)"},
            "steps": [
                {"apdu": "00A404000F7378312E73682EC9E7BBE1B1A3D5CF", "sw": "61..|9000"},
                {"apdu": "00A4020002EF06", "sw": "61..|9000"},
                {"apdu": "00B2090020", "sw": "9000", "data": "091E" + name_field},
            ],
        }
        path = tmp_path / "name.json"
        path.write_text(json.dumps(vector, ensure_ascii=False), encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-I", str(TERMINAL), "--reader", stack.reader_name(1), str(path)],
            env=stack.client_env(), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count("ok  > ") == 3

    # the face shows the true character: the spooled front is the rendering of the true name
    # (not of the chip's "王*"), and the font draws 𠮷 with a glyph, not the .notdef box
    with api_env.session() as s:  # type: ignore[attr-defined]
        temp = s.get(Card, card_id)
        assert temp is not None
        face = CardFace(
            name=name, ssn=temp.person.citizen_id, card_number=temp.card_number,
            issue_date=temp.issue_date, photo_jpeg=None, issuer_name=settings.issuer.name,
            bank_name="", region="杭州市西湖区", expiry_date=temp.expiry_date,
        )  # fmt: skip
    printed = Image.open(next(spool.glob("*.front.png"))).convert("RGB")
    dpi = settings.printer.dpi
    box = TEMPORARY_LAYOUT.front.name.box.px(dpi)
    true = render_front(face, dpi, TEMPORARY_LAYOUT).crop(box)
    assert ImageChops.difference(printed.crop(box), true).getbbox() is None
    substitute = render_front(
        CardFace(**{**face.__dict__, "name": "王*"}), dpi, TEMPORARY_LAYOUT
    ).crop(box)
    assert ImageChops.difference(true, substitute).getbbox() is not None
    ((_, font),) = text_runs(RARE, False, 40)
    assert not lacks_glyph(font, RARE) and lacks_glyph(font, chr(0x10FFFD))
    # and it is 𠮷 (土 over 口), not its look-alike 吉 (士 over 口)
    look_alike = render_front(
        CardFace(**{**face.__dict__, "name": "王吉"}), dpi, TEMPORARY_LAYOUT
    ).crop(box)
    assert ImageChops.difference(true, look_alike).getbbox() is not None
