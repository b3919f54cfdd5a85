"""Tests for plugins/pipelined_status.py: the /pipelined app, its authentication, its errors and
the page, with FastAPI's TestClient. The tests against a real ``airflow api-server`` are in
tests/integration/plugins/test_pipelined_status_server.py."""

from __future__ import annotations

import json
import logging
import re
import secrets
import socket
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import insert

from include.triggerflow.store.schema import (
    source_health,
    source_hourly,
    source_position,
)
from tests.plugins.conftest import load_plugin
from tests.status_support import JournalPages, journal_connection
from tests.support import captured_sql

with warnings.catch_warnings():  # starlette's note about httpx, raised by this import only
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FIELDS = ["consumer", "source", "generated-at", "http-request", "pointer", "routing", "stats", "settings", "messages-per-hour", "warnings"]


@pytest.fixture(scope="module")
def plugin() -> ModuleType:
    return load_plugin("pipelined_status")


@pytest.fixture
def client(plugin: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.delenv(plugin.PUBLIC_ENV, raising=False)
    monkeypatch.delenv(plugin.CACHE_ENV, raising=False)
    plugin.reset()  # no document cached by another test
    with TestClient(plugin.app) as test_client:
        yield test_client
    plugin.app.dependency_overrides.clear()
    plugin.reset()


@pytest.fixture
def store_conn(store_url: str, store_engine, monkeypatch: pytest.MonkeyPatch) -> str:
    """Connection triggers_db -> the test's store (SQLite or PostgreSQL), with its tables."""
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_DB", json.dumps({"conn_type": "sqlite", "extra": {"sqlalchemy_url": store_url}}))
    return store_url


class FakeUser:
    """Stands in for Airflow's user: the dependency override skips token checks. The real paths
    (Airflow's get_user with a real token) are tested in-process below and on a real server (e2e)."""

    def get_name(self) -> str:
        return "monitor"


def as_user(plugin: ModuleType) -> None:
    plugin.app.dependency_overrides[plugin.require_user] = lambda: FakeUser()


def fill_store(engine, source: str = "journal:/events/organizations/O/integrations/I/reg-1") -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(source_position).values(source=source, partition=0, position="pos-9", updated_at=now))
        conn.execute(
            insert(source_health).values(
                source=source, endpoint="http://127.0.0.1:8765/events/x", last_alive_at=now, bytes_read=2048,
                messages_received=9, pointer_flushes=3, updated_at=now,
            )
        )
        conn.execute(
            insert(source_hourly).values(source=source, hour=now.replace(minute=0, second=0, microsecond=0), messages=9)
        )


# -- the plugin object -------------------------------------------------------------------------------
def test_plugin_declares_the_app_and_the_nav_view(plugin: ModuleType) -> None:
    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES
    from airflow.plugins_manager import AirflowPlugin

    cls = plugin.PipelinedStatusPlugin
    assert issubclass(cls, AirflowPlugin) and cls.name == "pipelined_status"
    [app] = cls.fastapi_apps
    assert (app["app"], app["url_prefix"]) == (plugin.app, "/pipelined")
    assert not any(app["url_prefix"].startswith(prefix) for prefix in RESERVED_URL_PREFIXES)
    assert cls.external_views == [
        {"name": "Triggers status", "href": "/pipelined/", "destination": "nav", "url_route": "pipelined"}
    ]
    # the status document and page, then the console's views mounted under the same prefix
    # (tests/plugins/test_console.py); no unauthenticated /docs
    assert {route.path for route in plugin.app.routes} == {"/status", "/", ""}
    assert {route.path for route in plugin.console_app.build().routes} == {"/runs", "/run", "/quarantine", "/reprocess", "/search", "/alerts"}


# -- authentication ----------------------------------------------------------------------------------
def test_anonymous_requests_are_refused(client: TestClient, store_conn: str) -> None:
    for path in ("/status", "/"):
        response = client.get(path)
        assert response.status_code == 401
        assert response.json() == {"detail": "Not authenticated"}


@pytest.mark.parametrize(("value", "expected"), [("true", 200), ("TRUE", 200), ("1", 200), ("false", 401), ("", 401), ("no", 401)])
def test_public_opt_out(client: TestClient, plugin: ModuleType, store_conn: str, monkeypatch: pytest.MonkeyPatch, value: str, expected: int) -> None:
    monkeypatch.setenv(plugin.PUBLIC_ENV, value)
    assert client.get("/status").status_code == expected
    assert client.get("/").status_code == expected


