"""The public unsubscribe endpoint under abuse (issue 11), against the plugin's real FastAPI app
served by a real uvicorn server in this process (a thread), with AnyIO's default thread pool of 40
— the pool the Airflow API server shares between its UI, its REST API and every plugin — and the
real store (SQLite, or PostgreSQL with TRIGGERFLOW_TEST_PG_URL).

Before (main at b2214c0) -> after:

* 300 POSTs of one link: 300 tf_unsubscribe rows -> 1;
* the customer's profile row locked by another transaction while 40 POSTs are in flight: each POST
  waited for the lock (20 s and more) inside the shared pool, and a GET that needs no database
  waited behind them (18 s) -> every POST gets the generic 503 while the lock is still held, and
  the GET is served meanwhile; once the lock is released, a POST records the opt-out;
* malformed or forged tokens: each request read the connection (secrets backend) and derived the
  key -> no look-up at all for a malformed token, none beyond the cached one for a forged token,
  and no store statement for either;
* 503 pages named connections and configuration -> generic pages, the detail in the log.

The tests assert states and counts, never durations; a request that would hang (the "before"
behaviour) fails on its client timeout.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import OperationalError

from include.triggerflow.store.schema import profiles, unsubscribe
from include.triggerflow.unsubscribe import UnsubscribeLinks
from tests.plugins.conftest import add_profile, load_plugin, opted_out

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import uvicorn

SECRET = "abuse-test-secret-" + secrets.token_hex(16)
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
#: a client gives up after this: a request that waits on the store fails the test instead of hanging
CLIENT_TIMEOUT_S = 30
IN_FLIGHT = 40


@pytest.fixture(scope="module")
def plugin() -> ModuleType:
    return load_plugin("unsubscribe")


def api_server_app(plugin: ModuleType) -> Any:
    """A stand-in for the Airflow API server: the plugin app mounted at its prefix, as Airflow
    mounts ``fastapi_apps``, beside a synchronous endpoint that needs no database (like much of
    Airflow's own API, it runs in the shared thread pool)."""
    from fastapi import FastAPI

    parent = FastAPI()

    @parent.get("/api/ping")
    def ping() -> dict[str, str]:  # sync: served from the shared thread pool
        return {"pong": threading.current_thread().name}

    [mounted] = plugin.UnsubscribePlugin.fastapi_apps
    parent.mount(mounted["url_prefix"], mounted["app"])
    return parent


@pytest.fixture(scope="module")
def server(plugin: ModuleType) -> Iterator[str]:
    """The plugin's app on a real uvicorn server (HTTP/1.1 over a socket, default thread pool)."""
    from devstack.airflow_stack import free_port

    port = free_port()
    config = uvicorn.Config(api_server_app(plugin), host="127.0.0.1", port=port, lifespan="off", log_level="warning", access_log=False)
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, name="unsubscribe-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(30)


@pytest.fixture(autouse=True)
def fresh_caches(plugin: ModuleType) -> Iterator[None]:
    plugin.reset_caches()
    yield
    plugin.reset_caches()


@pytest.fixture
def links(server: str, monkeypatch: pytest.MonkeyPatch) -> UnsubscribeLinks:
    monkeypatch.setenv(
        "AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE", json.dumps({"conn_type": "generic", "host": server, "password": SECRET})
    )
    return UnsubscribeLinks(SECRET, server)


def unsubscribe_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(unsubscribe.c.unsubscribe_id)).all())


def assert_generic_503(response: requests.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:300])
    assert 'id="unavailable"' in response.text and "try again" in response.text
    assert response.headers["Retry-After"] in {"5", "60"}
    for leak in ("triggers_db", "triggerflow_unsubscribe", "onnection", "Error", "lock", "sqlite", "postgres", "Traceback", "timeout"):
        assert leak not in response.text, leak


