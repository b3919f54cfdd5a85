"""Tests for include.triggerflow.hooks.store: connection ``triggers_db`` -> store URL and engine.

Connections come from AIRFLOW_CONN_* variables, as for any Airflow hook outside a task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from include.triggerflow.hooks.store import TriggersStoreHook
from include.triggerflow.store.db import StoreConfigError


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
    from include.triggerflow.store.db import create_schema

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
    from include.triggerflow.store.db import get_engine

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
    from include.triggerflow.store.db import get_engine

    _set_conn(monkeypatch, conn_type="generic", extra={"sqlalchemy_url": store_url})
    engine = store_engine()
    assert engine is get_engine(store_url)
    assert {"tf_source_position", "tf_batch", "tf_event", "tf_send", "profiles"} <= set(inspect(engine).get_table_names())
