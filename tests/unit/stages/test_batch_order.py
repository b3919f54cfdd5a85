"""Overlapping runs pull and decide one batch at a time, in landing order (stages/batch_order.py,
runtime.wait_for_earlier_batches). The run states are a fake (Airflow's answer to
``get_dagrun_state``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from include.triggerflow.stages.batch_order import OrderedStep, backfill_reconciled_at, check_earlier_batches
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.store.schema import batch

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


def batches(kit, *specs: tuple[str, str]) -> None:
    """(batch id, state) in landing order, a minute apart; none decided yet."""
    for i, (batch_id, state) in enumerate(specs):
        kit.add_batch(batch_id, state=state)
        with kit.engine.begin() as conn:
            conn.execute(update(batch).where(batch.c.batch_id == batch_id).values(created_at=T0 + timedelta(minutes=i)))


def states(**by_run: str):
    return lambda dag_id, run_id: by_run.get(run_id, "success")


def blocking(kit, step: OrderedStep, batch_id: str, run_state) -> list[str]:
    check = check_earlier_batches(kit.engine, "trigger_emails", step, run_state, batch_id=batch_id)
    return [b.batch_id for b in check.blocking]


def test_a_batch_waits_for_the_earlier_undecided_batch_of_a_running_run(kit, routing) -> None:
    batches(kit, ("b1", "landed"), ("b2", "landed"))
    running = states(**{"run-b1": "running"})
    assert blocking(kit, OrderedStep.RECONCILE, "b2", running) == ["b1"]
    assert blocking(kit, OrderedStep.RECONCILE, "b2", states(**{"run-b1": "queued"})) == ["b1"]
    reconcile_batch(kit.engine, "b1", routing)
    assert blocking(kit, OrderedStep.RECONCILE, "b2", running) == []


def test_an_earlier_batch_of_a_run_that_ended_does_not_hold_later_ones(kit, caplog: pytest.LogCaptureFixture) -> None:
    batches(kit, ("b1", "landed"), ("b2", "landed"), ("b3", "landed"))

    def gone(dag_id: str, run_id: str) -> str:
        if run_id == "run-b2":
            raise LookupError("no such run (metadata cleaned)")
        return "failed"

    with caplog.at_level(logging.WARNING):
        check = check_earlier_batches(kit.engine, "trigger_emails", OrderedStep.RECONCILE, gone, batch_id="b3")
    assert check.blocking == [] and [b.batch_id for b in check.passed] == ["b1", "b2"]
    assert "earlier batch b1 is not decided, and its run run-b1 is no longer running" in caplog.text


def test_only_earlier_batches_count_and_a_batch_never_waits_for_itself(kit) -> None:
    batches(kit, ("b1", "landed"), ("b2", "landed"), ("b3", "landed"))
    running = states(**{"run-b1": "running", "run-b2": "running", "run-b3": "running"})
    assert blocking(kit, OrderedStep.RECONCILE, "b1", running) == []  # b2 and b3 came later
    assert blocking(kit, OrderedStep.RECONCILE, "b3", running) == ["b1", "b2"]


def test_decided_batches_and_batches_past_the_horizon_hold_nothing(kit, routing) -> None:
    batches(kit, ("old", "landed"), ("b1", "landed"), ("b2", "landed"))
    with kit.engine.begin() as conn:
        conn.execute(update(batch).where(batch.c.batch_id == "old").values(created_at=T0 - timedelta(hours=3)))
    reconcile_batch(kit.engine, "b1", routing)
    assert blocking(kit, OrderedStep.RECONCILE, "b2", states(**{"run-old": "running", "run-b1": "running"})) == []


def test_a_pull_waits_for_an_earlier_batch_still_pulling_but_not_for_its_own(kit) -> None:
    batches(kit, ("b1", "pulling"), ("b2", "pulling"))
    running = states(**{"run-b1": "running", "run-b2": "running"})
    assert blocking(kit, OrderedStep.PULL, "b2", running) == ["b1"]  # b2's retry resumes its own pull
    assert blocking(kit, OrderedStep.PULL, "b9", running) == ["b1", "b2"]  # a new run's pull: no batch yet
    with kit.engine.begin() as conn:
        conn.execute(update(batch).where(batch.c.batch_id == "b1").values(state="landed"))
    assert blocking(kit, OrderedStep.PULL, "b2", running) == []  # a landed batch holds no pull back


def test_a_step_that_must_wait_is_rescheduled_not_failed(kit, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowRescheduleException

    from include.triggerflow.runtime import ORDER_RECHECK_S, wait_for_earlier_batches

    batches(kit, ("b1", "landed"), ("b2", "landed"))
    context = {"ti": SimpleNamespace(get_dagrun_state=states(**{"run-b1": "running"})),
               "dag_run": SimpleNamespace(dag_id="trigger_emails")}
    before = datetime.now(UTC)
    with pytest.raises(AirflowRescheduleException) as raised:
        wait_for_earlier_batches(kit.engine, context, "reconcile", "b2")
    assert before + timedelta(seconds=ORDER_RECHECK_S - 1) <= raised.value.reschedule_date
    wait_for_earlier_batches(kit.engine, context, "reconcile", "b1")  # nothing before b1: returns


def test_reconcile_records_when_it_decided_the_batch_and_old_stores_count_as_decided(kit, routing) -> None:
    batches(kit, ("b1", "landed"), ("b2", "landed"))
    reconcile_batch(kit.engine, "b1", routing)
    with kit.engine.begin() as conn:
        decided = dict(conn.execute(select(batch.c.batch_id, batch.c.reconciled_at)).all())
        assert decided["b1"] is not None and decided["b2"] is None
        backfill_reconciled_at(conn)  # migration 0013 on a store of an earlier version
        assert all(conn.execute(select(batch.c.reconciled_at)).scalars())
