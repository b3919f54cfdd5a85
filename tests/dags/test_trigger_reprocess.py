"""trigger_reprocess: parsing the DAG file gives the same serialised DAG whatever the time, and
the run's time range is resolved when it runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pendulum
import pytest

from include.triggerflow.stages.reprocess import DEFAULT_LOOKBACK, time_range

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


def serialised(monkeypatch: pytest.MonkeyPatch, at: pendulum.DateTime) -> str:
    """trigger_reprocess parsed (a fresh DagBag re-executes the file) with the clock at ``at``,
    serialised as the DAG processor stores it."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    monkeypatch.setattr(pendulum, "now", lambda tz=None: at.in_tz(tz or "UTC"))
    bag = DagBag(dag_folder=str(DAGS_DIR / "trigger_reprocess.py"))
    assert bag.import_errors == {}
    return json.dumps(DagSerialization.to_dict(bag.dags["trigger_reprocess"]), sort_keys=True, default=str)


def test_the_serialised_dag_does_not_change_with_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    first = serialised(monkeypatch, pendulum.datetime(2026, 3, 1, 12, 30, tz="UTC"))
    later = serialised(monkeypatch, pendulum.datetime(2026, 3, 2, 17, 45, tz="UTC"))
    assert first == later


def test_the_map_index_names_the_batch_count() -> None:
    """The mapped task is named from its own argument: Airflow renders map_index_template with
    the unmapped task (holding this instance's op_kwargs) as ``task``."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS_DIR / "trigger_reprocess.py")).dags["trigger_reprocess"]
    task = dag.get_task("reprocess")
    unmapped = task.unmap({"op_kwargs": {"batch_ids": ["b1", "b2", "b3"]}})
    assert dag.get_template_env().from_string(task.map_index_template).render({"task": unmapped}) == "3 batches"


NOW = datetime(2026, 3, 2, 17, 45, 12, tzinfo=UTC)


def test_an_empty_since_is_the_last_day_from_the_start_of_its_hour() -> None:
    assert DEFAULT_LOOKBACK.total_seconds() == 86_400
    assert time_range(None, None, NOW) == (datetime(2026, 3, 1, 17, 0, tzinfo=UTC), NOW)
    assert time_range("", "", NOW) == (datetime(2026, 3, 1, 17, 0, tzinfo=UTC), NOW)


def test_given_times_are_taken_as_utc() -> None:
    assert time_range("2026-03-01T10:00:00+02:00", "2026-03-01T12:00:00", NOW) == (
        datetime(2026, 3, 1, 8, 0, tzinfo=UTC), datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    )
