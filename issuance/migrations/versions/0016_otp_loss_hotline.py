"""one rule for one-time codes: the hotline's loss code becomes a purpose of the resident codes

* ``resident_challenges.card_id`` (nullable, indexed): the card a card-bound code is for. The
  hotline's loss code (``POST /v1/cards/{n}/loss-codes``) is now a challenge of purpose
  ``loss_hotline``, bound to the card and its holder, made and checked by
  ``issuance.services.otp`` like every other one-time code.
* ``loss_codes`` is dropped: nothing uses it any more. Its rows are not moved: a code there was
  valid ten minutes and is salted with the card, not with a challenge's handle, so it cannot
  be checked by the one rule. A hotline code sent in the ten minutes before the upgrade is
  refused after it (the holder asks for a new one), and the hour's count of codes per phone
  starts afresh at the upgrade (at most the hour's codes once more, for that hour only).

Downgrade: ``loss_codes`` comes back empty and the ``loss_hotline`` challenges are deleted
(short-lived codes: the same reasoning).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 14:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("resident_challenges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("card_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_resident_challenges_card_id_cards"), "cards", ["card_id"], ["id"]
        )
        batch_op.create_index(batch_op.f("ix_resident_challenges_card_id"), ["card_id"])
    op.drop_index(op.f("ix_loss_codes_card_id"), table_name="loss_codes")
    op.drop_table("loss_codes")


def downgrade() -> None:
    op.create_table(
        "loss_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("card_id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["card_id"], ["cards.id"], name=op.f("fk_loss_codes_card_id_cards")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_loss_codes")),
    )
    op.create_index(op.f("ix_loss_codes_card_id"), "loss_codes", ["card_id"])
    op.execute(sa.text("DELETE FROM resident_challenges WHERE card_id IS NOT NULL"))
    with op.batch_alter_table("resident_challenges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_resident_challenges_card_id"))
        batch_op.drop_constraint(
            batch_op.f("fk_resident_challenges_card_id_cards"), type_="foreignkey"
        )
        batch_op.drop_column("card_id")
