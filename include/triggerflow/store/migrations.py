"""Schema creation and the additive migrations of existing stores (:func:`create_schema`).

``create_all`` creates missing tables with everything in them but never alters an existing table;
the migrations here add what later versions added to tables that existed before, once each,
recorded in ``tf_schema_version``.
"""

from __future__ import annotations

import importlib

from sqlalchemy import Column, Engine
from sqlalchemy.engine import Connection

from include.triggerflow.store.schema import metadata
from include.triggerflow.timeutil import utcnow

#: Additive changes to tables that existed before them: (migration id, table, columns, indexes).
#: ``create_all`` creates missing tables with everything in them but never alters an existing
#: table, so a store created by an earlier version gets these here, once, recorded in
#: tf_schema_version. Only additions (nullable columns, indexes) belong here: they are safe while
#: older tasks still run.
ADDITIVE_MIGRATIONS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "0002_send_quiet_hours_locale",
        "tf_send",
        ("not_before", "locale"),
        ("ix_tf_send_profile_created", "ix_tf_send_state_not_before"),
    ),
    ("0003_event_raw_and_landing_note", "tf_event", ("raw_payload", "raw_size", "landing_note"), ()),
    ("0004_batch_dropped_lines", "tf_batch", ("dropped", "dropped_reasons"), ()),
    ("0005_source_health_keepalives", "tf_source_health", ("lines_dropped", "last_data_at", "empty_reads"), ()),
    ("0006_suppression_expiry", "tf_suppression", ("expires_at", "batch_id"), ()),
    ("0007_unsubscribe_token_key", "tf_unsubscribe", ("token_key",), ("ux_tf_unsubscribe_customer_token",)),
    ("0008_status_summaries", "tf_source_stats", (), ()),
    ("0009_alert_value_subject_resolved", "tf_alert", ("value", "subject", "resolved_at"), ()),
    ("0010_batch_created_index", "tf_batch", (), ("ix_tf_batch_created",)),
    ("0013_batch_reconciled_at", "tf_batch", ("reconciled_at",), ()),
)

#: Not additive: tf_send.event_id loses its foreign key to tf_event (the ledger outlives the
#: events, see include/triggerflow/maintenance/ledger.py). Applied by :func:`drop_send_event_fk`
#: after the additive ones.
SEND_EVENT_FK_MIGRATION = "0011_send_event_fk_dropped"

#: Not additive: tf_event's index on message_id goes (no query used it; on a store of days of
#: history its random keys made landing read and write a leaf page per event, the soak's land
#: figure on a filled store). Applied by :func:`drop_event_message_id_index`.
EVENT_MESSAGE_ID_INDEX_MIGRATION = "0012_event_message_id_index_dropped"

#: A migration's data step, ``"module:function"`` called with the open connection after the
#: migration's columns are added and before its indexes are created: it fills a new column, or
#: removes the duplicates a new unique index would refuse, or builds a summary from existing rows.
#: A data step must be a no-op on an empty store: a new store runs every migration too.
MIGRATION_DATA_STEPS: dict[str, str] = {
    "0007_unsubscribe_token_key": "include.triggerflow.unsubscribe:backfill_token_keys",
    "0008_status_summaries": "include.triggerflow.stats:rebuild_all",
    "0013_batch_reconciled_at": "include.triggerflow.stages.batch_order:backfill_reconciled_at",
}


def _run_data_step(migration: str, conn: Connection) -> None:
    target = MIGRATION_DATA_STEPS.get(migration)
    if target is None:
        return
    module_name, _, function = target.partition(":")
    getattr(importlib.import_module(module_name), function)(conn)


#: Not additive: the ledger's uniqueness moves from ``idempotency_key`` alone to
#: ``(trigger_ts, idempotency_key)`` (schema.py says why). Applied by :func:`key_ledger_by_trigger_time`.
SEND_KEY_BY_TRIGGER_TIME_MIGRATION = "0014_send_unique_by_trigger_time"


def create_schema(engine: Engine) -> None:
    """Create missing tables and apply pending migrations (idempotent)."""
    _additive(engine)
    drop_send_event_fk(engine)
    drop_event_message_id_index(engine)
    key_ledger_by_trigger_time(engine)


