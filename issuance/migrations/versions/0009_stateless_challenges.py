"""api: stateless verification challenges (used_challenges replaces verification_challenges)

A challenge is no longer stored when it is issued: its id carries its expiry and a MAC (see
issuance.services.verification). Only used challenges are recorded, by their id (primary key:
single use); the old table's rows are challenges of at most a minute, nothing to carry over.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "used_challenges",
        sa.Column("id", sa.LargeBinary(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_used_challenges")),
    )
    op.drop_index(
        op.f("ix_verification_challenges_expires_at"), table_name="verification_challenges"
    )
    op.drop_table("verification_challenges")


def downgrade() -> None:
    op.create_table(
        "verification_challenges",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("credential_id", sa.Integer(), nullable=False),
        sa.Column("challenge", sa.LargeBinary(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["credential_id"],
            ["api_credentials.id"],
            name=op.f("fk_verification_challenges_credential_id_api_credentials"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verification_challenges")),
    )
    op.create_index(
        op.f("ix_verification_challenges_expires_at"),
        "verification_challenges",
        ["expires_at"],
        unique=False,
    )
    op.drop_table("used_challenges")
