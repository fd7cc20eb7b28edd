"""A blocked PIN shown as blocked everywhere: three wrong tries at a counter reader on a chip
personalised with the HSM's keys, the state the card reported recorded, shown by
``GET /v1/cards/{number}`` and the person view; then unblocked at the counter (RESET RETRY
COUNTER MAC'd with the card's PUK derived in SoftHSM) and the holder's PIN works again. No PIN
in any audit event, row or log line."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv

from cardspec import cardops
from cardspec.profile import social_security_profile
from hsm.service import CardKeyRef
from issuance import services
from issuance.db import Base
from issuance.models import AuditEvent
from issuance.services import pin_counter
from issuance.services.financial import hsm_card_check
from issuance.services.pin_counter import PinService
from issuance.services.pins import PinRefused

INITIAL = "123456"  # what api_helpers.emulator_for personalises
PROFILE = social_security_profile(financial=False)  # ... with this profile
WRONG = "907315"
NEW = "480159"


class Pad:
    """The holder at the PIN pad types these."""

    def __init__(self, current: str, new: str = NEW) -> None:
        self.current, self.new = current, new

    def current_pin(self) -> str:
        return self.current

    def new_pin(self) -> str:
        return self.new


def _serve(api_env: ApiEnv, card_id: int, reader, service: PinService, pad: Pad):  # type: ignore[no-untyped-def]
    """One PIN service as the CLI runs it: check, the reader part, record (or record the
    refusal and re-raise)."""
    clerk = api_env.actors["clerk"]
    with api_env.session() as s:  # type: ignore[attr-defined]
        target = pin_counter.check_can_serve(
            s, api_env.settings, card_id, clerk, service=service, identity_checked=True
        )
        genuine = hsm_card_check(api_env.hsm.service, services.find_card(s, card_id=card_id))
    try:
        done = pin_counter.serve_pin_at_reader(
            reader, target, service, pad, api_env.settings, key_service=api_env.hsm.service,
            key_ref=CardKeyRef(target.card_identification_code), profile=PROFILE,
            authenticate=genuine,
        )  # fmt: skip
    except PinRefused as refused:
        with api_env.session() as s:  # type: ignore[attr-defined]
            pin_counter.record_refusal(s, card_id, clerk, refused, service=service,
                                       reader=reader.name)  # fmt: skip
        raise
    with api_env.session() as s:  # type: ignore[attr-defined]
        pin_counter.record_pin_service(s, done, card_id, clerk, identity_checked=True)
    return done


def test_three_wrong_tries_block_shown_everywhere_then_unblocked(
    api_env: ApiEnv, caplog: pytest.LogCaptureFixture
) -> None:
    card = api_env.new_card()
    reader = api_env.chip(card)
    c, clerk = api_env.client, api_env.auth("clerk")
    with api_env.session() as s:  # type: ignore[attr-defined]
        person_id = services.find_card(s, card_number=card.card_number).person_id
    r = c.get(f"/v1/cards/{card.card_number}", headers=clerk)
    assert r.status_code == 200 and r.json()["pins"] == {}  # never seen at a reader yet

    with caplog.at_level(logging.DEBUG):
        lefts = []
        for _ in range(3):
            with pytest.raises(PinRefused) as err:
                _serve(api_env, card.id, reader, PinService.CHANGE, Pad(WRONG))
            lefts.append(err.value.tries_left)
            r = c.get(f"/v1/cards/{card.card_number}", headers=clerk)
            assert r.json()["pins"]["ss"]["tries_left"] == err.value.tries_left
        assert lefts == [2, 1, 0]
        assert "blocked" in str(err.value)
        # blocked: even the right PIN is refused now
        with pytest.raises(PinRefused) as err:
            _serve(api_env, card.id, reader, PinService.CHANGE, Pad(INITIAL))
        assert err.value.tries_left == 0

        r = c.get(f"/v1/cards/{card.card_number}", headers=clerk)
        assert r.status_code == 200, r.text
        ss = r.json()["pins"]["ss"]
        assert ss["state"] == "blocked" and ss["tries_left"] == 0 and ss["unblocks"] == 0
        r = c.get(f"/v1/people/{person_id}", headers=clerk)
        assert r.status_code == 200, r.text
        [cd] = [x for x in r.json()["cards"] if x["card_number"] == card.card_number]
        apps = {a["kind"]: a for a in cd["chip_apps"]}
        assert apps["social_security"]["pin_blocked"] is True
        assert apps["social_security"]["pin_tries_left"] == 0
        with api_env.session() as s:  # type: ignore[attr-defined]
            view = services.card_status(s, card_id=card.id)
            from issuance.services.pins import app_status_text

            shown = app_status_text("social_security", view.chip_apps["social_security"],
                                    view.pins)  # fmt: skip
        assert shown == "PIN blocked"

        # unblocked, but the holder then types a wrong PIN: the unblock counts all the same
        with pytest.raises(PinRefused) as err:
            _serve(api_env, card.id, reader, PinService.UNBLOCK, Pad(WRONG))
        assert err.value.tries_left == 2 and err.value.unblocked
        assert (
            c.get(f"/v1/cards/{card.card_number}", headers=clerk).json()["pins"]["ss"]["unblocks"]
            == 1
        )
        # unblocked at the counter: the holder's PIN verifies again, all tries back
        done = _serve(api_env, card.id, reader, PinService.UNBLOCK, Pad(INITIAL))
        assert done.tries_left == 3 and done.card_authenticated
        reader.connect()
        cardops.verify_pin(reader, INITIAL, profile=PROFILE)
        reader.disconnect()
        r = c.get(f"/v1/cards/{card.card_number}", headers=clerk)
        ss = r.json()["pins"]["ss"]
        assert ss == {**ss, "state": "usable", "tries_left": 3, "unblocks": 2}
        # and the holder now changes the initial PIN: a weak one is refused first
        with pytest.raises(Exception, match="repeated digits"):
            _serve(api_env, card.id, reader, PinService.CHANGE, Pad(INITIAL, "111111"))
        _serve(api_env, card.id, reader, PinService.CHANGE, Pad(INITIAL, NEW))
        reader.connect()
        cardops.verify_pin(reader, NEW, profile=PROFILE)

    with api_env.session() as s:  # type: ignore[attr-defined]
        mine = (AuditEvent.entity_id == str(card.id), AuditEvent.action.like("card.pin%"))
        actions = list(s.scalars(sa.select(AuditEvent.action).where(*mine)))
        assert actions.count("card.pin_refused") == 5
        assert actions.count("card.pin_blocked") == 1
        assert actions.count("card.pin_unblocked") == 1
        assert actions.count("card.pin_changed") == 1
        dump = "\n".join(
            "" if v is None else repr(v)
            for table in Base.metadata.sorted_tables
            for row in s.execute(sa.select(table)).all()
            for v in row
        )
    for pin in (WRONG, NEW):
        assert pin not in dump and pin not in caplog.text
