"""Tests for include.triggerflow.hooks.store: connection ``triggers_db`` -> store URL and engine.

Connections come from AIRFLOW_CONN_* variables, as for any Airflow hook outside a task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from include.triggerflow.hooks.store import SqliteStoreHook, StorePostgresHook, TriggersStoreHook
from include.triggerflow.store.engines import StoreConfigError, get_engine
from include.triggerflow.store.migrations import create_schema


def _set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str = "triggers_db", **conn: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def test_sqlite_relative_host_resolves_under_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIGGERFLOW_DATA_DIR", str(tmp_path))
    _set_conn(monkeypatch, conn_type="sqlite", host="store/triggerflow.db")
    assert TriggersStoreHook().get_url() == f"sqlite:///{tmp_path / 'store' / 'triggerflow.db'}"


def test_get_conn_gives_a_working_engine_for_that_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIGGERFLOW_DATA_DIR", str(tmp_path))
    _set_conn(monkeypatch, conn_type="sqlite", host="hooked.db")
    engine = TriggersStoreHook().get_conn()
    create_schema(engine)
    assert "tf_event" in inspect(engine).get_table_names()
    assert (tmp_path / "hooked.db").is_file()


def test_postgres_connection_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(
        monkeypatch, conn_type="postgres", host="pg.internal", port=5433, login="tf", password="s3cr3t!",
        schema="triggers",
    )
    url = make_url(TriggersStoreHook().get_url())
    assert (url.drivername, url.host, url.port, url.database) == ("postgresql+psycopg2", "pg.internal", 5433, "triggers")
    assert (url.username, url.password) == ("tf", "s3cr3t!")


def test_extra_sqlalchemy_url_wins(monkeypatch: pytest.MonkeyPatch, store_url: str) -> None:
    _set_conn(monkeypatch, conn_type="generic", host="ignored", extra={"sqlalchemy_url": store_url})
    hook = TriggersStoreHook()
    assert hook.get_url() == store_url
    assert hook.get_conn() is get_engine(store_url)


def test_another_conn_id(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _set_conn(monkeypatch, "other_store", conn_type="sqlite", host=str(tmp_path / "other.db"))
    assert TriggersStoreHook("other_store").get_url() == f"sqlite:///{tmp_path / 'other.db'}"


def test_unknown_conn_type_is_a_store_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, conn_type="mysql", host="db", login="u")
    with pytest.raises(StoreConfigError, match="unsupported conn_type 'mysql'"):
        TriggersStoreHook().get_url()


def test_runtime_store_engine_uses_the_connection_and_creates_the_tables(monkeypatch: pytest.MonkeyPatch, store_url: str) -> None:
    from include.triggerflow.runtime import store_engine

    _set_conn(monkeypatch, conn_type="generic", extra={"sqlalchemy_url": store_url})
    engine = store_engine()
    assert engine is get_engine(store_url)
    assert {"tf_source_position", "tf_batch", "tf_event", "tf_send", "profiles"} <= set(inspect(engine).get_table_names())


def test_the_url_comes_from_the_providers_hook_of_the_conn_type(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    _set_conn(monkeypatch, conn_type="postgres", host="pg.internal", schema="triggers", extra={"sqlalchemy_query": {"sslmode": "require"}})
    sql_hook = TriggersStoreHook().get_sql_hook()
    assert isinstance(sql_hook, StorePostgresHook) and isinstance(sql_hook, PostgresHook)
    url = make_url(TriggersStoreHook().get_url())
    assert (url.drivername, url.port, url.query) == ("postgresql+psycopg2", 5432, {"sslmode": "require"})
    # the engine PostgresHook.get_sqlalchemy_engine builds connects where the URL says (not cached here)
    engine = sql_hook.get_sqlalchemy_engine()
    assert engine.url.render_as_string(hide_password=False) == url.render_as_string(hide_password=False)
    _set_conn(monkeypatch, conn_type="sqlite", host=str(tmp_path / "lite.db"))
    sql_hook = TriggersStoreHook().get_sql_hook()
    assert isinstance(sql_hook, SqliteStoreHook) and isinstance(sql_hook, DbApiHook)
    assert sql_hook.get_uri() == f"sqlite:///{tmp_path / 'lite.db'}"


def test_an_empty_login_is_no_user_and_empty_fields_take_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, conn_type="postgres", login="", password="")
    assert TriggersStoreHook().get_url() == "postgresql+psycopg2://127.0.0.1:5432/triggerflow"


def test_get_conn_caches_the_engine_built_through_the_sqlite_hook(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sqlalchemy import text

    _set_conn(monkeypatch, conn_type="sqlite", host=str(tmp_path / "cached.db"))
    engine = TriggersStoreHook().get_conn()
    assert TriggersStoreHook().get_conn() is engine is get_engine(f"sqlite:///{tmp_path / 'cached.db'}")
    with engine.connect() as conn:  # the store's pragmas, as for any store engine
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
