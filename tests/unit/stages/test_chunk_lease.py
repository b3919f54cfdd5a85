"""One task per ledger chunk at a time (ledger.acquire_chunk_lease): overlapping runs and
backfills leave a chunk being sent to its holder; a killed task's retry takes its lease back."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from include.triggerflow.ledger import acquire_chunk_lease, release_chunk_lease
from include.triggerflow.render import Renderer
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.stages.send import SendOptions
from include.triggerflow.store.schema import chunk_lease, send
from tests.fixtures import FROM_EMAIL, envelope_json, send_chunk

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_a_chunk_has_one_holder_its_retry_takes_it_back_and_a_stale_one_is_taken_over(kit) -> None:
    engine = kit.engine
    assert acquire_chunk_lease(engine, "b1", 0, "run-a", now=NOW) is None
    assert acquire_chunk_lease(engine, "b1", 0, "run-b", now=NOW + timedelta(minutes=1)) == "run-a"
    assert acquire_chunk_lease(engine, "b1", 1, "run-b", now=NOW) is None  # another chunk is free
    assert acquire_chunk_lease(engine, "b1", 0, "run-a", now=NOW + timedelta(minutes=2)) is None  # run-a's retry
    assert acquire_chunk_lease(engine, "b1", 0, "run-b", now=NOW + timedelta(minutes=40)) == "run-a"
    assert acquire_chunk_lease(engine, "b1", 0, "run-b", now=NOW + timedelta(minutes=48)) is None  # stale: taken over
    release_chunk_lease(engine, "b1", 0, "run-a")  # not run-a's any more: nothing happens
    with engine.connect() as conn:
        assert dict(conn.execute(select(chunk_lease.c.chunk, chunk_lease.c.holder)).all()) == {0: "run-b", 1: "run-b"}
    release_chunk_lease(engine, "b1", 0, "run-b")
    assert acquire_chunk_lease(engine, "b1", 0, "run-c", now=NOW) is None


def test_the_lease_of_a_run_that_is_over_is_taken_over_at_once(kit) -> None:
    engine = kit.engine
    acquire_chunk_lease(engine, "b1", 0, "trigger_emails|manual__old", now=NOW)
    asked: list[str] = []

    def running(holder: str) -> bool:
        asked.append(holder)
        return holder != "trigger_emails|manual__old"

    assert acquire_chunk_lease(engine, "b1", 0, "trigger_emails|manual__new", now=NOW, holder_running=running) is None
    assert asked == ["trigger_emails|manual__old"]
    # a holder whose run is still going keeps it
    assert acquire_chunk_lease(engine, "b1", 0, "trigger_emails|other", now=NOW, holder_running=running) == \
        "trigger_emails|manual__new"


def test_runtime_asks_airflow_about_the_holders_run() -> None:
    from types import SimpleNamespace

    from include.triggerflow.runtime import _run_going

    def state(dag_id: str, run_id: str) -> str:
        if run_id == "gone":
            raise LookupError("404")
        return {"r-run": "running", "r-queued": "queued", "r-failed": "failed"}[run_id]

    ti = SimpleNamespace(get_dagrun_state=state)
    assert [_run_going(ti, f"trigger_emails|{r}") for r in ("r-run", "r-queued", "r-failed", "gone")] == [
        True, True, False, False]
    assert _run_going(ti, "outside a DAG run") is True  # not a run: only its age frees it


class Session:
    sender = FROM_EMAIL
    from_name = None
    message_id_domain = "triggerflow.local"

    def __init__(self) -> None:
        self.opened = 0
        self.sent: list[str] = []

    def send_prepared(self, recipient: str, message: bytes):
        from include.triggerflow.smtp_replies import accepted

        self.sent.append(recipient)
        return accepted()

    def opener(self):
        @contextmanager
        def open_session():
            self.opened += 1
            yield self
        return open_session


@pytest.fixture
def queued(kit, routing) -> None:
    kit.add_profiles(*[{"customer_id": f"C{i}", "email": f"c{i}@example.com", "shopper_id": f"SHOP-{i}"} for i in range(3)])
    kit.add_batch("b1")
    for i in range(3):
        kit.add_event("b1", envelope_json(shopper_id=f"SHOP-{i}"))
    reconcile_batch(kit.engine, "b1", routing)


def test_a_chunk_leased_by_another_run_is_left_to_it(kit, routing, queued) -> None:
    acquire_chunk_lease(kit.engine, "b1", 0, "scheduled__earlier")
    session = Session()

    result = send_chunk(kit.engine, "b1", 0, routing, Renderer(), session.opener(), SendOptions(run_id="scheduled__later"))

    assert sum(result.counts.values()) == 0 and session.opened == 0
    assert {r["state"] for r in kit.rows(send)} == {"pending"}


def test_a_send_takes_the_lease_its_killed_try_left_and_gives_it_back(kit, routing, queued) -> None:
    acquire_chunk_lease(kit.engine, "b1", 0, "scheduled__mine")  # try 1 died holding it
    session = Session()

    result = send_chunk(kit.engine, "b1", 0, routing, Renderer(), session.opener(), SendOptions(run_id="scheduled__mine"))

    assert result.counts["sent"] == 3 and len(session.sent) == 3
    assert kit.rows(chunk_lease) == []
