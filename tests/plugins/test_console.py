"""Tests for the Triggers console in plugins/pipelined_status.py (include/triggerflow/console):
the runs, run ledger, quarantine, search and alerts views and the reprocess action, with FastAPI's
TestClient against a real store (SQLite, or PostgreSQL with TRIGGERFLOW_TEST_PG_URL) filled through
the real reconcile stage and direct inserts. The reprocess action talks to a real local HTTP server
standing in for Airflow's REST API (tests/e2e's browser test drives the real API server)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import insert, update

from include.triggerflow.store.schema import alert, batch, event, quarantine, run_summary, send, suppression
from tests.fixtures import SEND_PROFILES, StoreKit, queue_emails
from tests.plugins.conftest import load_plugin
from tests.plugins.html_tree import all_by_class, by_id, cell, inputs, parse, text
from tests.plugins.html_tree import rows as table_rows

with warnings.catch_warnings():  # starlette's note about httpx, raised by this import only
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

SESSION = "session-token-of-the-operator"
ORIGIN = "http://testserver"
HOSTILE = "<script>alert('x')</script>\"quoted\" & \u2028line-separated"
CONSOLE_ROUTES = ("/runs", "/run?batch_id=b1", "/quarantine", "/search?q=C1", "/alerts")


@pytest.fixture(scope="module")
def plugin() -> ModuleType:
    return load_plugin("pipelined_status")


class FakeUser:
    """Airflow's user after the dependency override (the token checks are Airflow's own, tested
    in test_pipelined_status.py and on a real server)."""

    def get_id(self) -> str:
        return "operator-1"

    def get_name(self) -> str:
        return "operator"


@pytest.fixture
def client(plugin: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.delenv(plugin.PUBLIC_ENV, raising=False)
    plugin.reset()
    with TestClient(plugin.app) as test_client:
        yield test_client
    plugin.app.dependency_overrides.clear()
    plugin.reset()


@pytest.fixture
def operator(client: TestClient, plugin: ModuleType) -> TestClient:
    """The client as an authenticated operator holding the UI's session cookie."""
    plugin.app.dependency_overrides[plugin.require_operator] = lambda: FakeUser()
    plugin.app.dependency_overrides[plugin.require_user] = lambda: FakeUser()  # the status page "/"
    client.cookies.set("_token", SESSION)
    return client


