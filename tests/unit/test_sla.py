"""Latency percentiles, the oldest waiting trigger, and SLA alerts (real store; alert emails go to a
fake mail session here, through the real SMTP sink in tests/integration/test_sla.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message

import pytest
from sqlalchemy import insert, update

from include.triggerflow.alerts import fire_sla_alert
from include.triggerflow.sla import latency_summary, oldest_waiting, percentile
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.store.schema import alert, send, send_log
from tests.fixtures import envelope_json

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MS = int(NOW.timestamp() * 1000)


def test_percentiles_are_nearest_rank_of_observed_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99), percentile(values, 100)) == (50, 95, 99, 100)
    assert latency_summary([3.0, 1.0, 2.0]) == {"count": 3, "p50": 2.0, "p95": 3.0, "p99": 3.0, "max": 3.0}
    assert latency_summary([])["count"] == 0
    with pytest.raises(ValueError):
        percentile([], 50)


def _queue(kit, routing, batch: str, shopper: str, ts_ms: int) -> None:
    kit.add_batch(batch)
    kit.add_event(batch, envelope_json(shopper_id=shopper, triggered_at_ms=ts_ms))
    reconcile_batch(kit.engine, batch, routing, now=NOW)


def test_oldest_waiting_looks_in_the_ledger_the_source_and_unprocessed_batches(kit, routing, demo_catalog) -> None:
    kit.add_profiles({"customer_id": "C1", "email": "ada@example.com", "shopper_id": "SHOP-ADA"})
    assert oldest_waiting(kit.engine, "none", source_capped=False, now=NOW) == {"age_s": None, "where": None}
    _queue(kit, routing, "b1", "SHOP-ADA", MS - 600_000)  # a pending ledger row, 10 min old
    got = oldest_waiting(kit.engine, "b2", source_capped=False, now=NOW)
    assert got == {"age_s": 600.0, "where": "send ledger (pending, deferred or sending)"}
    with kit.engine.begin() as conn:  # sent: no longer waiting; held for quiet hours: waiting by rule
        conn.execute(update(send).values(state="scheduled"))
    assert oldest_waiting(kit.engine, "b2", source_capped=False, now=NOW)["age_s"] is None
    # another batch landed, never validated (its run failed): 20 min old
    kit.add_batch("b0")
    kit.add_event("b0", envelope_json(shopper_id="SHOP-ADA", triggered_at_ms=MS - 1_200_000), status="landed")
    assert oldest_waiting(kit.engine, "b2", source_capped=False, now=NOW)["age_s"] == 1200.0
    # this run's pull stopped at max_events: the next message in the source is about as old as
    # the newest one pulled (45 min here)
    kit.add_batch("b2")
    kit.add_event("b2", envelope_json(shopper_id="SHOP-ADA", triggered_at_ms=MS - 2_700_000))
    capped = oldest_waiting(kit.engine, "b2", source_capped=True, now=NOW)
    assert capped == {"age_s": 2700.0, "where": "source (the pull stopped at max_events)"}


class FakeMailSession:
    """A MailSession (stages.send) that keeps the messages instead of speaking SMTP."""

    sender = "alerts@shop.example"
    from_name = None
    message_id_domain = "shop.example"

    def __init__(self, outbox: list[Message]) -> None:
        self.outbox = outbox

    def __enter__(self) -> FakeMailSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def send_prepared(self, recipient: str, message: bytes) -> None:
        self.outbox.append(message_from_bytes(message))


def test_an_alert_is_recorded_emailed_once_and_not_again_until_renotify(kit) -> None:
    outbox: list[Message] = []
    common = dict(dag_id="trigger_emails", run_id="r1", batch_id="b1", where="send ledger", threshold_s=1800.0,
                  recipients=["ops@shop.example", "oncall@shop.example"], open_session=lambda: FakeMailSession(outbox))
    first = fire_sla_alert(kit.engine, age_s=2400.0, now=NOW, **common)
    assert first["notified"] == "emailed ops@shop.example, oncall@shop.example"
    assert "40.0 min old" in first["detail"]
    assert sorted(m["To"] for m in outbox) == ["oncall@shop.example", "ops@shop.example"]
    assert outbox[0]["Subject"] == "[triggerflow] SLA alert: trigger_emails is falling behind"
    again = fire_sla_alert(kit.engine, age_s=2500.0, now=NOW + timedelta(minutes=1), **common)
    assert again["notified"].startswith("not emailed again: last email at 2026-12-01T12:00:00")
    assert len(outbox) == 2
    later = fire_sla_alert(kit.engine, age_s=4000.0, now=NOW + timedelta(minutes=31), **common)
    assert later["notified"].startswith("emailed ")
    assert len(outbox) == 4
    nobody = fire_sla_alert(kit.engine, age_s=4000.0, now=NOW + timedelta(minutes=90), **{**common, "recipients": []})
    assert nobody["notified"] == "nobody: set the Airflow Variable triggerflow_alert_emails to be emailed"
    no_session = fire_sla_alert(kit.engine, age_s=4000.0, now=NOW + timedelta(minutes=150), **{**common, "open_session": None})
    assert no_session["notified"] == "nobody: no mail session"
    assert [r["notified"][:7] for r in kit.rows(alert, order_by=alert.c.alert_id)] == [
        "emailed", "not ema", "emailed", "nobody:", "nobody:"]


def test_run_latencies_come_from_this_runs_send_log(kit, routing, demo_catalog) -> None:
    from include.triggerflow.sla import run_latencies

    kit.add_profiles({"customer_id": "C1", "email": "ada@example.com", "shopper_id": "SHOP-ADA"})
    _queue(kit, routing, "b1", "SHOP-ADA", MS - 42_000)
    [row] = kit.rows(send)
    with kit.engine.begin() as conn:
        conn.execute(insert(send_log).values(send_id=row["send_id"], batch_id="b1", run_id="r1", try_number=1,
                                             action="sent", smtp_code=250, at=NOW))
        conn.execute(insert(send_log).values(send_id=row["send_id"], batch_id="b1", run_id="r0", try_number=1,
                                             action="deferred", smtp_code=451, at=NOW))
    assert run_latencies(kit.engine, "r1") == [42.0]
    assert run_latencies(kit.engine, "r0") == []
