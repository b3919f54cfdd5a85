"""The store's database helpers, by their old address: a thin re-export.

The code lives in one module per concern:

    store/engines.py      URLs from the triggers_db connection, one engine per URL, SQLite pragmas
    store/migrations.py   create_schema and the additive migrations (+ their data steps)
    store/bulk.py         bulk_insert (COPY / executemany), insert_ignore, DriverStatement/Session
    store/lookups.py      select_in / where_in / key_table (IN-lists or temporary key tables)

New code imports from those modules. Assigning a re-exported name here (tests set
``db.IN_LIST_MAX``) assigns it in its home module too, so the setting still takes effect.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from include.triggerflow.store import bulk, engines, lookups, migrations
from include.triggerflow.store.bulk import (
    DriverSession,
    DriverStatement,
    bulk_insert,
    chunked,
    dialect_insert,
    dialect_insert_for,
    insert_ignore,
)
from include.triggerflow.store.engines import (
    StoreConfigError,
    data_dir,
    describe,
    dispose_engines,
    get_engine,
    request_url_from_connection,
    sqlite_pragmas,
    url_from_connection,
    url_from_parts,
)
from include.triggerflow.store.lookups import IN_LIST_MAX, key_table, select_in, where_in
from include.triggerflow.store.migrations import ADDITIVE_MIGRATIONS, MIGRATION_DATA_STEPS, create_schema

__all__ = [
    "ADDITIVE_MIGRATIONS",
    "IN_LIST_MAX",
    "MIGRATION_DATA_STEPS",
    "DriverSession",
    "DriverStatement",
    "StoreConfigError",
    "bulk_insert",
    "chunked",
    "create_schema",
    "data_dir",
    "describe",
    "dialect_insert",
    "dialect_insert_for",
    "dispose_engines",
    "get_engine",
    "insert_ignore",
    "key_table",
    "request_url_from_connection",
    "select_in",
    "sqlite_pragmas",
    "url_from_connection",
    "url_from_parts",
    "where_in",
]

_HOMES = (engines, migrations, bulk, lookups)


class _ReExport(types.ModuleType):
    """Setting a name that one of the home modules defines sets it there as well."""

    def __setattr__(self, name: str, value: Any) -> None:
        for home in _HOMES:
            if name in vars(home):
                setattr(home, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _ReExport
