"""Migration 0022: the indexes the hot writes maintain (``audit_events.chain_seq`` unique only
among sealed events, ``api_calls`` with one index beside its key) go down and up, and what
they guard still holds: two sealed events never share a sequence number, unsealed ones all
carry NULL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from issuance import migrations
from issuance.db import make_engine


def _indexes(engine: sa.Engine, table: str) -> dict[str, dict[str, object]]:
    return {str(ix["name"]): dict(ix) for ix in sa.inspect(engine).get_indexes(table)}


def _event(conn: sa.Connection, seq: int | None) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO audit_events (occurred_at, actor_name, actor_role, channel, action,"
            " entity_type, entity_id, details, chain_seq) VALUES (CURRENT_TIMESTAMP, 't',"
            " 'system', 'system', 'test.event', 'test', '1', '{}', :seq)"
        ),
        {"seq": seq},
    )


def test_migration_0022_goes_down_and_up(fresh_db_url: str) -> None:
    engine = make_engine(url=fresh_db_url)
    postgres = engine.dialect.name == "postgresql"
    try:
        assert migrations.current_revision(engine) >= "0022"
        calls = _indexes(engine, "api_calls")
        assert "ix_api_calls_credential_id_at" not in calls
        assert calls["ix_api_calls_at"]["column_names"] == ["at"]
        chain = _indexes(engine, "audit_events")["uq_audit_events_chain_seq"]
        assert chain["unique"] and chain["column_names"] == ["chain_seq"]
        if postgres:  # the partial predicate and the BRIN method, as PostgreSQL says them
            with engine.connect() as conn:
                defs = dict(conn.execute(sa.text(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE indexname IN"
                    " ('ix_api_calls_at', 'uq_audit_events_chain_seq')"
                )).all())  # fmt: skip
            assert "USING brin" in defs["ix_api_calls_at"]
            assert "WHERE (chain_seq IS NOT NULL)" in defs["uq_audit_events_chain_seq"]
        with engine.begin() as conn:  # unsealed events: any number of NULLs
            _event(conn, None)
            _event(conn, None)
            _event(conn, 1)
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            _event(conn, 1)  # a sealed sequence number is unique

        migrations.downgrade(engine, "0021")
        calls = _indexes(engine, "api_calls")
        assert calls["ix_api_calls_credential_id_at"]["column_names"] == ["credential_id", "at"]
        uniques = sa.inspect(engine).get_unique_constraints("audit_events")
        assert [u["column_names"] for u in uniques] == [["chain_seq"]]
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            _event(conn, 1)

        migrations.upgrade(engine)
        assert migrations.drift(engine) == []
        unsealed = _indexes(engine, "audit_events")["ix_audit_events_unsealed"]
        assert unsealed["column_names"] == ["id"]
        with engine.connect() as conn:
            counts = conn.execute(sa.text(
                "SELECT count(*), count(chain_seq) FROM audit_events WHERE action = 'test.event'"
            )).one()  # fmt: skip
        assert tuple(counts) == (3, 1)
    finally:
        engine.dispose()
