"""Glue between Airflow's task context and the stages: which batch, which engine, which config.

Kept out of the DAG file so the DAG reads like the data flow, and so a stage can be run from a
test or the CLI with the same wiring.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from include.triggerflow.stages.land import BatchRef

if TYPE_CHECKING:  # the DAG file imports this module: the rest is imported when a task runs
    from sqlalchemy import Engine

    from include.triggerflow.alerts.checks import Alerter
    from include.triggerflow.config import RoutingConfig
    from include.triggerflow.stages.send import SendOptions


def batch_ref(context: Mapping[str, Any]) -> BatchRef:
    """The batch of this run. Manual runs may have no logical date or interval in Airflow 3
    (the context then lacks ``data_interval_start``), so every key is read defensively."""
    dag_run = context["dag_run"]
    start = context.get("data_interval_start") or getattr(dag_run, "data_interval_start", None)
    end = context.get("data_interval_end") or getattr(dag_run, "data_interval_end", None)
    run_type = getattr(dag_run, "run_type", None)
    return BatchRef(
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        run_type=str(getattr(run_type, "value", run_type)) if run_type is not None else None,
        interval_start=_dt(start),
        interval_end=_dt(end),
    )


def _dt(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def store_engine() -> Engine:
    """The store engine from connection ``triggers_db``; creates missing tables."""
    from include.triggerflow.hooks.store import TriggersStoreHook
    from include.triggerflow.store.migrations import create_schema

    engine = TriggersStoreHook().get_conn()
    create_schema(engine)
    return engine


def send_options(context: Mapping[str, Any]) -> SendOptions:
    """The send stage's options from the run's params and the task instance's try."""
    import os
    from pathlib import Path

    from include.triggerflow.hooks.unsubscribe import UnsubscribeHook
    from include.triggerflow.stages.send import SendOptions

    params = context["params"]
    ti = context["ti"]
    unsubscribe = UnsubscribeHook()
    try_number = int(getattr(ti, "try_number", 1) or 1)
    max_tries = int(getattr(ti, "max_tries", 0) or 0)
    home = os.environ.get("AIRFLOW_HOME") or os.getcwd()
    return SendOptions(
        run_id=context["dag_run"].run_id,
        try_number=try_number,
        dry_run=bool(params.get("dry_run", False)),
        dry_run_dir=Path(os.environ.get("TRIGGERFLOW_DRY_RUN_DIR") or Path(home) / "triggerflow-dry-run"),
        force_resend=bool(params.get("force_resend", False)),
        ambiguous_policy=str(params.get("ambiguous_policy", "hold")),
        # Airflow retries while try_number <= max_tries; the last try keeps 4xx rows deferred.
        last_try=try_number > max_tries,
        unsubscribe=unsubscribe.get_links(),
        unsubscribe_mailto=unsubscribe.mailto,
        hard_bounce_suppress_days=(
            None if params.get("hard_bounce_suppress_days") in (None, "") else float(params["hard_bounce_suppress_days"])
        ),
        refusal_limit=int(params.get("refusal_limit", SendOptions.refusal_limit)),
        max_email_bytes=int(params.get("max_email_bytes", SendOptions.max_email_bytes)),
        group_size=send_group_size(params),
        lease_holder=f"{context['dag_run'].dag_id}|{context['dag_run'].run_id}",
        holder_running=lambda holder: _run_going(ti, holder),
    )


def _run_going(ti: Any, holder: str) -> bool:
    """Whether the DAG run behind a chunk lease (``dag_id|run_id``) is still queued or running."""
    from include.triggerflow.stages.batch_order import run_going

    dag_id, _, run_id = holder.partition("|")
    if not run_id:
        return True  # not a DAG run's lease (a CLI send): only its age frees it
    return run_going(ti.get_dagrun_state, dag_id, run_id)


def send_group_size(params: Mapping[str, Any]) -> int:
    """G for this run: the run's ``send_group_size``, else the SMTP connection's extra of that name,
    else the built-in default (ledger.DEFAULT_GROUP_SIZE)."""
    from include.triggerflow.hooks.smtp import TriggerMailHook
    from include.triggerflow.ledger import DEFAULT_GROUP_SIZE

    asked = params.get("send_group_size")
    if asked not in (None, ""):
        return int(asked)
    configured = TriggerMailHook().send_group_size
    return DEFAULT_GROUP_SIZE if configured is None else configured


#: how soon a step waiting for an earlier batch checks again (stages/batch_order.py)
ORDER_RECHECK_S = 5


def wait_for_earlier_batches(engine: Engine, context: Mapping[str, Any], step: str, batch_id: str) -> None:
    """Pull or decide only after the earlier batches of runs still going (stages/batch_order.py):
    while one is left, the task is rescheduled (its slot freed for the earlier batch's own task)."""
    from datetime import timedelta

    from airflow.sdk.exceptions import AirflowRescheduleException

    from include.triggerflow.stages.batch_order import OrderedStep, check_earlier_batches
    from include.triggerflow.timeutil import utcnow

    ti = context["ti"]
    # this run's own batch never waits for itself (a retry resuming its pull, a cleared reconcile)
    check = check_earlier_batches(engine, context["dag_run"].dag_id, OrderedStep(step), ti.get_dagrun_state,
                                  batch_id=batch_id)
    if check.blocking:
        raise AirflowRescheduleException(utcnow() + timedelta(seconds=ORDER_RECHECK_S))


def routing() -> RoutingConfig:
    from include.triggerflow.config import load_routing

    return load_routing()


def alerter(engine: Engine, context: Mapping[str, Any]) -> Alerter:
    """The run's alerter: fires and resolves alerts (include/triggerflow/alerts) with the
    thresholds from the run's Params, telling the channels configured in Airflow."""
    from include.triggerflow.alerts.checks import Alerter, AlertSettings

    dag_run = context["dag_run"]
    return Alerter(engine, dag_run.dag_id, dag_run.run_id, AlertSettings.from_params(context.get("params") or {}))
