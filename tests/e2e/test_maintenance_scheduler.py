"""trigger_maintenance under the real scheduler: ``clean_metadata`` runs ``airflow db clean`` from a
task process, where Airflow 3 replaces ``[database] sql_alchemy_conn`` with
``airflow-db-not-allowed:///``. The metadata URL reaches the CLI through connection
``airflow_metadata`` (devstack.airflow_stack defines it, as a deployment would), and the CLI
really cleans the stack's metadata: an earlier run of the DAG is gone afterwards.

(``dag.test()`` runs tasks in the test's own process, where the setting is not hidden: the
integration tests of the DAG cannot show this.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from devstack.airflow_stack import AirflowStackError, airflow_standalone
from tests.e2e.fault_helpers import metadata_db

pytestmark = pytest.mark.e2e

DAG_ID = "trigger_maintenance"
#: ~8.6 s: runs of this DAG that started longer ago than this are cleaned
TINY_DAYS = 0.0001


def test_clean_metadata_reaches_the_metadata_db_from_a_task_process(tmp_path: Path, store_url: str, store_engine) -> None:
    from include.triggerflow.store.schema import maintenance

    env = {"AIRFLOW_CONN_TRIGGERS_DB": json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": store_url}})}
    with metadata_db() as metadata_url, airflow_standalone(tmp_path / "airflow", env_overrides=env, metadata_url=metadata_url) as af:
        first = af.trigger(DAG_ID, conf={"metadata_days": 0})
        assert af.wait_run(DAG_ID, first, timeout=180) == "success", af.log_tail()
        time.sleep(TINY_DAYS * 86_400 + 3)  # the first run is now older than the cutoff

        # metadata_days is never below the failed-batch window, nor that below the batch window
        # (plan.py): all of them tiny here; the store is empty.
        tiny = dict.fromkeys(("metadata_days", "failed_batch_days", "event_days", "decision_days"), TINY_DAYS)
        second = af.trigger(DAG_ID, conf=tiny)
        state = af.wait_run(DAG_ID, second, timeout=180)
        tries = af.task_tries(DAG_ID, second, "clean_metadata")
        assert state == "success", (tries, af.log_tail())
        assert [t["state"] for t in tries] == ["success"]  # first try: no retry papering over a failure

        with pytest.raises(AirflowStackError, match="404"):
            af.run(DAG_ID, first)  # deleted by airflow db clean
        assert af.run(DAG_ID, second)["state"] == "success"  # the latest run of a DAG is always kept

    with store_engine.connect() as conn:
        rows = conn.execute(
            select(maintenance.c.action, maintenance.c.detail).where(
                maintenance.c.run_id == second, maintenance.c.action == "db-clean"
            )
        ).all()
    assert len(rows) == 1 and rows[0].detail.startswith("exit 0"), rows