@pytest.fixture
def store_conn(store_url: str, store_engine, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_DB", json.dumps({"conn_type": "sqlite", "extra": {"sqlalchemy_url": store_url}}))
    return store_url


def doc(response: Any) -> Any:
    assert "text/html" in response.headers["content-type"]
    return parse(response.text)


def span(page: Any, element_id: str) -> str:
    return text(by_id(page, element_id))


def hrefs(element: Any, name: str) -> list[str]:
    return [a.get("href") for a in all_by_class(element, name, "a")]


def expected_csrf(session: str = SESSION, user: str = "operator-1") -> str:
    return hmac.new(session.encode(), b"triggerflow-console-reprocess-v1|" + user.encode(), hashlib.sha256).hexdigest()


# -- the store a run leaves ------------------------------------------------------------------------
def fill(kit: StoreKit, routing: Any) -> dict[str, Any]:
    """Batch b1 reconciled by the real stage (three customers, three pending emails), then: one
    sent with a 250, one refused with a hostile 550 reply, one still pending; two quarantined
    events with hostile reasons and payload; a report; batch b2 (no report) after it."""
    from include.triggerflow.stages.report import report_batch

    rows = queue_emails(kit, routing, batch_id="b1")
    now = datetime.now(UTC)
    with kit.engine.begin() as conn:
        conn.execute(update(send).where(send.c.send_id == rows[0]["send_id"]).values(
            state="sent", smtp_code=250, smtp_reply="250 2.0.0 Ok: queued as ABC", sent_at=now, subject=HOSTILE))
        conn.execute(update(send).where(send.c.send_id == rows[1]["send_id"]).values(
            state="failed", smtp_code=550, smtp_reply="550 5.1.1 " + HOSTILE))
    quarantined = []
    for payload in ("{" + HOSTILE + "x" * 500, '{"not": "an envelope"}'):
        event_id = kit.add_event("b1", payload, status="quarantined")
        reasons = json.dumps([{"expectation": "expect_column_values_to_not_be_null", "column": "trigger_id", "value": HOSTILE}])
        with kit.engine.begin() as conn:
            conn.execute(insert(quarantine).values(event_id=event_id, batch_id="b1", reasons=reasons, quarantined_at=now))
        quarantined.append(event_id)
    with kit.engine.begin() as conn:
        conn.execute(update(event).where(event.c.batch_id == "b1").values(received_at=now))
    report_batch(kit.engine, "b1", dag_id="trigger_emails", run_id="run-b1")
    kit.add_batch("b2")
    return {"sends": rows, "quarantined": quarantined, "now": now}


# -- routes and authentication --------------------------------------------------------------------
def test_console_routes_are_declared(plugin: ModuleType) -> None:
    paths = {(route.path, tuple(sorted(route.methods))) for route in plugin.console_app.build().routes}
    for path in ("/runs", "/run", "/quarantine", "/search", "/alerts"):
        assert (path, ("GET",)) in paths
    assert ("/reprocess", ("POST",)) in paths


@pytest.mark.parametrize("public", ["", "true"])
def test_console_needs_an_authenticated_user_even_in_public_mode(
    client: TestClient, plugin: ModuleType, store_conn: str, monkeypatch: pytest.MonkeyPatch, public: str
) -> None:
    monkeypatch.setenv(plugin.PUBLIC_ENV, public)
    for path in CONSOLE_ROUTES:
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.json() == {"detail": "Not authenticated"}
    assert client.post("/reprocess", data={"since": "x"}, headers={"Origin": ORIGIN}).status_code == 401


def test_every_console_page_has_the_nav_bar(operator: TestClient, store_conn: str, kit: StoreKit, routing: Any) -> None:
    fill(kit, routing)
    for path in (*CONSOLE_ROUTES, "/"):
        response = operator.get(path)
        assert response.status_code == 200, (path, response.text[:500])
        page = doc(response)
        links = {a.get("id"): a.get("href") for a in by_id(page, "nav").iter("a")}
        assert links == {"nav-status": "./", "nav-runs": "runs", "nav-quarantine": "quarantine", "nav-search": "search", "nav-alerts": "alerts"}


# -- runs ------------------------------------------------------------------------------------------
def test_runs_view_matches_the_store(operator: TestClient, store_conn: str, kit: StoreKit, routing: Any) -> None:
    from include.triggerflow.alerts.detectors import RunOutcome, record_outcome

    fill(kit, routing)
    [summary] = kit.rows(run_summary)
    [b1_batch] = kit.rows(batch, batch.c.batch_id == "b1")
    record_outcome(kit.engine, b1_batch["dag_id"], "run-b1", RunOutcome.SUCCEEDED)
    page = doc(operator.get("/runs"))
    rows = table_rows(page, "runs")
    assert [r.get("data-batch-id") for r in rows] == ["b2", "b1"]  # newest first
    b2, b1 = rows
    for name in ("pulled", "valid", "quarantined", "sent", "suppressed", "failed", "pending"):
        assert cell(b1, name) == str(summary[name]), name
    assert (summary["sent"], summary["failed"], summary["pending"], summary["quarantined"]) == (1, 1, 1, 2)
    assert cell(b1, "run-id") == "run-b1"
    assert (cell(b1, "state"), cell(b2, "state")) == ("succeeded", "in progress")  # outcome; landed, no outcome
    assert cell(b1, "balanced") == ("yes" if summary["balanced"] else "no")
    latency = json.loads(summary["counts"])["latency_s"]["p95"]
    assert cell(b1, "latency-p95") == ("—" if latency is None else f"{latency:.1f}")
    assert cell(b2, "balanced") == "not reported" and cell(b2, "latency-p95") == "—" and cell(b2, "sent") == ""
    assert hrefs(b1, "ledger-link") == ["run?batch_id=b1"]
    assert hrefs(b1, "quarantine-link") == ["quarantine?batch_id=b1"]
    assert len(table_rows(doc(operator.get("/runs", params={"limit": 1})), "runs")) == 1


# -- one run's ledger ------------------------------------------------------------------------------
def test_run_ledger_matches_the_store_and_escapes_replies(operator: TestClient, store_conn: str, kit: StoreKit, routing: Any) -> None:
    filled = fill(kit, routing)
    response = operator.get("/run", params={"batch_id": "b1"})
    assert response.status_code == 200
    assert "<script>" not in response.text and "&lt;script&gt;" in response.text
    page = doc(response)
    assert span(page, "ledger-count") == str(kit.count(send, send.c.batch_id == "b1")) == "3"
    rows = {int(r.get("data-send-id")): r for r in table_rows(page, "ledger")}
    stored = {r["send_id"]: r for r in kit.rows(send, send.c.batch_id == "b1")}
    assert set(rows) == set(stored) == {r["send_id"] for r in filled["sends"]}
    for send_id, row in rows.items():
        s = stored[send_id]
        assert cell(row, "recipient") == s["recipient"]
        assert cell(row, "state") == s["state"]
        assert cell(row, "smtp-code") == ("" if s["smtp_code"] is None else str(s["smtp_code"]))
        assert cell(row, "smtp-reply") == (s["smtp_reply"] or "")
        assert cell(row, "subject") == (s["subject"] or "")
        assert cell(row, "route") == s["route"]
    assert {cell(r, "recipient") for r in rows.values()} == {p["email"] for p in SEND_PROFILES}


def test_run_ledger_pages(operator: TestClient, plugin: ModuleType, store_conn: str, kit: StoreKit, routing: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from include.triggerflow.console import queries

    fill(kit, routing)
    monkeypatch.setattr(queries, "PAGE_ROWS", 2)
    first = doc(operator.get("/run", params={"batch_id": "b1"}))
    assert span(first, "ledger-count") == "3"
    assert len(table_rows(first, "ledger")) == 2
    next_href = by_id(first, "next-page").get("href")
    assert next_href == "run?batch_id=b1&offset=2"
    second = doc(operator.get("/" + next_href))
    assert len(table_rows(second, "ledger")) == 1 and by_id(second, "next-page") is None
    ids = [r.get("data-send-id") for r in table_rows(first, "ledger") + table_rows(second, "ledger")]
    assert sorted(ids, key=int) == ids and len(set(ids)) == 3


def test_unknown_batch_is_a_404_page(operator: TestClient, store_conn: str) -> None:
    for path in ("/run", "/quarantine"):
        response = operator.get(path, params={"batch_id": "<b>nope</b>"})
        assert response.status_code == 404 and "text/html" in response.headers["content-type"]
        assert "<b>nope" not in response.text and "&lt;b&gt;nope&lt;/b&gt;" in response.text


# -- quarantine ------------------------------------------------------------------------------------
def test_quarantine_of_a_run(operator: TestClient, store_conn: str, kit: StoreKit, routing: Any) -> None:
    filled = fill(kit, routing)
    response = operator.get("/quarantine", params={"batch_id": "b1"})
    assert response.status_code == 200
    assert "<script>" not in response.text
    page = doc(response)
    assert span(page, "quarantine-count") == "2"
    rows = {int(r.get("data-event-id")): r for r in table_rows(page, "quarantine")}
    assert set(rows) == set(filled["quarantined"])
    long_one = rows[filled["quarantined"][0]]
    payload = cell(long_one, "payload")
    assert payload == ("{" + HOSTILE + "x" * 500)[:300] + "…"  # truncated, shown as text
    assert "\u2028" in payload  # kept as a character, inside an escaped text node
    assert cell(long_one, "reasons") == f"expect_column_values_to_not_be_null(trigger_id): {HOSTILE}"
    assert cell(long_one, "received-at") == filled["now"].strftime("%Y-%m-%d %H:%M:%S")
    form = by_id(page, "reprocess")
    assert (form.get("method"), form.get("action")) == ("post", "reprocess")
    fields = inputs(form)
    assert fields["what"] == "quarantined" and fields["csrf_token"] == expected_csrf()
    since, until = datetime.fromisoformat(fields["since"]), datetime.fromisoformat(fields["until"])
    assert since <= filled["now"] < until  # the range covers the run's events
    assert until - since < timedelta(seconds=1)
    assert by_id(form, "reprocess-button") is not None


def test_quarantine_of_a_time_range(operator: TestClient, store_conn: str, kit: StoreKit, routing: Any) -> None:
    filled = fill(kit, routing)
    now = filled["now"]
    around = {"since": (now - timedelta(minutes=5)).isoformat(), "until": (now + timedelta(minutes=5)).isoformat()}
    page = doc(operator.get("/quarantine", params=around))
    assert span(page, "quarantine-count") == "2"
    assert {int(r.get("data-event-id")) for r in table_rows(page, "quarantine")} == set(filled["quarantined"])
    fields = inputs(by_id(page, "reprocess"))
    assert datetime.fromisoformat(fields["since"]) == now - timedelta(minutes=5)
    before = {"since": (now - timedelta(hours=2)).isoformat(), "until": (now - timedelta(hours=1)).isoformat()}
    assert span(doc(operator.get("/quarantine", params=before)), "quarantine-count") == "0"
    # the default range (nav link): the last day
    assert span(doc(operator.get("/quarantine")), "quarantine-count") == "2"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "yesterday", "until": "2026-03-01T00:00:00Z"}, "since is not an ISO 8601 time"),
        ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "since must be before until"),
        ({"since": "2026-03-01T00:00:00Z", "until": "2026-03-20T00:00:00Z"}, "the range is longer than 7 days"),
        ({"since": "2026-03-01T00:00:00Z"}, "until is required"),
    ],
)
def test_quarantine_range_is_checked(operator: TestClient, store_conn: str, params: dict[str, str], message: str) -> None:
    response = operator.get("/quarantine", params=params)
    assert response.status_code == 400
    assert message in span(doc(response), "error")


