"""bank: the bank accounts behind cards' financial applications

``bank_accounts``: one row per card asked of a bank in a request file; the PAN, PAN sequence
number, expiry, service code and account reference once the bank's response file gave them.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bank_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("card_id", sa.Integer(), nullable=False),
        sa.Column("bank_agency_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("pan", sa.String(length=19), nullable=True),
        sa.Column("psn", sa.String(length=2), nullable=True),
        sa.Column("expiry", sa.Date(), nullable=True),
        sa.Column("service_code", sa.String(length=3), nullable=True),
        sa.Column("account_ref", sa.String(length=32), nullable=True),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=True),
        sa.Column("response_file", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["card_id"], ["cards.id"], name=op.f("fk_bank_accounts_card_id_cards")
        ),
        sa.ForeignKeyConstraint(
            ["bank_agency_id"],
            ["agencies.id"],
            name=op.f("fk_bank_accounts_bank_agency_id_agencies"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bank_accounts")),
        sa.UniqueConstraint("card_id", name=op.f("uq_bank_accounts_card_id")),
        sa.UniqueConstraint("pan", name=op.f("uq_bank_accounts_pan")),
    )
    op.create_index(
        op.f("ix_bank_accounts_bank_agency_id"), "bank_accounts", ["bank_agency_id"], unique=False
    )
    op.create_index(
        op.f("ix_bank_accounts_request_id"), "bank_accounts", ["request_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_bank_accounts_request_id"), table_name="bank_accounts")
    op.drop_index(op.f("ix_bank_accounts_bank_agency_id"), table_name="bank_accounts")
    op.drop_table("bank_accounts")