class Counter:
    """Counts, in this process, connection look-ups (Airflow's Connection.get_connection_from_secrets,
    wrapped, still doing the real look-up) and SQL statements sent to any database (a SQLAlchemy
    event on every Engine)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow.models.connection import Connection

        self.lookups: list[str] = []
        self.statements: list[str] = []
        real = Connection.get_connection_from_secrets.__func__  # type: ignore[attr-defined]

        def counted(cls: Any, conn_id: str) -> Any:
            self.lookups.append(conn_id)
            return real(cls, conn_id)

        monkeypatch.setattr(Connection, "get_connection_from_secrets", classmethod(counted))

    def on_statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.statements.append(statement)

    @contextmanager
    def statements_watched(self) -> Iterator[None]:
        event.listen(Engine, "before_cursor_execute", self.on_statement)
        try:
            yield
        finally:
            event.remove(Engine, "before_cursor_execute", self.on_statement)


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    found = Counter(monkeypatch)
    with found.statements_watched():
        yield found


# -- idempotent ------------------------------------------------------------------------------------
def test_300_posts_of_one_link_leave_one_row(server: str, links: UnsubscribeLinks, store: Engine, counter: Counter) -> None:
    """Before: 300 rows (one per POST). After: one row per customer and link."""
    add_profile(store, "C1")
    url = links.url_for("C1", "cart_abandonment")

    def post(_: int) -> int:
        with requests.Session() as session:
            return session.post(url, data=ONE_CLICK, timeout=CLIENT_TIMEOUT_S).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:  # a few clients at once, not just one after the other
        statuses = list(pool.map(post, range(300)))
    assert statuses == [200] * 300
    assert unsubscribe_rows(store) == 1 and opted_out(store, "C1")
    # the signer and the engine were looked up once each, not 300 times
    assert counter.lookups.count("triggerflow_unsubscribe") == 1 and counter.lookups.count("triggers_db") == 1
    # another link of the same customer (a later email) is another row
    assert requests.post(links.url_for("C1", "browse_abandonment"), data=ONE_CLICK, timeout=CLIENT_TIMEOUT_S).status_code == 200
    assert unsubscribe_rows(store) == 2


# -- a locked profile row ---------------------------------------------------------------------------
@contextmanager
def profile_row_locked(engine: Engine, customer_id: str) -> Iterator[Callable[[], bool]]:
    """Another connection holds the customer's profile row — PostgreSQL: SELECT ... FOR UPDATE in
    an open transaction; SQLite: an open write transaction (BEGIN IMMEDIATE), which locks the
    database for writers. Yields a probe that tells whether the lock is still held (a second
    connection trying the same lock without waiting)."""
    holder = engine.connect()
    try:
        if engine.dialect.name == "postgresql":
            holder.execute(select(profiles.c.customer_id).where(profiles.c.customer_id == customer_id).with_for_update())
        else:
            holder.exec_driver_sql("BEGIN IMMEDIATE")

        def still_locked() -> bool:
            with engine.connect() as probe:
                try:
                    if engine.dialect.name == "postgresql":
                        probe.execute(select(profiles.c.customer_id).where(profiles.c.customer_id == customer_id).with_for_update(nowait=True))
                    else:
                        probe.exec_driver_sql("PRAGMA busy_timeout=0")
                        probe.exec_driver_sql("BEGIN IMMEDIATE")
                except OperationalError:
                    return True
                finally:
                    probe.rollback()
                return False

        yield still_locked
    finally:
        holder.rollback()
        holder.close()


def test_a_locked_profile_row_gives_503s_and_the_server_keeps_answering(
    plugin: ModuleType, server: str, links: UnsubscribeLinks, store: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: each POST waited for the lock inside the shared thread pool (no lock timeout); 40
    of them starved a GET that needs no database. After: while the lock is STILL held, every POST
    is answered with the generic 503 (a few by the lock timeout, the rest by the gate) and the GET
    confirm page is served; after the release a POST records the opt-out."""
    add_profile(store, "C2")
    url = links.url_for("C2", "cart_abandonment")
    # warm: the signer and the store engine are cached (another customer's opt-out)
    assert requests.post(links.url_for("WARM-UP"), data=ONE_CLICK, timeout=CLIENT_TIMEOUT_S).status_code == 200
    guard = plugin._guard()
    refused_before = guard.gate.refused
    caplog.set_level(logging.INFO)

    with profile_row_locked(store, "C2") as still_locked, ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        posts = [pool.submit(requests.post, url, data=ONE_CLICK, timeout=CLIENT_TIMEOUT_S) for _ in range(IN_FLIGHT)]
        # wait until the store slots are taken by POSTs blocked on the lock (or every POST is done)
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while guard.gate.in_use < guard.settings.max_concurrent and not all(p.done() for p in posts):
            assert time.monotonic() < deadline, "the POSTs never reached the store"
            time.sleep(0.005)

        page = requests.get(url, timeout=CLIENT_TIMEOUT_S)  # a request that needs no database answer
        assert page.status_code == 200 and '<form id="unsubscribe-form"' in page.text
        ping = requests.get(server + "/api/ping", timeout=CLIENT_TIMEOUT_S)  # needs a pool thread
        assert ping.status_code == 200 and ping.json()["pong"]
        assert still_locked()  # both served while the lock was held

        answers = [p.result() for p in posts]  # each within its client timeout: nobody waits for the lock
        assert still_locked()  # every POST was answered while the lock was STILL held
        for answer in answers:
            assert_generic_503(answer)
        assert not opted_out(store, "C2") and unsubscribe_rows(store) == 1  # the warm-up's

    refused = guard.gate.refused - refused_before
    assert sum(a.headers["Retry-After"] == "5" for a in answers) == refused > 0  # the gate sent these away
    assert guard.gate.in_use == 0
    # the slot holders gave up on the lock timeout: in the log, not on the page
    lock_errors = [r.getMessage() for r in caplog.records if "could not record an opt-out: OperationalError" in r.getMessage()]
    assert len(lock_errors) == IN_FLIGHT - refused
    assert all(("lock timeout" in m) or ("database is locked" in m) for m in lock_errors), lock_errors[:3]
    assert not any(SECRET in r.getMessage() or url.rsplit(".", 1)[1] in r.getMessage() for r in caplog.records)

    # released: the same link now records the opt-out
    done = requests.post(url, data=ONE_CLICK, timeout=CLIENT_TIMEOUT_S)
    assert done.status_code == 200 and 'id="done"' in done.text
    assert opted_out(store, "C2") and unsubscribe_rows(store) == 2


