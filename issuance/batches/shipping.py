"""Shipping a batch's good cards to collection points and issuing them to their holders.

Only cards that passed quality control (stage ``checked``) are shipped: a spoiled chip is
never attached to a card, and a card still in production or ``failed`` stays at the centre.
Each card is one transaction: the card's ``ship`` lifecycle transition (which queues the "ready
for collection" notification), the item's ``ship`` stage transition, their audit events.
Collection by the holder goes through :func:`issuance.services.collect_card` (status
``issued``, temporary cards handed back).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from issuance.audit import Actor
from issuance.batches import items as bi
from issuance.errors import FieldProblem, NotFound, ValidationError
from issuance.lifecycle import CardEvent
from issuance.models import Agency, BatchItem, BatchStage
from issuance.services.cards import advance_production, collect_card
from issuance.services.common import find_card
from issuance.services.places import COLLECTION_POINT_KINDS
from issuance.settings import IssuanceConfig


@dataclass(frozen=True)
class ShipResult:
    shipped: int
    collection_point: str


def collection_point(session: Session, code: str) -> Agency:
    agency = session.scalars(sa.select(Agency).where(Agency.code == code)).one_or_none()
    if agency is None:
        raise NotFound(
            f"no collection point {code!r} (create it: ykt places add {code} --name NAME "
            "--kind bank|community)"
        )
    if agency.kind not in COLLECTION_POINT_KINDS:
        raise ValidationError(
            "not a collection point",
            [FieldProblem("collection_point",
                          "must be a bank branch or a community service centre")],
        )  # fmt: skip
    return agency


def ship_item(
    session: Session, settings: IssuanceConfig, item: BatchItem, agency: Agency, actor: Actor
) -> None:
    """Ship one checked card to ``agency`` (caller's transaction)."""
    if item.stage != BatchStage.CHECKED:
        raise ValidationError(
            "cannot ship", [FieldProblem("stage", f"card is {item.stage}, it must be checked")]
        )
    advance_production(session, settings, item.card_id, CardEvent.SHIP, actor)
    item.collection_point_id = agency.id
    bi.advance(session, item, "ship", actor,
               details={"collection_point": agency.code})  # fmt: skip


def ship_batch(
    run_txn: Callable[[Callable[[Session], object]], object],
    settings: IssuanceConfig,
    batch_id: int,
    point_code: str,
    actor: Actor,
    on_card: Callable[[], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ShipResult:
    """Ship every checked card of the batch, one transaction per card (``run_txn`` runs a
    function in a committed transaction). ``on_start`` is told how many cards are to ship."""
    ids: list[int] = []

    def list_ids(s: Session) -> None:
        collection_point(s, point_code)
        ids.extend(
            s.scalars(
                sa.select(BatchItem.id).where(
                    BatchItem.batch_id == batch_id, BatchItem.stage == BatchStage.CHECKED
                ).order_by(BatchItem.id)
            )
        )  # fmt: skip

    run_txn(list_ids)
    if on_start is not None:
        on_start(len(ids))
    for item_id in ids:

        def one(s: Session, item_id: int = item_id) -> None:
            item = s.get(BatchItem, item_id)
            if item is None or item.stage != BatchStage.CHECKED:
                return  # shipped meanwhile by another operator
            ship_item(s, settings, item, collection_point(s, point_code), actor)

        run_txn(one)
        if on_card is not None:
            on_card()
    return ShipResult(len(ids), point_code)


def issue_card(session: Session, card_number: str, actor: Actor) -> BatchItem | None:
    """The holder collects the card at the collection point: card ``issued`` (existing
    service), batch item ``issued``."""
    card = find_card(session, card_number=card_number)
    collect_card(session, card.id, actor)
    item = session.scalars(sa.select(BatchItem).where(BatchItem.card_id == card.id)).one_or_none()
    if item is not None and item.stage == BatchStage.SHIPPED:
        bi.advance(session, item, "issue", actor)
    return item
