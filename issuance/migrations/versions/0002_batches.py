"""production batches: batch selection columns, batch items with leases, blank chips

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STAGES = (
    "selected", "prepared", "encoding", "personalised", "printed", "checked", "shipped",
    "issued", "failed",
)  # fmt: skip


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("region_code", sa.String(length=6), nullable=True))
        batch_op.add_column(sa.Column("collective_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("approved_from", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("approved_to", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("created_by_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("profile_name", sa.String(length=40), nullable=True))
        batch_op.add_column(
            sa.Column("card_count", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(sa.Column("started_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("completed_at", sa.DateTime(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_batches_created_by_id_staff"), "staff", ["created_by_id"], ["id"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_batches_collective_id_collective_applicants"),
            "collective_applicants",
            ["collective_id"],
            ["id"],
        )

    op.create_table(
        "batch_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("card_id", sa.Integer(), nullable=False),
        sa.Column("application_id", sa.Integer(), nullable=True),
        sa.Column(
            "stage",
            sa.Enum(*_STAGES, name="batchstage", native_enum=False, length=24),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=100), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("chip_serial", sa.String(length=16), nullable=True),
        sa.Column("issue_date", sa.Date(), nullable=True),
        sa.Column("station", sa.String(length=100), nullable=True),
        sa.Column("apdu_count", sa.Integer(), nullable=True),
        sa.Column("print_ref", sa.String(length=300), nullable=True),
        sa.Column("printed_card_number", sa.String(length=9), nullable=True),
        sa.Column("collection_point_id", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("stage_changed_at", sa.DateTime(), nullable=False),
        sa.Column("prepared_at", sa.DateTime(), nullable=True),
        sa.Column("personalised_at", sa.DateTime(), nullable=True),
        sa.Column("printed_at", sa.DateTime(), nullable=True),
        sa.Column("checked_at", sa.DateTime(), nullable=True),
        sa.Column("shipped_at", sa.DateTime(), nullable=True),
        sa.Column("issued_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["application_id"],
            ["applications.id"],
            name=op.f("fk_batch_items_application_id_applications"),
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_batch_items_batch_id_batches")
        ),
        sa.ForeignKeyConstraint(
            ["card_id"], ["cards.id"], name=op.f("fk_batch_items_card_id_cards")
        ),
        sa.ForeignKeyConstraint(
            ["collection_point_id"],
            ["agencies.id"],
            name=op.f("fk_batch_items_collection_point_id_agencies"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_items")),
        sa.UniqueConstraint("card_id", name=op.f("uq_batch_items_card_id")),
    )
    op.create_index("ix_batch_items_batch_stage", "batch_items", ["batch_id", "stage"])

    op.create_table(
        "blank_chips",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chip_serial", sa.String(length=16), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("card_id", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("assigned", "good", "spoiled", name="chipstatus", native_enum=False, length=24),
            nullable=False,
        ),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("station", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_blank_chips_batch_id_batches")
        ),
        sa.ForeignKeyConstraint(
            ["card_id"], ["cards.id"], name=op.f("fk_blank_chips_card_id_cards")
        ),
        sa.ForeignKeyConstraint(
            ["item_id"], ["batch_items.id"], name=op.f("fk_blank_chips_item_id_batch_items")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blank_chips")),
        sa.UniqueConstraint("chip_serial", name=op.f("uq_blank_chips_chip_serial")),
    )
    op.create_index(op.f("ix_blank_chips_batch_id"), "blank_chips", ["batch_id"])
    op.create_index(op.f("ix_blank_chips_item_id"), "blank_chips", ["item_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_blank_chips_item_id"), table_name="blank_chips")
    op.drop_index(op.f("ix_blank_chips_batch_id"), table_name="blank_chips")
    op.drop_table("blank_chips")
    op.drop_index("ix_batch_items_batch_stage", table_name="batch_items")
    op.drop_table("batch_items")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_batches_collective_id_collective_applicants"), type_="foreignkey"
        )
        batch_op.drop_constraint(batch_op.f("fk_batches_created_by_id_staff"), type_="foreignkey")
        for column in (
            "completed_at", "started_at", "card_count", "profile_name", "created_by_id",
            "approved_to", "approved_from", "collective_id", "region_code",
        ):  # fmt: skip
            batch_op.drop_column(column)
