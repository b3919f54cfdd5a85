"""trigger_maintenance is wired as documented: daily, one run at a time, the two tasks in order,
and every retention setting a Param whose default a deployment sets through the environment."""

from __future__ import annotations

import importlib
from dataclasses import fields
from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR / "trigger_maintenance.py"))
    assert bag.import_errors == {}
    return bag.dags["trigger_maintenance"]


def test_daily_one_run_at_a_time_purge_then_metadata() -> None:
    from airflow.sdk import CronTriggerTimetable

    dag = _dag()
    assert isinstance(dag.timetable, CronTriggerTimetable) and dag.timetable.expression == "17 3 * * *"
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.doc_md and "purge_store" in dag.doc_md and "clean_metadata" in dag.doc_md
    assert dag.get_task("clean_metadata").upstream_task_ids == {"purge_store"}


def test_every_setting_is_a_param_with_its_documented_default() -> None:
    from include.triggerflow.maintenance.settings import RetentionSettings

    params = _dag().params
    for f in fields(RetentionSettings):
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        assert params[f.name] == default, f.name
    assert params["dry_run"] is False and params["metadata_all_dags"] is False


def test_the_environment_sets_the_param_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIGGERFLOW_RETENTION_EVENT_DAYS", "5")
    monkeypatch.setenv("TRIGGERFLOW_RETENTION_METADATA_DAYS", "0")
    import dags.trigger_maintenance as module

    importlib.reload(module)
    params = module._params()
    assert params["event_days"].value == 5.0 and params["metadata_days"].value == 0.0
