"""resident self-service: one-time codes and resident sessions

``resident_challenges``: one row per one-time code asked for (purpose, the stated ID number's
SHA-256, the person when the details matched, the code's salted hash, tries, use), which also
serves as the rate-limit record per person and per source address (shared by every node).
``resident_sessions``: a resident's short single-purpose session opened by a confirmed code.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "resident_challenges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("handle", sa.String(length=43), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("sent", sa.Boolean(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["person_id"], ["persons.id"], name=op.f("fk_resident_challenges_person_id_persons")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resident_challenges")),
        sa.UniqueConstraint("handle", name=op.f("uq_resident_challenges_handle")),
    )
    op.create_index(op.f("ix_resident_challenges_person_id"), "resident_challenges", ["person_id"])
    op.create_index(
        "ix_resident_challenges_subject_created_at",
        "resident_challenges",
        ["subject", "created_at"],
    )
    op.create_index(
        "ix_resident_challenges_source_created_at",
        "resident_challenges",
        ["source", "created_at"],
    )
    op.create_table(
        "resident_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["person_id"], ["persons.id"], name=op.f("fk_resident_sessions_person_id_persons")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resident_sessions")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_resident_sessions_token_sha256")),
    )
    op.create_index(op.f("ix_resident_sessions_person_id"), "resident_sessions", ["person_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_resident_sessions_person_id"), table_name="resident_sessions")
    op.drop_table("resident_sessions")
    op.drop_index("ix_resident_challenges_source_created_at", table_name="resident_challenges")
    op.drop_index("ix_resident_challenges_subject_created_at", table_name="resident_challenges")
    op.drop_index(op.f("ix_resident_challenges_person_id"), table_name="resident_challenges")
    op.drop_table("resident_challenges")
