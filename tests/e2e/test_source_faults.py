"""Source faults under the real DAG (dag.test), on both source kinds where they apply.

The Adobe emulator is a real server process; fault rules are queued through its control plane
(devstack.adobe_emulator ``/_emulator/faults``): HTTP 503 with Retry-After, a stalled answer or
stream, expired tokens, a cut Pipeline stream. Each test publishes through the emulator's producer
API and asserts that the run succeeds, that every published message is landed exactly once
(landed == published), that every email is stored exactly once at the SMTP sink, that the fault
really fired, and that the run's counts balance. The last test publishes the same trigger
message twice: the source gives it two positions, the second copy becomes ``duplicate``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from devstack.messages import load_demo_catalog
from include.triggerflow.profiles import upsert_profiles
from tests.e2e.fault_helpers import (
    assert_balanced,
    batch_of,
    customers,
    dag_test_tries,
    decision_counts,
    emulator_stack,
    event_count,
    keys_received,
    load_dag,
    minute,
    recipients_received,
    source_connection,
    summary,
    triggers_for,
)

pytestmark = pytest.mark.e2e

FAULT_ENDPOINT = {"journal": "journal", "pipeline": "consume"}


def _source(kind: str, emu) -> dict:
    # small pages: several requests per run, so faults hit the middle of a pull
    return source_connection(kind, emu, page_size=4, environment="faults", max_tries=4)


@pytest.fixture(params=["journal", "pipeline"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def stack(kind: str, tmp_path: Path, airflow_db: Path, store_url: str, store_engine, monkeypatch: pytest.MonkeyPatch):
    with emulator_stack(tmp_path, store_url, monkeypatch, lambda emu: _source(kind, emu)) as (emu, smtp):
        load_demo_catalog(store_engine)  # the shipped routes email only products the catalogue knows
        yield emu, smtp, store_engine


def _run(offset: int = 0):
    from airflow.utils.state import DagRunState

    run = load_dag().test(logical_date=minute(offset))
    assert run.state == DagRunState.SUCCESS
    return run


def _landed_once(engine, published: int) -> None:
    """Every published message landed once: as many events as published, no position twice."""
    from include.triggerflow.store.schema import event

    with engine.connect() as conn:
        rows = conn.execute(select(event.c.source, event.c.src_partition, event.c.src_position)).all()
    assert len(rows) == published
    assert len(set(rows)) == published


def _emails_exactly_once(smtp, people) -> None:
    messages = smtp.messages()
    keys = keys_received(messages)
    assert set(keys.values()) == {1}, keys
    assert recipients_received(messages) == {p["email"]: 1 for p in people}


def test_503_twice_with_retry_after(kind: str, stack, caplog: pytest.LogCaptureFixture) -> None:
    emu, smtp, engine = stack
    people = customers(10)
    upsert_profiles(engine, people)
    emu.client.publish(triggers_for(people))
    emu.client.add_faults({"endpoint": FAULT_ENDPOINT[kind], "kind": "status", "status": 503,
                           "retry_after": 1, "times": 2})
    fired_before = emu.client.stats()["faults_fired"]

    with caplog.at_level("WARNING", logger="include.triggerflow.adobe.http"):
        run = _run()

    assert emu.client.stats()["faults_fired"] - fired_before == 2
    assert emu.client.faults() == []
    # Retry-After: 1 honoured twice: the waits the reader asked for, not the elapsed wall time
    waits = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(waits) == 2 and all("retrying in 1.00 s" in w for w in waits), waits
    assert dag_test_tries(run, "pull_and_land") == {-1: 1}  # the source rode it out, no task retry
    _landed_once(engine, 10)
    _emails_exactly_once(smtp, people)
    counts = summary(engine, batch_of(engine, run.run_id))
    assert_balanced(counts)
    assert (counts["pulled"], counts["sent"]) == (10, 10)


def test_stall_shorter_than_the_retry_budget(kind: str, stack) -> None:
    emu, smtp, engine = stack
    people = customers(10)
    upsert_profiles(engine, people)
    emu.client.publish(triggers_for(people))
    if kind == "journal":
        # The second page is answered 3 s late (the journal client waits up to 30 s).
        emu.client.add_faults([
            {"endpoint": "journal", "kind": "slow", "delay_ms": 0, "times": 1},
            {"endpoint": "journal", "kind": "stall", "seconds": 3, "times": 1},
        ])
    else:
        # The stream goes silent for 5 s after 5 messages: longer than read_timeout_s (2 s), so
        # the consumer times out, keeps what it read and reconnects from there (max_tries 4).
        emu.client.add_faults({"endpoint": "consume", "kind": "stall", "seconds": 5, "after_messages": 5, "times": 1})
    fired_before = emu.client.stats()["faults_fired"]
    consumes_before = emu.client.stats()["consume_requests"]

    run = _run()

    stats = emu.client.stats()
    assert stats["faults_fired"] - fired_before >= 1
    if kind == "pipeline":
        assert stats["consume_requests"] - consumes_before >= 2  # it reconnected
    assert dag_test_tries(run, "pull_and_land") == {-1: 1}
    _landed_once(engine, 10)
    _emails_exactly_once(smtp, people)
    counts = summary(engine, batch_of(engine, run.run_id))
    assert_balanced(counts)
    assert (counts["pulled"], counts["sent"]) == (10, 10)


def test_token_expired_between_runs(kind: str, stack) -> None:
    from include.triggerflow.hooks.ims import clear_token_cache

    emu, smtp, engine = stack
    people = customers(10)
    upsert_profiles(engine, people)
    emu.client.publish(triggers_for(people[:5]))
    run1 = _run(0)

    assert emu.client.expire_tokens() >= 1  # the token shared through the store is now dead
    clear_token_cache()  # the next task is a new process: only the store's (expired) copy remains
    emu.client.publish(triggers_for(people[5:]))  # (the test's own client mints itself a new one)
    minted_before_run2 = emu.client.stats()["token_requests"]
    run2 = _run(1)

    assert emu.client.stats()["token_requests"] - minted_before_run2 == 1  # a 401, then one new token
    _landed_once(engine, 10)
    _emails_exactly_once(smtp, people)
    for run, n in ((run1, 5), (run2, 5)):
        counts = summary(engine, batch_of(engine, run.run_id))
        assert_balanced(counts)
        assert (counts["pulled"], counts["sent"]) == (n, n)


@pytest.mark.parametrize("kind", ["pipeline"])  # the journal is request/response: no stream to cut
def test_pipeline_stream_cut_reconnects(kind: str, stack) -> None:
    emu, smtp, engine = stack
    people = customers(12)
    upsert_profiles(engine, people)
    emu.client.publish(triggers_for(people))
    emu.client.add_faults({"endpoint": "consume", "kind": "cut", "after_messages": 5, "times": 1})
    fired_before = emu.client.stats()["faults_fired"]
    consumes_before = emu.client.stats()["consume_requests"]

    run = _run()

    stats = emu.client.stats()
    assert stats["faults_fired"] - fired_before == 1
    assert stats["consume_requests"] - consumes_before >= 2
    _landed_once(engine, 12)
    _emails_exactly_once(smtp, people)
    counts = summary(engine, batch_of(engine, run.run_id))
    assert_balanced(counts)
    assert (counts["pulled"], counts["sent"]) == (12, 12)


def test_same_trigger_published_twice_mails_once(kind: str, stack) -> None:
    from include.triggerflow.store.schema import decision, event

    emu, smtp, engine = stack
    people = customers(4)
    upsert_profiles(engine, people)
    messages = triggers_for(people)
    twice = messages[1]  # customer C002: the very same message (messageId, triggerId, timestamp)
    emu.client.publish(messages)
    emu.client.publish([twice])

    run = _run()

    batch_id = batch_of(engine, run.run_id)
    _landed_once(engine, 5)  # two positions for the same message: both landed
    with engine.connect() as conn:
        copies = conn.execute(
            select(event.c.event_id, decision.c.decision)
            .join(decision, decision.c.event_id == event.c.event_id)
            .where(event.c.message_id == twice["messageId"])
            .order_by(event.c.event_id)
        ).all()
    assert [d for _, d in copies] == ["matched", "duplicate"]
    assert decision_counts(engine, batch_id) == {"matched": 4, "duplicate": 1}
    _emails_exactly_once(smtp, people)  # C002 once
    counts = summary(engine, batch_id)
    assert_balanced(counts)
    assert (counts["pulled"], counts["matched"], counts["sent"], counts["duplicate"]) == (5, 5, 4, 1)
    assert event_count(engine) == 5