# -- search ----------------------------------------------------------------------------------------
def test_search_by_customer_id_and_by_address(operator: TestClient, store_conn: str, kit: StoreKit, routing: Any) -> None:
    from include.triggerflow.store.schema import decision

    fill(kit, routing)
    with kit.engine.begin() as conn:
        conn.execute(insert(suppression).values(address="grace@example.com", source="hard-bounce", reason=HOSTILE, created_at=datetime.now(UTC)))
    stored = kit.rows(decision, decision.c.profile_id == "C2")
    assert stored
    for q in ("C2", "SHOP-2", "grace@example.com", "Grace@Example.com"):  # SHOP-2: the id the trigger carried
        response = operator.get("/search", params={"q": q})
        assert response.status_code == 200 and "<script>" not in response.text
        page = doc(response)
        assert span(page, "decision-count") == str(len(stored)), q
        [row] = table_rows(page, "decisions")
        assert (cell(row, "decision"), cell(row, "route"), cell(row, "batch")) == (stored[0]["decision"], stored[0]["route"], "b1")
        assert cell(row, "trigger-id") == stored[0]["trigger_id"]
        [sent] = table_rows(page, "sends")
        assert (cell(sent, "recipient"), cell(sent, "state"), cell(sent, "smtp-code")) == ("grace@example.com", "failed", "550")
        assert cell(sent, "smtp-reply") == "550 5.1.1 " + HOSTILE
        assert cell(table_rows(page, "suppressions")[0], "source") == "hard-bounce"
    nobody = doc(operator.get("/search", params={"q": "nobody@example.com"}))
    assert span(nobody, "decision-count") == "0" and by_id(nobody, "no-profile") is not None


