"""Overlapping runs pull and decide one batch at a time, in landing order (stages/batch_order.py).
The run states are a fake (Airflow's answer to ``get_dagrun_state``); sleeping and the clock are
the test's, so a wait is a loop the test drives."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from include.triggerflow.stages.batch_order import (
    EarlierBatchPending,
    OrderedStep,
    backfill_reconciled_at,
    wait_for_earlier_batches,
)
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.store.schema import batch

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


def batches(kit, *specs: tuple[str, str]) -> None:
    """(batch id, state) in landing order, a minute apart; none decided yet."""
    for i, (batch_id, state) in enumerate(specs):
        kit.add_batch(batch_id, state=state)
        with kit.engine.begin() as conn:
            conn.execute(update(batch).where(batch.c.batch_id == batch_id).values(created_at=T0 + timedelta(minutes=i)))


class Driver:
    """The fake clock and sleep: each sleep advances the clock and may change the world."""

    def __init__(self, on_sleep=None) -> None:
        self.now = 0.0
        self.sleeps = 0
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(self.sleeps)


def states(**by_run: str):
    return lambda dag_id, run_id: by_run.get(run_id, "success")


def wait(kit, step: OrderedStep, batch_id: str | None, run_state, driver: Driver, timeout_s: float = 30.0):
    return wait_for_earlier_batches(kit.engine, "trigger_emails", step, run_state, batch_id=batch_id,
                                    timeout_s=timeout_s, poll_s=1.0, sleep=driver.sleep, clock=driver.clock)


def test_a_batch_waits_for_the_earlier_batch_of_a_running_run_then_goes(kit, routing) -> None:
    batches(kit, ("b1", "landed"), ("b2", "landed"))
    # b1's run decides its batch while b2's reconcile waits (on the third poll)
    driver = Driver(on_sleep=lambda n: n == 3 and reconcile_batch(kit.engine, "b1", routing))

    passed = wait(kit, OrderedStep.RECONCILE, "b2", states(**{"run-b1": "running"}), driver)

    assert passed == [] and driver.sleeps == 3


def test_the_wait_gives_up_with_an_error_naming_the_earlier_batch(kit) -> None:
    batches(kit, ("b1", "landed"), ("b2", "landed"))
    driver = Driver()
    with pytest.raises(EarlierBatchPending, match=r"reconcile of b2 waited 30 s for the earlier batch b1 \(run run-b1"):
        wait(kit, OrderedStep.RECONCILE, "b2", states(**{"run-b1": "queued"}), driver)
    assert driver.sleeps == 30


def test_an_earlier_batch_of_a_run_that_ended_does_not_hold_later_ones(kit, caplog: pytest.LogCaptureFixture) -> None:
    batches(kit, ("b1", "landed"), ("b2", "landed"), ("b3", "landed"))

    def gone(dag_id: str, run_id: str) -> str:
        if run_id == "run-b2":
            raise LookupError("no such run (metadata cleaned)")
        return "failed"

    with caplog.at_level(logging.WARNING):
        passed = wait(kit, OrderedStep.RECONCILE, "b3", gone, Driver())
    assert [b.batch_id for b in passed] == ["b1", "b2"]
    assert "earlier batch b1 is not decided, and its run run-b1 is no longer running" in caplog.text


def test_only_earlier_batches_count_and_a_batch_never_waits_for_itself(kit) -> None:
    batches(kit, ("b1", "landed"), ("b2", "landed"), ("b3", "landed"))
    running = states(**{"run-b1": "running", "run-b2": "running", "run-b3": "running"})
    assert wait(kit, OrderedStep.RECONCILE, "b1", running, Driver()) == []  # nothing before b1; b2, b3 are later
    with pytest.raises(EarlierBatchPending, match="earlier batch b1"):
        wait(kit, OrderedStep.RECONCILE, "b3", running, Driver(), timeout_s=2)


def test_decided_batches_and_batches_past_the_horizon_do_not_hold_anything(kit, routing) -> None:
    batches(kit, ("old", "landed"), ("b1", "landed"), ("b2", "landed"))
    with kit.engine.begin() as conn:
        conn.execute(update(batch).where(batch.c.batch_id == "old").values(created_at=T0 - timedelta(hours=3)))
    reconcile_batch(kit.engine, "b1", routing)
    running = states(**{"run-old": "running", "run-b1": "running"})
    assert wait(kit, OrderedStep.RECONCILE, "b2", running, Driver()) == []


def test_a_pull_waits_for_an_earlier_batch_still_pulling_but_not_for_its_own(kit) -> None:
    batches(kit, ("b1", "pulling"), ("b2", "pulling"))
    running = states(**{"run-b1": "running", "run-b2": "running"})
    # b2's retry resumes its own pull: only b1 (still pulling, run running) holds it back
    with pytest.raises(EarlierBatchPending, match="pull of b2 waited 3 s for the earlier batch b1"):
        wait(kit, OrderedStep.PULL, "b2", running, Driver(), timeout_s=3)
    # a new run's pull (no batch yet) waits for both; a landed batch holds no pull back
    with kit.engine.begin() as conn:
        conn.execute(update(batch).where(batch.c.batch_id == "b1").values(state="landed"))
    assert wait(kit, OrderedStep.PULL, "b1", running, Driver()) == []
    with pytest.raises(EarlierBatchPending, match="earlier batch b2"):
        wait(kit, OrderedStep.PULL, "b9", running, Driver(), timeout_s=1)


def test_reconcile_records_when_it_decided_the_batch_and_old_stores_count_as_decided(kit, routing) -> None:
    batches(kit, ("b1", "landed"), ("b2", "landed"))
    reconcile_batch(kit.engine, "b1", routing)
    with kit.engine.begin() as conn:
        decided = dict(conn.execute(select(batch.c.batch_id, batch.c.reconciled_at)).all())
        assert decided["b1"] is not None and decided["b2"] is None
        backfill_reconciled_at(conn)  # migration 0013 on a store of an earlier version
        assert all(conn.execute(select(batch.c.reconciled_at)).scalars())
