"""batches: room for HOT updates in ``batch_items``; an index nobody reads dropped

Data preparation writes every item twice: the claim's lease (``lease_owner``,
``lease_expires_at``: columns no index holds) and the commit (its stage, its chip). On a table
filled to the brim (PostgreSQL's default fillfactor 100; ``ykt batch create`` fills pages
whole) the lease write found no room on the row's page: a new row version on another page and
a new entry in every index of the table, for a write that changes no indexed column. With
``fillfactor = 40`` the lease write is a HOT update (the new version on the same page, no index
touched). Measured on PostgreSQL 15 (pg_stat_statements, 10,000 cards in chunks of 500): the
claim's WAL per card from 6.9 records (587 bytes) to 2.0 (177 bytes: the row lock and the HOT
update), the buffers it touches from 25 to 9; at ``fillfactor = 50`` a third of the lease writes
still found no room (3.3-3.6 records: the lease makes the row about 50 bytes longer). The table
takes about 2.5 times the space (an item is about 100 bytes: 250 MB for a million cards).

``ix_batch_items_bureau_file_id`` is dropped: no query reads it (the only lookup by
``bureau_file_id``, :mod:`issuance.batches.bureau_result`, also names ``card_id``, whose unique
index finds the row), and every update of an item that is not HOT (each stage change) wrote an
entry in it, NULL for every card made in house.

PostgreSQL only for the fillfactor (SQLite has none); the index goes on both.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06 20:15:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: free room left on each page of ``batch_items`` for the lease write's new row version
FILLFACTOR = 40


def upgrade() -> None:
    with op.batch_alter_table("batch_items", schema=None) as batch_op:
        batch_op.drop_index("ix_batch_items_bureau_file_id")
    if op.get_bind().dialect.name == "postgresql":
        # new pages only: the rows already there keep their pages until rewritten (VACUUM
        # FULL, at a quiet hour, applies it to them; a new batch's items get it at once)
        op.execute(f"ALTER TABLE batch_items SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE batch_items RESET (fillfactor)")
    with op.batch_alter_table("batch_items", schema=None) as batch_op:
        batch_op.create_index("ix_batch_items_bureau_file_id", ["bureau_file_id"])
