"""A send task process killed in the middle of its chunk (SIGKILL: no cleanup, no except block).

``test_killed_send_task_is_retried_by_the_scheduler`` runs the real thing: ``airflow standalone``
(scheduler + LocalExecutor + API server, devstack.airflow_stack), the run triggered through the
REST API, and the task process that holds the TCP connection to the SMTP sink killed with SIGKILL
once twelve emails are stored. The run asks for groups of G = 8 emails per ledger transaction
(``send_group_size``): the first group's outcomes were committed with the second group's
``sending`` marks, and the process dies inside the second group — its rows all ``sending``, four
or five whose messages the server stored, the others not yet sent. The sink answers every
end-of-data 150 ms after storing the message, so the kill lands inside that group.
Airflow retries the send task; the retry marks the group's rows ``ambiguous`` (default policy
``hold``: not sent again) — at most G of them — and sends the rest exactly once.

``test_ambiguous_policy_resend_sends_the_row_again`` (dag.test-based, faster; G = 1, the policy is
what it tests) kills a process
running ``dag.test()`` while it waits for the 250 of one known message, then re-runs the same
logical date (dag.test replaces the run; the batch is keyed on the interval, so it is the same
batch) with ``ambiguous_policy='resend'``: the row is sent again, logged ``resent``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.airflow_stack import airflow_standalone
from devstack.messages import load_demo_catalog
from devstack.processes import start_emulator, start_smtp_sink
from include.triggerflow.profiles import upsert_profiles
from tests.e2e.fault_helpers import (
    PROJECT_ROOT,
    actions_by_row,
    assert_balanced,
    batch_of,
    connection_env,
    customers,
    keys_received,
    ledger,
    load_dag,
    metadata_db,
    minute,
    only_batch,
    recipients_received,
    send_log,
    summary,
    triggers_for,
)

pytestmark = pytest.mark.e2e

DAG_ID = "trigger_emails"
CUSTOMERS = 40
KILL_AFTER_EMAILS = 12
GROUP = 8  # the kill lands inside the second group (emails 9..16)


def test_killed_send_task_is_retried_by_the_scheduler(tmp_path: Path, store_url: str, store_engine) -> None:
    started = time.monotonic()
    people = customers(CUSTOMERS)
    upsert_profiles(store_engine, people)
    load_demo_catalog(store_engine)  # the shipped routes email only products the catalogue knows
    with (
        start_emulator(log_path=tmp_path / "emulator.log") as emu,
        start_smtp_sink(tmp_path / "outbox", log_path=tmp_path / "smtp.log", faults=[{"data_delay_ms": 150}]) as smtp,
    ):
        env = {**connection_env(emu, smtp, store_url), "TRIGGERFLOW_RETRY_DELAY_S": "2"}
        emu.client.publish(triggers_for(people))
        # On the PostgreSQL pass Airflow's own metadata DB is on PostgreSQL too, as under Astro.
        with metadata_db() as metadata_url, airflow_standalone(
            tmp_path / "airflow", env_overrides=env, metadata_url=metadata_url
        ) as af:
            run_id = af.trigger(DAG_ID, conf={"send_group_size": GROUP})

            killed = None
            deadline = time.monotonic() + 90
            while killed is None:
                assert time.monotonic() < deadline, f"no kill within 90 s\n{af.log_tail()}"
                stored = len(smtp.eml_paths())
                assert stored < CUSTOMERS, "the chunk finished before the kill"
                if stored >= KILL_AFTER_EMAILS:
                    procs = af.task_processes_connected_to(smtp.port, smtp.host)
                    assert len(procs) <= 1, procs
                    if procs:
                        killed = procs[0]
                        os.kill(killed.pid, signal.SIGKILL)
                        stored_at_kill = stored
                        break
                time.sleep(0.02)

            state = af.wait_run(DAG_ID, run_id, timeout=120)
            tis = {(t["task_id"], t["map_index"]): t for t in af.task_instances(DAG_ID, run_id)}
            assert state == "success", (tis, af.log_tail())
        # The stack is down: nothing can send any more.

        assert 0 < stored_at_kill < CUSTOMERS
        send_ti = tis[("send", 0)]
        assert send_ti["state"] == "success"
        assert send_ti["try_number"] >= 2, send_ti  # Airflow retried the killed task
        assert tis[("report", -1)]["state"] == "success"

        batch_id = batch_of(store_engine, run_id)
        rows = ledger(store_engine, batch_id)
        assert len(rows) == CUSTOMERS
        ambiguous = [r for r in rows if r["state"] == "ambiguous"]
        assert 1 <= len(ambiguous) <= GROUP, ambiguous  # the group in flight, no more
        assert {r["state"] for r in rows} <= {"sent", "ambiguous"}
        log = send_log(store_engine, batch_id)
        for amb in ambiguous:  # marked by the retry, never sent by it
            amb_log = [e for e in log if e["send_id"] == amb["send_id"]]
            assert [e["action"] for e in amb_log] == ["ambiguous"]
            assert amb_log[0]["try_number"] >= 2
        # tries: the killed one sent some, a later one the rest
        tries_that_sent = {e["try_number"] for e in log if e["action"] == "sent"}
        assert 1 in tries_that_sent and max(tries_that_sent) >= 2, tries_that_sent

        messages = smtp.messages()
        keys = keys_received(messages)
        assert all(n == 1 for n in keys.values()), keys  # no email twice
        sent_keys = {r["idempotency_key"] for r in rows if r["state"] == "sent"}
        amb_keys = {r["idempotency_key"] for r in ambiguous}
        amb_accepted = amb_keys & set(keys)  # the server stored it before the 250 that never arrived
        assert set(keys) == sent_keys | amb_accepted
        assert len(smtp.eml_paths()) == len(sent_keys) + len(amb_accepted)
        per_customer = recipients_received(messages)
        amb_rcpts = {r["recipient"] for r in ambiguous}
        for p in people:
            expected = {0, 1} if p["email"] in amb_rcpts else {1}
            assert per_customer.get(p["email"], 0) in expected, p["email"]

        counts = summary(store_engine, batch_id)
        assert_balanced(counts)
        assert counts["sent"] == len(sent_keys) and counts["ambiguous"] == len(ambiguous)
    elapsed = time.monotonic() - started
    print(f"scheduler kill: killed pid {killed.pid} after {stored_at_kill} emails; "
          f"send try_number {send_ti['try_number']}; ambiguous {len(ambiguous)} "
          f"(accepted by the server: {len(amb_accepted)}); {elapsed:.1f} s")


_DAG_TEST_SCRIPT = """
import sys
from datetime import datetime
from tests.e2e.fault_helpers import load_dag
load_dag().test(logical_date=datetime.fromisoformat(sys.argv[1]), run_conf={"send_group_size": 1})
"""


def test_ambiguous_policy_resend_sends_the_row_again(
    tmp_path: Path, airflow_db: Path, store_url: str, store_engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil
    from airflow.utils.state import DagRunState

    people = customers(10)
    upsert_profiles(store_engine, people)
    load_demo_catalog(store_engine)  # the shipped routes email only products the catalogue knows
    victim = "c005@example.com"
    # Only c005's end-of-data answer is slow: the process is certainly waiting for that 250
    # (message stored, row committed `sending`) when it is killed.
    faults = [{"data_delay_ms": 20_000, "rcpt": victim, "times": 1}]
    with (
        start_emulator(log_path=tmp_path / "emulator.log") as emu,
        start_smtp_sink(tmp_path / "outbox", log_path=tmp_path / "smtp.log", faults=faults) as smtp,
    ):
        for key, value in connection_env(emu, smtp, store_url).items():
            monkeypatch.setenv(key, value)
        emu.client.publish(triggers_for(people))
        logical = minute()
        with open(tmp_path / "dag_test_1.log", "wb") as child_log:  # the child writes through its own copy
            child = subprocess.Popen(
                [sys.executable, "-c", _DAG_TEST_SCRIPT, logical.isoformat()],
                cwd=PROJECT_ROOT, env=dict(os.environ), stdout=child_log, stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 90
            # the sink logs the delay rule firing right after it stored c005's message
            while not any(f.get("rcpt") == victim and "stored" in f for f in smtp.fired_faults()):
                assert child.poll() is None, (tmp_path / "dag_test_1.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the slow end-of-data was never reached"
                time.sleep(0.05)
            # the dying process is the one talking to the sink
            talking = [c for c in psutil.Process(child.pid).net_connections(kind="tcp")
                       if c.raddr and c.raddr.port == smtp.port and c.status == psutil.CONN_ESTABLISHED]
            assert talking, "the dag.test process holds no SMTP connection"
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        before = {r["recipient"]: r["state"] for r in ledger(store_engine)}
        assert before[victim] == "sending"
        assert recipients_received(smtp.messages())[victim] == 1  # stored, 250 never seen

        run = load_dag().test(logical_date=logical, run_conf={"ambiguous_policy": "resend", "send_group_size": 1})
        assert run.state == DagRunState.SUCCESS

        batch_id = only_batch(store_engine)  # landed by the killed run, reprocessed by this one
        rows = {r["recipient"]: r for r in ledger(store_engine, batch_id)}
        assert {r["state"] for r in rows.values()} == {"sent"}
        assert rows[victim]["resend"] is True
        actions = actions_by_row(store_engine, batch_id)
        assert [a for _, a, _ in actions[victim]] == ["ambiguous", "resent"]
        received = recipients_received(smtp.messages())
        # The first copy was in fact accepted: 'resend' trades a possible duplicate for no gap.
        assert received[victim] == 2
        assert all(received[p["email"]] == 1 for p in people if p["email"] != victim)
        victim_copies = [m for m in smtp.messages() if m["X-Envelope-To"] == victim]
        assert len({m["Message-ID"] for m in victim_copies}) == 1  # same Message-ID: receivers can deduplicate
        counts = summary(store_engine, batch_id)
        assert_balanced(counts)
        assert (counts["sent"], counts["ambiguous"]) == (10, 0)
