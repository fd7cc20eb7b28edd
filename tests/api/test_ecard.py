"""The electronic card (issue 21) through the product's app and its SoftHSM signing key: issued
at a counter, codes rendered as PNG and decoded by an independent decoder (zxing-cpp), then
verified online (``POST /v1/ecard/verifications``) and offline (the client kit with the public
key and the signed status feed); tampered, expired and replayed codes refused with their own
reasons; the provisional-loss rule; the e-card following its card (replacement, cancellation).
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import base45
import cbor2
import pytest
import sqlalchemy as sa
from api_helpers import ApiEnv
from qr_scan import scan_qr

from api.client import OfflineEcardVerifier
from issuance import services
from issuance.models import AuditEvent, Card, Channel, EcardNonce, utcnow
from issuance.services import ecard, ecard_token

pytestmark = pytest.mark.softhsm


def scan(png: bytes) -> str:
    """What a scanner reads from the image (zxing-cpp, not the library that drew it)."""
    found = scan_qr(png)
    assert len(found) == 1, f"{len(found)} codes found in the image"
    return found[0]


def issue(env: ApiEnv, card: Card, who: str = "clerk") -> str:
    r = env.client.post("/v1/ecards", json={"card_number": card.card_number},
                        headers=env.auth(who))  # fmt: skip
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["card_number"] == card.card_number and body["card_status"] == "active"
    return str(body["ecard_id"])


def code_png(env: ApiEnv, ecard_id: str) -> bytes:
    r = env.client.post(f"/v1/ecards/{ecard_id}/codes?format=png", headers=env.auth("clerk"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return r.content


def verify(env: ApiEnv, code: str, who: str = "hospital", **kw: Any) -> dict[str, Any]:
    r = env.client.post("/v1/ecard/verifications", json={"code": code, **kw},
                        headers=env.auth(who))  # fmt: skip
    assert r.status_code == 200, r.text
    return dict(r.json())


def public_pem(env: ApiEnv) -> bytes:
    r = env.client.get("/v1/status-feed/public-key")
    return str(r.json()["public_key_pem"]).encode()


def events(env: ApiEnv, action: str) -> list[AuditEvent]:
    with env.session() as s:  # type: ignore[attr-defined]
        rows = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == action)
                         .order_by(AuditEvent.id)).all()  # fmt: skip
        s.expunge_all()
        return list(rows)


def offline(env: ApiEnv) -> OfflineEcardVerifier:
    """A terminal's verifier loaded with the feed as it is now (after the feed's settle
    time, so the newest changes are in it)."""
    time.sleep(2.2)
    verifier = OfflineEcardVerifier(public_pem(env))
    r = env.client.get("/v1/status-feed", headers=env.auth("hospital"))
    assert r.status_code == 200
    lines = [line + b"\n" for line in r.content.split(b"\n") if line]
    summary = verifier.load_feed(lines)  # the signature checked against the pinned key
    assert summary.kind == "full" and verifier.sequence == summary.sequence
    return verifier


def test_issue_scan_verify_and_refusals(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    ecard_id = issue(api_env, card)
    # one live e-card per person
    again = api_env.client.post("/v1/ecards", json={"card_number": card.card_number},
                                headers=api_env.auth("clerk"))  # fmt: skip
    assert again.status_code == 409

    text = scan(code_png(api_env, ecard_id))
    assert text.startswith("YKTEC1:")
    decoded = ecard_token.decode(text)
    assert decoded.alg == ecard_token.ALG_ES256  # the test token signs with ECDSA P-256
    assert decoded.kid == ecard_token.key_id(public_pem(api_env))
    assert decoded.claims.card_ref == ecard_token.card_ref(card.card_number)
    assert card.person.citizen_id not in text
    assert decoded.claims.expires_at - decoded.claims.issued_at == 60 + 30

    v = verify(api_env, text, include_holder=True)
    assert v["valid"] is True and v["ecard_id"] == ecard_id
    assert v["card_number"] == card.card_number and v["card_status"] == "active"
    assert v["holder"]["name"] == card.person.name
    assert v["holder"]["citizen_id"] != card.person.citizen_id  # masked for a hospital
    assert "*" in v["holder"]["citizen_id"]

    # the same code again: a replayed screenshot
    assert verify(api_env, text) == {"valid": False, "reason": "code_reused",
                                     "loss_authorised": False}  # fmt: skip

    # tampered: a claim changed (the card reference), the signature kept
    second = scan(code_png(api_env, ecard_id))
    tag = cbor2.loads(base45.b45decode(second[len(ecard_token.PREFIX) :]))
    protected, unprotected, payload, signature = tag.value
    claims = dict(cbor2.loads(payload))
    claims[ecard_token.K_CARD] = ecard_token.card_ref("A99999999")
    forged = cbor2.dumps(cbor2.CBORTag(18, [protected, dict(unprotected),
                                            cbor2.dumps(claims), signature]))  # fmt: skip
    forged_text = ecard_token.PREFIX + base45.b45encode(forged).decode()
    assert verify(api_env, forged_text)["reason"] == "not_genuine"
    # a byte of the signature flipped
    flipped = signature[:10] + bytes([signature[10] ^ 1]) + signature[11:]
    bad_sig = cbor2.dumps(cbor2.CBORTag(18, [protected, dict(unprotected), payload, flipped]))
    assert (
        verify(api_env, ecard_token.PREFIX + base45.b45encode(bad_sig).decode())["reason"]
        == "not_genuine"
    )
    # not a code at all
    assert verify(api_env, "HC1:NCFOXN%TS3DH")["reason"] == "code_malformed"
    # the untampered second code is still good (the forgeries used up nothing)
    assert verify(api_env, second)["valid"] is True

    # expired: a code made (in the HSM) two minutes ago
    with api_env.session() as s:  # type: ignore[attr-defined]
        old = ecard.make_code(
            s, api_env.settings, ecard_id, public_pem(api_env), api_env.hsm.service.sign,
            now=utcnow() - timedelta(seconds=120),
        )  # fmt: skip
    old_text = scan(ecard.render_png(old.text))
    assert verify(api_env, old_text)["reason"] == "code_expired"

    # SVG: the same kind of symbol
    r = api_env.client.post(f"/v1/ecards/{ecard_id}/codes?format=svg",
                            headers=api_env.auth("clerk"))  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    assert r.content.startswith(b"<svg") and b"<path" in r.content

    # an agency without the e-card scope is refused
    r = api_env.client.post("/v1/ecard/verifications", json={"code": second},
                            headers=api_env.auth("selfservice"))  # fmt: skip
    assert r.status_code == 403

    verified = events(api_env, "ecard.verified")
    reasons = [json.loads(e.details or "{}")["reason"] for e in verified]
    assert reasons == [None, "code_reused", "not_genuine", "not_genuine", "code_malformed",
                       None, "code_expired"]  # fmt: skip
    assert len(events(api_env, "ecard.issued")) == 1
    with api_env.session() as s:  # type: ignore[attr-defined]
        assert s.scalar(sa.select(sa.func.count()).select_from(EcardNonce)) == 2
        # the worker forgets used codes once they are long expired (refused as expired anyway)
        assert ecard.prune_used_nonces(s, utcnow()) == 0
        assert ecard.prune_used_nonces(s, utcnow() + timedelta(minutes=12)) == 2


def test_provisional_loss_needs_the_holders_authorisation(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    ecard_id = issue(api_env, card)
    before_loss = scan(code_png(api_env, ecard_id))
    with api_env.session() as s:  # type: ignore[attr-defined]
        phone = api_env.actors["clerk"].via(Channel.PHONE)
        services.report_loss(s, api_env.settings, card.id, phone, identity_checked=True)

    # online: the code made before the loss is refused now
    assert verify(api_env, before_loss)["reason"] == "lost"
    # no new code until the holder authorises the e-card during the loss
    r = api_env.client.post(f"/v1/ecards/{ecard_id}/codes", headers=api_env.auth("clerk"))
    assert r.status_code == 409, r.text

    r = api_env.client.post(f"/v1/ecards/{ecard_id}/loss-authorisation", json={},
                            headers=api_env.auth("clerk"))  # fmt: skip
    assert r.status_code == 200 and r.json()["loss_authorised"] is True
    during = scan(code_png(api_env, ecard_id))
    assert ecard_token.decode(during).claims.loss_authorised is True
    v = verify(api_env, during)
    assert v["valid"] is True and v["loss_authorised"] is True
    assert v["card_status"] == "lost_provisional"
    unused = scan(code_png(api_env, ecard_id))

    # offline: the feed says lost; the authorised code passes, the older one does not
    terminal = offline(api_env)
    assert terminal.verify(scan(code_png(api_env, ecard_id))).valid is True
    pre = terminal.verify(before_loss)
    assert (pre.valid, pre.reason) == (False, "lost")

    # the holder takes the authorisation back: refused again (online), audited
    r = api_env.client.post(f"/v1/ecards/{ecard_id}/loss-authorisation",
                            json={"withdraw": True}, headers=api_env.auth("clerk"))  # fmt: skip
    assert r.status_code == 200 and r.json()["loss_authorised"] is False
    r = api_env.client.post(f"/v1/ecards/{ecard_id}/codes", headers=api_env.auth("clerk"))
    assert r.status_code == 409
    assert verify(api_env, unused)["reason"] == "lost"
    assert [e.after for e in events(api_env, "ecard.loss_authorised")] == ["authorised"]
    assert [e.after for e in events(api_env, "ecard.loss_authorisation_withdrawn")] == [
        "not_authorised"
    ]


def test_the_ecard_follows_its_card(api_env: ApiEnv) -> None:
    card = api_env.new_card()
    ecard_id = issue(api_env, card)
    old_code = scan(code_png(api_env, ecard_id))
    with api_env.session() as s:  # type: ignore[attr-defined]
        services.report_loss(s, api_env.settings, card.id, api_env.actors["clerk"],
                             identity_checked=True)  # fmt: skip
        new = services.replace_card(s, api_env.settings, card.id, api_env.actors["clerk"])
        new_number = new.card_number
    moved = api_env.client.get(f"/v1/ecards/{ecard_id}", headers=api_env.auth("clerk")).json()
    assert moved["card_number"] == new_number and moved["ended_at"] is None
    assert [e.details and "to_card" in e.details for e in events(api_env, "ecard.moved")] == [True]
    # the old card's code is refused; the new card is not active yet: no code
    assert verify(api_env, old_code)["reason"] == "replaced"
    r = api_env.client.post(f"/v1/ecards/{ecard_id}/codes", headers=api_env.auth("clerk"))
    assert r.status_code == 409

    # cancellation ends the e-card
    other = api_env.new_card()
    other_id = issue(api_env, other)
    other_code = scan(code_png(api_env, other_id))
    with api_env.session() as s:  # type: ignore[attr-defined]
        services.cancel_card(s, other.id, api_env.actors["supervisor"], "holder request")
    shown = api_env.client.get(f"/v1/ecards/{other_id}", headers=api_env.auth("clerk")).json()
    assert shown["end_reason"] == "cancelled" and shown["ended_at"] is not None
    assert verify(api_env, other_code)["reason"] == "cancelled"
    ended = events(api_env, "ecard.ended")
    assert len(ended) == 1 and ended[0].reason and "cancelled" in ended[0].reason
    # offline too, once the feed says so
    terminal = offline(api_env)
    refused = terminal.verify(other_code)
    assert (refused.valid, refused.reason) == (False, "cancelled")


def test_the_ecard_page_for_staff_and_by_link(api_env: ApiEnv) -> None:
    from console_helpers import give_passwords, sign_in

    card = api_env.new_card()
    ecard_id = issue(api_env, card)
    c = api_env.client
    # the link a clerk hands out opens the page without a staff session
    path = c.post(f"/v1/ecards/{ecard_id}/links", headers=api_env.auth("clerk")).json()["path"]
    page = c.get(path)
    assert page.status_code == 200 and 'id="ecard-code"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    png = c.get(path + "/code.png")
    assert png.status_code == 200 and png.headers["cache-control"] == "no-store"
    assert verify(api_env, scan(png.content))["valid"] is True
    assert c.get(path[:-6] + "AAAAAA").status_code == 404
    assert c.get(path[:-6] + "AAAAAA/code.png").status_code == 404
    # staff: signed in, with ecard:manage (a reviewer lacks it)
    give_passwords(api_env)
    sign_in(c, api_env.actors["reviewer"].username)
    assert c.get(f"/console/ecard/s/{ecard_id}").status_code == 403
    c.cookies.clear()
    sign_in(c, api_env.actors["clerk"].username)
    assert 'id="ecard-code"' in c.get(f"/console/ecard/s/{ecard_id}").text
    staff_png = c.get(f"/console/ecard/s/{ecard_id}/code.png")
    assert verify(api_env, scan(staff_png.content))["valid"] is True
    codes = [e for e in events(api_env, "ecard.code")]
    assert [e.actor_name for e in codes] == ["ecard-link", api_env.actors["clerk"].username]
    assert len(events(api_env, "ecard.link")) == 1
