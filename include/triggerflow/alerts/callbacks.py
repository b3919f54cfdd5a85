"""The DAG's task-level ``on_failure_callback``: a task failed for good, so its run failed.

Task-level, not DAG-level: in Airflow 3.3 a DAG's ``on_failure_callback`` runs in the DAG
processor, away from the task's connections, while a task's runs in the task's own process after
its last try — where the store's connection is at hand. Airflow calls it only on the final
failure (a try that will be retried calls ``on_retry_callback``), and not for tasks that never ran
because an upstream failed, so a run is recorded once per failing task (and counted once).
Importable from include/ (never defined in the DAG file), and it never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def on_task_failure(context: Mapping[str, Any]) -> None:
    try:
        from include.triggerflow.alerts.checks import task_failed
        from include.triggerflow.runtime import alerter, store_engine

        exc = context.get("exception")
        error = "unknown error" if exc is None else f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ti = context.get("ti") or context.get("task_instance")
        task_id = str(getattr(ti, "task_id", "?"))
        task_failed(alerter(store_engine(), context), task_id, error)
    except Exception:
        log.exception("the failure callback could not record the failed run")