def test_search_uses_indexes_only(operator: TestClient, store_conn: str, kit: StoreKit, routing: Any) -> None:
    """The look-ups a search makes reach tf_decision, tf_send and profiles through their indexes
    (checked with SQLite's query plan: no full scan of those tables)."""
    from sqlalchemy import event as sa_event

    from include.triggerflow.console import queries

    if kit.engine.dialect.name != "sqlite":
        pytest.skip("query plans read from SQLite")
    fill(kit, routing)
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        statements.append((statement, parameters))

    sa_event.listen(kit.engine, "before_cursor_execute", record)
    try:
        with kit.engine.connect() as conn:
            queries.search(conn, "grace@example.com")
            queries.search(conn, "SHOP-2")  # customer id, shopper id, ECID, declared id: one index each
    finally:
        sa_event.remove(kit.engine, "before_cursor_execute", record)
    assert len(statements) >= 4
    with kit.engine.connect() as conn:
        for statement, params in statements:
            plan = " | ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params))
            for table in ("tf_decision", "tf_send", "profiles"):
                assert not re.search(rf"\bSCAN {table}\b(?! USING)", plan), plan


# -- alerts ----------------------------------------------------------------------------------------
def test_alerts_view_and_the_status_page_count(operator: TestClient, store_conn: str, kit: StoreKit, routing: Any) -> None:
    fill(kit, routing)
    now = datetime.now(UTC)
    with kit.engine.begin() as conn:
        for minutes, kind, resolved in ((3, "failed-runs", None), (2, "source-stalled", None), (9, "sla-breach", now)):
            conn.execute(insert(alert).values(
                kind=kind, subject=HOSTILE if kind == "failed-runs" else "journal:x", detail=f"{kind} detail {HOSTILE}",
                value=3.0, threshold_s=2.0, notified="ops@example.com", fired_at=now - timedelta(minutes=minutes), resolved_at=resolved,
            ))
    response = operator.get("/alerts")
    assert "<script>" not in response.text
    page = doc(response)
    assert span(page, "alert-count") == "2"
    active = table_rows(page, "alerts")
    assert [cell(r, "kind") for r in active] == ["source-stalled", "failed-runs"]  # newest first
    assert cell(active[1], "subject") == HOSTILE and cell(active[1], "value") == "3"
    assert cell(active[1], "notified") == "ops@example.com"
    assert cell(active[1], "fired-at") == (now - timedelta(minutes=3)).strftime("%Y-%m-%d %H:%M:%S")
    assert [cell(r, "kind") for r in table_rows(page, "resolved-alerts")] == ["sla-breach"]
    status = operator.get("/")  # the status page (a store without a source: the document still renders)
    assert status.status_code == 200
    status_page = doc(status)
    assert span(status_page, "active-alert-count") == "2"
    assert by_id(status_page, "active-alerts").get("href") == "alerts"


