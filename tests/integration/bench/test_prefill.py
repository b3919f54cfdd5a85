"""bench.prefill at a tiny scale on a real store: the history it writes is what the soak claims
(counts per table, shares, time spread, payloads, customers), and the store ends with every
index and constraint it had. PostgreSQL only (the rows are generated server-side): on SQLite the
pre-fill refuses to start."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from bench.prefill import prefill, store_sizes, table_rows
from include.triggerflow.store.engines import get_engine
from include.triggerflow.store.schema import decision, event, quarantine, send, send_log

NOW = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


def _catalog(engine) -> tuple[set[str], set[tuple[str, str]]]:
    with engine.connect() as conn:
        idx = {r[0] for r in conn.execute(text("SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema()"))}
        cons = {(r[0], r[1]) for r in conn.execute(text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = current_schema()::regnamespace"))}
    return idx, cons


def test_prefill_refuses_sqlite(store_engine) -> None:
    if store_engine.dialect.name != "sqlite":
        pytest.skip("the SQLite refusal; this run's store is PostgreSQL")
    with pytest.raises(SystemExit, match="PostgreSQL"):
        prefill(str(store_engine.url), hours=0.01, say=lambda m: None)


def test_prefill_writes_the_claimed_history_and_keeps_every_index(store_engine) -> None:
    if store_engine.dialect.name != "postgresql":
        pytest.skip("bench.prefill fills PostgreSQL stores only (set TRIGGERFLOW_TEST_PG_URL)")
    engine = store_engine
    # a row already there: the history's ids continue after it
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO tf_batch (batch_id, dag_id, run_id, source, state, pulled, created_at) "
            "VALUES ('b0', 'trigger_emails', 'r0', 's', 'landed', 1, now())"))
        conn.execute(text(
            "INSERT INTO tf_event (batch_id, source, src_partition, src_position, payload, received_at, status) "
            "VALUES ('b0', 's', 0, '1', '{}', now(), 'valid')"))
        first = conn.execute(select(func.max(event.c.event_id))).scalar_one()
    before = _catalog(engine)
    lines: list[str] = []
    result = prefill(str(engine.url), hours=0.06, rate_per_hour=100_000, profiles=500, span_days=2.5, end_age_h=25,
                     chunk_events=1_500, now=NOW, jobs=2, say=lines.append)
    total = 6_000
    assert result.events == total and result.batches == 4  # 1,667 a minute-run
    assert _catalog(engine) == before  # every index and constraint back, same definitions
    rows = table_rows(engine, ("tf_event", "tf_quarantine", "tf_decision", "tf_send", "tf_send_log", "tf_batch",
                               "tf_run_summary", "tf_unsubscribe"))
    assert rows["tf_event"] == total + 1
    assert rows["tf_quarantine"] == total // 100
    assert rows["tf_decision"] == total - total // 100
    assert rows["tf_send"] == rows["tf_send_log"] == total * 70 // 100
    assert rows["tf_batch"] == 4 + 1 and rows["tf_run_summary"] == 4
    assert rows["tf_unsubscribe"] == 5  # customers 42, 142, ... of 1..500
    assert any("events/s" in line for line in lines)  # progress output
    # VACUUM ran in autocommit; the pool it used hands out transactional connections again (a
    # connection left in autocommit made the soak's next reconcile commit statement by statement)
    pooled = get_engine(str(engine.url))
    held = [pooled.connect() for _ in range(max(1, pooled.pool.checkedin()))]  # type: ignore[attr-defined]
    try:
        assert [c.connection.dbapi_connection.autocommit for c in held] == [False] * len(held)
    finally:
        for c in held:
            c.close()
    with engine.connect() as conn:
        ids = conn.execute(select(func.min(event.c.event_id)).where(event.c.event_id > first)).scalar_one()
        assert ids == first + 1
        span = conn.execute(select(func.min(event.c.received_at), func.max(event.c.received_at)).where(event.c.batch_id != "b0")).one()
        assert NOW - timedelta(hours=25 + 60, minutes=1) <= span[0] < NOW - timedelta(hours=84)
        assert NOW - timedelta(hours=25, minutes=1) <= span[1] <= NOW - timedelta(hours=24, minutes=59)
        # part older than the 3-day retention, part newer
        older = conn.execute(select(func.count()).select_from(event).where(event.c.received_at < NOW - timedelta(days=3))).scalar_one()
        assert 0 < older < total
        decisions = dict(conn.execute(select(decision.c.decision, func.count()).group_by(decision.c.decision)).all())
        assert decisions == {"matched": 4200, "duplicate": 600, "unmatched": 600, "ignored": 360, "suppressed:opt-out": 180}
        # every ledger row is a matched decision of the same event and customer, its key unique
        mismatched = conn.execute(select(func.count()).select_from(send.join(decision, send.c.event_id == decision.c.event_id)).where(
            (decision.c.decision != "matched") | (decision.c.profile_id != send.c.profile_id))).scalar_one()
        assert mismatched == 0
        assert conn.execute(select(func.count(func.distinct(send.c.idempotency_key)))).scalar_one() == 4200
        assert conn.execute(select(func.count()).select_from(send_log.join(send, send_log.c.send_id == send.c.send_id))).scalar_one() == 4200
        assert conn.execute(select(func.count()).select_from(quarantine.join(event, quarantine.c.event_id == event.c.event_id)).where(
            event.c.status == "quarantined")).scalar_one() == 60
        # the customers are loadgen's, so a measurement's look-ups find history for them
        low, high, customers = conn.execute(select(func.min(send.c.profile_id), func.max(send.c.profile_id),
                                                   func.count(func.distinct(send.c.profile_id)))).one()
        assert low >= "C0000001" and high <= "C0000500" and customers == 350  # 70 % of the 500
        # payloads: real envelopes naming the decided customer's shopper id and the event's trigger
        row = conn.execute(select(event.c.payload, event.c.trigger_id, event.c.message_id, decision.c.customer_key, event.c.trigger_ts)
                           .join(decision, decision.c.event_id == event.c.event_id).where(decision.c.decision == "ignored").limit(1)).one()
        env = json.loads(row.payload)
        body = env["com.adobe.mcloud.pipeline.pipelineMessage"]["com.adobe.mcloud.protocol.trigger"]
        assert body["triggerId"] == row.trigger_id == "0badc0de-0000-4000-8000-00000000beef"
        assert body["triggerTimestamp"] == row.trigger_ts
        assert env["com.adobe.mcloud.pipeline.pipelineMessage"]["header"]["messageId"] == row.message_id
        assert body["enrichments"]["analyticsHitSummary"]["dimensions"]["eVar01"]["data"][0] == row.customer_key
        # the stages' next ids continue after the history (sequences moved)
        conn.execute(text(
            "INSERT INTO tf_event (batch_id, source, src_partition, src_position, payload, received_at, status) "
            "VALUES ('b0', 's', 0, '2', '{}', now(), 'valid')"))
        assert conn.execute(select(func.max(event.c.event_id))).scalar_one() > first + total
    sizes = store_sizes(engine)
    assert sizes["tables"]["tf_event"]["total_bytes"] > total * 1200
