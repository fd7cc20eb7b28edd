"""ecard: the electronic card and its used codes

``ecards``: a person's e-card, bound to one card (moved to the replacement, ended with the
card), with the provisional loss report during which the holder authorised its use.
``ecard_nonces``: codes verified online (expiry || nonce), single use across every node.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = "ended_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "ecards",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("card_id", sa.Integer(), nullable=False),
        sa.Column("proof", sa.String(length=32), nullable=False),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
        sa.Column("issued_by_id", sa.Integer(), nullable=True),
        sa.Column("loss_authorised_report_id", sa.Integer(), nullable=True),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("end_reason", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["card_id"], ["cards.id"], name=op.f("fk_ecards_card_id_cards")),
        sa.ForeignKeyConstraint(
            ["issued_by_id"], ["staff.id"], name=op.f("fk_ecards_issued_by_id_staff")
        ),
        sa.ForeignKeyConstraint(
            ["loss_authorised_report_id"],
            ["loss_reports.id"],
            name=op.f("fk_ecards_loss_authorised_report_id_loss_reports"),
        ),
        sa.ForeignKeyConstraint(
            ["person_id"], ["persons.id"], name=op.f("fk_ecards_person_id_persons")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ecards")),
        sa.UniqueConstraint("public_id", name=op.f("uq_ecards_public_id")),
    )
    op.create_index(op.f("ix_ecards_card_id"), "ecards", ["card_id"], unique=False)
    op.create_index(op.f("ix_ecards_person_id"), "ecards", ["person_id"], unique=False)
    op.create_index(
        "uq_ecards_live_person",
        "ecards",
        ["person_id"],
        unique=True,
        sqlite_where=sa.text(_LIVE),
        postgresql_where=sa.text(_LIVE),
    )
    op.create_table(
        "ecard_nonces",
        sa.Column("id", sa.LargeBinary(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ecard_nonces")),
    )


def downgrade() -> None:
    op.drop_table("ecard_nonces")
    op.drop_index(
        "uq_ecards_live_person",
        table_name="ecards",
        sqlite_where=sa.text(_LIVE),
        postgresql_where=sa.text(_LIVE),
    )
    op.drop_index(op.f("ix_ecards_person_id"), table_name="ecards")
    op.drop_index(op.f("ix_ecards_card_id"), table_name="ecards")
    op.drop_table("ecards")
