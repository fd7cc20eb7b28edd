"""persons: the name as the chip holds it when the true name has characters outside GBK

``persons.card_name``: the GBK name written to the card (EF06) when the holder's name has
characters outside GBK (生僻字), made by the city's substitution rule (``issuance.cardname``);
NULL when the name is written as it is.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("persons", sa.Column("card_name", sa.String(length=60), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("persons") as batch:
        batch.drop_column("card_name")