def test_authenticated_user_gets_the_document(
    client: TestClient, plugin: ModuleType, kit, store_conn: str, routing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Landed from a scripted journal (tests/status_support.py); the key the real hook gives an
    emulator journal is checked in tests/integration/status/test_status_sources.py."""
    from include.triggerflow.stages.land import BatchRef, land_batch
    from include.triggerflow.status import build_status, status_settings_from_connection

    journal_connection(monkeypatch, page_limit=2)
    source = JournalPages(3, page_limit=2)
    landed = land_batch(kit.engine, source, BatchRef("trigger_emails", "manual__1"))
    as_user(plugin)

    response = client.get("/status")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert list(doc) == FIELDS
    expected = build_status(
        kit.engine, routing, source_key=source.source_key, consumer="triggerflow-reg",
        settings=status_settings_from_connection({"page_limit": 2}),
    )
    volatile = {"last-alive-ms-ago", "last-flush-ms-ago", "last-data-ms-ago", "generated-at"}

    def stable(d: dict) -> dict:
        return {k: stable(v) if isinstance(v, dict) else v for k, v in d.items() if k not in volatile}

    assert stable(doc) == stable(expected)
    assert doc["consumer"] == "triggerflow-reg"
    assert doc["source"] == source.source_key
    assert doc["stats"]["trigger-received"] == 3 and doc["stats"]["bytes-read"] == landed.bytes_read
    assert doc["settings"]["flush-pointer-msg-count"] == 2
    assert 0 <= doc["http-request"]["last-alive-ms-ago"] < 60_000
    # query parameters choose another source the store has read, or the consumer shown
    fill_store(kit.engine, "journal:/other")
    other = client.get("/status", params={"source": "journal:/other", "consumer": "customer_dev"}).json()
    assert (other["source"], other["consumer"], other["stats"]["trigger-received"]) == ("journal:/other", "customer_dev", 0)
    # and no other: a 404 that does not echo the key
    unknown = client.get("/status", params={"source": "journal:/nowhere<x>"})
    assert unknown.status_code == 404
    assert unknown.json() == {"status": 404, "error": "unknown source: not a source this store has read"}
    page = client.get("/", params={"source": "journal:/nowhere<x>"})
    assert page.status_code == 404 and "nowhere" not in page.text


def test_real_airflow_tokens_in_process(client: TestClient, store_conn: str, airflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow's own get_user on real JWTs from the SimpleAuthManager (no server process)."""
    from airflow.api_fastapi import app as airflow_app
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_hex(32))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(airflow_db / "unit-passwords.json"))
    previous = airflow_app._AuthManagerState.instance
    airflow_app._AuthManagerState.instance = None
    try:
        manager = airflow_app.create_auth_manager()
        manager.init()
        token = manager.generate_jwt(SimpleAuthManagerUser(username="monitor", role="viewer"))

        assert client.get("/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/status", headers={"Authorization": f"Bearer {token[:-4]}AAAA"}).status_code == 403
        assert client.get("/status", headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
        client.cookies.set("_token", token)  # what the UI's iframe sends
        assert client.get("/").status_code == 200
    finally:
        airflow_app._AuthManagerState.instance = previous


def test_token_cannot_be_checked_outside_the_api_server(client: TestClient, store_conn: str) -> None:
    from airflow.api_fastapi import app as airflow_app

    if airflow_app._AuthManagerState.instance is not None:
        pytest.skip("an auth manager is initialised in this process")
    response = client.get("/status", headers={"Authorization": "Bearer abc"})
    assert response.status_code == 503
    assert response.json() == {"detail": "Airflow's auth manager is not initialised in this process"}


# -- errors ------------------------------------------------------------------------------------------
def test_missing_store_connection_is_503(client: TestClient, plugin: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_TRIGGERS_DB", raising=False)
    as_user(plugin)
    response = client.get("/status")
    assert response.status_code == 503
    assert response.json() == {
        "status": 503,
        "error": "Airflow connection 'triggers_db' is not defined: it names the triggerflow store (see README, Connections)",
    }
    page = client.get("/")
    assert page.status_code == 503 and "text/html" in page.headers["content-type"]
    assert "Airflow connection &#x27;triggers_db&#x27; is not defined" in page.text


def test_store_without_tables_is_503(client: TestClient, plugin: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_DB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "empty.db")}))
    as_user(plugin)
    response = client.get("/status")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error.startswith(f"the triggerflow store at sqlite:///{tmp_path / 'empty.db'} cannot be read: no such table: tf_")
    assert error.endswith("(if its tables are missing: python -m include.triggerflow.cli init-db, or run the DAG once)")