# -- tokens first ---------------------------------------------------------------------------------------
def malformed_tokens(links: UnsubscribeLinks) -> list[str]:
    good = links.sign("C3")
    head, payload, _signature = good.split(".")
    return [
        "", "garbage", "v1.x.y", "v1..", "v2." + payload + "." + "A" * 43, f"{head}.{payload}.{'A' * 42}",
        f"{head}.{payload}!.{'A' * 43}", f"{head}.{payload}.{'A' * 43}.x", "v1." + "A" * 2000 + "." + "A" * 43,
    ]


def test_malformed_tokens_cost_no_look_up_and_no_store_call(server: str, links: UnsubscribeLinks, store: Engine, counter: Counter) -> None:
    """Before: every request read the connection through the secrets backend and derived the
    key before looking at the token. After: the text checks refuse it first."""
    base = server + "/triggerflow/unsubscribe/"
    with requests.Session() as session:
        for token in malformed_tokens(links) * 5:
            for response in (
                session.get(base, params={"token": token}, timeout=CLIENT_TIMEOUT_S),
                session.post(base, params={"token": token}, data=ONE_CLICK, timeout=CLIENT_TIMEOUT_S),
            ):
                assert response.status_code == 400 and 'id="invalid"' in response.text, (token[:40], response.status_code)
        assert session.post(base, data=ONE_CLICK, timeout=CLIENT_TIMEOUT_S).status_code == 400  # no token at all
    assert counter.lookups == [] and counter.statements == []
    assert unsubscribe_rows(store) == 0