def _additive(engine: Engine) -> None:
    """Create missing tables and apply pending additive migrations."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    from sqlalchemy import inspect, select
    from sqlalchemy.schema import CreateIndex

    from include.triggerflow.store.schema import schema_version

    metadata.create_all(engine)
    with engine.begin() as conn:
        done = set(conn.execute(select(schema_version.c.migration)).scalars())
        pending = [m for m in ADDITIVE_MIGRATIONS if m[0] not in done]
        if not pending:
            return
        inspector = inspect(conn)
        for migration, table_name, columns, indexes in pending:
            table = metadata.tables[table_name]
            have_cols = {c["name"] for c in inspector.get_columns(table_name)}
            missing = [name for name in columns if name not in have_cols]
            if missing:
                # Alembic renders ALTER TABLE ... ADD COLUMN portably (types, defaults) for both
                # dialects; it is installed with Airflow.
                ops = Operations(MigrationContext.configure(conn))
                for name in missing:
                    column = table.c[name]
                    # a detached column for the DDL (Column.copy() is deprecated): type, nullability
                    # and server default are all ALTER TABLE ... ADD COLUMN renders
                    ops.add_column(
                        table_name,
                        Column(name, column.type, nullable=column.nullable, server_default=column.server_default),
                    )
            _run_data_step(migration, conn)
            have_idx = {i["name"] for i in inspector.get_indexes(table_name)}
            for index in table.indexes:
                if index.name in indexes and index.name not in have_idx:
                    conn.execute(CreateIndex(index))
            conn.execute(
                schema_version.insert().values(migration=migration, applied_at=utcnow())
            )


def _send_event_fks(conn: Connection) -> list[str | None]:
    """Names of tf_send's foreign keys on event_id (SQLite's are unnamed: None)."""
    from sqlalchemy import inspect

    return [
        fk.get("name")
        for fk in inspect(conn).get_foreign_keys("tf_send")
        if fk.get("referred_table") == "tf_event" and fk.get("constrained_columns") == ["event_id"]
    ]


def _applied(conn: Connection, migration: str) -> bool:
    """Whether tf_schema_version records ``migration``."""
    from sqlalchemy import select

    from include.triggerflow.store.schema import schema_version

    return conn.execute(select(schema_version.c.migration).where(schema_version.c.migration == migration)).first() is not None


def _record_applied(conn: Connection, migration: str) -> None:
    """Record ``migration`` in tf_schema_version (a no-op when a concurrent task recorded it first)."""
    from include.triggerflow.store.bulk import dialect_insert
    from include.triggerflow.store.schema import schema_version

    conn.execute(
        dialect_insert(conn, schema_version)
        .values(migration=migration, applied_at=utcnow())
        .on_conflict_do_nothing(index_elements=["migration"])
    )


def drop_send_event_fk(engine: Engine) -> None:
    """Migration 0011: drop tf_send.event_id's foreign key to tf_event, once.

    PostgreSQL: ``ALTER TABLE ... DROP CONSTRAINT``. SQLite cannot drop a constraint: the table is
    rebuilt the way SQLite documents it (foreign keys off on this connection, new table, copy,
    drop, rename, indexes, foreign_key_check, all in one IMMEDIATE transaction). A new store was
    created without the key and only gets the tf_schema_version row."""
    with engine.connect() as conn:
        if _applied(conn, SEND_EVENT_FK_MIGRATION):
            return
        names = _send_event_fks(conn)
    if names:
        if engine.dialect.name == "sqlite":
            _rebuild_sqlite_send(engine)
        else:
            with engine.begin() as conn:
                for name in names:
                    conn.exec_driver_sql(f'ALTER TABLE tf_send DROP CONSTRAINT IF EXISTS "{name}"')
    with engine.begin() as conn:
        _record_applied(conn, SEND_EVENT_FK_MIGRATION)


def drop_event_message_id_index(engine: Engine) -> None:
    """Migration 0012: ``DROP INDEX IF EXISTS ix_tf_event_message_id``, once (both dialects; a
    new store never had it). Running tasks of the previous version do not use the index."""
    with engine.begin() as conn:
        if _applied(conn, EVENT_MESSAGE_ID_INDEX_MIGRATION):
            return
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_tf_event_message_id")
        _record_applied(conn, EVENT_MESSAGE_ID_INDEX_MIGRATION)


def key_ledger_by_trigger_time(engine: Engine) -> None:
    """Migration 0014: the unique index ``ux_tf_send_ts_key (trigger_ts, idempotency_key)``, then
    on PostgreSQL the old unique key on ``idempotency_key`` alone dropped, once, in one transaction.

    Building the index holds writes to tf_send for its duration (19 s for 16.8 M rows on the soak's
    store): the minute runs' reconcile and send wait, nothing fails. The old key stays where it
    cannot go or must not: on SQLite (an inline UNIQUE; only a table rebuild drops it, and at
    SQLite's sizes it costs nothing noticeable), and where a ledger row has no trigger_ts (the new
    index treats NULLs as distinct, so only the old key would keep that row's key unique).
    Reconcile's ``ON CONFLICT (trigger_ts, idempotency_key)`` is served by the new index either
    way; a row that conflicts on the key conflicts on the pair."""
    from sqlalchemy import inspect
    from sqlalchemy.schema import CreateIndex

    from include.triggerflow.store.schema import send

    with engine.connect() as conn:
        if _applied(conn, SEND_KEY_BY_TRIGGER_TIME_MIGRATION):
            return
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # every task of a run starts by migrating: the first builds, the others wait, then see it done
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('triggerflow:migration-0014'))")
        if _applied(conn, SEND_KEY_BY_TRIGGER_TIME_MIGRATION):
            return
        index = next(i for i in send.indexes if i.name == "ux_tf_send_ts_key")
        conn.execute(CreateIndex(index, if_not_exists=True))  # a new store has it from create_all
        if conn.dialect.name == "postgresql" and conn.exec_driver_sql(
            "SELECT NOT EXISTS (SELECT 1 FROM tf_send WHERE trigger_ts IS NULL)"
        ).scalar_one():
            for unique in inspect(conn).get_unique_constraints("tf_send"):
                if unique["column_names"] == ["idempotency_key"] and unique.get("name"):
                    conn.exec_driver_sql(f'ALTER TABLE tf_send DROP CONSTRAINT IF EXISTS "{unique["name"]}"')
        _record_applied(conn, SEND_KEY_BY_TRIGGER_TIME_MIGRATION)


def _rebuild_sqlite_send(engine: Engine) -> None:
    from sqlalchemy.schema import CreateIndex, CreateTable

    from include.triggerflow.store.schema import send

    ddl = str(CreateTable(send).compile(dialect=engine.dialect)).strip()
    head = "CREATE TABLE tf_send "
    if not ddl.startswith(head):
        raise RuntimeError(f"unexpected DDL for tf_send: {ddl[:60]!r}")
    ddl = "CREATE TABLE tf_send__new " + ddl[len(head):]
    raw = engine.raw_connection()
    try:
        dbapi = raw.driver_connection
        assert dbapi is not None
        dbapi.commit()  # no transaction may be open for the PRAGMA to take effect
        dbapi.execute("PRAGMA foreign_keys=OFF")
        old_isolation = dbapi.isolation_level
        dbapi.isolation_level = None  # we issue BEGIN / COMMIT ourselves
        try:
            dbapi.execute("BEGIN IMMEDIATE")
            try:
                has_fk = any(
                    row[2] == "tf_event" and row[3] == "event_id"
                    for row in dbapi.execute("PRAGMA foreign_key_list(tf_send)").fetchall()
                )
                if has_fk:  # another process may have rebuilt it while we waited for the lock
                    have = [row[1] for row in dbapi.execute("PRAGMA table_info(tf_send)").fetchall()]
                    cols = ", ".join(f'"{c.name}"' for c in send.columns if c.name in have)
                    dbapi.execute(ddl)
                    dbapi.execute(f"INSERT INTO tf_send__new ({cols}) SELECT {cols} FROM tf_send")
                    dbapi.execute("DROP TABLE tf_send")
                    dbapi.execute("ALTER TABLE tf_send__new RENAME TO tf_send")
                    for index in send.indexes:
                        dbapi.execute(str(CreateIndex(index).compile(dialect=engine.dialect)))
                    problems = dbapi.execute("PRAGMA foreign_key_check").fetchall()
                    if problems:
                        raise RuntimeError(f"foreign key check failed after rebuilding tf_send: {problems[:3]}")
                dbapi.execute("COMMIT")
            except BaseException:
                dbapi.execute("ROLLBACK")
                raise
        finally:
            dbapi.isolation_level = old_isolation
            dbapi.execute("PRAGMA foreign_keys=ON")
    finally:
        raw.close()
