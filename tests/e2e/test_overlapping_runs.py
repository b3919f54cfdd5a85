"""Overlapping runs under the real scheduler (``airflow standalone``, LocalExecutor): the next run
lands and decides its batch while the previous one is still sending, and the decisions stay those
of one run at a time.

Run 1 lands a cart-abandonment trigger for each of 30 customers; the SMTP sink answers every
end-of-data after 500 ms, so run 1 sends for about 15 s. As soon as run 1's batch is landed, ten
of those customers fire the trigger again (a later trigger time) and run 2 is triggered. Checked:

* the runs overlapped: run 2's reconcile finished before run 1's send did;
* landing order held: batch 1 was decided before batch 2 (``tf_batch.reconciled_at``), so the
  second triggers met the first ones' emails in the ledger — still being sent — and were
  decided ``duplicate`` by the route's 24 h dedup window: the email each customer got
  is the one for their first trigger;
* exactly once: 30 emails at the sink, one per customer, no key twice; both runs balanced.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from devstack.airflow_stack import airflow_standalone
from devstack.messages import load_demo_catalog
from devstack.processes import start_emulator, start_smtp_sink
from include.triggerflow.profiles import upsert_profiles
from include.triggerflow.store.schema import batch
from tests.e2e.fault_helpers import (
    assert_balanced,
    batch_of,
    connection_env,
    customers,
    decisions,
    keys_received,
    ledger,
    metadata_db,
    recipients_received,
    summary,
    triggers_for,
)

pytestmark = pytest.mark.e2e

DAG_ID = "trigger_emails"
CUSTOMERS = 30
AGAIN = 10


def _landed(engine, run_id: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(batch.c.state).where(batch.c.run_id == run_id)).scalar_one_or_none() == "landed"


def _times(tis: list[dict], task_id: str) -> list[tuple[datetime, datetime]]:
    return [(datetime.fromisoformat(t["start_date"]), datetime.fromisoformat(t["end_date"]))
            for t in tis if t["task_id"] == task_id]


def test_overlapping_runs_decide_in_landing_order_and_send_each_email_once(tmp_path: Path, store_url: str,
                                                                           store_engine) -> None:
    people = customers(CUSTOMERS)
    upsert_profiles(store_engine, people)
    load_demo_catalog(store_engine)
    with (
        start_emulator(log_path=tmp_path / "emulator.log") as emu,
        start_smtp_sink(tmp_path / "outbox", log_path=tmp_path / "smtp.log", faults=[{"data_delay_ms": 500}]) as smtp,
    ):
        env = {**connection_env(emu, smtp, store_url), "TRIGGERFLOW_MAX_ACTIVE_RUNS": "2"}
        emu.client.publish(triggers_for(people))
        with metadata_db() as metadata_url, airflow_standalone(tmp_path / "airflow", env_overrides=env,
                                                          metadata_url=metadata_url) as af:
            run1 = af.trigger(DAG_ID)
            deadline = time.monotonic() + 120
            while not _landed(store_engine, run1):
                assert time.monotonic() < deadline, f"run 1 did not land its batch\n{af.log_tail()}"
                time.sleep(0.2)
            emu.client.publish(triggers_for(people[:AGAIN], later_ms=60_000))
            run2 = af.trigger(DAG_ID)
            states = {run: af.wait_run(DAG_ID, run, timeout=240) for run in (run1, run2)}
            tis1, tis2 = af.task_instances(DAG_ID, run1), af.task_instances(DAG_ID, run2)
            assert states == {run1: "success", run2: "success"}, (tis1, tis2, af.log_tail())
        messages = smtp.messages()

    # the runs overlapped: run 2 had decided its batch while run 1 was still sending
    run1_send_end = max(end for _, end in _times(tis1, "send"))
    [(_, run2_reconcile_end)] = _times(tis2, "reconcile")
    assert run2_reconcile_end < run1_send_end, (tis1, tis2)

    batch1, batch2 = batch_of(store_engine, run1), batch_of(store_engine, run2)
    with store_engine.connect() as conn:
        decided = dict(conn.execute(select(batch.c.batch_id, batch.c.reconciled_at)).all())
    assert decided[batch1] < decided[batch2]  # landing order
    first = decisions(store_engine, batch1)
    second = decisions(store_engine, batch2)
    assert sorted(first.values()) == ["matched"] * CUSTOMERS
    assert sorted(second.values()) == ["duplicate"] * AGAIN, second

    keys = keys_received(messages)
    assert len(messages) == CUSTOMERS and all(n == 1 for n in keys.values())
    assert all(n == 1 for n in recipients_received(messages).values())
    assert {r["idempotency_key"] for r in ledger(store_engine, batch1)} == set(keys)
    assert ledger(store_engine, batch2) == []
    for batch_id in (batch1, batch2):
        assert_balanced(summary(store_engine, batch_id))