def test_forged_tokens_cost_no_store_call_and_one_cached_look_up(
    plugin: ModuleType, server: str, links: UnsubscribeLinks, store: Engine, counter: Counter
) -> None:
    """Well-formed tokens with a wrong signature: the signature is checked with the cached
    signer (one look-up for all of them), and the store is never reached."""
    add_profile(store, "C4")
    counter.statements.clear()  # count from here: the requests only
    granted = plugin._guard().gate.granted
    good = links.sign("C4")
    head = good.rsplit(".", 1)[0]
    other = UnsubscribeLinks("not-the-servers-secret-0123456789", server)
    forged = [f"{head}.{'A' * 43}", f"{head}.{secrets.token_urlsafe(32)[:43]}", other.sign("C4"), other.sign("C5", "cart_abandonment")]
    base = server + "/triggerflow/unsubscribe/"
    with requests.Session() as session:
        for token in forged * 25:
            response = session.post(base, params={"token": token}, data=ONE_CLICK, timeout=CLIENT_TIMEOUT_S)
            assert response.status_code == 400 and "not valid" in response.text
            assert session.get(base, params={"token": token}, timeout=CLIENT_TIMEOUT_S).status_code == 400
    assert counter.lookups == ["triggerflow_unsubscribe"]  # once, then cached
    assert counter.statements == [] and plugin._guard().gate.granted == granted
    assert not opted_out(store, "C4") and unsubscribe_rows(store) == 0


def test_the_signer_is_looked_up_again_after_its_ttl(plugin: ModuleType, server: str, links: UnsubscribeLinks, store: Engine, counter: Counter, monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed connection is seen after CACHE_TTL_S (here shortened): the cache is brief."""
    url = links.url_for("C6")
    monkeypatch.setattr(plugin, "CACHE_TTL_S", 0.0)
    plugin.reset_caches()
    for _ in range(3):
        assert requests.get(url, timeout=CLIENT_TIMEOUT_S).status_code == 200
    assert counter.lookups.count("triggerflow_unsubscribe") == 3


def test_a_failed_look_up_is_remembered_briefly(plugin: ModuleType, server: str, links: UnsubscribeLinks, store: Engine, counter: Counter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    url = links.url_for("C7")
    monkeypatch.delenv("AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE")
    caplog.set_level(logging.INFO)
    for _ in range(20):
        assert_generic_503(requests.get(url, timeout=CLIENT_TIMEOUT_S))
    assert counter.lookups == ["triggerflow_unsubscribe"]  # not 20: the failure is cached for ERROR_TTL_S
    assert "Airflow connection 'triggerflow_unsubscribe' is not defined" in caplog.text


# -- generic 503 pages ------------------------------------------------------------------------------------
def test_an_unreachable_store_is_a_generic_503_with_the_detail_in_the_log(
    server: str, links: UnsubscribeLinks, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's server refuses connections (nothing listens on the port)."""
    from devstack.airflow_stack import free_port

    url = f"postgresql+psycopg2://tf_user:not-a-real-password@127.0.0.1:{free_port()}/triggers_db_name"
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_DB", json.dumps({"conn_type": "postgres", "extra": {"sqlalchemy_url": url}}))
    caplog.set_level(logging.INFO)
    token_url = links.url_for("C8")
    response = requests.post(token_url, data=ONE_CLICK, timeout=CLIENT_TIMEOUT_S)
    assert_generic_503(response)
    assert response.headers["Retry-After"] == "60"
    for leak in ("127.0.0.1", "tf_user", "not-a-real-password", "triggers_db_name", urlsplit(url).port and str(urlsplit(url).port)):
        assert str(leak) not in response.text
    logged = [r.getMessage() for r in caplog.records if "could not record an opt-out" in r.getMessage()]
    assert len(logged) == 1 and "OperationalError" in logged[0]
    assert not any(
        "not-a-real-password" in r.getMessage() or token_url.rsplit(".", 1)[1] in r.getMessage() or SECRET in r.getMessage()
        for r in caplog.records
    )


def test_a_missing_store_connection_is_a_generic_503(
    server: str, links: UnsubscribeLinks, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_TRIGGERS_DB", raising=False)
    caplog.set_level(logging.INFO)
    response = requests.post(links.url_for("C9"), data=ONE_CLICK, timeout=CLIENT_TIMEOUT_S)
    assert_generic_503(response)
    assert "Airflow connection 'triggers_db' is not defined" in caplog.text
