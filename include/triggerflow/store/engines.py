"""Engines for the store: the URL a ``triggers_db`` connection describes, and one engine per URL.

The URL comes from the providers' hooks (``PostgresHook.sqlalchemy_url``, and for SQLite the
:class:`~include.triggerflow.hooks.store.SqliteStoreHook` built on common-sql's ``DbApiHook``), with
the store's own rules on top: ``extra.sqlalchemy_url`` wins, relative SQLite paths resolve against
:func:`data_dir`, PostgreSQL uses psycopg2 and defaults to 127.0.0.1:5432/triggerflow (the hooks live in
:mod:`include.triggerflow.hooks.store`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()

#: the driver of every PostgreSQL store URL built from connection fields (COPY, DriverSession)
PG_SCHEME = "postgresql+psycopg2"


class StoreConfigError(ValueError):
    """The triggers_db connection does not describe a usable database."""


def data_dir() -> Path:
    """Where relative SQLite paths live: $TRIGGERFLOW_DATA_DIR, else $AIRFLOW_HOME, else cwd."""
    base = os.environ.get("TRIGGERFLOW_DATA_DIR") or os.environ.get("AIRFLOW_HOME") or os.getcwd()
    return Path(base)


@dataclass
class ConnectionFields:
    """The fields of an Airflow connection, for :func:`url_from_parts` (anything with these
    attributes and ``extra_dejson`` works where a connection is expected)."""

    conn_type: str | None
    host: str | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = None
    port: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    conn_id: str = "triggers_db"

    @property
    def extra_dejson(self) -> dict[str, Any]:
        return dict(self.extra)


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
    """:func:`url_from_connection` for a connection's fields given one by one."""
    return url_from_connection(
        ConnectionFields(conn_type, host=host, schema=schema, login=login, password=password, port=port, extra=extra or {})
    )


def url_from_connection(conn: Any) -> str:
    """The SQLAlchemy URL of an Airflow connection object (SDK or core).

    ``extra.sqlalchemy_url`` wins when present. Otherwise ``sqlite`` uses ``host`` as the file
    path (relative paths resolve against :func:`data_dir`), and ``postgres`` the usual fields,
    both through the providers' hooks (:func:`include.triggerflow.hooks.store.provider_hook`)."""
    from include.triggerflow.hooks.store import provider_hook

    explicit = (conn.extra_dejson or {}).get("sqlalchemy_url")
    if explicit:
        return str(explicit)
    url: URL = provider_hook(conn).sqlalchemy_url
    return url.render_as_string(hide_password=False)


def with_connect_timeout(url: str | URL, seconds: int) -> URL:
    """``url`` with a PostgreSQL ``connect_timeout`` unless it names one (other dialects unchanged):
    code answering a request must never wait for the OS's TCP timeout on an unreachable server."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": str(seconds)})
    return parsed


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
    return with_connect_timeout(parsed, connect_timeout_s).render_as_string(hide_password=False)


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """The settings of every SQLite store connection (a ``connect`` event listener)."""
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


_sqlite_pragmas = sqlite_pragmas  # the old private name


def get_engine(url: str, *, create: Callable[[dict[str, Any]], Engine] | None = None) -> Engine:
    """One engine per URL per process (tasks are processes; engines are cheap to keep).

    ``create(engine_kwargs)`` builds it when it is not cached yet (a provider hook's
    ``get_sqlalchemy_engine``); by default ``create_engine(url, **engine_kwargs)``."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            parsed = make_url(url)
            sqlite = parsed.get_backend_name() == "sqlite"
            # Bound values are customers' addresses, names and hostile trigger content: a
            # database error must never carry them into exception texts, task logs or alerts.
            kwargs: dict[str, Any] = {"hide_parameters": True}
            if sqlite:
                if parsed.database and parsed.database != ":memory:":
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"timeout": 30}
            else:
                kwargs["pool_pre_ping"] = True
            engine = create(kwargs) if create is not None else create_engine(url, **kwargs)
            if sqlite:
                event.listen(engine, "connect", sqlite_pragmas)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def describe(engine: Engine) -> str:
    """The engine URL with the password hidden, safe for logs."""
    return engine.url.render_as_string(hide_password=True)
