"""lifecycle hardening: one live temporary card per person, expiry scan index, CLI staff
passwords, temporary-card hand-back recorded on the deposit, import refs of rejected
applications released

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE_TEMPORARY = "kind = 'temporary' AND status NOT IN ('replaced', 'expired', 'cancelled')"


def upgrade() -> None:
    with op.batch_alter_table("cards", schema=None) as batch_op:
        batch_op.create_index(
            "uq_cards_live_temporary_person",
            ["person_id"],
            unique=True,
            sqlite_where=sa.text(_LIVE_TEMPORARY),
            postgresql_where=sa.text(_LIVE_TEMPORARY),
        )
        batch_op.create_index(batch_op.f("ix_cards_expiry_date"), ["expiry_date"], unique=False)

    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.add_column(sa.Column("password_hash", sa.String(length=200), nullable=True))

    # deposits: nothing references this table, so SQLite's table rebuild (for the foreign
    # key) is safe with data in it
    with op.batch_alter_table("deposits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("returned_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("returned_by_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_deposits_returned_by_id_staff"), "staff", ["returned_by_id"], ["id"]
        )
    # the deposits refunded so far were refunded on a hand-back
    op.execute("UPDATE deposits SET returned_at = refunded_at, returned_by_id = refunded_by_id")

    # rejected / withdrawn applications no longer hold their file line's import ref (a corrected
    # or re-sent line must be importable again)
    op.execute(
        "UPDATE applications SET import_ref = NULL "
        "WHERE status IN ('rejected', 'withdrawn') AND import_ref IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("deposits", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_deposits_returned_by_id_staff"), type_="foreignkey")
        batch_op.drop_column("returned_by_id")
        batch_op.drop_column("returned_at")

    # not in batch mode: on SQLite a batch rebuilds the table, and dropping the old staff table
    # fails while other rows reference it (SQLite >= 3.35 drops a plain column in place)
    op.drop_column("staff", "password_hash")

    with op.batch_alter_table("cards", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cards_expiry_date"))
        batch_op.drop_index(
            "uq_cards_live_temporary_person",
            sqlite_where=sa.text(_LIVE_TEMPORARY),
            postgresql_where=sa.text(_LIVE_TEMPORARY),
        )
