"""SLA alert emails through TriggerMailHook and the real SMTP sink process (the unit test in
tests/unit/test_sla.py uses a fake mail session)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from include.triggerflow.alerts import fire_sla_alert
from include.triggerflow.hooks.smtp import TriggerMailHook
from include.triggerflow.store.schema import alert

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_an_alert_is_recorded_emailed_once_and_not_again_until_renotify(kit, smtp) -> None:
    common = dict(dag_id="trigger_emails", run_id="r1", batch_id="b1", where="send ledger", threshold_s=1800.0,
                  recipients=["ops@shop.example", "oncall@shop.example"], open_session=TriggerMailHook)
    first = fire_sla_alert(kit.engine, age_s=2400.0, now=NOW, **common)
    assert first["notified"] == "emailed ops@shop.example, oncall@shop.example"
    assert "40.0 min old" in first["detail"]
    mails = smtp.wait_for(2)
    assert sorted(m["To"] for m in mails) == ["oncall@shop.example", "ops@shop.example"]
    assert mails[0]["Subject"] == "[triggerflow] SLA alert: trigger_emails is falling behind"
    again = fire_sla_alert(kit.engine, age_s=2500.0, now=NOW + timedelta(minutes=1), **common)
    assert again["notified"].startswith("not emailed again: last email at 2026-12-01T12:00:00")
    later = fire_sla_alert(kit.engine, age_s=4000.0, now=NOW + timedelta(minutes=31), **common)
    assert later["notified"].startswith("emailed ")
    assert len(smtp.wait_for(4)) == 4
    nobody = fire_sla_alert(kit.engine, age_s=4000.0, now=NOW + timedelta(minutes=90), **{**common, "recipients": []})
    assert nobody["notified"] == "nobody: set the Airflow Variable triggerflow_alert_emails to be emailed"
    assert [r["notified"][:7] for r in kit.rows(alert, order_by=alert.c.alert_id)] == ["emailed", "not ema", "emailed", "nobody:"]


