"""The SLA alert path end to end: a backlog in the source whose oldest trigger is older than the
threshold fires the alert from the run's report — recorded in tf_alert, written in the report,
and emailed to the Variable triggerflow_alert_emails through the real SMTP server.

The backlog is made the way it happens in production: more triggers wait than one run may pull
(``max_events``), and they fired minutes ago. The threshold is lowered to one minute for the test.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from devstack.messages import load_demo_catalog
from devstack.processes import start_emulator, start_smtp_sink
from include.triggerflow.profiles import upsert_profiles
from tests.e2e.fault_helpers import connection_env, customers, load_dag, triggers_for

pytestmark = pytest.mark.e2e


def test_a_backlog_older_than_the_threshold_fires_the_sla_alert(
    tmp_path: Path, airflow_db: Path, store_url: str, store_engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.utils.state import DagRunState

    from include.triggerflow.store.schema import alert, run_summary

    people = customers(3)
    with start_emulator(log_path=tmp_path / "emu.log") as emu, start_smtp_sink(tmp_path / "outbox", log_path=tmp_path / "smtp.log") as smtp:
        for key, value in connection_env(emu, smtp, store_url).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AIRFLOW_VAR_TRIGGERFLOW_ALERT_EMAILS", "ops@shop.test")
        upsert_profiles(store_engine, people)
        load_demo_catalog(store_engine)  # the shipped routes email only products the catalogue knows
        emu.client.publish(triggers_for(people, later_ms=-180_000))  # fired 5 minutes ago

        now = datetime.now(UTC).replace(second=0, microsecond=0)
        run = load_dag().test(logical_date=now - timedelta(minutes=3), run_conf={"max_events": 1, "sla_alert_minutes": 1})
        assert run.state == DagRunState.SUCCESS  # an SLA alert is not a failed run

        mails = smtp.wait_for(2)
        by_rcpt = {m["To"]: m for m in mails}
        assert sorted(by_rcpt) == ["c001@example.com", "ops@shop.test"]
        assert by_rcpt["ops@shop.test"]["Subject"] == "[triggerflow] SLA alert: trigger_emails is falling behind"
        body = by_rcpt["ops@shop.test"].get_body(preferencelist=("html",)).get_content()
        assert "in the source (the pull stopped at max_events)" in body

        with store_engine.connect() as conn:
            [row] = conn.execute(select(alert)).mappings().all()
            report = json.loads(conn.execute(select(run_summary.c.counts)).scalar_one())
        assert (row["kind"], row["subject"], row["run_id"], row["notified"]) == (
            "sla-breach", "trigger_emails", run.run_id, "emailed ops@shop.test")
        assert row["resolved_at"] is None  # active
        assert 240 < row["oldest_waiting_age_s"] < 600 and row["threshold_s"] == 60
        sla = report["sla"]
        assert sla["breached"] is True and sla["alert"]["alert_id"] == row["alert_id"]
        assert sla["waiting_where"] == "source (the pull stopped at max_events)"
        assert report["latency_s"]["count"] == 1 and report["latency_s"]["p50"] > 240

        # Drained (the next run takes the rest): nothing waits, no new alert.
        second = load_dag().test(logical_date=now - timedelta(minutes=2), run_conf={"max_events": 10, "sla_alert_minutes": 1})
        assert second.state == DagRunState.SUCCESS
        assert len(smtp.wait_for(4)) == 4  # the two other customers; no second alert email
        with store_engine.connect() as conn:
            [(alert_id, resolved_at)] = conn.execute(select(alert.c.alert_id, alert.c.resolved_at)).all()
        assert alert_id == row["alert_id"] and resolved_at is not None  # the drained backlog resolved it
