"""The store becomes unreachable in the middle of a run, then comes back (dag.test).

How the store is taken away:

* **SQLite**: another connection holds an exclusive write lock (``BEGIN EXCLUSIVE``). A task's
  next write waits for the busy timeout, then fails with "database is locked" (reads still work:
  WAL). The store's engine sets a 30 s busy timeout; the test process shares that engine with the
  in-process dag.test tasks (one engine per URL per process), so the test adds a connect hook
  that lowers it to 1.5 s and recycles the pool — same stall-then-error, shorter.
* **PostgreSQL**: the DAG's ``triggers_db`` points at a TCP proxy thread in front of the server.
  Cutting it closes every proxied connection and answers new ones by closing them at once, so
  the pooled connection dies and reconnecting fails; restoring it lets connections through again.

An outage controller thread starts the outage at a precise point (signalled by the emulator or
the SMTP sink being slow on purpose), waits until Airflow has recorded the task's failure
(``up_for_retry`` in the metadata DB), snapshots the store, and ends the outage; dag.test then
retries the task. Asserted: the task failed (try_number >= 2) without leaving anything
half-written, the run completes, every event is landed once and every email stored exactly once.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from devstack.messages import load_demo_catalog
from devstack.processes import start_emulator, start_smtp_sink
from include.triggerflow.profiles import upsert_profiles
from tests.e2e.fault_helpers import (
    actions_by_row,
    assert_balanced,
    batch_of,
    connection_env,
    customers,
    dag_test_tries,
    event_count,
    keys_received,
    ledger,
    load_dag,
    minute,
    recipients_received,
    summary,
    triggers_for,
)

pytestmark = pytest.mark.e2e

SQLITE_BUSY_TIMEOUT_MS = 1500


# -- the PostgreSQL cut: a TCP proxy ---------------------------------------------------------------


class TcpProxy:
    """127.0.0.1:<port> -> upstream, one thread pair per connection; ``cut()`` / ``restore()``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._up = True
        self._stopping = False
        self.refused = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                up = self._up
            if not up:
                self.refused += 1
                client.close()  # the server is "unreachable": connection closed at once
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        with self._lock:
            self._up = False
            sockets, self._open = self._open, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._stopping = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()


# -- outages -----------------------------------------------------------------------------------


class SqliteLockOutage:
    name = "sqlite exclusive lock"

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def start(self) -> None:
        self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=10, check_same_thread=False)
        self._conn.execute("BEGIN EXCLUSIVE")

    def end(self) -> None:
        assert self._conn is not None
        self._conn.execute("ROLLBACK")
        self._conn.close()
        self._conn = None


class ProxyCutOutage:
    name = "postgresql connection cut"

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy

    def start(self) -> None:
        self.proxy.cut()

    def end(self) -> None:
        self.proxy.restore()