# -- errors ----------------------------------------------------------------------------------------
def test_unreadable_store_is_the_503_error_page(operator: TestClient, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_DB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "empty.db")}))
    for path in CONSOLE_ROUTES:
        response = operator.get(path)
        assert response.status_code == 503, path
        assert "Traceback" not in response.text
        assert "cannot be read: no such table: " in span(doc(response), "error")


# -- reprocess -------------------------------------------------------------------------------------
class FakeAirflowApi:
    """A real HTTP server standing in for Airflow's REST API: records each request, answers
    ``status`` with ``body``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.body: dict[str, Any] = {"dag_run_id": "manual__2026-03-01T12:00:00+00:00", "state": "queued"}
        self.paused = True
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.requests.append({"path": self.path, "headers": dict(self.headers), "method": "GET"})
                payload = json.dumps({"dag_id": "trigger_reprocess", "is_paused": api.paused}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                api.requests.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(self.rfile.read(length))})
                payload = json.dumps(api.body).encode()
                self.send_response(api.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeAirflowApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api(plugin: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAirflowApi]:
    from include.triggerflow.console.reprocess import API_URL_ENV

    with FakeAirflowApi() as fake:
        monkeypatch.setenv(API_URL_ENV, fake.url)
        yield fake


def reprocess_form(operator: TestClient, batch_id: str = "b1") -> dict[str, str]:
    page = doc(operator.get("/quarantine", params={"batch_id": batch_id}))
    return inputs(by_id(page, "reprocess"))


def test_reprocess_starts_the_dag_as_the_calling_user(
    operator: TestClient, store_conn: str, kit: StoreKit, routing: Any, api: FakeAirflowApi
) -> None:
    fill(kit, routing)
    form = reprocess_form(operator)
    response = operator.post("/reprocess", data=form, headers={"Origin": ORIGIN})
    assert response.status_code == 200, response.text
    page = doc(response)
    assert span(page, "reprocess-run-id") == "manual__2026-03-01T12:00:00+00:00"
    assert by_id(page, "reprocess-run-link").get("href") == "/dags/trigger_reprocess/runs/manual__2026-03-01T12%3A00%3A00%2B00%3A00"
    [request, look_up] = api.requests
    assert request["path"] == "/api/v2/dags/trigger_reprocess/dagRuns"
    # then whether the DAG is paused, as the same user: the page says the run waits
    assert (look_up["path"], look_up["headers"]["Authorization"]) == ("/api/v2/dags/trigger_reprocess", f"Bearer {SESSION}")
    assert "waits queued until you unpause" in span(page, "reprocess-paused")
    assert request["headers"]["Authorization"] == f"Bearer {SESSION}"  # the cookie's token, as Bearer
    assert request["json"] == {"logical_date": None, "conf": {"since": form["since"], "until": form["until"], "what": "quarantined"}}
    # what trigger_reprocess does with that conf: finds b1 by its quarantined events
    from include.triggerflow.stages.reprocess import find_batches, time_range

    assert find_batches(kit.engine, *time_range(form["since"], form["until"]), "quarantined") == ["b1"]


def test_reprocess_forwards_a_bearer_token(operator: TestClient, store_conn: str, kit: StoreKit, routing: Any, api: FakeAirflowApi) -> None:
    fill(kit, routing)
    operator.cookies.clear()
    headers = {"Authorization": "Bearer monitoring-tool-token", "Origin": ORIGIN}
    page = doc(operator.get("/quarantine", params={"batch_id": "b1"}, headers=headers))
    form = inputs(by_id(page, "reprocess"))
    assert form["csrf_token"] == expected_csrf("monitoring-tool-token")
    api.paused = False
    response = operator.post("/reprocess", data=form, headers=headers)
    assert response.status_code == 200
    assert api.requests[0]["headers"]["Authorization"] == "Bearer monitoring-tool-token"
    assert by_id(doc(response), "reprocess-paused") is None


@pytest.mark.parametrize(
    ("change", "headers", "status", "message"),
    [
        ({"csrf_token": "0" * 64}, {"Origin": ORIGIN}, 403, "CSRF token does not match"),
        ({"csrf_token": ""}, {"Origin": ORIGIN}, 403, "CSRF token does not match"),
        ({}, {"Origin": "http://evil.example"}, 403, "sent from another site"),
        ({}, {"Origin": "null"}, 403, "no Origin or Referer"),
        ({}, {}, 403, "no Origin or Referer"),
        ({}, {"Referer": "http://evil.example/page"}, 403, "sent from another site"),
        ({"since": "not a time"}, {"Origin": ORIGIN}, 400, "since is not an ISO 8601 time"),
        ({"until": "2020-01-01T00:00:00Z"}, {"Origin": ORIGIN}, 400, "since must be before until"),
        ({"since": "2020-01-01T00:00:00Z"}, {"Origin": ORIGIN}, 400, "the range is longer than 7 days"),
        ({"what": "everything"}, {"Origin": ORIGIN}, 400, "what must be one of quarantined, unmatched, both"),
    ],
)
def test_reprocess_refusals_start_nothing(
    operator: TestClient, store_conn: str, kit: StoreKit, routing: Any, api: FakeAirflowApi,
    change: dict[str, str], headers: dict[str, str], status: int, message: str,
) -> None:
    fill(kit, routing)
    form = {**reprocess_form(operator), **change}
    response = operator.post("/reprocess", data=form, headers=headers)
    assert response.status_code == status
    assert message in span(doc(response), "reprocess-error")
    assert api.requests == []


def test_reprocess_refuses_a_large_body(operator: TestClient, store_conn: str, api: FakeAirflowApi) -> None:
    response = operator.post("/reprocess", content=b"since=" + b"x" * 100_000, headers={"Origin": ORIGIN, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413 and span(doc(response), "reprocess-error") == "the form is too large"
    assert api.requests == []


def test_reprocess_accepts_a_same_origin_referer(operator: TestClient, store_conn: str, kit: StoreKit, routing: Any, api: FakeAirflowApi) -> None:
    fill(kit, routing)
    response = operator.post("/reprocess", data=reprocess_form(operator), headers={"Referer": f"{ORIGIN}/pipelined/quarantine?batch_id=b1"})
    assert response.status_code == 200 and len(api.requests) == 2  # the run, then the paused look-up


def test_reprocess_csrf_token_is_bound_to_the_session(operator: TestClient, store_conn: str, kit: StoreKit, routing: Any, api: FakeAirflowApi) -> None:
    fill(kit, routing)
    form = reprocess_form(operator)
    operator.cookies.set("_token", "another-session")
    response = operator.post("/reprocess", data=form, headers={"Origin": ORIGIN})
    assert response.status_code == 403 and api.requests == []


def test_reprocess_shows_the_apis_refusal_escaped(operator: TestClient, store_conn: str, kit: StoreKit, routing: Any, api: FakeAirflowApi) -> None:
    fill(kit, routing)
    api.status, api.body = 403, {"detail": "<b>Forbidden</b> for this user"}
    response = operator.post("/reprocess", data=reprocess_form(operator), headers={"Origin": ORIGIN})
    assert response.status_code == 403
    assert "<b>Forbidden" not in response.text
    assert span(doc(response), "reprocess-error") == "Airflow's API answered 403: <b>Forbidden</b> for this user"
    assert len(api.requests) == 1


def test_reprocess_with_the_api_unreachable_is_a_502_page(
    operator: TestClient, store_conn: str, kit: StoreKit, routing: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from include.triggerflow.console.reprocess import API_URL_ENV

    fill(kit, routing)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(API_URL_ENV, f"http://127.0.0.1:{port}")
    response = operator.post("/reprocess", data=reprocess_form(operator), headers={"Origin": ORIGIN})
    assert response.status_code == 502
    assert "cannot be reached" in span(doc(response), "reprocess-error")


def test_api_base_is_the_listening_address_not_the_host_header(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.triggerflow.console.reprocess import API_URL_ENV, api_base

    monkeypatch.delenv(API_URL_ENV, raising=False)
    assert api_base({"server": ("127.0.0.1", 8080), "scheme": "http", "headers": [(b"host", b"evil.example")]}) == "http://127.0.0.1:8080"
    assert api_base({"server": ("0.0.0.0", 8443), "scheme": "https"}) == "https://127.0.0.1:8443"
    assert api_base({"server": ("::1", 8080), "scheme": "http"}) == "http://[::1]:8080"
    monkeypatch.setenv(API_URL_ENV, "https://airflow.example.com/base/")
    assert api_base({"server": ("127.0.0.1", 8080)}) == "https://airflow.example.com/base"


def test_form_links_carry_hostile_batch_ids_encoded(operator: TestClient, store_conn: str, kit: StoreKit) -> None:
    batch_id = "b&x=1\"><script>"
    kit.add_batch(batch_id)
    page_text = operator.get("/runs").text
    assert "<script>" not in page_text
    [row] = table_rows(doc(operator.get("/runs")), "runs")
    [ledger_href] = hrefs(row, "ledger-link")
    assert parse_qs(urlsplit(ledger_href).query) == {"batch_id": [batch_id]}
    assert operator.get("/" + ledger_href).status_code == 200


def test_search_explains_a_decision_the_store_left_without_detail(operator: TestClient, store_conn: str, kit: StoreKit) -> None:
    from include.triggerflow.pages import DECISION_NOTES
    from include.triggerflow.states import Decision
    from include.triggerflow.store.schema import decision

    kit.add_batch("b9")
    event_id = kit.add_event("b9", "{}")
    with kit.engine.begin() as conn:
        conn.execute(insert(decision).values(
            event_id=event_id, batch_id="b9", profile_id="C9", route="cart", decision=Decision.CAPPED, detail=None,
            decided_at=datetime.now(UTC),
        ))
    [row] = table_rows(doc(operator.get("/search", params={"q": "C9"})), "decisions")
    assert cell(row, "decision") == "capped"
    assert cell(row, "detail") == DECISION_NOTES[Decision.CAPPED] == "the customer reached the route's frequency cap"


def test_quarantine_pages(operator: TestClient, store_conn: str, kit: StoreKit, routing: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from include.triggerflow.console import queries

    filled = fill(kit, routing)
    monkeypatch.setattr(queries, "PAGE_ROWS", 1)
    first = doc(operator.get("/quarantine", params={"batch_id": "b1"}))
    assert span(first, "quarantine-count") == "2" and len(table_rows(first, "quarantine")) == 1
    next_href = by_id(first, "next-page").get("href")
    assert next_href == "quarantine?batch_id=b1&offset=1"
    second = doc(operator.get("/" + next_href))
    assert by_id(second, "next-page") is None and by_id(second, "prev-page").get("href") == "quarantine?batch_id=b1"
    shown = [int(r.get("data-event-id")) for page in (first, second) for r in table_rows(page, "quarantine")]
    assert shown == sorted(filled["quarantined"])
    # the form covers the whole run on every page
    assert inputs(by_id(first, "reprocess"))["since"] == inputs(by_id(second, "reprocess"))["since"]
