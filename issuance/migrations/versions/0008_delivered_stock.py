"""stock: chips delivered by a supplier, pre-personalised from its delivery key set; refusals

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-02 10:00:00

* ``stock_chips``: the delivery file lists chip serials only (the chips' KMC and KLK are
  diversified by the serial from the supplier's key set in the HSM, never delivered):
  ``manufacturer`` is renamed ``supplier``, ``key_version`` (the supplier key set) added,
  ``transport_key`` and ``wrapped_kmc`` dropped, ``kmc_kcv`` optional; status ``spoiled`` is a
  new value of the VARCHAR status column;
* ``stock_rejections``: every chip a station refused (unknown, already used or spoiled, wrong
  algorithm, unreadable).

The table was unused before this revision (no command wrote to it), so dropping the key
columns loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stock_chips", schema=None) as batch_op:
        batch_op.alter_column(
            "manufacturer", new_column_name="supplier", existing_type=sa.String(length=100),
            existing_nullable=False,
        )  # fmt: skip
        batch_op.add_column(
            sa.Column("key_version", sa.Integer(), server_default=sa.text("1"), nullable=False)
        )
        batch_op.alter_column("kmc_kcv", existing_type=sa.String(length=6), nullable=True)
        batch_op.drop_column("transport_key")
        batch_op.drop_column("wrapped_kmc")
    with op.batch_alter_table("stock_chips", schema=None) as batch_op:  # the renamed column
        batch_op.create_index(batch_op.f("ix_stock_chips_supplier"), ["supplier"], unique=False)

    op.create_table(
        "stock_rejections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chip_serial", sa.String(length=16), nullable=True),
        sa.Column(
            "reason",
            sa.Enum(
                "unknown",
                "used",
                "spoiled",
                "wrong_algorithm",
                "unreadable",
                name="stockrefusal",
                native_enum=False,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column("detail", sa.String(length=300), nullable=True),
        sa.Column("station", sa.String(length=100), nullable=True),
        sa.Column("batch_id", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_stock_rejections_batch_id_batches")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stock_rejections")),
    )
    with op.batch_alter_table("stock_rejections", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_stock_rejections_chip_serial"), ["chip_serial"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_stock_rejections_batch_id"), ["batch_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("stock_rejections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stock_rejections_batch_id"))
        batch_op.drop_index(batch_op.f("ix_stock_rejections_chip_serial"))
    op.drop_table("stock_rejections")
    with op.batch_alter_table("stock_chips", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stock_chips_supplier"))
    with op.batch_alter_table("stock_chips", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("wrapped_kmc", sa.LargeBinary(), server_default=sa.text("''"),
                      nullable=False)
        )  # fmt: skip
        batch_op.add_column(
            sa.Column("transport_key", sa.String(length=100), server_default="", nullable=False)
        )
        batch_op.alter_column("kmc_kcv", existing_type=sa.String(length=6), nullable=False)
        batch_op.drop_column("key_version")
        batch_op.alter_column(
            "supplier", new_column_name="manufacturer", existing_type=sa.String(length=100),
            existing_nullable=False,
        )  # fmt: skip
