"""Engines for the store, and the few dialect-specific statements it needs.

The store is SQLite by default (a file next to the Airflow home) and PostgreSQL in production.
Everything else in the package is written against SQLAlchemy Core and works on both.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
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
    except Exception as exc:  # noqa: BLE001 - e.g. a malformed extra.sqlalchemy_url
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
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def get_engine(url: str) -> Engine:
    """One engine per URL per process (tasks are processes; engines are cheap to keep)."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            parsed = make_url(url)
            if parsed.get_backend_name() == "sqlite":
                if parsed.database and parsed.database != ":memory:":
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, connect_args={"timeout": 30})
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = create_engine(url, pool_pre_ping=True)
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
)


def create_schema(engine: Engine) -> None:
    """Create missing tables and apply pending additive migrations (idempotent)."""
    from datetime import datetime, timezone

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
            have_idx = {i["name"] for i in inspector.get_indexes(table_name)}
            for index in table.indexes:
                if index.name in indexes and index.name not in have_idx:
                    conn.execute(CreateIndex(index))
            conn.execute(
                schema_version.insert().values(migration=migration, applied_at=datetime.now(timezone.utc))
            )


def describe(engine: Engine) -> str:
    """The engine URL with the password hidden, safe for logs."""
    return engine.url.render_as_string(hide_password=True)


def insert_ignore(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], *, keys: Iterable[str]) -> int:
    """INSERT ... ON CONFLICT (keys) DO NOTHING; returns how many rows were new."""
    if not rows:
        return 0
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two supported dialects exist
        raise StoreConfigError(f"unsupported database dialect {dialect!r}")
    stmt = insert(table).on_conflict_do_nothing(index_elements=list(keys))
    result = conn.execute(stmt, list(rows))
    return max(result.rowcount or 0, 0)


def chunked(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Slices of at most ``size`` items; keeps IN-lists under every dialect's parameter limit."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
