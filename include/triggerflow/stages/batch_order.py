"""Runs overlap, batches do not: pulls and decisions happen one batch at a time, in landing order.

With ``max_active_runs`` above 1 the next minute's run lands and decides its batch while the
previous run is still sending. Two steps must stay serial and ordered for the source position,
the dedup window and the frequency cap to stay exact:

* **pull**: Airflow runs at most one ``pull_and_land`` at a time (``max_active_tis_per_dag=1``),
  and a pull does not start while an earlier batch of the DAG is still ``pulling`` (a pull that
  died mid-batch and waits for its retry): otherwise the earlier batch, resumed later, would hold
  messages landed after the newer batch's.
* **reconcile**: one at a time too, and a batch is decided only after every batch landed before
  it (``tf_batch.created_at``, pulls being serial) has been decided (``tf_batch.reconciled_at``).
  Reconcile reads the customer's earlier emails from the ledger (every state but ``failed``
  counts), so batch *n + 1*'s frequency cap and dedup window see batch *n*'s queued emails even
  while they are still being sent; within a batch, events are decided in trigger-time order.

A step that has to wait does not hold its worker slot (nor the step's one-at-a-time slot, which
the earlier batch's own retry needs): the task is rescheduled (``AirflowRescheduleException``,
Airflow's reschedule mode: the task instance shows ``up_for_reschedule`` and no retry is used)
and checks again a few seconds later (runtime.wait_for_earlier_batches).

An earlier batch whose run is no longer running (failed, or deleted by the metadata cleanup) does
not hold later batches back: it was not decided, and a clear of its run decides it when it runs
(as any replay does, after the batches decided since).

What asks Airflow whether a run is still going is a callable (the task's
``RuntimeTaskInstance.get_dagrun_state``; a fake in unit tests).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import Connection, Engine, and_, or_, select, update

from include.triggerflow.states import BatchState
from include.triggerflow.store.schema import batch
from include.triggerflow.timeutil import utcnow

log = logging.getLogger(__name__)

#: Airflow DAG run states in which an earlier batch can still be pulled or decided by its run
ACTIVE_RUN_STATES = frozenset({"queued", "running"})
#: earlier batches older than this are not waited for (no run lasts that long: dagrun_timeout)
HORIZON = timedelta(hours=2)


class OrderedStep(StrEnum):
    """The steps kept in landing order across overlapping runs."""

    PULL = "pull"
    RECONCILE = "reconcile"


@dataclass(frozen=True)
class EarlierBatch:
    batch_id: str
    run_id: str
    created_at: datetime


#: (dag_id, run_id) -> the run's state, or None when Airflow does not know the run
RunState = Callable[[str, str], "str | None"]


def earlier_unfinished(conn: Connection, dag_id: str, step: OrderedStep, *, batch_id: str | None,
                       now: datetime) -> list[EarlierBatch]:
    """This DAG's batches other than ``batch_id``, created before it (before now when it does not
    exist yet), that are still ``pulling`` (step PULL) or not decided (step RECONCILE), oldest first."""
    mine = None
    if batch_id is not None:
        mine = conn.execute(select(batch.c.created_at).where(batch.c.batch_id == batch_id)).scalar_one_or_none()
    conditions = [batch.c.dag_id == dag_id, batch.c.created_at >= now - HORIZON]
    if batch_id is not None:
        conditions.append(batch.c.batch_id != batch_id)
    if mine is not None:
        conditions.append(or_(batch.c.created_at < mine, and_(batch.c.created_at == mine, batch.c.batch_id < batch_id)))
    if step is OrderedStep.PULL:
        conditions.append(batch.c.state == BatchState.PULLING)
    else:
        conditions.append(batch.c.reconciled_at.is_(None))
    rows = conn.execute(
        select(batch.c.batch_id, batch.c.run_id, batch.c.created_at).where(*conditions).order_by(batch.c.created_at, batch.c.batch_id)
    ).all()
    return [EarlierBatch(r.batch_id, r.run_id, r.created_at) for r in rows]


@dataclass(frozen=True)
class OrderCheck:
    """What stands before a batch's step: earlier batches of runs still going (wait for them) and
    earlier batches of runs that ended (passed over)."""

    blocking: list[EarlierBatch]
    passed: list[EarlierBatch]


def check_earlier_batches(engine: Engine, dag_id: str, step: OrderedStep, run_state: RunState, *,
                          batch_id: str | None = None) -> OrderCheck:
    """Which earlier batches of this DAG ``step`` of ``batch_id`` has to wait for: those still
    ``pulling`` / not decided whose runs are still going. The ones of runs that ended are passed
    over (logged as warnings)."""
    with engine.connect() as conn:
        earlier = earlier_unfinished(conn, dag_id, step, batch_id=batch_id, now=utcnow())
    blocking: list[EarlierBatch] = []
    passed: list[EarlierBatch] = []
    for other in earlier:
        (blocking if run_going(run_state, dag_id, other.run_id) else passed).append(other)
    if blocking:
        first = blocking[0]
        log.info("%s of %s waits for the earlier batch %s (run %s, still going) to be %s first", step,
                 batch_id or "this run", first.batch_id, first.run_id, _done(step))
    else:
        for other in passed:
            log.warning("%s of %s: earlier batch %s is not %s, and its run %s is no longer running: going ahead "
                        "(a clear of that run %s it later)", step, batch_id or "this run", other.batch_id, _done(step),
                        other.run_id, "pulls" if step is OrderedStep.PULL else "decides")
    return OrderCheck(blocking, passed)


def _done(step: OrderedStep) -> str:
    return "landed" if step is OrderedStep.PULL else "decided"


def run_going(run_state: RunState, dag_id: str, run_id: str) -> bool:
    """Whether Airflow says the DAG run is still queued or running. A run it does not know (deleted
    by the metadata cleanup, a dag.test run replaced) or cannot answer about counts as over: its
    batch or chunk lease holds nothing back."""
    try:
        state = run_state(dag_id, run_id)
    except Exception as exc:
        log.info("state of run %s not known (%s): taken as over", run_id, exc.__class__.__name__)
        return False
    return state is not None and str(getattr(state, "value", state)) in ACTIVE_RUN_STATES


def backfill_reconciled_at(conn: Connection) -> None:
    """Migration 0013's data step: batches stored before the column existed were decided by the
    runs of their time (or their runs are long over): none of them holds a later batch back."""
    conn.execute(update(batch).where(batch.c.reconciled_at.is_(None)).values(reconciled_at=batch.c.created_at))
