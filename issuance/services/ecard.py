"""The electronic card (issue 21): issuing, dynamic codes, online verification, the holder's
authorisation during a provisional loss, and the signed link to the resident's page.

* :func:`issue_ecard` binds a new e-card to a person's active formal card once the person has
  proved who they are (``proof``: :data:`PROOFS`); the e-card then follows that card
  (:func:`issuance.services.card_steps.ecard_follows_card`: moved to the replacement, ended by
  cancellation - a death record too - and expiry).
* :func:`make_code` signs a fresh code in the HSM (:mod:`issuance.services.ecard_token`: COSE_Sign1
  over CBOR claims, base45), valid ``[ecard] code_seconds + code_grace_seconds``; a code is made
  only while the card's codes would be accepted (:func:`ecard_token.card_refusal`).
* :func:`verify_code` is the online check an agency asks for (``POST /v1/ecard/verifications``):
  the code's structure, key, signature and time; its nonce used once (``ecard_nonces``, the
  database's primary key: a replayed screenshot is refused on every node); the e-card and its
  card's status *now*; holder data by the chip verification's scopes. One ``ecard.verified``
  audit event, in the transaction that uses up the nonce.
* :func:`authorise_during_loss` records the holder's authorisation of the e-card during a
  provisional loss (the national rule: without it a provisionally lost card's codes are
  refused); it lasts as long as that loss report is open.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session, contains_eager

from cardspec.ids import mask_citizen_id
from issuance import audit
from issuance.audit import SYSTEM_ACTOR, Actor
from issuance.db import flush
from issuance.errors import (
    ConflictError,
    FieldProblem,
    NotFound,
    PermissionDenied,
    TransitionError,
    ValidationError,
)
from issuance.models import (
    Application,
    Card,
    CardKind,
    CardStatus,
    Channel,
    Ecard,
    EcardNonce,
    LossKind,
    LossReport,
    LossStatus,
    StaffRole,
    utcnow,
)
from issuance.services import ecard_token
from issuance.services.card_steps import ecard_follows_card, expire_if_due, lapse_if_due
from issuance.services.ecard_token import Claims, CodeReason, Signer
from issuance.services.verification import HolderView
from issuance.settings import IssuanceConfig

#: How a person may prove who they are to get an e-card or authorise it during a loss.
PROOFS: dict[str, str] = {
    "counter_identity_check": "a counter clerk checked the holder's identity document",
    "resident_otp": "the resident entered the one-time code sent to the phone on record",
}
#: Who may act on a counter proof (a resident's own proof acts as the system on web/app).
COUNTER_ROLES = frozenset({StaffRole.CLERK, StaffRole.SUPERVISOR, StaffRole.ADMIN})
_SELF_SERVICE = frozenset({Channel.WEB, Channel.APP, Channel.WECHAT})
#: Used nonces stay recorded this long after their code expired (clock differences of nodes).
USED_NONCE_MARGIN = timedelta(minutes=10)


def _check_proof(actor: Actor, proof: str) -> None:
    if proof not in PROOFS:
        raise ValidationError(
            "unknown proof", [FieldProblem("proof", f"one of {', '.join(sorted(PROOFS))}")]
        )
    if proof == "counter_identity_check" and actor.role not in COUNTER_ROLES:
        raise PermissionDenied(f"role {actor.role} may not act on a counter identity check",
                               role=str(actor.role))  # fmt: skip
    if proof == "resident_otp" and (
        actor.role != StaffRole.SYSTEM or actor.channel not in _SELF_SERVICE
    ):
        raise PermissionDenied("a resident's one-time code is checked by the self-service "
                               "system (web/app)", role=str(actor.role))  # fmt: skip


def _unix(at: datetime) -> int:
    return int(at.replace(tzinfo=UTC).timestamp())


def issue_ecard(
    session: Session, settings: IssuanceConfig, card_id: int, actor: Actor, proof: str
) -> Ecard:
    """A new e-card bound to the active formal card ``card_id`` and its holder, the person
    identified by ``proof`` (:data:`PROOFS`); audited ``ecard.issued``. One live e-card per
    person (ConflictError names the live one)."""
    _check_proof(actor, proof)
    card = session.get(Card, card_id)
    if card is None:
        raise NotFound(f"no card {card_id}")
    expire_if_due(session, card)
    if card.kind != CardKind.FORMAL:
        problem = FieldProblem("card", "an e-card is bound to a formal card, not a temporary one")
        raise ValidationError("no e-card", [problem])
    if card.status != CardStatus.ACTIVE:
        raise TransitionError(
            f"card {card.card_number} is {card.status}: an e-card is issued for an active card",
            from_state=str(card.status), event="issue_ecard",
        )  # fmt: skip
    live = session.scalars(
        sa.select(Ecard).where(Ecard.person_id == card.person_id, Ecard.ended_at.is_(None))
    ).first()
    if live is not None:
        raise ConflictError(f"the holder of card {card.card_number} has an e-card already "
                            f"({live.public_id})", ecard=live.public_id)  # fmt: skip
    ecard = Ecard(
        public_id=secrets.token_hex(16), person_id=card.person_id, card_id=card.id, proof=proof,
        issued_at=utcnow(), issued_by_id=actor.staff_id,
    )  # fmt: skip
    session.add(ecard)
    flush(session)
    audit.record(
        session, actor, "ecard.issued", "ecard", ecard.id, after="live",
        details={"card_number": card.card_number, "proof": proof, "ecard": ecard.public_id},
    )  # fmt: skip
    return ecard


def find_ecard(session: Session, public_id: str) -> Ecard:
    """The e-card by its public id, after the card's lazy steps (expiry, lapse) and the rule
    that it follows its card; raise NotFound."""
    ecard = session.scalars(sa.select(Ecard).where(Ecard.public_id == public_id.lower())).first()
    if ecard is None:
        raise NotFound(f"no e-card {public_id}")
    _follow(session, ecard)
    return ecard


def ecard_of_card(session: Session, card: Card) -> Ecard | None:
    """The live e-card bound to ``card`` (after the same steps as :func:`find_ecard`)."""
    ecard = session.scalars(
        sa.select(Ecard).where(Ecard.card_id == card.id).order_by(Ecard.id.desc())
    ).first()
    if ecard is None:
        return None
    _follow(session, ecard)
    return ecard if ecard.ended_at is None else None


def _follow(session: Session, ecard: Ecard) -> None:
    if ecard.ended_at is not None:
        return
    card = session.get(Card, ecard.card_id)
    assert card is not None
    expire_if_due(session, card)
    lapse_if_due(session, card)
    ecard_follows_card(session, card, SYSTEM_ACTOR)


def _open_provisional_report(session: Session, card_id: int) -> LossReport | None:
    return session.scalars(
        sa.select(LossReport).where(
            LossReport.card_id == card_id, LossReport.status == LossStatus.OPEN,
            LossReport.kind == LossKind.PROVISIONAL,
        ).order_by(LossReport.id.desc())
    ).first()  # fmt: skip


def loss_authorised(session: Session, ecard: Ecard, card: Card) -> bool:
    """The holder has authorised the e-card during the card's present provisional loss."""
    if card.status != CardStatus.LOST_PROVISIONAL or ecard.loss_authorised_report_id is None:
        return False
    report = _open_provisional_report(session, card.id)
    return report is not None and report.id == ecard.loss_authorised_report_id


