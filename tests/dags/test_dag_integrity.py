"""DAG integrity: dags/ imports cleanly and trigger_emails is wired as documented. (That importing
the DAG file stays light is checked in a fresh interpreter: tests/integration/dags/.)

Parsed with Airflow's DagBag (no metadata DB needed: the DAG is read from ``bag.dags``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pendulum
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAGS_DIR = PROJECT_ROOT / "dags"
DAG_FILE = DAGS_DIR / "trigger_emails.py"


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    # include_examples is gone in Airflow 3.3 (TypeError); examples are off via the test config.
    return DagBag(dag_folder=str(DAGS_DIR))


@pytest.fixture(scope="module")
def dag(bag):
    return bag.dags["trigger_emails"]


def test_no_import_errors(bag) -> None:
    assert bag.import_errors == {}
    assert "trigger_emails" in bag.dag_ids


def test_one_minute_data_interval_timetable(dag) -> None:
    from airflow.sdk import CronDataIntervalTimetable
    from airflow.timetables.interval import CronDataIntervalTimetable as CoreCronDataIntervalTimetable

    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.timetable.expression == "* * * * *"
    # the scheduler's view of the same timetable: each run covers the minute before it
    core = CoreCronDataIntervalTimetable(dag.timetable.expression, dag.timetable.timezone)
    interval = core.infer_manual_data_interval(run_after=pendulum.datetime(2026, 3, 1, 12, 0, 30, tz="UTC"))
    assert (interval.start, interval.end) == (
        pendulum.datetime(2026, 3, 1, 11, 59, tz="UTC"), pendulum.datetime(2026, 3, 1, 12, 0, tz="UTC")
    )
    assert interval.end - interval.start == timedelta(minutes=1)


def test_run_settings(dag) -> None:
    # runs overlap; the pull and the decisions do not (README "Overlapping runs")
    assert dag.max_active_runs == 2
    assert {t: dag.get_task(t).max_active_tis_per_dag for t in ("pull_and_land", "validate", "reconcile")} == {
        "pull_and_land": 1, "validate": None, "reconcile": 1}
    assert dag.catchup is False
    assert dag.default_args["retries"] >= 2
    assert dag.dagrun_timeout == timedelta(minutes=30)
    assert set(dag.tags) == {"triggerflow", "adobe", "email"}
    assert dag.doc_md and "trigger_emails" in dag.doc_md and "pull_and_land" in dag.doc_md
    assert {name: dag.params[name] for name in ("max_events", "chunk_size", "max_chunks")} == {
        "max_events": 50_000, "chunk_size": 2_000, "max_chunks": 8,
    }


def test_tasks_and_wiring(dag) -> None:
    assert set(dag.task_ids) == {"pull_and_land", "validate", "reconcile", "send", "report"}
    assert dag.get_task("validate").upstream_task_ids == {"pull_and_land"}
    assert dag.get_task("reconcile").upstream_task_ids == {"validate"}
    assert dag.get_task("send").upstream_task_ids == {"reconcile"}
    assert dag.get_task("report").upstream_task_ids == {"pull_and_land", "validate", "send"}
    assert dag.get_task("send").pool == "smtp_sessions"
    assert dag.get_task("report").retries == 0  # an unbalanced report fails once, loudly
    assert dag.get_task("pull_and_land").retries >= 2


def test_send_tasks_are_named_by_their_chunk(dag) -> None:
    """Airflow renders map_index_template with the unmapped task (holding this instance's
    op_kwargs) as ``task``: the chunk comes from the task's own argument."""
    send = dag.get_task("send")
    unmapped = send.unmap({"op_kwargs": {"batch_id": "b1", "chunk": 3}})
    assert dag.get_template_env().from_string(send.map_index_template).render({"task": unmapped}) == "chunk 3"
