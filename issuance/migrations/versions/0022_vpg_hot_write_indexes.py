"""hot writes: no index entry nobody reads on the rows every verification writes

``audit_events.chain_seq``: its unique constraint becomes a *partial* unique index
``uq_audit_events_chain_seq`` (``WHERE chain_seq IS NOT NULL``): an event is inserted unsealed
(``chain_seq`` NULL) and every insert put a NULL entry in that index, which no query reads (the
sealer finds unsealed events through ``ix_audit_events_unsealed``; the chain is read by
``chain_seq`` ranges, which imply NOT NULL). Sealed sequence numbers stay unique.

``api_calls``: ``ix_api_calls_credential_id_at`` is dropped (no query of the product reads it;
the operator's look-up is by ``client_id``) and ``ix_api_calls_at`` becomes a BRIN index on
PostgreSQL (``at`` grows with the insertion order: a range of pages per summary, nothing to
maintain on most inserts; the retention prune ``DELETE ... WHERE at < ...`` still uses it).
SQLite keeps a B-tree on ``at`` (no BRIN there).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06 20:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEALED = "chain_seq IS NOT NULL"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.drop_index("ix_api_calls_credential_id_at", table_name="api_calls")
    if postgres:
        op.drop_index("ix_api_calls_at", table_name="api_calls")
        op.create_index("ix_api_calls_at", "api_calls", ["at"], postgresql_using="brin")
        op.drop_constraint("uq_audit_events_chain_seq", "audit_events", type_="unique")
    else:
        with op.batch_alter_table("audit_events", schema=None) as batch_op:
            batch_op.drop_constraint("uq_audit_events_chain_seq", type_="unique")
    op.create_index(
        "uq_audit_events_chain_seq",
        "audit_events",
        ["chain_seq"],
        unique=True,
        sqlite_where=sa.text(_SEALED),
        postgresql_where=sa.text(_SEALED),
    )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.drop_index("uq_audit_events_chain_seq", table_name="audit_events")
    if postgres:
        op.create_unique_constraint("uq_audit_events_chain_seq", "audit_events", ["chain_seq"])
        op.drop_index("ix_api_calls_at", table_name="api_calls")
        op.create_index("ix_api_calls_at", "api_calls", ["at"])
    else:
        with op.batch_alter_table("audit_events", schema=None) as batch_op:
            batch_op.create_unique_constraint("uq_audit_events_chain_seq", ["chain_seq"])
    op.create_index("ix_api_calls_credential_id_at", "api_calls", ["credential_id", "at"])