def _refusal(session: Session, ecard: Ecard) -> tuple[Card, str | None, bool]:
    """(card, why its codes are refused now or None, authorised during a loss)."""
    card = session.get(Card, ecard.card_id)
    assert card is not None
    if ecard.ended_at is not None:
        return card, ecard_token.card_refusal(ecard.end_reason or card.status, False), False
    authorised = loss_authorised(session, ecard, card)
    return card, ecard_token.card_refusal(card.status, authorised), authorised


def code_refusal(session: Session, ecard: Ecard) -> str | None:
    """Why the e-card's codes are refused now (None: a code can be made and is accepted)."""
    return _refusal(session, ecard)[1]


@dataclass(frozen=True)
class IssuedCode:
    text: str
    claims: Claims
    issued_at: datetime
    expires_at: datetime
    period_seconds: int


def make_code(
    session: Session,
    settings: IssuanceConfig,
    public_id: str,
    public_pem: bytes,
    sign: Signer,
    actor: Actor = SYSTEM_ACTOR,
    now: datetime | None = None,
) -> IssuedCode:
    """A fresh signed code of the e-card (audited ``ecard.code``); TransitionError when its
    codes would be refused now (the card lost without the holder's authorisation, cancelled
    ...): the page says why instead of showing a code no one accepts."""
    ecard = find_ecard(session, public_id)
    card, reason, authorised = _refusal(session, ecard)
    if reason is not None:
        raise TransitionError(
            f"no code: the e-card's card {card.card_number} is refused ({reason})",
            from_state=str(card.status), event="ecard_code", reason=reason,
        )  # fmt: skip
    now = now or utcnow()
    conf = settings.ecard
    iat = _unix(now)
    exp = iat + conf.code_seconds + conf.code_grace_seconds
    claims = Claims(
        bytes.fromhex(ecard.public_id), ecard_token.card_ref(card.card_number), iat, exp,
        ecard_token.new_nonce(), authorised,
    )  # fmt: skip
    text = ecard_token.encode(claims, public_pem, sign)
    audit.record(
        session, actor, "ecard.code", "ecard", ecard.id,
        details={"nonce": claims.nonce.hex(), "expires": exp, "loss_authorised": authorised},
    )  # fmt: skip
    return IssuedCode(text, claims, now, datetime.fromtimestamp(exp, UTC).replace(tzinfo=None),
                      conf.code_seconds)  # fmt: skip


