"""The store changes retention needs: tf_send.event_id loses its foreign key on an existing store
(migration 0011: PostgreSQL DROP CONSTRAINT, SQLite a table rebuild), and a chunk that cannot get
its locks on PostgreSQL is skipped instead of blocking the minute runs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import ForeignKeyConstraint, Index, MetaData, UniqueConstraint, insert, inspect, select, text

from include.triggerflow.rules import idempotency_key
from include.triggerflow.stages.reconcile import QueuedEmail
from include.triggerflow.states import SendState
from include.triggerflow.store.bulk import bulk_insert
from include.triggerflow.store.migrations import (
    EVENT_MESSAGE_ID_INDEX_MIGRATION,
    SEND_EVENT_FK_MIGRATION,
    SEND_KEY_BY_TRIGGER_TIME_MIGRATION,
    create_schema,
)
from include.triggerflow.store.schema import metadata, schema_version


def _old_store(engine, *, send_event_fk: bool = True) -> MetaData:
    """The schema as it was before: tf_send.event_id REFERENCES tf_event, and the ledger's key is
    unique on its own."""
    old = MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(old)
    old_send = old.tables["tf_send"]
    if send_event_fk:
        old_send.append_constraint(ForeignKeyConstraint(["event_id"], ["tf_event.event_id"]))
    old_send.indexes = {i for i in old_send.indexes if i.name != "ux_tf_send_ts_key"}
    old_send.append_constraint(UniqueConstraint("idempotency_key", name="tf_send_idempotency_key_key"))
    with engine.begin() as conn:
        for name in reversed([t.name for t in metadata.sorted_tables]):
            conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
    old.create_all(engine)
    return old


def test_an_existing_store_loses_the_ledgers_foreign_key_and_keeps_its_rows(store_engine) -> None:
    old = _old_store(store_engine)
    now = datetime.now(UTC)
    with store_engine.begin() as conn:
        conn.execute(insert(old.tables["tf_batch"]).values(batch_id="b", dag_id="d", run_id="r", source="s", state="landed", pulled=1, created_at=now))
        conn.execute(insert(old.tables["tf_event"]).values(event_id=7, batch_id="b", source="s", src_partition=0, src_position="p", payload="{}", received_at=now, status="valid"))
        conn.execute(insert(old.tables["tf_send"]).values(
            send_id=3, idempotency_key="k", batch_id="b", chunk=0, event_id=7, profile_id="p", trigger_id="t",
            route="r", recipient="a@example.test", state="sent", attempts=1, created_at=now, updated_at=now))
        conn.execute(insert(old.tables["tf_send_log"]).values(send_id=3, batch_id="b", action="sent", at=now))
    assert any(fk["referred_table"] == "tf_event" for fk in inspect(store_engine).get_foreign_keys("tf_send"))

    create_schema(store_engine)

    assert not any(fk["referred_table"] == "tf_event" for fk in inspect(store_engine).get_foreign_keys("tf_send"))
    # the send log still references the ledger; rows, indexes and the unique key are intact
    assert any(fk["referred_table"] == "tf_send" for fk in inspect(store_engine).get_foreign_keys("tf_send_log"))
    indexes = {i["name"] for i in inspect(store_engine).get_indexes("tf_send")}
    assert {"ix_tf_send_batch_chunk", "ix_tf_send_profile_created", "ix_tf_send_state_not_before"} <= indexes
    with store_engine.begin() as conn:
        assert conn.execute(text("SELECT event_id FROM tf_send")).scalar_one() == 7
        assert conn.execute(select(schema_version.c.migration).where(schema_version.c.migration == SEND_EVENT_FK_MIGRATION)).first()
        conn.execute(text("DELETE FROM tf_event"))  # the ledger row outlives its event now
        if conn.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
    with pytest.raises(Exception), store_engine.begin() as conn:  # noqa: B017 - the key to tf_send is still enforced
        conn.execute(text("INSERT INTO tf_send_log (send_id, batch_id, action, at) VALUES (999, 'b', 'sent', CURRENT_TIMESTAMP)"))
    create_schema(store_engine)  # once only


def test_an_existing_store_loses_tf_events_message_id_index(store_engine) -> None:
    old = _old_store(store_engine)
    old_event = old.tables["tf_event"]
    Index("ix_tf_event_message_id", old_event.c.message_id).create(store_engine)
    with store_engine.begin() as conn:
        conn.execute(schema_version.delete())  # a store from before the migrations
    assert "ix_tf_event_message_id" in {i["name"] for i in inspect(store_engine).get_indexes("tf_event")}

    create_schema(store_engine)

    indexes = {i["name"] for i in inspect(store_engine).get_indexes("tf_event")}
    assert "ix_tf_event_message_id" not in indexes
    assert "ix_tf_event_batch" in indexes
    with store_engine.connect() as conn:
        assert conn.execute(
            select(schema_version.c.migration).where(schema_version.c.migration == EVENT_MESSAGE_ID_INDEX_MIGRATION)
        ).first()
    create_schema(store_engine)  # once only


def test_a_chunk_that_cannot_get_its_locks_is_skipped(store_engine) -> None:
    if store_engine.dialect.name != "postgresql":
        pytest.skip("lock_timeout is PostgreSQL's (SQLite serialises writers; busy_timeout bounds the wait)")
    from include.triggerflow.maintenance.chunks import ChunkCounter, in_chunk
    from include.triggerflow.store.schema import batch

    now = datetime.now(UTC)
    with store_engine.begin() as conn:
        conn.execute(insert(batch).values(batch_id="b", dag_id="d", run_id="r", source="s", state="landed", pulled=0, created_at=now))
    counter = ChunkCounter()
    holder = store_engine.connect()
    try:
        holder.begin()
        holder.execute(select(batch).where(batch.c.batch_id == "b").with_for_update())  # a minute run's lock
        result = in_chunk(store_engine, lambda conn: conn.execute(text("DELETE FROM tf_batch WHERE batch_id = 'b'")).rowcount,
                          counter, lock_timeout_ms=100, retries=1)
    finally:
        holder.rollback()
        holder.close()
    assert result is None and (counter.skipped, counter.retried, counter.chunks) == (1, 1, 0)
    assert in_chunk(store_engine, lambda conn: conn.execute(text("DELETE FROM tf_batch WHERE batch_id = 'b'")).rowcount,
                    counter, lock_timeout_ms=100) == 1


def test_an_existing_store_gets_the_ledger_unique_by_trigger_time_and_still_refuses_a_second_email(store_engine) -> None:
    # past migration 0011 (on SQLite, 0011's table rebuild would drop the old key with the foreign key)
    old = _old_store(store_engine, send_event_fk=False)
    now = datetime.now(UTC)
    key = idempotency_key("t1", 1_700_000_000_000, "C1", "cart")
    with store_engine.begin() as conn:
        conn.execute(schema_version.delete())  # a store from before the migrations
        conn.execute(insert(old.tables["tf_batch"]).values(batch_id="b", dag_id="d", run_id="r", source="s", state="landed", pulled=1, created_at=now))
        conn.execute(insert(old.tables["tf_event"]).values(event_id=7, batch_id="b", source="s", src_partition=0, src_position="p", payload="{}", received_at=now, status="valid"))
        conn.execute(insert(old.tables["tf_send"]).values(
            send_id=3, idempotency_key=key, batch_id="b", chunk=0, event_id=7, profile_id="C1", trigger_id="t1",
            route="cart", recipient="a@example.test", state="sent", attempts=1, trigger_ts=1_700_000_000_000,
            created_at=now, updated_at=now))

    create_schema(store_engine)

    inspector = inspect(store_engine)
    [ux] = [i for i in inspector.get_indexes("tf_send") if i["name"] == "ux_tf_send_ts_key"]
    assert ux["unique"] and ux["column_names"] == ["trigger_ts", "idempotency_key"]
    old_unique = [u for u in inspector.get_unique_constraints("tf_send") if u["column_names"] == ["idempotency_key"]]
    # PostgreSQL drops the old key (its random leaf pages are what the new index saves); SQLite's
    # inline one stays (only a table rebuild could drop it)
    assert (old_unique == []) == (store_engine.dialect.name == "postgresql")
    with store_engine.connect() as conn:
        assert conn.execute(select(schema_version.c.migration).where(
            schema_version.c.migration == SEND_KEY_BY_TRIGGER_TIME_MIGRATION)).first()
    # the same email again (reconcile's insert): skipped, on either dialect, with or without the old key
    again = QueuedEmail(idempotency_key=key, batch_id="b2", event_id=8, profile_id="C1", trigger_id="t1", route="cart",
                        recipient="a@example.test", trigger_ts=1_700_000_000_000, state=SendState.PENDING, not_before=None)
    with store_engine.begin() as conn:
        assert bulk_insert(conn, metadata.tables["tf_send"], [again.as_row(0, now)],
                           ignore_conflicts_on=["trigger_ts", "idempotency_key"]) == 0
        assert conn.execute(text("SELECT count(*) FROM tf_send")).scalar_one() == 1
    create_schema(store_engine)  # once only
