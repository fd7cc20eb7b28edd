"""bank: a replacement card keeps the holder's bank account; the branch desk's requests

``bank_accounts``: ``replaces_account_id`` (the replaced card's account a replacement's request
asked the bank to keep: the bank's answer must be bound to the same account), ``hotlist_due_at``
(the card was replaced: its financial application goes on the bank's hotlist) and
``hotlist_request_id`` (the request file that reported it). A PAN may now be shared by the cards
of one account (the replacement gets the same PAN with the next PAN sequence number, as the
bank decides): ``uq_bank_accounts_pan`` becomes ``uq_bank_accounts_pan_psn`` on (PAN, PSN).

``desk_requests``: a financial activation started on the branch page and done by the desk
station of the reader named (``ykt branch desk``): who asked, for which card and reader, when
the station claimed it and how it ended (never a PIN).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 17:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "desk_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("card_id", sa.Integer(), nullable=False),
        sa.Column("reader", sa.String(length=64), nullable=False),
        sa.Column("identity_checked", sa.Boolean(), nullable=False),
        sa.Column("requested_by_staff_id", sa.Integer(), nullable=True),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(), nullable=True),
        sa.Column("claimed_by", sa.String(length=120), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("message", sa.String(length=500), nullable=True),
        sa.Column("problems", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["card_id"], ["cards.id"], name=op.f("fk_desk_requests_card_id_cards")
        ),
        sa.ForeignKeyConstraint(
            ["requested_by_staff_id"],
            ["staff.id"],
            name=op.f("fk_desk_requests_requested_by_staff_id_staff"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_desk_requests")),
    )
    op.create_index(op.f("ix_desk_requests_card_id"), "desk_requests", ["card_id"], unique=False)
    op.create_index(
        "ix_desk_requests_reader_claimed", "desk_requests", ["reader", "claimed_at"], unique=False
    )
    with op.batch_alter_table("bank_accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replaces_account_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("hotlist_due_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("hotlist_request_id", sa.String(length=64), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_bank_accounts_replaces_account_id_bank_accounts"),
            "bank_accounts", ["replaces_account_id"], ["id"],
        )  # fmt: skip
        batch_op.drop_constraint("uq_bank_accounts_pan", type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_bank_accounts_pan_psn"), ["pan", "psn"])
        batch_op.create_index(batch_op.f("ix_bank_accounts_pan"), ["pan"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_desk_requests_reader_claimed", table_name="desk_requests")
    op.drop_index(op.f("ix_desk_requests_card_id"), table_name="desk_requests")
    op.drop_table("desk_requests")
    with op.batch_alter_table("bank_accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bank_accounts_pan"))
        batch_op.drop_constraint("uq_bank_accounts_pan_psn", type_="unique")
        batch_op.create_unique_constraint("uq_bank_accounts_pan", ["pan"])
        batch_op.drop_constraint(
            "fk_bank_accounts_replaces_account_id_bank_accounts", type_="foreignkey"
        )
        batch_op.drop_column("hotlist_request_id")
        batch_op.drop_column("hotlist_due_at")
        batch_op.drop_column("replaces_account_id")