def authorise_during_loss(
    session: Session, public_id: str, actor: Actor, proof: str, *, withdraw: bool = False
) -> Ecard:
    """Record (or, ``withdraw``, take back) the holder's authorisation of the e-card during
    the card's present provisional loss (``ecard.loss_authorised`` /
    ``ecard.loss_authorisation_withdrawn``). It ends with that loss report: a later loss
    needs a new one."""
    _check_proof(actor, proof)
    ecard = find_ecard(session, public_id)
    card = session.get(Card, ecard.card_id)
    assert card is not None
    if ecard.ended_at is not None:
        raise TransitionError(f"e-card {ecard.public_id} has ended ({ecard.end_reason})",
                              from_state="ended", event="authorise_during_loss")  # fmt: skip
    report = _open_provisional_report(session, card.id)
    if card.status != CardStatus.LOST_PROVISIONAL or report is None:
        raise TransitionError(
            f"card {card.card_number} is {card.status}: the authorisation is for a card "
            "provisionally reported lost", from_state=str(card.status),
            event="authorise_during_loss",
        )  # fmt: skip
    before = "authorised" if ecard.loss_authorised_report_id == report.id else "not_authorised"
    ecard.loss_authorised_report_id = None if withdraw else report.id
    flush(session)
    audit.record(
        session, actor,
        "ecard.loss_authorisation_withdrawn" if withdraw else "ecard.loss_authorised",
        "ecard", ecard.id, before=before,
        after="not_authorised" if withdraw else "authorised",
        details={"card_number": card.card_number, "loss_report": report.id, "proof": proof},
    )  # fmt: skip
    return ecard


def hand_out_link(
    session: Session,
    settings: IssuanceConfig,
    public_id: str,
    actor: Actor,
    public_pem: bytes,
    sign: Signer,
    now: datetime | None = None,
) -> tuple[str, datetime]:
    """A signed link token opening the e-card's page for ``[ecard] link_minutes`` (what a
    counter clerk hands the resident; the resident can also open it with a one-time code); audited
    ``ecard.link``. Returns (token, expiry)."""
    if actor.role not in COUNTER_ROLES:
        raise PermissionDenied(f"role {actor.role} may not hand out e-card links",
                               role=str(actor.role))  # fmt: skip
    ecard = find_ecard(session, public_id)
    if ecard.ended_at is not None:
        raise TransitionError(f"e-card {ecard.public_id} has ended ({ecard.end_reason})",
                              from_state="ended", event="ecard_link")  # fmt: skip
    exp = _unix(now or utcnow()) + settings.ecard.link_minutes * 60
    token = ecard_token.encode_link(bytes.fromhex(ecard.public_id), exp, public_pem, sign)
    audit.record(session, actor, "ecard.link", "ecard", ecard.id, details={"expires": exp})
    return token, datetime.fromtimestamp(exp, UTC).replace(tzinfo=None)


# --- online verification ----------------------------------------------------------------------


@dataclass(frozen=True)
class EcardVerdict:
    valid: bool
    reason: str | None
    ecard_id: str | None = None
    card_number: str | None = None
    card_status: str | None = None
    loss_authorised: bool = False
    code_expires_at: datetime | None = None
    holder: HolderView | None = None
    photo_jpeg: bytes | None = None


def nonce_key(claims: Claims) -> bytes:
    """The ``ecard_nonces`` primary key of a code: expiry (4 bytes) || nonce (12 bytes)."""
    return claims.expires_at.to_bytes(4, "big") + claims.nonce


#: Record a used code: the same SQL on PostgreSQL and SQLite (3.35+); a text statement is
#: compiled once (the dialects' ``insert().on_conflict_do_nothing()`` is compiled on every call).
_USE_NONCE = sa.text(
    "INSERT INTO ecard_nonces (id) VALUES (:key) ON CONFLICT DO NOTHING RETURNING id"
).bindparams(sa.bindparam("key", type_=sa.LargeBinary(16)))


def _use_nonce(session: Session, key: bytes) -> bool:
    """Record the code's nonce as used; False if it was already (single use, every node)."""
    return session.execute(_USE_NONCE, {"key": key}).scalar_one_or_none() is not None


