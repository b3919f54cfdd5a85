"""Tests for the store's engines (store.engines: URLs from connection fields, one engine per URL),
schema creation (store.migrations), insert_ignore (store.bulk) and the UTC column type (store.types).

The database tests run on the store of the test run (SQLite, or PostgreSQL when
TRIGGERFLOW_TEST_PG_URL is set)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import make_url

from include.triggerflow.store.bulk import chunked, insert_ignore
from include.triggerflow.store.engines import (
    StoreConfigError,
    data_dir,
    describe,
    get_engine,
    request_url_from_connection,
    url_from_parts,
)
from include.triggerflow.store.migrations import create_schema
from include.triggerflow.store.schema import metadata, source_position
from include.triggerflow.store.types import UtcDateTime

STORE_TABLES = {
    "tf_source_position", "tf_batch", "tf_event", "tf_quarantine", "tf_decision", "tf_send",
    "tf_run_summary", "tf_source_health", "tf_source_gap", "tf_source_hourly", "tf_ims_token",
    "tf_send_log", "tf_suppression", "tf_dry_run", "tf_chunk_lease", "tf_unsubscribe", "tf_schema_version", "tf_alert", "tf_run_outcome", "tf_maintenance", "profiles",
    "profile_visitor_ids", "tf_batch_stats", "tf_source_stats", "catalog",
}


# -- url_from_parts ----------------------------------------------------------------------------------
def test_sqlite_relative_path_resolves_under_triggerflow_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIGGERFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow-home"))
    url = url_from_parts(conn_type="sqlite", host="store/triggerflow.db")
    assert url == f"sqlite:///{tmp_path / 'data' / 'store' / 'triggerflow.db'}"
    assert data_dir() == tmp_path / "data"


def test_sqlite_relative_path_falls_back_to_airflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIGGERFLOW_DATA_DIR", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow-home"))
    assert url_from_parts(conn_type="SQLite", host="tf.db") == f"sqlite:///{tmp_path / 'airflow-home' / 'tf.db'}"


def test_sqlite_absolute_path_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIGGERFLOW_DATA_DIR", "/somewhere/else")
    absolute = tmp_path / "abs.db"
    assert url_from_parts(conn_type="sqlite", host=str(absolute)) == f"sqlite:///{absolute}"


def test_sqlite_without_host_is_a_config_error() -> None:
    with pytest.raises(StoreConfigError, match="sqlite connection needs the database file path in 'host'"):
        url_from_parts(conn_type="sqlite", host=None)


def test_postgres_fields_make_a_url_with_the_password_escaped() -> None:
    url = url_from_parts(
        conn_type="postgres", host="db.internal", schema="triggers", login="tf", password="p@ss/w:rd", port=6543
    )
    parsed = make_url(url)
    assert parsed.drivername == "postgresql+psycopg2"
    assert (parsed.host, parsed.port, parsed.database) == ("db.internal", 6543, "triggers")
    assert (parsed.username, parsed.password) == ("tf", "p@ss/w:rd")
    assert "p@ss/w:rd" not in url  # escaped in the URL text, not raw


def test_postgres_defaults() -> None:
    url = url_from_parts(conn_type="postgresql")
    assert url == "postgresql+psycopg2://127.0.0.1:5432/triggerflow"


def test_extra_sqlalchemy_url_wins_over_fields() -> None:
    url = url_from_parts(
        conn_type="postgres", host="ignored", schema="ignored",
        extra={"sqlalchemy_url": "postgresql+psycopg2://u@h:1/explicit"},
    )
    assert url == "postgresql+psycopg2://u@h:1/explicit"
    # ... and makes any conn_type usable, even one that is otherwise refused
    assert url_from_parts(conn_type="generic", extra={"sqlalchemy_url": "sqlite:////x.db"}) == "sqlite:////x.db"


@pytest.mark.parametrize("conn_type", ["mysql", "http", None, ""])
def test_unknown_conn_type_is_a_config_error(conn_type: str | None) -> None:
    with pytest.raises(StoreConfigError) as info:
        url_from_parts(conn_type=conn_type, host="h")
    message = str(info.value)
    assert f"unsupported conn_type {conn_type!r}" in message
    assert "extra.sqlalchemy_url" in message


# -- engines and schema ------------------------------------------------------------------------------
def test_get_engine_is_cached_per_url(store_url: str) -> None:
    assert get_engine(store_url) is get_engine(store_url)


def test_create_schema_is_idempotent_and_creates_every_table(store_url: str) -> None:
    engine = get_engine(store_url)
    create_schema(engine)
    create_schema(engine)
    assert set(inspect(engine).get_table_names()) >= STORE_TABLES
    assert set(metadata.tables) == STORE_TABLES


def test_sqlite_engine_sets_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = get_engine(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'pragmas.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 30000
    assert (tmp_path / "nested" / "dir" / "pragmas.db").exists()


def test_describe_hides_the_password() -> None:
    engine = create_engine("postgresql+psycopg2://tf:supersecret@127.0.0.1:5432/tfdescribe")
    shown = describe(engine)
    assert "supersecret" not in shown
    assert shown == "postgresql+psycopg2://tf:***@127.0.0.1:5432/tfdescribe"


# -- insert_ignore -----------------------------------------------------------------------------------
def _pos(partition: int, position: str = "p1") -> dict:
    return {"source": "s", "partition": partition, "position": position, "updated_at": datetime.now(UTC)}


def test_insert_ignore_returns_the_number_of_new_rows(store_engine) -> None:
    keys = ["source", "partition"]
    with store_engine.begin() as conn:
        assert insert_ignore(conn, source_position, [_pos(0), _pos(1), _pos(2)], keys=keys) == 3
        # two already there (different position: still a conflict on the key, not an update)
        assert insert_ignore(conn, source_position, [_pos(1, "p2"), _pos(2, "p2"), _pos(3, "p2")], keys=keys) == 1
        assert insert_ignore(conn, source_position, [_pos(0, "p3")], keys=keys) == 0
        assert insert_ignore(conn, source_position, [], keys=keys) == 0
    with store_engine.connect() as conn:
        rows = conn.execute(select(source_position.c.partition, source_position.c.position).order_by(source_position.c.partition)).all()
    assert [tuple(r) for r in rows] == [(0, "p1"), (1, "p1"), (2, "p1"), (3, "p2")]


def test_chunked() -> None:
    assert [list(c) for c in chunked([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]
    assert list(chunked([], 3)) == []


def test_a_database_error_never_carries_the_bound_values(store_engine) -> None:
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from include.triggerflow.store.schema import profiles

    row = {"customer_id": "C1", "email": "private.person@example.com", "first_name": "Privatename",
           "opted_out": False, "updated_at": datetime.now(UTC)}
    with store_engine.begin() as conn:
        conn.execute(insert(profiles).values(row))
    with pytest.raises(IntegrityError) as info, store_engine.begin() as conn:
        conn.execute(insert(profiles), [{**row, "email": "second.private@example.com"}])  # same key
    text_ = str(info.value)
    assert "SQL parameters hidden" in text_
    assert "private.person@example.com" not in text_ and "second.private@example.com" not in text_
    assert "Privatename" not in text_


# -- UtcDateTime -------------------------------------------------------------------------------------
def test_every_date_time_column_is_utc_datetime() -> None:
    from sqlalchemy import DateTime

    plain = [f"{t.name}.{c.name}" for t in metadata.tables.values() for c in t.columns
             if isinstance(c.type, DateTime) and not isinstance(c.type, UtcDateTime)]
    assert plain == []
    assert isinstance(source_position.c.updated_at.type, UtcDateTime)


def test_date_times_come_back_aware_utc_whatever_was_bound(store_engine) -> None:
    from datetime import timedelta, timezone

    paris = timezone(timedelta(hours=1))
    written = {
        0: datetime(2026, 12, 1, 12, 0, tzinfo=UTC),  # aware UTC
        1: datetime(2026, 12, 1, 12, 0),  # naive: taken as UTC
        2: datetime(2026, 12, 1, 13, 0, tzinfo=paris),  # another zone: the same instant
    }
    with store_engine.begin() as conn:
        for partition, when in written.items():
            conn.execute(source_position.insert().values(source="s", partition=partition, position="p", updated_at=when))
    with store_engine.connect() as conn:
        read = conn.execute(select(source_position.c.updated_at).order_by(source_position.c.partition)).scalars().all()
        # a bound comparison converts the same way
        later = conn.execute(select(source_position.c.partition).where(
            source_position.c.updated_at >= datetime(2026, 12, 1, 12, 30, tzinfo=paris))).scalars().all()
    assert read == [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)] * 3
    assert all(value.tzinfo is UTC for value in read)
    assert sorted(later) == [0, 1, 2]
    if store_engine.dialect.name == "sqlite":  # stored as before the type existed: the UTC wall clock
        with store_engine.connect() as conn:
            raw = conn.execute(text("SELECT updated_at FROM tf_source_position")).scalars().all()
        assert raw == ["2026-12-01 12:00:00.000000"] * 3


def test_the_column_type_in_the_database_is_unchanged() -> None:
    from sqlalchemy import DateTime
    from sqlalchemy.dialects import postgresql, sqlite

    for dialect in (sqlite.dialect(), postgresql.dialect()):
        assert UtcDateTime().dialect_impl(dialect).impl.compile(dialect) == DateTime(timezone=True).compile(dialect)


# -- request URLs ------------------------------------------------------------------------------------
def test_a_request_url_gets_a_postgres_connect_timeout_unless_it_has_one() -> None:
    from include.triggerflow.store.engines import ConnectionFields

    pg = ConnectionFields("postgres", host="db.internal", schema="tf")
    assert make_url(request_url_from_connection(pg, connect_timeout_s=3)).query == {"connect_timeout": "3"}
    own = ConnectionFields("generic", extra={"sqlalchemy_url": "postgresql+psycopg2://h/db?connect_timeout=9"})
    assert make_url(request_url_from_connection(own)).query == {"connect_timeout": "9"}
    lite = ConnectionFields("generic", extra={"sqlalchemy_url": "sqlite:////x.db"})
    assert request_url_from_connection(lite) == "sqlite:////x.db"
    with pytest.raises(StoreConfigError, match="connection 'triggers_db' does not give a database URL"):
        request_url_from_connection(ConnectionFields("generic", extra={"sqlalchemy_url": "not a url"}))
