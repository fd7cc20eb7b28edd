"""A temporary card that is a card (issue 16): personalised at the counter's desk reader (the
virtual reader behind pcscd + vpcd) with per-card keys from the HSM, its temporary face
printed to the file spool, verified by a hospital through ``POST /v1/verifications`` with
the chip's own INTERNAL AUTHENTICATE, then handed back: deposit refunded with a receipt, the
chip blocked by its own command, and refused from then on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import PHOTO, ApiEnv, fake_photo, make_cid
from fastapi.testclient import TestClient
from PIL import Image

from api.client import YktClient, verify_card_in_reader
from cardspec import cardops
from cardspec.errors import CardError
from cardspec.profile import get_profile
from issuance import services
from issuance.batches.counter import CounterDesk
from issuance.batches.stations import open_stations
from issuance.batches.stock import VirtualBlankStock, ensure_manufacturer_key
from issuance.errors import ValidationError
from issuance.models import AuditEvent, Card, Receipt
from printers.spool import FileSpool
from readers.pcsc import PcscReader
from yikatong.settings import load_settings

pytestmark = [pytest.mark.softhsm, pytest.mark.pcsc, pytest.mark.slow]


def _events(env: ApiEnv, card_id: int, action: str) -> list[dict[str, object]]:
    with env.session() as s:  # type: ignore[attr-defined]
        rows = s.scalars(
            sa.select(AuditEvent).where(
                AuditEvent.action == action, AuditEvent.entity_id == str(card_id)
            )
        ).all()
        return [json.loads(e.details or "{}") for e in rows]


def test_temporary_chip_from_the_desk_verifies_and_is_dead_once_returned(
    api_env: ApiEnv, tmp_path: Path
) -> None:
    settings = api_env.settings
    # the virtual stock makes blanks with the issuer's HSM (the API's token)
    assert api_env.hsm.config.tokens_dir is not None
    hsm_settings = load_settings(
        environ={"YKT_DATA_DIR": str(api_env.hsm.config.tokens_dir.parent.parent)}
    )
    ensure_manufacturer_key(hsm_settings)
    keys = api_env.hsm.service
    stock = VirtualBlankStock(hsm_settings, keys)
    spool = tmp_path / "spool"
    with api_env.session() as s:  # type: ignore[attr-defined]
        app = services.submit_application(
            s, settings,
            services.ApplicationInput(citizen_id=make_cid(), name="李四", phone="13800138001",
                                      photo=PHOTO, ethnicity="01"),
            api_env.actors["clerk"], photo_processor=fake_photo,
        )  # fmt: skip
        person_id = app.person_id

    with open_stations(settings, 2, run_dir=tmp_path / "pcsc") as stations:
        desk = CounterDesk(settings, keys, stock, stations[0], FileSpool(spool))
        with api_env.session() as s:  # type: ignore[attr-defined]
            card = services.issue_temporary_card(
                s, settings, person_id, api_env.actors["clerk"], desk=desk
            )
            card_id, number = card.id, card.card_number
            cic = card.card_identification_code
            expiry = card.expiry_date
        assert cic is not None and expiry is not None
        made = _events(api_env, card_id, "card.temporary_chip_made")
        assert len(made) == 1 and made[0]["profile"] == "ssc2-3des-tmp"
        assert made[0]["chip_serial"] == cic[-16:] and int(made[0]["qc_apdus"]) > 0  # type: ignore[call-overload]
        assert "李四" not in json.dumps(made, ensure_ascii=False)  # nothing personal

        # the printed face: front and back of the temporary design in the spool
        fronts = list(spool.glob(f"*{number}*.front.png"))
        assert len(fronts) == 1
        front = Image.open(fronts[0]).convert("RGB")
        band = front.getpixel((front.width // 2, 5))
        assert band == (214, 110, 20)  # the temporary card's orange band, not the red one

        # a hospital reader (second slot) with the chip
        stack = stations[1].feeder.stack  # type: ignore[attr-defined]
        image = stock.image(cic[-16:])
        stack.insert(1, image)
        hospital_reader = PcscReader(stack.reader_name(1), csock=stack.csock)
        try:
            public = cardops.read_card_public(hospital_reader, get_profile("ssc2-3des-tmp"))
            assert public.card_identification.card_category == "2"
            assert public.card_identification.expiry_date == expiry
            assert public.card_number == number
            hospital_reader.disconnect()
            hospital = YktClient(TestClient(api_env.client.app, headers=api_env.auth("hospital")))
            v = verify_card_in_reader(hospital, hospital_reader, application="medical",
                                      include_holder=True)  # fmt: skip
            assert (
                v["valid"] is True and v["card_number"] == number and v["card_kind"] == "temporary"
            )
            assert v["holder"]["name"] == "李四"
            for kind in ("social_security", "financial", "pension"):
                refused = verify_card_in_reader(hospital, hospital_reader, application=kind)
                assert refused["valid"] is False and refused["reason"] == "wrong_application"

            # hand-back: the chip is blocked by its own command, the deposit refunded
            with api_env.session() as s:  # type: ignore[attr-defined]
                temp = s.get(Card, card_id)
                assert temp is not None
                refunded = services.hand_back_temporary_card(
                    s, temp, api_env.actors["clerk"], desk=desk
                )
            assert refunded == settings.lifecycle.temporary_card_deposit_fen
            blocked = _events(api_env, card_id, "card.temporary_chip_blocked")
            assert blocked == [{"card_number": number, "chip_serial": cic[-16:],
                                "command": "APPLICATION BLOCK", "key": "DMK"}]  # fmt: skip
            with api_env.session() as s:  # type: ignore[attr-defined]
                kinds = s.scalars(
                    sa.select(Receipt.kind).where(Receipt.card_id == card_id).order_by(Receipt.id)
                ).all()
            assert list(kinds) == ["deposit", "refund"]

            # the blocked chip: its application answers 6283, INTERNAL AUTHENTICATE 6985
            stack.insert(1, image)
            hospital_reader.connect()
            assert cardops.application_blocked(hospital_reader, get_profile("ssc2-3des-tmp"))
            with pytest.raises(CardError) as dead:
                cardops.internal_authenticate(hospital_reader, bytes(8), bytes(8))
            assert dead.value.sw == 0x6985
            hospital_reader.disconnect()
            with pytest.raises(CardError) as at_select:
                verify_card_in_reader(hospital, hospital_reader, application="medical")
            assert at_select.value.sw == 0x6283
            # whatever a terminal sends for it instead of the chip's answer is refused (a
            # response the card did not make is not genuine, and the record is cancelled)
            ch = hospital.challenge()
            answer = hospital.verify(ch["challenge_id"], cic, number, bytes(8), "medical")
            assert answer["valid"] is False and answer["reason"] == "not_genuine"
            with api_env.session() as s:  # type: ignore[attr-defined]
                temp = s.get(Card, card_id)
                assert temp is not None and str(temp.status) == "cancelled"
        finally:
            hospital_reader.close()


def test_desk_refuses_to_block_another_cards_chip(api_env: ApiEnv, tmp_path: Path) -> None:
    """The returned chip must be the card's own: a chip of another card in the desk reader is
    refused and nothing is recorded (the deposit stays taken)."""
    settings = api_env.settings
    assert api_env.hsm.config.tokens_dir is not None
    hsm_settings = load_settings(
        environ={"YKT_DATA_DIR": str(api_env.hsm.config.tokens_dir.parent.parent)}
    )
    ensure_manufacturer_key(hsm_settings)
    keys = api_env.hsm.service
    stock = VirtualBlankStock(hsm_settings, keys)
    numbers = []
    with open_stations(settings, 1, run_dir=tmp_path / "pcsc") as stations:
        desk = CounterDesk(settings, keys, stock, stations[0], FileSpool(tmp_path / "spool"))
        for name in ("王五", "赵六"):
            with api_env.session() as s:  # type: ignore[attr-defined]
                app = services.submit_application(
                    s, settings,
                    services.ApplicationInput(citizen_id=make_cid(), name=name,
                                              phone="13800138002", photo=PHOTO, ethnicity="01"),
                    api_env.actors["clerk"], photo_processor=fake_photo,
                )  # fmt: skip
                card = services.issue_temporary_card(
                    s, settings, app.person_id, api_env.actors["clerk"], desk=desk
                )
                numbers.append((card.id, card.card_identification_code))
        (first_id, _), (_, second_cic) = numbers
        assert second_cic is not None
        # the second card's chip image put where the first card's would be
        first_cic = numbers[0][1]
        assert first_cic is not None
        stock.image(first_cic[-16:]).write_bytes(stock.image(second_cic[-16:]).read_bytes())
        with api_env.session() as s:  # type: ignore[attr-defined]
            first = s.get(Card, first_id)
            assert first is not None
            with pytest.raises(ValidationError) as refused:
                services.hand_back_temporary_card(s, first, api_env.actors["clerk"], desk=desk)
        assert "not" in refused.value.problems[0].reason
        with api_env.session() as s:  # type: ignore[attr-defined]
            first = s.get(Card, first_id)
            assert first is not None and str(first.status) == "active"
        assert _events(api_env, first_id, "card.temporary_chip_blocked") == []


def test_api_issues_and_takes_back_a_temporary_chip(api_env: ApiEnv, tmp_path: Path) -> None:
    """``POST /v1/temporary-cards {"chip": true}`` and ``POST .../hand-back {"chip": true}``
    do what ``ykt cards temporary --chip`` / ``hand-back --chip`` do, on the server's desk;
    a server without a desk refuses ``chip`` and changes nothing."""
    from api.app import create_app
    from issuance.batches.counter import open_counter_desk

    settings = api_env.settings
    clerk = api_env.auth("clerk")
    with api_env.session() as s:  # type: ignore[attr-defined]
        app = services.submit_application(
            s, settings,
            services.ApplicationInput(citizen_id=make_cid(), name="钱七", phone="13800138003",
                                      photo=PHOTO, ethnicity="01"),
            api_env.actors["clerk"], photo_processor=fake_photo,
        )  # fmt: skip
        person_id = app.person_id
    refused = api_env.client.post(
        "/v1/temporary-cards", json={"person_id": person_id, "chip": True}, headers=clerk
    )
    assert refused.status_code == 422, refused.text
    assert [p["field"] for p in refused.json()["error"]["problems"]] == ["chip"]
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.scalars(sa.select(Card).where(Card.person_id == person_id)).all() == []

    assert api_env.hsm.config.tokens_dir is not None
    hsm_settings = load_settings(
        environ={"YKT_DATA_DIR": str(api_env.hsm.config.tokens_dir.parent.parent)}
    )
    spool = tmp_path / "spool"

    def desk(keys):  # type: ignore[no-untyped-def]
        return open_counter_desk(settings, keys, VirtualBlankStock(hsm_settings, keys),
                                 FileSpool(spool))  # fmt: skip

    server = create_app(
        settings, engine=api_env.engine, key_service_factory=lambda: api_env.hsm.service,
        photo_processor=fake_photo, desk_factory=desk,
    )  # fmt: skip
    with TestClient(server, raise_server_exceptions=False) as c:
        r = c.post("/v1/temporary-cards", json={"person_id": person_id, "chip": True},
                   headers=clerk)  # fmt: skip
        assert r.status_code == 201, r.text
        number = r.json()["card_number"]
        with api_env.session() as s:  # type: ignore[attr-defined]
            card = services.find_card(s, card_number=number)
            card_id, cic = card.id, card.card_identification_code
        assert cic is not None and len(_events(api_env, card_id, "card.temporary_chip_made")) == 1
        assert len(list(spool.glob(f"*{number}*.front.png"))) == 1
        back = c.post(f"/v1/cards/{number}/hand-back", json={"chip": True}, headers=clerk)
        assert back.status_code == 200, back.text
        assert back.json()["deposit_refunded_fen"] == settings.lifecycle.temporary_card_deposit_fen
    assert len(_events(api_env, card_id, "card.temporary_chip_blocked")) == 1
    # the chip in the stock is blocked: the emulated card's image says so
    image = json.loads(VirtualBlankStock(hsm_settings, api_env.hsm.service)
                       .image(cic[-16:]).read_text())  # fmt: skip
    assert image["blocked_apps"] == ["MF/SSSE"]