def prune_used_nonces(
    session: Session, now: datetime | None = None, margin: timedelta = USED_NONCE_MARGIN
) -> int:
    """Forget used codes expired for longer than ``margin``: refused as expired anyway."""
    cutoff = max(0, _unix((now or utcnow()) - margin)).to_bytes(4, "big")
    result = session.execute(sa.delete(EcardNonce).where(EcardNonce.id < cutoff))
    return int(cast(Any, result).rowcount or 0)


def _photo(session: Session, person_id: int) -> bytes | None:
    return session.execute(
        sa.select(Application.photo_jpeg)
        .where(Application.person_id == person_id, Application.photo_jpeg.is_not(None))
        .order_by(Application.id.desc()).limit(1)
    ).scalar_one_or_none()  # fmt: skip


def verify_code(
    session: Session,
    *,
    text: str,
    public_pem: bytes,
    actor: Actor,
    with_holder: bool = False,
    full_citizen_id: bool = False,
    with_photo: bool = False,
    now: datetime | None = None,
) -> EcardVerdict:
    """The online verdict on a scanned code (see the module docstring); audited
    ``ecard.verified`` in the caller's transaction, with the nonce's use."""
    now = now or utcnow()
    checked = ecard_token.check_code(text, public_pem, _unix(now))
    if isinstance(checked, CodeReason):
        return _audited(session, actor, EcardVerdict(False, str(checked)), None)
    claims = checked
    # the nonce first (on SQLite a transaction that reads before it writes may fail when
    # another wrote meanwhile): two scans of one code race for the primary key
    if not _use_nonce(session, nonce_key(claims)):
        return _audited(session, actor, EcardVerdict(False, str(CodeReason.REUSED)), claims)
    ecard = session.scalars(  # the e-card and its card in one query
        sa.select(Ecard).join(Card, Card.id == Ecard.card_id).options(contains_eager(Ecard.card))
        .where(Ecard.public_id == claims.ecard_id.hex())
    ).first()  # fmt: skip
    if ecard is None:
        return _audited(session, actor, EcardVerdict(False, str(CodeReason.UNKNOWN_ECARD)), claims)
    _follow(session, ecard)
    card, reason, authorised = _refusal(session, ecard)
    if claims.card_ref != ecard_token.card_ref(card.card_number):
        # made for the card this e-card was bound to before a replacement
        reason, authorised = ecard_token.card_refusal(CardStatus.REPLACED, False), False
    holder = photo = None
    if reason is None and with_holder:
        person = card.person
        cid = person.citizen_id if full_citizen_id else mask_citizen_id(person.citizen_id)
        holder = HolderView(person.name, cid, str(person.sex), person.birth_date)
    if reason is None and with_photo:
        photo = _photo(session, card.person_id)
    verdict = EcardVerdict(
        reason is None, reason, ecard.public_id, card.card_number, str(card.status),
        authorised and reason is None,
        datetime.fromtimestamp(claims.expires_at, UTC).replace(tzinfo=None), holder, photo,
    )  # fmt: skip
    return _audited(session, actor, verdict, claims, ecard.id)


def _audited(
    session: Session,
    actor: Actor,
    verdict: EcardVerdict,
    claims: Claims | None,
    ecard_pk: int | None = None,
) -> EcardVerdict:
    audit.record(
        session, actor, "ecard.verified", "ecard",
        ecard_pk if ecard_pk is not None else (claims.ecard_id.hex() if claims else "unknown"),
        after="valid" if verdict.valid else "invalid",
        details={
            "valid": verdict.valid, "reason": verdict.reason,
            "card_number": verdict.card_number,
            "nonce": claims.nonce.hex() if claims else None,
            "loss_authorised": verdict.loss_authorised,
            "holder_shown": verdict.holder is not None,
            "photo_shown": verdict.photo_jpeg is not None,
        },
    )  # fmt: skip
    return verdict


# --- what a person sees: the code as an image -------------------------------------------------


def render_png(text: str, scale: int = 6) -> bytes:
    """The code as a PNG QR code (segno; error correction M, quiet zone of 4 modules)."""
    import io

    import segno

    out = io.BytesIO()
    segno.make_qr(text, error="m").save(out, kind="png", scale=scale, border=4)
    return out.getvalue()


def render_svg(text: str, scale: int = 6) -> bytes:
    """The code as an SVG QR code (same symbol as :func:`render_png`)."""
    import io

    import segno

    out = io.BytesIO()
    segno.make_qr(text, error="m").save(out, kind="svg", scale=scale, border=4, xmldecl=False)
    return out.getvalue()
