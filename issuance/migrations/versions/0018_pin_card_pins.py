"""pins: what the system last learnt of each PIN on a card's chip

``card_pins``: one row per card and PIN (``ss``, ``bank``): tries left as the card reported
them at a counter or branch reader, blocked, and the counter unblocks/resets done (capped by
``[lifecycle] pin_unblocks``). Never the PIN.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "card_pins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("card_id", sa.Integer(), nullable=False),
        sa.Column("pin_name", sa.String(length=16), nullable=False),
        sa.Column("tries_left", sa.Integer(), nullable=True),
        sa.Column("blocked", sa.Boolean(), nullable=False),
        sa.Column("unblocks", sa.Integer(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["card_id"], ["cards.id"], name=op.f("fk_card_pins_card_id_cards")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_pins")),
        sa.UniqueConstraint("card_id", "pin_name", name="uq_card_pins_card_pin"),
    )
    op.create_index(op.f("ix_card_pins_card_id"), "card_pins", ["card_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_card_pins_card_id"), table_name="card_pins")
    op.drop_table("card_pins")