def test_bad_store_connection_is_503(client: TestClient, plugin: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_DB", json.dumps({"conn_type": "mysql", "host": "db"}))
    as_user(plugin)
    response = client.get("/status")
    assert response.status_code == 503
    assert response.json()["error"].startswith("triggers_db: unsupported conn_type 'mysql'")


def test_unreachable_postgres_is_503_quickly(client: TestClient, plugin: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_TRIGGERS_DB",
        json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": port, "login": "u", "password": "secret-pw", "schema": "tf"}),
    )
    as_user(plugin)
    response = client.get("/status")
    assert response.status_code == 503
    error = response.json()["error"]
    # what keeps it quick: the plugin connects with connect_timeout=PG_CONNECT_TIMEOUT_S (5 s)
    assert plugin.PG_CONNECT_TIMEOUT_S == 5
    assert error.startswith(f"the triggerflow store at postgresql+psycopg2://u:***@127.0.0.1:{port}/tf?connect_timeout=5 cannot be read:")
    assert "secret-pw" not in response.text


def test_unexpected_errors_are_503_without_a_traceback(
    client: TestClient, plugin: ModuleType, store_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import include.triggerflow.status.document as status_module  # the collector calls it from there

    def broken(*args, **kwargs):
        raise ValueError("boom\nsecond line")

    monkeypatch.setattr(status_module, "build_status", broken)
    as_user(plugin)
    response = client.get("/status")
    assert response.status_code == 503
    assert response.json() == {"status": 503, "error": "status unavailable: ValueError: boom"}
    assert "Traceback" not in response.text and "Traceback" not in client.get("/").text


def test_a_broken_routing_file_is_reported_not_fatal(
    client: TestClient, plugin: ModuleType, store_conn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "routing.yaml"
    broken.write_text("version: 1\ntriggers: []\n")
    monkeypatch.setenv("TRIGGERFLOW_ROUTING_FILE", str(broken))
    as_user(plugin)
    response = client.get("/status")
    assert response.status_code == 200
    assert response.json()["routing"] == {
        "triggers": {},
        "error": f"{broken}: 'triggers' is empty: configure at least one trigger",
    }


# -- the page ----------------------------------------------------------------------------------------
def test_page_shows_indicators_and_a_chart(client: TestClient, plugin: ModuleType, store_conn: str, store_engine) -> None:
    fill_store(store_engine)
    as_user(plugin)

    page = client.get("/")

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<svg" in html and 'id="messages-per-hour"' in html
    assert len(re.findall(r"<rect class=\"bar\"", html)) == 1  # one hour with messages
    assert re.search(r"<title>\d{4}-\d\d-\d\dT\d\d:00:00Z: 9 messages</title>", html)
    for name in plugin.WATCHED:
        assert f'id="{name}"' in html
    assert "<th>stats.bytes-read</th><td>2,048</td>" in html
    assert "<th>pointer.current-offsets</th><td>0:pos-9</td>" in html
    assert "<th>http-request.pipeline-host</th><td>http://127.0.0.1:8765</td>" in html
    assert 'href="status"' in html


def test_page_escapes_what_it_shows(client: TestClient, plugin: ModuleType, store_conn: str, store_engine) -> None:
    fill_store(store_engine, "<script>alert(1)</script>")  # a source key is text from a connection
    as_user(plugin)
    page = client.get("/", params={"source": "<script>alert(1)</script>"})
    assert page.status_code == 200
    assert "<script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_render_page_chart_scale(plugin: ModuleType) -> None:
    start = datetime(2026, 3, 1, 11, tzinfo=UTC)
    hours = [{"hour": (start + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%SZ"), "messages": 0} for i in range(120)]
    hours[5]["messages"], hours[100]["messages"] = 1500, 750
    page = plugin.render_page({"stats": {"current-messages": 3}, "messages-per-hour": hours, "routing": {"triggers": {"*": "cus:pipeline.js"}}})
    heights = [float(h) for h in re.findall(r'<rect class="bar"[^>]* height="([\d.]+)"', page)]
    assert len(heights) == 2 and heights[0] == pytest.approx(2 * heights[1], rel=0.01)
    assert ">1,500</text>" in page  # the peak labels the y axis
    assert page.count('class="day"') == 5  # five midnights in 120 hours from 11:00
    assert 'class="card alert" id="current-messages"' in page and 'class="card ok" id="trigger-failures"' in page
    assert "<th>triggers: *</th><td>cus:pipeline.js</td>" in page
    assert "2,250 in all" in page


def test_render_page_shows_warnings_first_and_escaped(plugin: ModuleType) -> None:
    document = {
        "stats": {"current-messages": 0, "lines-dropped": 4},
        "warnings": [{"code": "keep-alives-only", "detail": "the last 40 reads received only keep-alives <b>"}],
    }
    page = plugin.render_page(document)
    assert '<li class="warning" data-code="keep-alives-only"><b>keep-alives-only</b>: the last 40 reads' in page
    assert "keep-alives &lt;b&gt;" in page
    assert page.index('id="warnings"') < page.index('class="cards"')
    assert "<th>stats.lines-dropped</th><td>4</td>" in page
    assert 'id="warnings"' not in plugin.render_page({"stats": {}, "warnings": []})


# -- public mode, cache, guard ----------------------------------------------------------------------
SECRET_SOURCE = "journal:/events/organizations/ORG-SECRET-1/integrations/INT-SECRET-2/REG-SECRET-3"
SECRET_ERROR = "IMS refused client-id CLIENT-SECRET-4 at https://ims.internal.example/token"
#: what the public document may hold, and nothing more (counters and ages)
PUBLIC_SHAPE = {
    "generated-at": None,
    "http-request": ["last-alive-ms-ago", "last-failed-cnx-ms-ago", "last-data-ms-ago", "empty-reads"],
    "pointer": ["last-flush-ms-ago", "processed-since-last-flush"],
    "stats": None,
    "messages-per-hour": None,
    "warnings": None,
}
PRIVATE_TEXTS = ("ORG-SECRET-1", "INT-SECRET-2", "REG-SECRET-3", "CLIENT-SECRET-4", "ims.internal", "127.0.0.1", "pos-9",
                 "cart_abandonment", "flush-pointer", "routing", "consumer")


def fill_with_secrets(engine) -> None:
    """A source whose key, host and last error carry ids that must not leak, with 3 events
    summarised as the stages leave them."""
    from include.triggerflow.stats import refresh_batch_stats
    from include.triggerflow.store.schema import batch, event

    fill_store(engine, SECRET_SOURCE)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            source_health.update().where(source_health.c.source == SECRET_SOURCE).values(last_error=SECRET_ERROR, last_failed_at=now)
        )
        conn.execute(insert(batch).values(batch_id="b1", dag_id="d", run_id="r", source=SECRET_SOURCE, state="landed", pulled=3, created_at=now))
        for i in range(3):
            conn.execute(insert(event).values(batch_id="b1", source=SECRET_SOURCE, src_partition=0, src_position=f"p{i}",
                                              payload="{}", received_at=now, status="landed"))
    refresh_batch_stats(engine, "b1")


def counted_statements() -> AbstractContextManager[list[str]]:
    """Every SQL statement any engine runs meanwhile."""
    return captured_sql()


def test_public_document_is_minimal_and_ignores_query_parameters(
    client: TestClient, plugin: ModuleType, store_conn: str, store_engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_store(store_engine, "journal:/other-source")
    fill_with_secrets(store_engine)  # the most recently active source: the one shown
    monkeypatch.setenv(plugin.PUBLIC_ENV, "true")

    response = client.get("/status")

    assert response.status_code == 200, response.text
    doc = response.json()
    assert list(doc) == list(PUBLIC_SHAPE)
    for key, fields in PUBLIC_SHAPE.items():
        if fields is not None:
            assert list(doc[key]) == fields, key
    assert doc["stats"]["trigger-received"] == 3 and doc["stats"]["current-messages"] == 3
    assert doc["stats"]["bytes-read"] == 2048 and doc["http-request"]["last-failed-cnx-ms-ago"] is not None
    assert [text for text in PRIVATE_TEXTS if text in response.text] == []
    assert response.headers["cache-control"] == f"max-age={int(plugin.CACHE_TTL_S)}"
    # parameters change nothing: not the source, not the consumer
    for params in ({"source": "journal:/other-source"}, {"source": "anything"}, {"consumer": "ORG-SECRET-1"}):
        assert client.get("/status", params=params).json() == doc
    page = client.get("/", params={"source": "journal:/other-source"})
    assert page.status_code == 200 and 'id="current-messages"' in page.text
    assert [text for text in PRIVATE_TEXTS if text in page.text and text not in ("routing", "consumer")] == []
    assert 'href="status"' in page.text  # the JSON link carries no parameters


def test_public_errors_are_generic_and_logged(
    client: TestClient, plugin: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(plugin.PUBLIC_ENV, "true")
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_DB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "empty.db")}))
    with caplog.at_level(logging.WARNING):
        response = client.get("/status")
    assert response.status_code == 503
    assert response.json() == {"status": 503, "error": "status unavailable"}
    assert "no such table" in caplog.text  # the reason is in the API server's log
    page = client.get("/")
    assert page.status_code == 503 and "status unavailable" in page.text and "empty.db" not in page.text
    # an authenticated user keeps the reason
    monkeypatch.delenv(plugin.PUBLIC_ENV)
    plugin.reset()
    as_user(plugin)
    assert "no such table" in client.get("/status").json()["error"]


@pytest.mark.parametrize("public", [True, False])
def test_repeated_requests_within_the_ttl_run_no_store_query(
    client: TestClient, plugin: ModuleType, store_conn: str, store_engine, monkeypatch: pytest.MonkeyPatch, public: bool
) -> None:
    """A burst of polls costs one store read per TTL (counted at the driver); after the TTL the
    next request reads again. The reads never touch the event, ledger or decision tables."""
    from include.triggerflow.store.guarded import TTLCache

    fill_with_secrets(store_engine)
    clock = [1000.0]
    monkeypatch.setattr(plugin, "_cache", TTLCache(60.0, clock=lambda: clock[0], cache_errors=(plugin.StatusUnavailable,)))
    if public:
        monkeypatch.setenv(plugin.PUBLIC_ENV, "true")
    else:
        as_user(plugin)

    with counted_statements() as first:
        doc = client.get("/status").json()
    assert doc["stats"]["trigger-received"] == 3
    assert first, "the first request must read the store"
    touched = [s for s in first if re.search(r"\b(tf_event|tf_send|tf_decision|tf_quarantine|tf_batch)\b", s.lower())]
    assert touched == []
    with counted_statements() as repeated:
        for _ in range(20):
            assert client.get("/status").json() == doc
        if not public:  # another consumer name is the same cached document, renamed
            assert client.get("/status", params={"consumer": "c2"}).json()["consumer"] == "c2"
    assert repeated == []
    clock[0] += 61  # past the TTL
    with counted_statements() as later:
        assert client.get("/status").status_code == 200
    assert len(later) == len(first)


def test_a_busy_store_gate_answers_503_with_retry_after(
    client: TestClient, plugin: ModuleType, store_conn: str, store_engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every slot of the plugin's store guard held (as by slow store calls): the request waits at
    most the guard's slot wait in the event loop, then gets 503 + Retry-After; public callers a
    generic text."""
    from contextlib import ExitStack

    fill_with_secrets(store_engine)
    guard = plugin.store_guard()
    as_user(plugin)
    with ExitStack() as held:
        for _ in range(guard.settings.max_concurrent):
            held.enter_context(guard.gate.slot())
        busy = client.get("/status")
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == str(guard.settings.retry_after_s)
        assert busy.json() == {"status": 503, "error": "the store is busy: try again shortly"}
        monkeypatch.setenv(plugin.PUBLIC_ENV, "true")
        assert client.get("/status").json() == {"status": 503, "error": "status unavailable"}
    assert client.get("/status").status_code == 200  # slots free again


def test_public_document_keeps_only_counters_and_ages(plugin: ModuleType) -> None:
    full = {
        "consumer": "c", "source": "s", "generated-at": "t",
        "http-request": {"last-alive-ms-ago": 1, "last-failed-cnx-ms-ago": 2, "pipeline-host": "h", "last-error": "e",
                         "last-data-ms-ago": 3, "empty-reads": 4},
        "pointer": {"current-offsets": "0:1", "last-flush-ms-ago": 5, "processed-since-last-flush": 6},
        "routing": {"triggers": {"x": "y"}}, "stats": {"trigger-received": 7}, "settings": {"a": 1},
        "messages-per-hour": [{"hour": "h", "messages": 8}], "warnings": [{"code": "keep-alives-only", "detail": "d"}],
    }
    assert plugin.public_document(full) == {
        "generated-at": "t",
        "http-request": {"last-alive-ms-ago": 1, "last-failed-cnx-ms-ago": 2, "last-data-ms-ago": 3, "empty-reads": 4},
        "pointer": {"last-flush-ms-ago": 5, "processed-since-last-flush": 6},
        "stats": {"trigger-received": 7},
        "messages-per-hour": [{"hour": "h", "messages": 8}],
        "warnings": [{"code": "keep-alives-only"}],
    }
