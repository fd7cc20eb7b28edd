"""Routes: find a resident and see their whole record (counter staff; scope ``people:read``,
never granted to an agency; the rules are :mod:`issuance.services.people`).

The search is a POST: the ID number, phone or name travels in the body, never in a URL (URLs
end up in proxies' and servers' access logs)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from api.auth import need
from api.calls import domain
from api.errors import responses
from api.schemas import UtcDatetime
from issuance.services import people
from issuance.services.credentials import Principal

router = APIRouter(prefix="/v1", tags=["people"])
PersonId = Annotated[int, Path(ge=1, le=2**31 - 1)]
_ERR = responses(400, 401, 403, 404, 422, 429)
_NO_NUL = r"^[^\x00]*$"


class PersonSearchIn(BaseModel):
    """One of: ``citizen_id``; ``card_number``; ``phone``; ``name`` with ``birth_date`` and/or
    ``region_code`` (a code ending in 00 covers its prefecture or province)."""

    model_config = ConfigDict(extra="forbid")

    citizen_id: Annotated[str, Field(max_length=18, pattern=_NO_NUL)] | None = None
    card_number: Annotated[str, Field(max_length=9, pattern=_NO_NUL)] | None = None
    phone: Annotated[str, Field(max_length=24, pattern=_NO_NUL)] | None = None
    name: Annotated[str, Field(max_length=60, pattern=_NO_NUL)] | None = None
    birth_date: date | None = None
    region_code: Annotated[str, Field(max_length=6, pattern=_NO_NUL)] | None = None


class PersonMatchOut(BaseModel):
    person_id: int
    name: str
    citizen_id: str = Field(description="masked")
    birth_date: date
    region_code: str
    card_number: str | None = Field(description="the live card (formal before temporary)")
    card_status: str | None


class ChipAppOut(BaseModel):
    kind: str
    status: str
    changed_at: UtcDatetime
    pin_set: bool | None = Field(description="bank PIN set at a branch; null: not recorded")
    pin_blocked: bool = Field(
        description="the PIN guarding this function is blocked, as a card reader last reported it"
    )
    pin_tries_left: int | None = Field(
        None, description="the PIN's tries left as a reader last reported; null: never seen"
    )


class CardOut(BaseModel):
    card_number: str
    kind: str
    status: str
    status_changed_at: UtcDatetime
    issue_date: date | None
    expiry_date: date | None
    fee_fen: int
    replaced_by: str | None
    chip_apps: list[ChipAppOut]


class DepositOut(BaseModel):
    card_number: str
    amount_fen: int
    taken_at: UtcDatetime
    returned_at: UtcDatetime | None
    refunded_at: UtcDatetime | None


class FeeOut(BaseModel):
    what: str
    amount_fen: int
    at: UtcDatetime


class LossOut(BaseModel):
    card_number: str
    kind: str
    status: str
    channel: str
    identity_checked: bool
    reported_at: UtcDatetime
    lapses_at: UtcDatetime | None
    closed_at: UtcDatetime | None


class PersonApplicationOut(BaseModel):
    application_id: int
    status: str
    channel: str
    received_at: UtcDatetime
    decided_at: UtcDatetime | None
    reject_reason: str | None
    card_number: str | None


class TimelineOut(BaseModel):
    occurred_at: UtcDatetime
    action: str
    entity_type: str
    entity_id: str
    actor: str
    channel: str
    before: str | None
    after: str | None
    reason: str | None


class PersonOut(BaseModel):
    person_id: int
    citizen_id: str = Field(description="masked unless the caller has holder:full_id")
    name: str
    sex: str
    birth_date: date
    ethnicity: str | None
    region_code: str
    phone: str | None
    address: str | None
    death_date: date | None
    card_name: str | None = Field(
        None,
        description="the name as the chip holds it (GBK) when the true name has characters "
        "outside GBK (the issuer's substitution); absent: the chip holds the name",
    )
    cards: list[CardOut]
    deposits: list[DepositOut]
    deposits_held_fen: int
    fees: list[FeeOut]
    fees_fen: int
    losses: list[LossOut]
    applications: list[PersonApplicationOut]
    timeline: list[TimelineOut]


def _query(body: PersonSearchIn) -> people.PersonQuery:
    return people.PersonQuery(
        citizen_id=body.citizen_id, card_number=body.card_number, phone=body.phone,
        name=body.name, birth_date=body.birth_date, region_code=body.region_code,
    )  # fmt: skip


@router.post("/people/search", response_model=list[PersonMatchOut], responses=_ERR)
async def search(
    body: PersonSearchIn,
    request: Request,
    principal: Annotated[Principal, Depends(need("people:read"))],
) -> list[PersonMatchOut]:
    """Find residents (at most 50; ID numbers masked). Audited ``person.searched``."""

    def fn(s: Session) -> list[PersonMatchOut]:
        return [
            PersonMatchOut(
                person_id=m.person_id,
                name=m.name,
                citizen_id=m.citizen_id_masked,
                birth_date=m.birth_date,
                region_code=m.region_code,
                card_number=m.card_number,
                card_status=m.card_status,
            )
            for m in people.find_people(s, _query(body), principal.actor)
        ]

    return await domain(request, principal, fn)


@router.get("/people/{person_id}", response_model=PersonOut, responses=_ERR)
async def show(
    person_id: PersonId,
    request: Request,
    principal: Annotated[Principal, Depends(need("people:read"))],
) -> PersonOut:
    """A resident's whole record: identity, cards with each chip application's status and PIN
    state, deposits and fees, loss reports, applications, and the audit timeline. Audited
    ``person.viewed``."""
    full_id = "holder:full_id" in principal.scopes

    def fn(s: Session) -> PersonOut:
        rec = people.person_record(s, person_id, principal.actor)
        return PersonOut(
            person_id=rec.person_id,
            citizen_id=rec.citizen_id if full_id else rec.citizen_id_masked,
            name=rec.name, sex=rec.sex, birth_date=rec.birth_date, ethnicity=rec.ethnicity,
            region_code=rec.region_code, phone=rec.phone, address=rec.address,
            death_date=rec.death_date, card_name=rec.card_name,
            cards=[
                CardOut(
                    card_number=c.card_number, kind=c.kind, status=c.status,
                    status_changed_at=c.status_changed_at, issue_date=c.issue_date,
                    expiry_date=c.expiry_date, fee_fen=c.fee_fen, replaced_by=c.replaced_by,
                    chip_apps=[ChipAppOut(kind=a.kind, status=a.status, changed_at=a.changed_at,
                                          pin_set=a.pin_set, pin_blocked=a.pin_blocked,
                                          pin_tries_left=a.pin_tries_left)
                               for a in c.chip_apps],
                )
                for c in rec.cards
            ],
            deposits=[DepositOut(card_number=d.card_number, amount_fen=d.amount_fen,
                                 taken_at=d.taken_at, returned_at=d.returned_at,
                                 refunded_at=d.refunded_at) for d in rec.deposits],
            deposits_held_fen=rec.deposits_held_fen,
            fees=[FeeOut(what=f.what, amount_fen=f.amount_fen, at=f.at) for f in rec.fees],
            fees_fen=rec.fees_fen,
            losses=[LossOut(card_number=r.card_number, kind=r.kind, status=r.status,
                            channel=r.channel, identity_checked=r.identity_checked,
                            reported_at=r.reported_at, lapses_at=r.lapses_at,
                            closed_at=r.closed_at) for r in rec.losses],
            applications=[PersonApplicationOut(
                application_id=a.application_id, status=a.status, channel=a.channel,
                received_at=a.received_at, decided_at=a.decided_at,
                reject_reason=a.reject_reason, card_number=a.card_number,
            ) for a in rec.applications],
            timeline=[TimelineOut(occurred_at=e.occurred_at, action=e.action,
                                  entity_type=e.entity_type, entity_id=e.entity_id,
                                  actor=e.actor, channel=e.channel, before=e.before,
                                  after=e.after, reason=e.reason) for e in rec.timeline],
        )  # fmt: skip

    return await domain(request, principal, fn)
