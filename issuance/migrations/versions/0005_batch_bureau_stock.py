"""batches: face digest and bureau file on batch items, manufacturer chip stock

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 12:00:00

* ``batch_items.face_sha256``: digest of the face data as rendered and printed (quality check);
* ``batch_items.bureau_file_id``: the bureau file a card was exported in (stage ``at_bureau``,
  a new value of the VARCHAR stage column, as ``withdrawn``);
* ``stock_chips``: blank chips of a manufacturer's delivery with their wrapped transport key.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batch_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("face_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("bureau_file_id", sa.String(length=32), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_batch_items_bureau_file_id"), ["bureau_file_id"], unique=False
        )

    op.create_table(
        "stock_chips",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chip_serial", sa.String(length=16), nullable=False),
        sa.Column("lot", sa.String(length=64), nullable=False),
        sa.Column("manufacturer", sa.String(length=100), nullable=False),
        sa.Column("transport_key", sa.String(length=100), nullable=False),
        sa.Column(
            "algorithm",
            sa.Enum("3des", "sm4", "aes", name="cardalgorithm", native_enum=False, length=24),
            nullable=False,
        ),
        sa.Column("wrapped_kmc", sa.LargeBinary(), nullable=False),
        sa.Column("kmc_kcv", sa.String(length=6), nullable=False),
        sa.Column(
            "status",
            sa.Enum("available", "used", name="stockchipstatus", native_enum=False, length=24),
            nullable=False,
        ),
        sa.Column("card_id", sa.Integer(), nullable=True),
        sa.Column("imported_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["card_id"], ["cards.id"], name=op.f("fk_stock_chips_card_id_cards")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stock_chips")),
        sa.UniqueConstraint("chip_serial", name=op.f("uq_stock_chips_chip_serial")),
    )
    with op.batch_alter_table("stock_chips", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stock_chips_lot"), ["lot"], unique=False)
        batch_op.create_index(batch_op.f("ix_stock_chips_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stock_chips", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stock_chips_status"))
        batch_op.drop_index(batch_op.f("ix_stock_chips_lot"))
    op.drop_table("stock_chips")
    with op.batch_alter_table("batch_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batch_items_bureau_file_id"))
        batch_op.drop_column("bureau_file_id")
        batch_op.drop_column("face_sha256")
