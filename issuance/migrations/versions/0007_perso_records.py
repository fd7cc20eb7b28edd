"""batches: where data preparation put each chip's perso record

Revision ID: 0007
Revises: 0008
Create Date: 2026-12-02 12:00:00

* ``blank_chips.perso_file`` / ``perso_offset``: the in-house perso file segment (relative to
  ``<data_dir>/perso``) and the byte offset of the chip's record in it
  (:mod:`issuance.batches.persofile`); NULL for chips prepared card by card at a station.

(Numbered 0007 but applied after 0008, the head when it was written.)
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blank_chips", schema=None) as batch_op:
        batch_op.add_column(sa.Column("perso_file", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("perso_offset", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blank_chips", schema=None) as batch_op:
        batch_op.drop_column("perso_offset")
        batch_op.drop_column("perso_file")
