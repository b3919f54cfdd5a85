"""The store named by connection ``triggers_db``, on the providers' SQL hooks.

Connection ``triggers_db``: the database holding the store tables and the profiles.

    conn_type sqlite     host = database file (relative paths resolve against $AIRFLOW_HOME)
    conn_type postgres   host, port, login, password, schema (= database name)
    any type             extra.sqlalchemy_url = a full SQLAlchemy URL (wins over the fields)

PostgreSQL goes through the postgres provider's ``PostgresHook`` (:class:`StorePostgresHook`: its
``sqlalchemy_url`` and ``get_sqlalchemy_engine``), pinned to psycopg2 (the bulk paths use its COPY). SQLite goes through
:class:`SqliteStoreHook`, a common-sql ``DbApiHook``: the sqlite provider is not installed, and its
hook would not resolve a relative path against $AIRFLOW_HOME anyway. The engine settings (SQLite
pragmas, hidden parameters, one engine per URL) are the store's: :mod:`include.triggerflow.store.engines`.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.sql.hooks.sql import DbApiHook
from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk import BaseHook
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from include.triggerflow.store.engines import (
    PG_SCHEME,
    StoreConfigError,
    data_dir,
    get_engine,
    url_from_connection,
)

_POSTGRES_TYPES = frozenset({"postgres", "postgresql"})


class SqliteStoreHook(DbApiHook):
    """common-sql's ``DbApiHook`` for a SQLite store file: ``host`` is the path, a relative one
    resolved against :func:`~include.triggerflow.store.engines.data_dir`."""

    conn_name_attr = "sqlite_conn_id"
    default_conn_name = "triggers_db"
    conn_type = "sqlite"
    hook_name = "triggerflow store (SQLite)"
    _placeholder = "?"

    @property
    def sqlalchemy_url(self) -> URL:
        host = self.connection.host
        if not host:
            raise StoreConfigError("triggers_db: a sqlite connection needs the database file path in 'host'")
        path = data_dir() / host  # an absolute host stays as it is
        return URL.create("sqlite", database=str(path))

    def get_uri(self) -> str:
        return self.sqlalchemy_url.render_as_string(hide_password=False)


class StorePostgresHook(PostgresHook):
    """``PostgresHook`` on psycopg2 with the store's defaults for empty fields (host 127.0.0.1, port
    5432, database ``triggerflow``), so its ``get_sqlalchemy_engine`` connects where the URL says."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("sqlalchemy_scheme", PG_SCHEME)
        super().__init__(*args, **kwargs)

    @property
    def sqlalchemy_url(self) -> URL:
        url: URL = super().sqlalchemy_url
        # URL.create, not url.set: set() keeps a field given None, and an empty login must be no user
        return URL.create(
            url.drivername,
            username=url.username or None,
            password=url.password or None,
            host=url.host or "127.0.0.1",
            port=url.port or 5432,
            database=url.database or "triggerflow",
            query=url.query,
        )


def provider_hook(conn: Any) -> DbApiHook:
    """The provider hook serving ``conn`` (an Airflow connection object), by its ``conn_type``."""
    kind = (conn.conn_type or "").lower()
    if kind == "sqlite":
        return SqliteStoreHook(connection=conn)
    if kind in _POSTGRES_TYPES:
        return StorePostgresHook(connection=conn)
    raise StoreConfigError(
        f"triggers_db: unsupported conn_type {conn.conn_type!r}; use 'sqlite', 'postgres', "
        "or put a full SQLAlchemy URL in extra.sqlalchemy_url"
    )


class TriggersStoreHook(BaseHook):
    """The store's engine from connection ``triggers_db`` (module doc): the URL from the provider
    hook of the connection's type, the engine cached per URL and process."""

    conn_name_attr = "triggers_db_conn_id"
    default_conn_name = "triggers_db"
    conn_type = "sqlite"
    hook_name = "triggerflow store"

    def __init__(self, triggers_db_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.triggers_db_conn_id = triggers_db_conn_id

    def get_url(self) -> str:
        return url_from_connection(self.get_connection(self.triggers_db_conn_id))

    def get_sql_hook(self) -> DbApiHook:
        """The provider hook of the connection (PostgresHook or SqliteStoreHook)."""
        return provider_hook(self.get_connection(self.triggers_db_conn_id))

    def get_conn(self) -> Engine:
        conn = self.get_connection(self.triggers_db_conn_id)
        url = url_from_connection(conn)
        if conn.extra_dejson.get("sqlalchemy_url"):
            return get_engine(url)
        hook = provider_hook(conn)
        return get_engine(url, create=lambda kwargs: hook.get_sqlalchemy_engine(engine_kwargs=kwargs))
