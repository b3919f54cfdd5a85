"""Engines for the store, and the few dialect-specific statements it needs.

The store is SQLite by default (a file next to the Airflow home) and PostgreSQL in production.
Everything else in the package is written against SQLAlchemy Core and works on both.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.engine import Connection, make_url

from include.triggerflow.store.schema import metadata

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


class StoreConfigError(ValueError):
    """The triggers_db connection does not describe a usable database."""


def data_dir() -> Path:
    """Where relative SQLite paths live: $TRIGGERFLOW_DATA_DIR, else $AIRFLOW_HOME, else cwd."""
    base = os.environ.get("TRIGGERFLOW_DATA_DIR") or os.environ.get("AIRFLOW_HOME") or os.getcwd()
    return Path(base)


def url_from_parts(
    *,
    conn_type: str | None,
    host: str | None = None,
    schema: str | None = None,
    login: str | None = None,
    password: str | None = None,
    port: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Build a SQLAlchemy URL from an Airflow connection's fields.

    ``extra.sqlalchemy_url`` wins when present. Otherwise ``sqlite`` uses ``host`` as the file
    path (relative paths resolve against :func:`data_dir`), and ``postgres`` the usual fields.
    """
    extra = extra or {}
    explicit = extra.get("sqlalchemy_url")
    if explicit:
        return str(explicit)
    kind = (conn_type or "").lower()
    if kind == "sqlite":
        if not host:
            raise StoreConfigError("triggers_db: a sqlite connection needs the database file path in 'host'")
        path = Path(host)
        if not path.is_absolute():
            path = data_dir() / path
        return f"sqlite:///{path}"
    if kind in {"postgres", "postgresql"}:
        from sqlalchemy.engine import URL

        return URL.create(
            "postgresql+psycopg2",
            username=login or None,
            password=password or None,
            host=host or "127.0.0.1",
            port=port or 5432,
            database=schema or "triggerflow",
        ).render_as_string(hide_password=False)
    raise StoreConfigError(
        f"triggers_db: unsupported conn_type {conn_type!r}; use 'sqlite', 'postgres', "
        "or put a full SQLAlchemy URL in extra.sqlalchemy_url"
    )


def url_from_connection(conn: Any) -> str:
    """:func:`url_from_parts` for an Airflow connection object (SDK or core)."""
    return url_from_parts(
        conn_type=conn.conn_type,
        host=conn.host,
        schema=conn.schema,
        login=conn.login,
        password=conn.password,
        port=conn.port,
        extra=conn.extra_dejson,
    )


