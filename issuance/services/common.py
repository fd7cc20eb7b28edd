"""Helpers shared by the services: lookups, card creation, the card-number allocator."""

from __future__ import annotations

import os
import re
from datetime import date
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cardspec.ids import (
    make_card_identification_code,
    make_card_number,
    mask_citizen_id,
    parse_card_number,
)
from issuance import audit
from issuance.audit import Actor
from issuance.db import flush
from issuance.errors import ConfigError, NotFound
from issuance.models import (
    Application,
    Card,
    CardAlgorithm,
    CardKind,
    CardNumberSeries,
    CardStatus,
    ChipAppKind,
    ChipApplication,
    ChipAppStatus,
    Person,
)
from issuance.settings import IssuanceConfig

_PREFIX_RE = re.compile(r"[0-9A-Z]{1,4}")

FORMAL_CHIP_APPS = (
    ChipAppKind.SOCIAL_SECURITY,
    ChipAppKind.MEDICAL,
    ChipAppKind.PENSION,
    ChipAppKind.FINANCIAL,
)
TEMPORARY_CHIP_APPS = (ChipAppKind.MEDICAL,)


def allocate_card_numbers(session: Session, n: int, prefix: str = "A") -> list[str]:
    """Allocate ``n`` consecutive card numbers (with check character) from ``prefix``'s series.

    One ``UPDATE ... RETURNING`` on the series row: it takes the row lock (PostgreSQL) or the
    write lock (SQLite) until the caller's transaction ends, so concurrent allocators queue,
    a rolled-back allocation gives its numbers back (gapless), and committed numbers are never
    handed out twice.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    if not _PREFIX_RE.fullmatch(prefix):
        raise ConfigError(f"card number prefix must be 1-4 characters 0-9/A-Z, got {prefix!r}")
    digits = 8 - len(prefix)
    table = cast(sa.Table, CardNumberSeries.__table__)
    stmt = (
        sa.update(table)
        .where(table.c.prefix == prefix)
        .values(next_value=table.c.next_value + n)
        .returning(table.c.next_value)
    )
    end = session.execute(stmt).scalar_one_or_none()
    if end is None:
        dialect = session.get_bind().dialect.name
        ins: Any
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            ins = pg_insert(table).values(prefix=prefix, next_value=1).on_conflict_do_nothing()
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            ins = sqlite_insert(table).values(prefix=prefix, next_value=1).on_conflict_do_nothing()
        session.execute(ins)
        end = session.execute(stmt).scalar_one()
    start = int(end) - n
    if int(end) - 1 >= 10**digits:
        raise ConfigError(f"card number series {prefix!r} is exhausted")
    return [make_card_number(prefix + str(v).zfill(digits)) for v in range(start, int(end))]


def get_person(
    session: Session, *, person_id: int | None = None, citizen_id: str | None = None
) -> Person:
    if person_id is not None:
        person = session.get(Person, person_id)
    elif citizen_id is not None:
        person = session.scalars(
            sa.select(Person).where(Person.citizen_id == citizen_id.upper())
        ).one_or_none()
    else:
        raise ValueError("give person_id or citizen_id")
    if person is None:
        what = (citizen_id and mask_citizen_id(citizen_id)) or person_id
        raise NotFound(f"no person {what}")
    return person


def find_card(
    session: Session,
    *,
    card_id: int | None = None,
    card_number: str | None = None,
    card_identification_code: str | None = None,
    for_update: bool = False,
) -> Card:
    """One card by id, card number or card identification code; raise NotFound."""
    stmt = sa.select(Card)
    if card_id is not None:
        stmt = stmt.where(Card.id == card_id)
    elif card_number is not None:  # check character first: a mistyped number is never looked up
        card_number = parse_card_number(card_number)
        stmt = stmt.where(Card.card_number == card_number)
    elif card_identification_code is not None:
        stmt = stmt.where(Card.card_identification_code == card_identification_code.upper())
    else:
        raise ValueError("give card_id, card_number or card_identification_code")
    if for_update:
        stmt = stmt.with_for_update()
    card = session.scalars(stmt).one_or_none()
    if card is None:
        raise NotFound(f"no card {card_id or card_number or card_identification_code}")
    return card


def live_formal_card(session: Session, person_id: int) -> Card | None:
    return session.scalars(
        sa.select(Card).where(
            Card.person_id == person_id,
            Card.kind == CardKind.FORMAL,
            Card.status.not_in([CardStatus.REPLACED, CardStatus.EXPIRED, CardStatus.CANCELLED]),
        )
    ).first()


def random_chip_serial() -> bytes:
    return os.urandom(8)


def create_card(
    session: Session,
    settings: IssuanceConfig,
    person: Person,
    actor: Actor,
    *,
    kind: CardKind = CardKind.FORMAL,
    status: CardStatus = CardStatus.NUMBER_ALLOCATED,
    application: Application | None = None,
    chip_serial: bytes | None = None,
    issue_date: date | None = None,
    expiry_date: date | None = None,
    algorithm: CardAlgorithm | None = None,
    fee_fen: int = 0,
    reason: str | None = None,
) -> Card:
    """A new card record with a freshly allocated card number and its chip applications;
    its key algorithm ``algorithm``, else ``[issuer] card_algorithm``."""
    region = settings.issuer.region_code
    (number,) = allocate_card_numbers(session, 1, settings.issuer.card_number_prefix)
    card = Card(
        card_number=number,
        card_identification_code=(
            make_card_identification_code(region, chip_serial) if chip_serial else None
        ),
        kind=kind,
        status=status,
        person_id=person.id,
        application_id=application.id if application is not None else None,
        region_code=region,
        algorithm=(
            algorithm if algorithm is not None else CardAlgorithm(settings.issuer.card_algorithm)
        ),
        issue_date=issue_date,
        expiry_date=expiry_date,
        fee_fen=fee_fen,
    )
    session.add(card)
    kinds = TEMPORARY_CHIP_APPS if kind == CardKind.TEMPORARY else FORMAL_CHIP_APPS
    chip_status = ChipAppStatus.ACTIVE if status == CardStatus.ACTIVE else ChipAppStatus.SEALED
    for k in kinds:
        card.chip_apps.append(ChipApplication(kind=k, status=chip_status))
    flush(session)
    audit.record(
        session, actor, "card.created", "card", card.id, after=str(status), reason=reason,
        details={"card_number": number, "kind": str(kind), "person_id": person.id,
                 "fee_fen": fee_fen},
    )  # fmt: skip
    return card
