"""trigger_maintenance for real: the DAG through dag.test() on the test's store (SQLite, or
PostgreSQL with TRIGGERFLOW_TEST_PG_URL) and the test's Airflow metadata DB, including
``airflow db clean`` run as the task runs it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from tests.maintenance_support import History

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "trigger_maintenance.py"))
    assert bag.import_errors == {}
    return bag.get_dag("trigger_maintenance")


@pytest.fixture
def store_conn(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_DB", json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": store_url}}))


def test_the_dag_purges_the_store_and_records_what_it_did(airflow_db: Path, store_engine, store_conn) -> None:
    from airflow.utils.state import DagRunState

    from include.triggerflow.store.schema import batch, event, maintenance, send

    history = History(store_engine)
    history.batch("old", 4)
    history.batch("failed", 4, balanced=False)
    history.batch("new", 1)
    run = load_dag().test(run_conf={"metadata_days": 0})
    assert run.state == DagRunState.SUCCESS
    assert history.count(event, event.c.batch_id == "old") == 0
    assert history.count(event, event.c.batch_id == "failed") == 3  # its run failed: kept for a replay
    assert history.count(event, event.c.batch_id == "new") == 3
    assert history.count(send) == 3 and history.count(batch) == 3
    with store_engine.connect() as conn:
        rows = conn.execute(
            select(maintenance.c.table_name, maintenance.c.action, maintenance.c.rows).where(maintenance.c.run_id == run.run_id)
        ).all()
    got = {(t, a): n for t, a, n in rows}
    assert got[("tf_event", "delete")] == 3 and got[("tf_batch", "kept")] == 1
    assert not any(a == "db-clean" for _, a, _ in rows)  # metadata_days 0: switched off


def test_a_dry_run_of_the_dag_deletes_nothing(airflow_db: Path, store_engine, store_conn) -> None:
    from airflow.utils.state import DagRunState

    from include.triggerflow.store.schema import event

    history = History(store_engine)
    history.batch("old", 4)
    run = load_dag().test(run_conf={"dry_run": True, "metadata_days": 0})
    assert run.state == DagRunState.SUCCESS
    assert history.count(event) == 3


def test_db_clean_removes_old_runs_and_keeps_recent_ones(airflow_db: Path, store_engine, store_conn) -> None:
    from airflow.models import DagRun, TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    from include.triggerflow.store.schema import maintenance

    dag = load_dag()
    now = datetime.now(UTC).replace(microsecond=0)
    old = [dag.test(logical_date=now - timedelta(days=d), run_conf={"dry_run": True, "metadata_days": 0}) for d in (60, 45)]
    recent = dag.test(logical_date=now - timedelta(days=2), run_conf={"dry_run": True, "metadata_days": 0})
    # dag.test() runs them now; db clean judges runs by when they ran (start_date), so they are
    # made to have run at their logical dates, as a scheduler would have run them
    with create_session() as session:
        for run in (*old, recent):
            at = run.logical_date
            for model, column in ((DagRun, DagRun.run_id), (TaskInstance, TaskInstance.run_id)):
                session.execute(
                    update(model).where(model.dag_id == "trigger_maintenance", column == run.run_id)
                    .values(start_date=at, end_date=at + timedelta(minutes=1))
                )
            session.execute(update(XComModel).where(XComModel.run_id == run.run_id).values(timestamp=at))
    current = dag.test(logical_date=now, run_conf={"dry_run": False, "metadata_days": 30})
    assert current.state == DagRunState.SUCCESS
    with create_session() as session:
        run_ids = set(session.scalars(select(DagRun.run_id).where(DagRun.dag_id == "trigger_maintenance")))
        tis = set(session.scalars(select(TaskInstance.run_id).where(TaskInstance.dag_id == "trigger_maintenance")))
    assert {r.run_id for r in old}.isdisjoint(run_ids)
    assert {r.run_id for r in old}.isdisjoint(tis)
    assert {recent.run_id, current.run_id} <= run_ids
    with store_engine.connect() as conn:
        [(detail, cutoff, rows)] = conn.execute(
            select(maintenance.c.detail, maintenance.c.cutoff, maintenance.c.rows).where(maintenance.c.action == "db-clean")
        ).all()
    assert detail.startswith("exit 0") and "dag_run" in detail
    assert rows >= 2 + 4  # the two old runs and their task instances (with their XComs)
    assert abs((cutoff - (now - timedelta(days=30))).total_seconds()) < 3600