def request_url_from_connection(conn: Any, *, connect_timeout_s: int = 5) -> str:
    """:func:`url_from_connection` for code answering an HTTP request (the API server plugins):
    any problem is a :class:`StoreConfigError` naming the connection, and a PostgreSQL URL gets a
    connect timeout so a request never hangs for the OS's TCP timeout on an unreachable server."""
    try:
        parsed = make_url(url_from_connection(conn))
    except StoreConfigError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise StoreConfigError(
            f"connection {getattr(conn, 'conn_id', None)!r} does not give a database URL: {first}"
        ) from None
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": str(connect_timeout_s)})
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the API server/CLI read while a task writes; NORMAL sync is durable across a
    # killed process (only an OS crash can lose the last commits). busy_timeout rides out the
    # short write locks of concurrent tasks instead of failing them.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    # A 64 MB page cache per connection (the default is 2 MB): a batch's ledger and decision rows
    # go into several indexes at random places, which a small cache turns into repeated reads.
    cur.execute("PRAGMA cache_size=-65536")
    # Checkpoint the WAL every ~40 MB instead of every ~4 MB: the send stage commits once per email,
    # touching the same few pages each time, and a checkpoint (with its fsync) then writes each page
    # once per 10,000 instead of once per 1,000 WAL pages. Durability is that of the WAL either way.
    cur.execute("PRAGMA wal_autocheckpoint=10000")
    # Temporary key tables (set-based look-ups) stay in memory.
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def get_engine(url: str) -> Engine:
    """One engine per URL per process (tasks are processes; engines are cheap to keep)."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            parsed = make_url(url)
            # Bound values are customers' addresses, names and hostile trigger content: a
            # database error must never carry them into exception texts, task logs or alerts.
            if parsed.get_backend_name() == "sqlite":
                if parsed.database and parsed.database != ":memory:":
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = create_engine(url, pool_pre_ping=True, hide_parameters=True)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


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
)

#: A migration's data step, ``"module:function"`` called with the open connection after the
#: migration's columns are added and before its indexes are created: it fills a new column, or
#: removes the duplicates a new unique index would refuse, or builds a summary from existing rows.
#: A data step must be a no-op on an empty store: a new store runs every migration too.
MIGRATION_DATA_STEPS: dict[str, str] = {
    "0007_unsubscribe_token_key": "include.triggerflow.unsubscribe:backfill_token_keys",
    "0008_status_summaries": "include.triggerflow.stats:rebuild_all",
}


def _run_data_step(migration: str, conn: Connection) -> None:
    import importlib

    target = MIGRATION_DATA_STEPS.get(migration)
    if target is None:
        return
    module_name, _, function = target.partition(":")
    getattr(importlib.import_module(module_name), function)(conn)


def create_schema(engine: Engine) -> None:
    """Create missing tables and apply pending additive migrations (idempotent)."""
    from datetime import datetime

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
                    ops.add_column(table_name, table.c[name].copy())
            _run_data_step(migration, conn)
            have_idx = {i["name"] for i in inspector.get_indexes(table_name)}
            for index in table.indexes:
                if index.name in indexes and index.name not in have_idx:
                    conn.execute(CreateIndex(index))
            conn.execute(
                schema_version.insert().values(migration=migration, applied_at=datetime.now(UTC))
            )


def describe(engine: Engine) -> str:
    """The engine URL with the password hidden, safe for logs."""
    return engine.url.render_as_string(hide_password=True)


def insert_ignore(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], *, keys: Iterable[str]) -> int:
    """INSERT ... ON CONFLICT (keys) DO NOTHING; returns how many rows were new."""
    if not rows:
        return 0
    stmt = dialect_insert(conn, table).on_conflict_do_nothing(index_elements=list(keys))
    result = conn.execute(stmt, list(rows))
    return max(result.rowcount or 0, 0)


def chunked(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Slices of at most ``size`` items; keeps IN-lists under every dialect's parameter limit."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def dialect_insert(conn_or_engine: Connection | Engine, table: Table) -> Any:
    """``insert(table)`` of the dialect's own module (for ``on_conflict_do_nothing``)."""
    return dialect_insert_for(conn_or_engine.dialect.name, table)


