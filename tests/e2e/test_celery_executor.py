"""``trigger_emails`` under the CeleryExecutor: two workers share the send chunks, and one of them
dies in the middle of a chunk.

devstack.celery_stack starts, on 127.0.0.1: api-server, scheduler, dag-processor and two
``airflow celery worker`` processes (``w1``, ``w2``; concurrency 2 each), with the metadata DB, the
Celery result backend and the store in fresh PostgreSQL databases and Redis as the broker; the
Adobe emulator and the SMTP sink run as processes too. One test, two phases on the same stack:

1. **Both workers.** 24 customers, 4 chunks of 6 (run conf ``chunk_size`` / ``max_chunks``); the
   sink answers every end-of-data 100 ms late, so chunks overlap. Checked: every email exactly once
   at the sink, the chunks ran on both workers (the ``hostname`` the task instances record: the
   worker's Celery hostname, see devstack.celery_stack), the run balanced.
2. **A worker lost mid-chunk.** 24 new customers; the sink holds back the 250 to the first email of
   the run (stored, then a 120 s delay): that email's ledger row is committed ``sending`` and its
   chunk has five rows still pending. The worker running that chunk is SIGKILLed, its whole
   process tree as a lost machine (Celery main process, pool processes, task processes). The
   scheduler fails its running task instances once their heartbeats stop
   (``task_instance_heartbeat_timeout`` 20 s) and Airflow retries them on the other worker, where
   the chunk ends. Checked: the chunk's retry ran on the survivor and sent the rows that were
   pending; the held-back row is ``ambiguous`` and not sent again (policy ``hold``); at most one
   ambiguous row per chunk the dead worker was running (the run asks for ``send_group_size`` 1:
   a task killed mid-send leaves at most the row in flight), none elsewhere; no email twice at the sink; the run
   balanced.

Where it runs: the store is always PostgreSQL here, whatever bin/test's pass, so the test is not
marked ``store`` (tests/conftest.py marks the tests that depend on the store's database, and
bin/test's PostgreSQL pass re-runs only those): it runs once, in the first pass. It needs the
CeleryExecutor's packages, PostgreSQL and Redis (both started when they are down); without them it
skips, except under CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from devstack.airflow_stack import postgres_metadata_db
from devstack.celery_stack import CeleryStack, celery_stack, ensure_services, pg_server_url
from devstack.ensure_postgres import scratch_database
from devstack.ensure_redis import broker_url
from devstack.messages import load_demo_catalog
from devstack.processes import start_emulator, start_smtp_sink
from include.triggerflow.profiles import upsert_profiles
from tests.e2e.fault_helpers import (
    assert_balanced,
    batch_of,
    connection_env,
    customers,
    keys_received,
    ledger,
    recipients_received,
    send_log,
    summary,
    triggers_for,
)

pytestmark = pytest.mark.e2e

DAG_ID = "trigger_emails"
CHUNKS = 4
CHUNK_SIZE = 6
CUSTOMERS = CHUNKS * CHUNK_SIZE
# G = 1 (one ledger transaction per email): this test counts one row in flight per dead chunk;
# groups under a SIGKILL are test_scheduler_kill's
CONF = {"chunk_size": CHUNK_SIZE, "max_chunks": CHUNKS, "send_group_size": 1}
HEARTBEAT_TIMEOUT_S = 20
HOLD_MS = 120_000


@pytest.fixture
def services() -> tuple[str, str]:
    """(PostgreSQL server URL, Redis URL), both answering; skip (fail under CI) otherwise."""
    pg, redis_url = pg_server_url(), broker_url()
    problem = ensure_services(pg, redis_url)
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Celery stack is required under CI: {problem}")
        pytest.skip(f"no Celery stack on this machine: {problem}")
    return pg, redis_url


@pytest.fixture
def store(services: tuple[str, str]) -> Iterator[tuple[str, Any]]:
    """A fresh PostgreSQL store (URL, engine) with the schema and the demo catalogue."""
    from include.triggerflow.store.engines import get_engine
    from include.triggerflow.store.migrations import create_schema

    with scratch_database(services[0], prefix="tf_celery") as url:
        engine = get_engine(url)
        create_schema(engine)
        load_demo_catalog(engine)  # the shipped routes email only products the catalogue knows
        yield url, engine


def _send_tis(af: CeleryStack, run_id: str) -> dict[int, dict[str, Any]]:
    return {t["map_index"]: t for t in af.task_instances(DAG_ID, run_id) if t["task_id"] == "send"}


def test_two_celery_workers_share_the_chunks_and_one_dies_mid_chunk(
    tmp_path: Path, services: tuple[str, str], store: tuple[str, Any]
) -> None:
    started = time.monotonic()
    pg, redis_url = services
    store_url, engine = store
    first, second = customers(CUSTOMERS, prefix="A"), customers(CUSTOMERS, prefix="B")
    upsert_profiles(engine, first + second)
    with ExitStack() as stack:
        emu = stack.enter_context(start_emulator(log_path=tmp_path / "emulator.log"))
        smtp = stack.enter_context(start_smtp_sink(
            tmp_path / "outbox", log_path=tmp_path / "smtp.log", faults=[{"data_delay_ms": 100}]
        ))
        env = {
            **connection_env(emu, smtp, store_url),
            "TRIGGERFLOW_RETRY_DELAY_S": "2",
            # A task the dead worker had taken from Redis but not yet started stays `queued` in
            # Airflow (its message is unacknowledged until the 24 h visibility timeout): after
            # this the scheduler queues it again, for the live worker.
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "90",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "5",
        }
        metadata_url = stack.enter_context(postgres_metadata_db(pg))
        af = stack.enter_context(celery_stack(
            tmp_path / "airflow", metadata_url=metadata_url, workers=2, broker=redis_url, env_overrides=env,
            heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
        ))
        hosts = af.hostnames()
        ready_s = time.monotonic() - started

        # -- phase 1: both workers -----------------------------------------------------------------
        emu.client.publish(triggers_for(first))
        run1 = af.trigger(DAG_ID, conf=CONF)
        assert af.wait_run(DAG_ID, run1, timeout=240) == "success", af.log_tail()
        sends1 = _send_tis(af, run1)
        assert sorted(sends1) == list(range(CHUNKS))
        assert all(t["state"] == "success" and t["try_number"] == 1 for t in sends1.values()), sends1
        ran_on = Counter(t["hostname"] for t in sends1.values())
        assert set(ran_on) == set(hosts.values()), (ran_on, hosts)  # chunks on both workers
        assert {t["hostname"] for t in af.task_instances(DAG_ID, run1)} <= set(hosts.values())

        batch1 = batch_of(engine, run1)
        rows1 = ledger(engine, batch1)
        assert len(rows1) == CUSTOMERS and {r["state"] for r in rows1} == {"sent"}
        assert sorted({r["chunk"] for r in rows1}) == list(range(CHUNKS))
        messages = smtp.messages()
        assert recipients_received(messages) == Counter({p["email"]: 1 for p in first})
        keys = keys_received(messages)
        assert set(keys) == {r["idempotency_key"] for r in rows1} and set(keys.values()) == {1}
        counts1 = summary(engine, batch1)
        assert_balanced(counts1)
        assert (counts1["sent"], counts1["ambiguous"]) == (CUSTOMERS, 0)
        phase1_s = time.monotonic() - started - ready_s

        # -- phase 2: the worker running the held-back email dies ----------------------------------
        smtp.set_faults([{"data_delay_ms": HOLD_MS, "times": 1}])  # the run's first email only
        emu.client.publish(triggers_for(second))
        run2 = af.trigger(DAG_ID, conf=CONF)
        deadline = time.monotonic() + 180
        while not (held := [f for f in smtp.fired_faults() if f.get("data_delay_ms") == HOLD_MS]):
            assert af.run(DAG_ID, run2)["state"] in ("queued", "running"), af.log_tail()
            assert time.monotonic() < deadline, f"no email held back within 180 s\n{af.log_tail()}"
            time.sleep(0.1)
        victim_msg = smtp.message(held[0]["stored"])
        victim_key = str(victim_msg["X-Triggerflow-Key"]).strip()
        [victim] = [r for r in ledger(engine) if r["idempotency_key"] == victim_key]
        assert victim["state"] == "sending", victim  # committed before the SMTP transaction
        batch2, chunk = victim["batch_id"], int(victim["chunk"])
        # its send task is running (the held-back 250 keeps it so): on which worker?
        victim_ti = _send_tis(af, run2)[chunk]
        assert victim_ti["state"] == "running" and victim_ti["hostname"] in hosts.values(), victim_ti
        dead = af.worker_by_hostname(victim_ti["hostname"])
        [survivor] = [w for w in af.workers.values() if w is not dead]
        # the process talking to the sink is in the tree we kill
        tree = {p.pid for p in af.worker_processes(dead.name)}
        assert tree & {p.pid for p in af.processes_connected_to(smtp.port, smtp.host)}, "no SMTP session in the worker's tree"
        killed_pids = af.kill_worker(dead.name)
        at_kill = {r["send_id"]: r["state"] for r in ledger(engine, batch2) if r["chunk"] == chunk}
        pending_at_kill = {sid for sid, state in at_kill.items() if state == "pending"}
        assert len(pending_at_kill) == CHUNK_SIZE - 1, at_kill  # the held-back email was the chunk's first

        assert af.wait_run(DAG_ID, run2, timeout=300) == "success", af.log_tail()
        sends2 = _send_tis(af, run2)
        tries = {i: af.task_tries(DAG_ID, run2, "send", i) for i in sends2}
        peak_rss = af.peak_rss_bytes
    # Everything is down now: nothing can send any more.
    total_s = time.monotonic() - started

    # The chunk ended on the survivor, in a later try.
    final = sends2[chunk]
    assert final["state"] == "success" and final["try_number"] >= 2, final
    assert final["hostname"] == survivor.hostname, final
    assert final["rendered_map_index"] == f"chunk {chunk}", final
    first_try = [t for t in tries[chunk] if t["try_number"] == 1]
    assert [t["hostname"] for t in first_try] == [dead.hostname], tries[chunk]
    assert first_try[0]["state"] != "success", first_try
    # The chunks the dead worker was running: their failed tries were on it, the rest elsewhere.
    killed_chunks = {
        i for i, ts in tries.items() if any(t["hostname"] == dead.hostname and t["state"] != "success" for t in ts)
    }
    assert chunk in killed_chunks
    for i in killed_chunks:
        assert sends2[i]["state"] == "success" and sends2[i]["hostname"] == survivor.hostname, sends2[i]

    # The ledger: all sent but at most the row in flight of each killed chunk, which is held.
    assert batch_of(engine, run2) == batch2
    rows2 = ledger(engine, batch2)
    assert len(rows2) == CUSTOMERS
    assert {r["state"] for r in rows2} <= {"sent", "ambiguous"}
    by_id = {r["send_id"]: r for r in rows2}
    assert by_id[victim["send_id"]]["state"] == "ambiguous"
    ambiguous = [r for r in rows2 if r["state"] == "ambiguous"]
    per_chunk = Counter(int(r["chunk"]) for r in ambiguous)
    assert set(per_chunk) <= killed_chunks and set(per_chunk.values()) == {1}, (per_chunk, killed_chunks)
    log2 = send_log(engine, batch2)
    resumed = {e["send_id"] for e in log2 if e["action"] == "sent" and (e["try_number"] or 0) >= 2}
    assert pending_at_kill <= resumed, (pending_at_kill, resumed)  # the retry sent what was left
    assert all(by_id[sid]["state"] == "sent" for sid in pending_at_kill)
    for row in ambiguous:  # marked by a retry, never sent by any try
        actions = [(e["action"], e["try_number"]) for e in log2 if e["send_id"] == row["send_id"]]
        assert [a for a, _ in actions] == ["ambiguous"] and actions[0][1] >= 2, actions

    # The sink: no email twice (both phases); every phase-2 customer got one, bar held ones.
    messages = smtp.messages()
    keys = keys_received(messages)
    assert set(keys.values()) == {1}, keys
    sent_keys = {r["idempotency_key"] for r in rows2 if r["state"] == "sent"}
    amb_keys = {r["idempotency_key"] for r in ambiguous}
    batch2_received = set(keys) & {r["idempotency_key"] for r in rows2}
    assert victim_key in batch2_received  # stored before its 250, which never came
    assert batch2_received == sent_keys | (amb_keys & set(keys))
    received = recipients_received(messages)
    amb_rcpts = {r["recipient"] for r in ambiguous}
    for p in first:
        assert received[p["email"]] == 1, p["email"]
    for p in second:
        assert received.get(p["email"], 0) in ({0, 1} if p["email"] in amb_rcpts else {1}), p["email"]

    counts2 = summary(engine, batch2)
    assert_balanced(counts2)
    assert counts2["sent"] == len(sent_keys) and counts2["ambiguous"] == len(ambiguous), counts2
    print(
        f"celery: stack ready in {ready_s:.0f} s; phase 1 {phase1_s:.0f} s, chunks per worker {dict(ran_on)}; "
        f"phase 2: killed {dead.name} ({len(killed_pids)} processes) holding chunk {chunk}, chunks it was running "
        f"{sorted(killed_chunks)}, ambiguous {len(ambiguous)} (accepted by the sink: {len(amb_keys & set(keys))}), "
        f"chunk {chunk} ended on {survivor.name} in try {final['try_number']}; total {total_s:.0f} s; "
        f"peak RSS of the Airflow processes {peak_rss / 2**30:.2f} GiB"
    )
