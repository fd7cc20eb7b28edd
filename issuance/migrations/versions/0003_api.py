"""api: credentials, tokens, verification challenges, card status changes (status feed)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "api_credentials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("secret_hash", sa.String(length=200), nullable=True),
        sa.Column("agency_id", sa.Integer(), nullable=True),
        sa.Column("staff_id", sa.Integer(), nullable=True),
        sa.Column("scopes", sa.String(length=500), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("cert_subject", sa.String(length=300), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agency_id"], ["agencies.id"], name=op.f("fk_api_credentials_agency_id_agencies")
        ),
        sa.ForeignKeyConstraint(
            ["staff_id"], ["staff.id"], name=op.f("fk_api_credentials_staff_id_staff")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_credentials")),
        sa.UniqueConstraint("cert_subject", name=op.f("uq_api_credentials_cert_subject")),
        sa.UniqueConstraint("client_id", name=op.f("uq_api_credentials_client_id")),
    )
    op.create_index(
        op.f("ix_api_credentials_agency_id"), "api_credentials", ["agency_id"], unique=False
    )
    op.create_index(
        op.f("ix_api_credentials_staff_id"), "api_credentials", ["staff_id"], unique=False
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", _BIGINT, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("credential_id", sa.Integer(), nullable=False),
        sa.Column("scopes", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["credential_id"],
            ["api_credentials.id"],
            name=op.f("fk_api_tokens_credential_id_api_credentials"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(
        op.f("ix_api_tokens_credential_id"), "api_tokens", ["credential_id"], unique=False
    )
    op.create_index(op.f("ix_api_tokens_expires_at"), "api_tokens", ["expires_at"], unique=False)
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
    op.create_table(
        "card_status_changes",
        sa.Column("seq", _BIGINT, autoincrement=True, nullable=False),
        sa.Column("card_id", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "number_allocated",
                "in_production",
                "personalised",
                "shipped",
                "issued",
                "active",
                "suspended",
                "lost_provisional",
                "lost_formal",
                "damaged",
                "replaced",
                "expired",
                "cancelled",
                native_enum=False,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["card_id"], ["cards.id"], name=op.f("fk_card_status_changes_card_id_cards")
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_card_status_changes")),
    )
    op.create_index(
        op.f("ix_card_status_changes_card_id"), "card_status_changes", ["card_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_card_status_changes_card_id"), table_name="card_status_changes")
    op.drop_table("card_status_changes")
    op.drop_index(
        op.f("ix_verification_challenges_expires_at"), table_name="verification_challenges"
    )
    op.drop_table("verification_challenges")
    op.drop_index(op.f("ix_api_tokens_expires_at"), table_name="api_tokens")
    op.drop_index(op.f("ix_api_tokens_credential_id"), table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_index(op.f("ix_api_credentials_staff_id"), table_name="api_credentials")
    op.drop_index(op.f("ix_api_credentials_agency_id"), table_name="api_credentials")
    op.drop_table("api_credentials")