class DriverStatement:
    """A Core statement compiled once, run on a raw DBAPI cursor with positional parameters.

    For the send stage's per-email ledger writes, where SQLAlchemy's per-execute work (cache key,
    execution context, result object) costs more than the statement itself. The SQL text is still
    SQLAlchemy's (quoting, dialect syntax); parameters are bound by name (``bindparam``) and go
    through the column types' bind processors, so stored values are exactly what Core would store
    (SQLite date-times as SQLAlchemy's text format, booleans as 0/1).
    """

    def __init__(self, stmt: Any, dialect: Any, *, names: Mapping[str, str] | None = None) -> None:
        if dialect.name == "postgresql":
            # positional ("format") so several statements can be sent in one round trip
            compile_with = type(dialect)(paramstyle="format")
        else:
            compile_with = dialect
        compiled = stmt.compile(dialect=compile_with)
        if not compiled.positional:  # pragma: no cover - both dialects compile positionally here
            raise StoreConfigError(f"{dialect.name}: expected a positional paramstyle")
        self.sql = str(compiled)
        self._params: list[tuple[str, Any, Any]] = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            # a value given to the statement itself (``.values(state="sending")``) is its default
            constant = _NO_VALUE if bind.required else bind.effective_value
            key = names.get(name, name) if names else name
            self._params.append((key, constant, bind.type.dialect_impl(dialect).bind_processor(dialect)))

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, constant, proc in self._params:
            value = values[name] if constant is _NO_VALUE or name in values else constant
            out.append(value if proc is None else proc(value))
        return tuple(out)

    def params_many(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """:meth:`params` for many rows, column by column; a bind processor runs once per distinct
        value (a bulk insert repeats the same timestamps)."""
        columns = []
        for name, constant, proc in self._params:
            if constant is _NO_VALUE:
                column = [row[name] for row in rows]
            else:
                column = [row.get(name, constant) for row in rows]
            if proc is not None:
                memo: dict[Any, Any] = {}
                converted = []
                for value in column:
                    key = (type(value), value)
                    if key not in memo:
                        memo[key] = proc(value)
                    converted.append(memo[key])
                column = converted
            columns.append(column)
        return list(zip(*columns))


_NO_VALUE = object()


class DriverSession:
    """One raw DBAPI connection of the engine's pool for a loop of small transactions.

    :meth:`transaction` runs statements and commits them as one transaction: on PostgreSQL as one
    round trip (``BEGIN; ...; COMMIT`` in one query, the connection in autocommit mode meanwhile),
    on SQLite as the driver's executes and a commit. The connection goes back to the pool, in its
    usual mode, on :meth:`close`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection = engine.raw_connection()
        self._pg = engine.dialect.name == "postgresql"
        if self._pg:
            self.connection.dbapi_connection.autocommit = True
        self.cursor = self.connection.cursor()

    def transaction(self, items: Sequence[tuple[DriverStatement, Mapping[str, Any]]]) -> None:
        """Execute the statements and commit them, all or nothing."""
        if not items:
            return
        if self._pg:
            params: list[Any] = []
            for stmt, values in items:
                params.extend(stmt.params(values))
            sql = "BEGIN;\n" + ";\n".join(stmt.sql for stmt, _ in items) + ";\nCOMMIT"
            try:
                self.cursor.execute(sql, tuple(params))
            except BaseException:
                # a statement failed: the server skipped the rest, the transaction is open and failed
                self._rollback_quietly()
                raise
            return
        try:
            for stmt, values in items:
                self.cursor.execute(stmt.sql, stmt.params(values))
            self.connection.commit()
        except BaseException:
            self._rollback_quietly()
            raise

    def _rollback_quietly(self) -> None:
        try:
            if self._pg:
                self.cursor.execute("ROLLBACK")
            else:
                self.connection.rollback()
        except Exception:
            pass

    def close(self) -> None:
        try:
            self.cursor.close()
            if self._pg:
                self.connection.dbapi_connection.autocommit = False
        except Exception:
            self.connection.invalidate()
        finally:
            self.connection.close()  # back to the pool, which rolls back anything left open

    def __enter__(self) -> DriverSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- bulk writes ---------------------------------------------------------------------------------------
def bulk_insert(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    ignore_conflicts_on: Sequence[str] | None = None,
) -> int:
    """Insert many rows in the connection's transaction, faster than ``conn.execute(insert(t), rows)``.
    Returns how many rows were inserted (fewer than given only with ``ignore_conflicts_on``).

    PostgreSQL: ``COPY ... FROM STDIN`` (text format), or with ``ignore_conflicts_on`` a COPY into a
    temporary table and one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. SQLite: the driver's
    ``executemany`` with tuples (``INSERT ... ON CONFLICT DO NOTHING`` with ``ignore_conflicts_on``).
    Values go through the column types' bind processors (SQLite) or are written as PostgreSQL reads
    them, so the stored values are those Core would store. Every row must have the same keys; a
    constraint violation raises ``sqlalchemy.exc.IntegrityError`` as ``conn.execute`` would.
    """
    if not rows:
        return 0
    columns = list(rows[0].keys())
    # Column defaults Core would fill in (``default=False``...): scalar ones only, in every row.
    defaults = {}
    for column in table.columns:
        if column.name in columns or column.default is None:
            continue
        if not column.default.is_scalar:  # pragma: no cover - the schema has scalar defaults only
            raise ValueError(f"bulk_insert: give {table.name}.{column.name} (its default is not a constant)")
        defaults[column.name] = column.default.arg
    if defaults:
        rows = [{**row, **defaults} for row in rows]
        columns += list(defaults)
    dialect = conn.dialect
    dbapi_conn = conn.connection.dbapi_connection
    try:
        if dialect.name == "postgresql":
            return _pg_copy(dbapi_conn, table, columns, rows, ignore_conflicts_on)
        stmt = _bulk_statement(dialect, table, tuple(columns), tuple(ignore_conflicts_on or ()))
        cursor = dbapi_conn.cursor()
        try:
            cursor.executemany(stmt.sql, stmt.params_many(rows))
            # the sum of the rows each INSERT changed (0 for a conflict skipped)
            return cursor.rowcount if ignore_conflicts_on else len(rows)
        finally:
            cursor.close()
    except dialect.loaded_dbapi.IntegrityError as exc:
        from sqlalchemy.exc import IntegrityError

        raise IntegrityError(f"bulk insert into {table.name}", None, exc) from exc


_BULK_STATEMENTS: dict[tuple[Any, ...], DriverStatement] = {}


def _bulk_statement(dialect: Any, table: Table, columns: tuple[str, ...], conflict: tuple[str, ...]) -> DriverStatement:
    from sqlalchemy import bindparam

    key = (dialect.name, table.name, columns, conflict)
    found = _BULK_STATEMENTS.get(key)
    if found is None:
        stmt = dialect_insert_for(dialect.name, table).values({c: bindparam(f"b_{c}", type_=table.c[c].type) for c in columns})
        if conflict:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
        else:
            stmt = stmt.inline()
        found = DriverStatement(stmt, dialect, names={f"b_{c}": c for c in columns})
        _BULK_STATEMENTS[key] = found
    return found


def dialect_insert_for(dialect_name: str, table: Table) -> Any:
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect_name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two supported dialects exist
        raise StoreConfigError(f"unsupported database dialect {dialect_name!r}")
    return insert(table)


# COPY text format: backslash escapes for the characters that delimit fields and rows.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_SPECIAL = re.compile("[\\\\\t\n\r]")


def _copy_text(value: Any) -> str:
    kind = type(value)
    if kind is str:
        # most values need no escape: one scan instead of a translation
        return value.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(value) is not None else value
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if kind is int:
        return str(value)
    if isinstance(value, str):
        return _copy_text(str(value))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("bulk_insert: naive datetime for a PostgreSQL column")  # never written by the stages
        return value.isoformat()
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(int(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        # bytea in hex form; the backslash is doubled because COPY's text format unescapes it
        return "\\\\x" + bytes(value).hex()
    raise TypeError(f"bulk_insert: cannot COPY a {type(value).__name__}")


def _pg_copy(dbapi_conn: Any, table: Table, columns: list[str], rows: Sequence[Mapping[str, Any]],
             ignore_conflicts_on: Sequence[str] | None) -> int:
    import io

    cols = ", ".join(f'"{c}"' for c in columns)
    # column by column (one conversion per distinct date-time: a bulk insert repeats its timestamps)
    fields = []
    for c in columns:
        values = [row[c] for row in rows]
        memo: dict[Any, str] = {}
        converted = []
        for value in values:
            if type(value) is str:
                converted.append(value if _COPY_SPECIAL.search(value) is None else value.translate(_COPY_ESCAPES))
            elif isinstance(value, datetime):
                text = memo.get(value)
                if text is None:
                    text = memo[value] = _copy_text(value)
                converted.append(text)
            else:
                converted.append(_copy_text(value))
        fields.append(converted)
    text = "".join(["\t".join(line) + "\n" for line in zip(*fields)])
    cursor = dbapi_conn.cursor()
    try:
        if not ignore_conflicts_on:
            cursor.copy_expert(f'COPY "{table.name}" ({cols}) FROM STDIN', io.StringIO(text))
            return len(rows)
        # COPY cannot skip conflicting rows: stage them, then one INSERT ... ON CONFLICT DO NOTHING.
        # (the columns' types, no constraints or defaults; gone with the transaction if it fails)
        staging = f"tf_bulk_{table.name}_{next(_key_table_ids)}"
        cursor.execute(f'CREATE TEMPORARY TABLE "{staging}" ON COMMIT DROP AS SELECT {cols} FROM "{table.name}" WITH NO DATA')
        cursor.copy_expert(f'COPY "{staging}" ({cols}) FROM STDIN', io.StringIO(text))
        keys = ", ".join(f'"{c}"' for c in ignore_conflicts_on)
        cursor.execute(f'INSERT INTO "{table.name}" ({cols}) SELECT {cols} FROM "{staging}" ON CONFLICT ({keys}) DO NOTHING')
        inserted = cursor.rowcount
        cursor.execute(f'DROP TABLE "{staging}"')
        return inserted
    finally:
        cursor.close()


# -- set-based look-ups ----------------------------------------------------------------------------------
#: up to this many keys a look-up is one IN-list; more go through a temporary key table
IN_LIST_MAX = 500
_key_table_ids = itertools.count(1)


@contextmanager
def key_table(conn: Connection, keys: Iterable[Any], type_: Any = None) -> Iterator[Table]:
    """A temporary one-column table ``k`` holding the distinct ``keys``, for a set-based join.

    One ``COPY`` (PostgreSQL) or ``executemany`` (SQLite) fills it, instead of hundreds of IN-list
    queries: for 150,000 keys a join costs ~1.4 s on both dialects where IN-lists of 500 cost 2.4 s
    (SQLite) and 15 s (PostgreSQL). Dropped when the block ends. Temporary tables belong to the
    connection and take no lock on the store's own tables."""
    from sqlalchemy import Column, MetaData, String

    table = Table(
        f"tf_keys_{os.getpid()}_{next(_key_table_ids)}", MetaData(),
        Column("k", type_ if type_ is not None else String(400), primary_key=True),
        prefixes=["TEMPORARY"],
    )
    table.create(conn)
    try:
        bulk_insert(conn, table, [{"k": k} for k in dict.fromkeys(keys)])
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f'ANALYZE "{table.name}"')  # row count for the planner
        yield table
    except BaseException:
        # PostgreSQL: the failed transaction's rollback removes the table (a DROP now would fail
        # and hide the error); SQLite: drop it if the connection still can
        if conn.dialect.name != "postgresql":
            try:
                table.drop(conn)
            except Exception:
                pass
        raise
    table.drop(conn)


