"""Latency percentiles and the oldest waiting trigger (real store). The SLA alert itself is tested
with the other alerts: tests/unit/alerts/ and tests/e2e/test_sla_alert.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, update

from include.triggerflow.sla import latency_summary, oldest_waiting, percentile
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.store.schema import send, send_log
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