def _task_state(task_id: str) -> set[str]:
    """States of ``task_id`` in the trigger_emails runs of the (test) metadata DB."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance.state).filter(
            TaskInstance.dag_id == "trigger_emails", TaskInstance.task_id == task_id
        ).all()
    return {str(getattr(s, "value", s)) for (s,) in rows}


class OutageController(threading.Thread):
    """Starts the outage when ``when()`` is true, ends it once ``task_id`` is up for retry."""

    def __init__(self, outage: Any, when: Callable[[], bool], task_id: str, snapshot: Callable[[], Any]) -> None:
        super().__init__(name="outage", daemon=True)
        self.outage, self.when, self.task_id, self.snapshot = outage, when, task_id, snapshot
        self.started_at: float | None = None
        self.failed_during_outage = False
        self.seen: Any = None
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.when():
                if self._halt.wait(0.02):
                    return
            self.outage.start()
            self.started_at = time.monotonic()
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not self._halt.is_set():
                    if "up_for_retry" in _task_state(self.task_id):
                        self.failed_during_outage = True
                        break
                    time.sleep(0.05)
                self.seen = self.snapshot()
            finally:
                self.outage.end()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def dag_store(store_url: str, store_engine) -> Iterator[tuple[str, Any, Any]]:
    """(URL the DAG uses, the test's engine, an outage factory) for SQLite or PostgreSQL."""
    from include.triggerflow.store.engines import get_engine

    load_demo_catalog(store_engine)  # the shipped routes email only products the catalogue knows
    url = make_url(store_url)
    if url.get_backend_name() == "sqlite":
        engine = get_engine(store_url)  # the very engine the in-process tasks will get

        def short_busy_timeout(dbapi_conn, _record) -> None:  # runs after the store's own hook
            dbapi_conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")

        sa_event.listen(engine, "connect", short_busy_timeout)
        engine.dispose()
        try:
            yield store_url, store_engine, SqliteLockOutage(url.database)
        finally:
            sa_event.remove(engine, "connect", short_busy_timeout)
            engine.dispose()
        return
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        yield proxied, store_engine, ProxyCutOutage(proxy)
    finally:
        from include.triggerflow.store.engines import dispose_engines

        dispose_engines()
        proxy.close()


@pytest.fixture
def stack(tmp_path: Path, airflow_db: Path, dag_store, monkeypatch: pytest.MonkeyPatch):
    dag_url, engine, outage = dag_store
    with (
        start_emulator(log_path=tmp_path / "emulator.log") as emu,
        start_smtp_sink(tmp_path / "outbox", log_path=tmp_path / "smtp.log") as smtp,
    ):
        env = connection_env(emu, smtp, dag_url, source={
            "conn_type": "http", "host": emu.client.journal_url,
            "extra": {"kind": "journal", "ims_conn_id": "adobe_ims", "page_limit": 5},
        })
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        # Long enough for the controller to see the failure and end the outage first.
        monkeypatch.setenv("TRIGGERFLOW_RETRY_DELAY_S", "2")
        yield emu, smtp, engine, outage


def _run(controller: OutageController, conf: dict | None = None):
    from airflow.utils.state import DagRunState

    controller.start()
    try:
        run = load_dag().test(logical_date=minute(), run_conf=conf)
    finally:
        controller.stop()
    if controller.error is not None:
        raise controller.error
    assert controller.started_at is not None, "the outage never started"
    assert controller.failed_during_outage, "the task did not fail while the store was unreachable"
    assert run.state == DagRunState.SUCCESS
    return run


# -- tests -----------------------------------------------------------------------------------------


def test_store_lost_while_landing(stack) -> None:
    emu, smtp, engine, outage = stack
    people = customers(15)
    upsert_profiles(engine, people)
    emu.client.publish(triggers_for(people))
    # Journal pages of 5: the second page is answered 3 s late; the store goes away meanwhile,
    # so landing that page fails after the first page was committed.
    emu.client.add_faults([
        {"endpoint": "journal", "kind": "slow", "delay_ms": 0, "times": 1},
        {"endpoint": "journal", "kind": "slow", "delay_ms": 3000, "times": 1},
    ])

    def events_and_positions() -> tuple[int, list]:
        from include.triggerflow.store.schema import source_position

        with engine.connect() as conn:
            positions = conn.execute(select(source_position.c.position)).scalars().all()
        return event_count(engine), positions

    controller = OutageController(outage, lambda: event_count(engine) >= 5, "pull_and_land", events_and_positions)
    run = _run(controller)

    landed_at_failure, positions_at_failure = controller.seen
    assert landed_at_failure == 5  # page 1 only: page 2 was not half-landed
    assert len(positions_at_failure) == 1  # and the position matches page 1 (same transaction)
    assert dag_test_tries(run, "pull_and_land")[-1] >= 2
    batch_id = batch_of(engine, run.run_id)
    from include.triggerflow.store.schema import event

    with engine.connect() as conn:
        n, distinct_messages = conn.execute(
            select(func.count(), func.count(func.distinct(event.c.message_id))).where(event.c.batch_id == batch_id)
        ).one()
    assert (n, distinct_messages) == (15, 15)  # nothing lost, nothing landed twice
    keys = keys_received(smtp.messages())
    assert len(keys) == 15 and set(keys.values()) == {1}
    assert set(recipients_received(smtp.messages())) == {p["email"] for p in people}
    counts = summary(engine, batch_id)
    assert_balanced(counts)
    assert (counts["pulled"], counts["sent"]) == (15, 15)


def test_store_lost_while_sending(stack) -> None:
    emu, smtp, engine, outage = stack
    people = customers(12)
    upsert_profiles(engine, people)
    emu.client.publish(triggers_for(people))
    victim = "c005@example.com"
    # c005's end-of-data is answered 3 s after the server stored it: the store goes away while
    # the task waits, so recording that 250 fails.
    smtp.set_faults([{"data_delay_ms": 3000, "rcpt": victim, "times": 1}])

    def states() -> dict[str, str]:
        return {r["recipient"]: r["state"] for r in ledger(engine)}

    controller = OutageController(
        outage, lambda: any(f.get("rcpt") == victim and "stored" in f for f in smtp.fired_faults()), "send", states
    )
    # G = 1: one row in flight. With groups, the outcomes the store could not take are the whole
    # group's, and the group is what becomes ambiguous (at most G; test_scheduler_kill).
    run = _run(controller, {"send_group_size": 1})

    at_failure = controller.seen
    assert [at_failure[p["email"]] for p in people] == ["sent"] * 4 + ["sending"] + ["pending"] * 7
    assert dag_test_tries(run)[0] >= 2
    batch_id = batch_of(engine, run.run_id)
    rows = {r["recipient"]: r for r in ledger(engine, batch_id)}
    # The 250 for c005 arrived but could not be recorded: the retry cannot know it, so the row is
    # ambiguous and (policy hold) not sent again. The server has it exactly once.
    assert rows[victim]["state"] == "ambiguous"
    assert {a for _, a, _ in actions_by_row(engine, batch_id)[victim]} == {"ambiguous"}
    assert all(r["state"] == "sent" for k, r in rows.items() if k != victim)
    messages = smtp.messages()
    keys = keys_received(messages)
    assert set(keys.values()) == {1} and len(keys) == 12  # every email exactly once, c005 included
    assert recipients_received(messages) == {p["email"]: 1 for p in people}
    counts = summary(engine, batch_id)
    assert_balanced(counts)
    assert (counts["sent"], counts["ambiguous"]) == (11, 1)