def _lookup_keys(conn: Connection, column: Any, keys: Iterable[Any]) -> tuple[list[Any], Any]:
    """Distinct keys and the key table's type for ``column``. Text keys get an unbounded type (a key
    from event data may be longer than the column: it matches nothing, it must not fail); on
    PostgreSQL a text key with a NUL character is left out (no stored text can hold one, and the
    driver refuses to send it)."""
    from sqlalchemy import BigInteger, Integer, String

    keys = list(dict.fromkeys(keys))
    if isinstance(column.type, String):
        if conn.dialect.name == "postgresql":
            keys = [k for k in keys if not (isinstance(k, str) and "\x00" in k)]
        return keys, String()
    if isinstance(column.type, Integer):
        return keys, BigInteger()
    return keys, column.type


def select_in(conn: Connection, stmt: Any, column: Any, keys: Iterable[Any]) -> list[Any]:
    """The rows of ``stmt`` whose ``column`` is one of ``keys``: one IN-list for a few keys, a join
    with a :func:`key_table` for many. Returns the rows (``Row`` objects) as a list."""
    keys, type_ = _lookup_keys(conn, column, keys)
    if not keys:
        return []
    if len(keys) <= IN_LIST_MAX:
        return conn.execute(stmt.where(column.in_(keys))).all()
    with key_table(conn, keys, type_) as table:
        return conn.execute(stmt.join(table, column == table.c.k)).all()


def where_in(conn: Connection, stmt: Any, column: Any, keys: Iterable[Any]) -> None:
    """Execute ``stmt`` (an UPDATE or DELETE) for the rows whose ``column`` is one of ``keys``."""
    from sqlalchemy import select

    keys, type_ = _lookup_keys(conn, column, keys)
    if not keys:
        return
    if len(keys) <= IN_LIST_MAX:
        conn.execute(stmt.where(column.in_(keys)))
        return
    with key_table(conn, keys, type_) as table:
        conn.execute(stmt.where(column.in_(select(table.c.k))))
