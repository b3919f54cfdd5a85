"""The status summaries (tf_batch_stats / tf_source_stats, include/triggerflow/stats.py) after
real DAG runs under dag.test(): whatever the stages did — land, validate, reconcile, send,
report, a replay of the interval, a reprocess after a fix — the summaries equal a full recount
from the event and ledger tables. Emulator and SMTP sink are real processes (tests/e2e/test_replay)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from devstack.messages import (
    BROWSE_ABANDONMENT_TRIGGER_ID,
    CART_ABANDONMENT_TRIGGER_ID,
    trigger_message,
)
from include.triggerflow.profiles import upsert_profiles
from tests.e2e.test_replay import _dag, _minute, _ok, _own_minutes, profile, stack  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e


def assert_summaries_equal_a_recount(engine) -> dict[str, int]:
    """Every batch row equals its batch's recount, every source row the sum of its batches'
    recounts, and no source or batch is missing. Returns the sources' received counts."""
    from include.triggerflow.stats import BatchCounts, batch_counts, recount_source
    from include.triggerflow.store.schema import (
        STATS_COLUMNS,
        batch,
        batch_stats,
        source_stats,
    )

    with engine.connect() as conn:
        batches = dict(conn.execute(select(batch.c.batch_id, batch.c.source)).all())
        summarised = {r["batch_id"]: BatchCounts.from_row(r) for r in conn.execute(select(batch_stats)).mappings()}
        assert set(summarised) == set(batches), "a landed batch without a summary row (or the reverse)"
        for batch_id, counts in summarised.items():
            fresh = batch_counts(conn, batch_id)
            assert {n: getattr(counts, n) for n in STATS_COLUMNS} == {n: getattr(fresh, n) for n in STATS_COLUMNS}, batch_id
            assert counts.processing_ms_sum == pytest.approx(fresh.processing_ms_sum, abs=1e-3), batch_id
        totals = {r["source"]: r for r in conn.execute(select(source_stats)).mappings()}
        assert set(totals) == set(batches.values())
        for source, row in totals.items():
            fresh = recount_source(conn, source)
            assert {n: int(row[n]) for n in STATS_COLUMNS} == {n: getattr(fresh, n) for n in STATS_COLUMNS}, source
        return {source: int(row["received"]) for source, row in totals.items()}


def test_summaries_equal_a_recount_after_runs_replays_and_reprocessing(stack, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    from include.triggerflow import DEFAULT_ROUTING_FILE

    emu, smtp, engine, _ = stack
    # besides the stack's two carts (sent): a customer not loaded yet (unmatched), a browse trigger
    # with the shopper id where the route does not read it (quarantined), and a line that is not an
    # envelope (quarantined)
    emu.client.publish([
        trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-LATE"),
        trigger_message(trigger_id=BROWSE_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-GRACE", shopper_dimension="eVar07"),
    ])
    emu.client.inject_raw([{"not": "an envelope"}])
    _ok(_dag("trigger_emails").test(logical_date=_minute(0)))
    assert len(smtp.wait_for(2)) == 2
    assert list(assert_summaries_equal_a_recount(engine).values()) == [5]

    # replaying the interval reprocesses the same batch
    _ok(_dag("trigger_emails").test(logical_date=_minute(0), run_conf={"replay_only": True}))
    assert_summaries_equal_a_recount(engine)

    # a fix, then the reprocess DAG: the unmatched and the quarantined browse trigger become emails
    upsert_profiles(engine, [profile("C9", "late@example.com", "Late", "SHOP-LATE")])
    fixed = tmp_path / "routing.yaml"
    cart, browse = DEFAULT_ROUTING_FILE.read_text().split("- name: browse_abandonment")
    fixed.write_text(cart + "- name: browse_abandonment" + browse.replace("dimension: eVar01", "dimension: eVar07"))
    monkeypatch.setenv("TRIGGERFLOW_ROUTING_FILE", str(fixed))
    since = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    _ok(_dag("trigger_reprocess").test(run_conf={"since": since, "what": "both"}))
    assert len(smtp.wait_for(4)) == 4
    assert_summaries_equal_a_recount(engine)

    # a second run with new triggers adds a batch
    emu.client.publish([trigger_message(trigger_id=BROWSE_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-ADA")])
    _ok(_dag("trigger_emails").test(logical_date=_minute(1)))
    assert list(assert_summaries_equal_a_recount(engine).values()) == [6]
