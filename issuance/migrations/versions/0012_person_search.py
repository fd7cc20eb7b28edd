"""persons: indexes of the counter's person search

``ix_persons_phone`` (phone), ``ix_persons_name_birth_date`` (name, birth_date) and
``ix_persons_name_region`` (name, region_code): finding a resident by phone, or by name with the
birth date or the region, is an index lookup, not a scan of ten million people
(``issuance.services.people``; the plans are in ``bench/people.md``). The citizen ID number and
the card number already have their unique indexes.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 11:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("persons", schema=None) as batch_op:
        batch_op.create_index("ix_persons_phone", ["phone"])
        batch_op.create_index("ix_persons_name_birth_date", ["name", "birth_date"])
        batch_op.create_index("ix_persons_name_region", ["name", "region_code"])


def downgrade() -> None:
    with op.batch_alter_table("persons", schema=None) as batch_op:
        batch_op.drop_index("ix_persons_name_region")
        batch_op.drop_index("ix_persons_name_birth_date")
        batch_op.drop_index("ix_persons_phone")
