"""api: disabling agencies, the authentication epoch, shared failure counters

* ``agencies.active``: an agency can be disabled (with its clients and staff users, the API
  clients and staff users each have their own ``active`` already).
* ``api_auth_epoch``: one row whose ``epoch`` grows whenever a principal is disabled, enabled
  or has its tokens revoked. Every API request compares it with the epoch its cached token
  was resolved at (one primary-key read): a change stops every token at once, on every worker
  and node.
* ``api_rate_counters``: failed authentications and refusals per key and minute, shared by
  every worker and node (the failure limit of ``api.auth``).
* ``loss_codes``: one-time codes sent to the phone on file, with which a remote channel
  proves the holder when reporting a card lost (hashes only).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 11:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agencies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    epoch = op.create_table(
        "api_auth_epoch",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_auth_epoch")),
    )
    op.bulk_insert(epoch, [{"id": 1, "epoch": 0}])
    op.create_table(
        "api_rate_counters",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "minute", name=op.f("pk_api_rate_counters")),
    )
    op.create_index(op.f("ix_api_rate_counters_minute"), "api_rate_counters", ["minute"])
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


def downgrade() -> None:
    op.drop_index(op.f("ix_loss_codes_card_id"), table_name="loss_codes")
    op.drop_table("loss_codes")
    op.drop_index(op.f("ix_api_rate_counters_minute"), table_name="api_rate_counters")
    op.drop_table("api_rate_counters")
    op.drop_table("api_auth_epoch")
    with op.batch_alter_table("agencies", schema=None) as batch_op:
        batch_op.drop_column("active")
