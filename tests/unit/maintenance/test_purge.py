"""Retention of the store (include/triggerflow/maintenance): what goes, in chunks, and every
exception an invariant needs. Store-dependent: runs on SQLite and on PostgreSQL
(TRIGGERFLOW_TEST_PG_URL)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import insert, select

from include.triggerflow.ledger import LEASE_STALE_AFTER
from include.triggerflow.maintenance.runner import run_maintenance
from include.triggerflow.maintenance.settings import RetentionSettings
from include.triggerflow.stats import recount_source, refresh_batch_stats
from include.triggerflow.store.schema import (
    alert,
    batch,
    batch_stats,
    chunk_lease,
    decision,
    event,
    maintenance,
    quarantine,
    run_summary,
    send,
    send_log,
    source_hourly,
    source_stats,
)
from tests.maintenance_support import NOW, SOURCE, History, ago


@pytest.fixture
def history(store_engine) -> History:
    return History(store_engine)


def purge(engine, routing=None, **settings):
    return run_maintenance(engine, RetentionSettings(**settings), routing, run_id="maint-test", now=NOW)


def test_an_old_reported_batch_goes_and_a_recent_one_stays(history: History) -> None:
    old = history.batch("old", 4)
    new = history.batch("new", 1)
    result = purge(history.engine)
    assert history.count(event, event.c.batch_id == "old") == 0
    assert history.count(decision, decision.c.batch_id == "old") == 0
    assert history.count(event, event.c.event_id.in_(new)) == 3
    assert history.count(decision, decision.c.batch_id == "new") == 3
    # the ledger outlives the events (no foreign key any more); the batch row stays as a tombstone
    assert history.count(send, send.c.event_id.in_(old)) == 1
    assert history.count(batch, batch.c.batch_id == "old") == 1
    assert result.as_xcom()["deleted"]["tf_event"] == 3
    recorded = {(r["table_name"], r["action"]): r for r in history.rows(maintenance)}
    assert recorded[("tf_event", "delete")]["rows"] == 3
    assert recorded[("tf_decision", "delete")]["rows"] == 3
    assert recorded[("tf_event", "delete")]["cutoff"] == ago(3)
    assert recorded[("tf_event", "delete")]["run_id"] == "maint-test"


def test_deletes_go_in_chunks(history: History) -> None:
    history.batch("old", 4, valid=7, quarantined=0)
    result = purge(history.engine, chunk_rows=2)
    step = next(s for s in result.steps if s.table == "tf_event" and s.action == "delete")
    assert step.rows == 7
    assert "4 chunk(s)" in (step.detail or "")  # 7 events, 2 per chunk


def test_a_failed_batch_is_kept_for_the_failed_batch_window(history: History) -> None:
    history.batch("failed", 5, balanced=False)
    history.batch("unreported", 5, balanced=None)
    history.batch("failed-long-ago", 20, balanced=False)
    result = purge(history.engine, failed_batch_days=14)
    assert history.count(event, event.c.batch_id == "failed") == 3
    assert history.count(event, event.c.batch_id == "unreported") == 3
    assert history.count(event, event.c.batch_id == "failed-long-ago") == 0
    kept = next(s for s in result.steps if s.table == "tf_batch" and s.action == "kept")
    assert kept.rows == 2 and "2 failed" in (kept.detail or "")


@pytest.mark.parametrize("state", ["pending", "scheduled", "sending", "deferred", "ambiguous"])
def test_a_batch_with_an_email_still_owed_is_kept_with_its_ledger_rows(history: History, state: str) -> None:
    ids = history.batch("owed", 60, sends=(state, "sent"))
    purge(history.engine, ledger_days=30, send_log_days=90)
    # the send stage renders the owed row from its event's payload: the batch stays whole
    assert history.count(event, event.c.batch_id == "owed") == 3
    assert history.count(send, send.c.event_id == ids[0], send.c.state == state) == 1
    # ... while its final row is past the ledger's retention and goes, with its send log (children
    # first) although the send log's own retention would keep it
    assert history.count(send, send.c.event_id == ids[1]) == 0
    assert [r["send_id"] for r in history.rows(send_log, send_log.c.batch_id == "owed")] == [
        r["send_id"] for r in history.rows(send, send.c.batch_id == "owed")
    ]


def test_quarantine_is_kept_for_its_reprocess_window_from_quarantined_at(history: History) -> None:
    # landed 5 days ago, quarantined (again, by a reprocess) 1 day ago: still in its window
    history.batch("recent-q", 5, quarantined=2, quarantined_age=1)
    history.batch("old-q", 5, quarantined=2, quarantined_age=4.5)
    purge(history.engine, quarantine_days=3)
    assert history.count(quarantine, quarantine.c.batch_id == "recent-q") == 2
    assert history.count(event, event.c.batch_id == "recent-q") == 5
    assert history.count(quarantine, quarantine.c.batch_id == "old-q") == 0
    assert history.count(event, event.c.batch_id == "old-q") == 0


def test_the_ledger_is_never_kept_shorter_than_the_rules_look_back(history: History, routing) -> None:
    from include.triggerflow.config.model import FrequencyCap

    capped = replace(
        routing,
        routes=tuple(replace(r, rules=replace(r.rules, frequency_cap=FrequencyCap(max=3, per_s=40 * 86_400))) for r in routing.routes),
    )
    ids = history.batch("b", 35, send_age=35)
    history.batch("c", 45, send_age=45)
    result = purge(history.engine, capped, ledger_days=10)
    assert result.plan.ledger_days == 40
    assert history.count(send, send.c.event_id == ids[0]) == 1  # 35 days < 40: a cap still counts it
    assert history.count(send, send.c.batch_id == "c") == 0
    notes = [r["detail"] for r in history.rows(maintenance) if r["table_name"] == "settings"]
    assert any("ledger_days 10 raised to 40" in n for n in notes)


def test_ledger_details_are_stripped_early_and_the_next_strip_continues(history: History) -> None:
    history.batch("week-old", 8)
    history.batch("fresh", 1)
    result = purge(history.engine, ledger_detail_days=7)
    stripped = history.rows(send, send.c.batch_id == "week-old")[0]
    assert (stripped["subject"], stripped["smtp_reply"]) == (None, None)
    assert stripped["profile_id"] and stripped["state"] == "sent"  # what the rules read stays
    fresh = history.rows(send, send.c.batch_id == "fresh")[0]
    assert (fresh["subject"], fresh["smtp_reply"]) == ("Your cart", "250 ok")
    assert result.rows("strip")["tf_send"] == 1
    # the next run starts after the row it reached: the old row is not counted again
    again = purge(history.engine, ledger_detail_days=7)
    assert again.rows("strip")["tf_send"] == 0


def test_status_totals_do_not_go_backwards_after_a_purge(history: History) -> None:
    history.batch("old", 4, quarantined=1, sends=("sent", "failed"))
    history.batch("new", 1, quarantined=1, sends=("sent", "deferred"))
    with history.engine.connect() as conn:
        before = conn.execute(select(source_stats).where(source_stats.c.source == SOURCE)).mappings().one()
    purge(history.engine)
    with history.engine.connect() as conn:
        after = conn.execute(select(source_stats).where(source_stats.c.source == SOURCE)).mappings().one()
        stored = recount_source(conn, SOURCE)
    # cumulative counters keep the purged batch
    for name in ("received", "sent", "failures"):
        assert after[name] == before[name], name
    # gauges are what is stored now
    assert (after["unprocessed"], after["discarded"], after["retries"]) == (stored.unprocessed, stored.discarded, stored.retries)
    assert after["discarded"] == before["discarded"] - 1
    assert history.rows(batch_stats, batch_stats.c.batch_id == "old")[0]["received"] == 0
    # a later refresh of the purged batch (a cleared run) changes nothing
    refresh_batch_stats(history.engine, "old")
    with history.engine.connect() as conn:
        again = conn.execute(select(source_stats).where(source_stats.c.source == SOURCE)).mappings().one()
    assert {k: again[k] for k in ("received", "sent", "failures", "discarded")} == {
        k: after[k] for k in ("received", "sent", "failures", "discarded")
    }


def test_a_dry_run_counts_and_deletes_nothing(history: History) -> None:
    history.batch("old", 4, quarantined=1)
    history.batch("older", 40, send_age=40)
    dry = run_maintenance(history.engine, RetentionSettings(), None, run_id="dry", dry_run=True, now=NOW)
    assert history.count(event) == 7 and history.count(send) == 2
    real = purge(history.engine)
    # each step counts on the store as it is: what an earlier step would have deleted first
    # (tombstones of batches it empties, send log rows of ledger rows) is not foreseen
    main = ("tf_event", "tf_decision", "tf_quarantine", "tf_send")
    assert {t: dry.rows("delete")[t] for t in main} == {t: real.rows("delete")[t] for t in main}
    assert dry.as_xcom()["dry_run"] is True
    assert all((r["detail"] or "").startswith("dry run") for r in history.rows(maintenance, maintenance.c.run_id == "dry"))


def test_tombstones_and_summaries_go_after_run_days(history: History) -> None:
    history.batch("ancient", 40, send_age=40)
    history.batch("recent", 10)
    purge(history.engine, run_days=30)
    assert history.count(batch, batch.c.batch_id == "ancient") == 0
    assert history.count(run_summary, run_summary.c.batch_id == "ancient") == 0
    assert history.count(batch, batch.c.batch_id == "recent") == 1  # events gone, the row stays
    assert history.count(run_summary, run_summary.c.batch_id == "recent") == 1


def test_active_alerts_stay_and_old_hourly_counts_go(history: History) -> None:
    from sqlalchemy import insert

    with history.engine.begin() as conn:
        for i, resolved in enumerate((None, ago(95))):
            conn.execute(insert(alert).values(kind="sla", detail=f"a{i}", fired_at=ago(100), resolved_at=resolved))
        conn.execute(insert(source_hourly).values(source=SOURCE, hour=ago(40), messages=5))
        conn.execute(insert(source_hourly).values(source=SOURCE, hour=ago(2), messages=5))
    purge(history.engine)
    assert [r["detail"] for r in history.rows(alert)] == ["a0"]
    assert history.count(source_hourly) == 1


def test_skip_tables_leaves_a_table_alone(history: History) -> None:
    history.batch("older", 40, send_age=40)
    purge(history.engine, skip_tables=("tf_send",))
    assert history.count(send) == 1
    assert history.count(event) == 0


def test_status_totals_hold_when_the_ledger_of_a_purged_batch_goes(history: History) -> None:
    history.batch("old", 40, send_age=40, sends=("sent", "failed"))
    with history.engine.connect() as conn:
        before = conn.execute(select(source_stats)).mappings().one()
    purge(history.engine, run_days=60)  # events and ledger go, the tf_batch row stays
    assert history.count(send) == 0 and history.count(batch, batch.c.batch_id == "old") == 1
    refresh_batch_stats(history.engine, "old")
    with history.engine.connect() as conn:
        after = conn.execute(select(source_stats)).mappings().one()
    assert {k: after[k] for k in ("received", "sent", "failures")} == {k: before[k] for k in ("received", "sent", "failures")}


def test_tables_that_lost_many_rows_are_analysed(history: History) -> None:
    history.batch("old", 4)
    result = purge(history.engine, analyze_min_rows=3)
    expected = "vacuum" if history.engine.dialect.name == "postgresql" else "analyze"
    analysed = {s.table for s in result.steps if s.action == expected}
    assert analysed == {"tf_event", "tf_decision"}  # 3 rows each; tf_send lost none
    assert {r["table_name"] for r in history.rows(maintenance, maintenance.c.action == expected)} == analysed
    # a run that deletes nothing analyses nothing
    assert not any(s.action in ("analyze", "vacuum") for s in purge(history.engine, analyze_min_rows=3).steps)


def _leases(history: History, **acquired: timedelta) -> None:
    """One tf_chunk_lease row per batch id, acquired that long before NOW."""
    with history.engine.begin() as conn:
        conn.execute(insert(chunk_lease), [
            {"batch_id": b, "chunk": 0, "holder": f"trigger_emails|{b}", "acquired_at": NOW - age} for b, age in acquired.items()
        ])


def test_a_lease_older_than_the_ledgers_staleness_limit_goes_and_a_younger_one_stays(history: History) -> None:
    minute = timedelta(minutes=1)
    _leases(history, left=LEASE_STALE_AFTER + minute, held=LEASE_STALE_AFTER - minute)
    result = purge(history.engine)
    assert [r["batch_id"] for r in history.rows(chunk_lease)] == ["held"]  # a live sender may hold it
    assert result.as_xcom()["deleted"]["tf_chunk_lease"] == 1
    recorded = {(r["table_name"], r["action"]): r for r in history.rows(maintenance)}
    assert recorded[("tf_chunk_lease", "delete")]["rows"] == 1
    assert recorded[("tf_chunk_lease", "delete")]["cutoff"] == NOW - LEASE_STALE_AFTER


def test_a_stale_lease_taken_over_while_the_purge_runs_stays(history: History) -> None:
    _leases(history, left=LEASE_STALE_AFTER + timedelta(minutes=1), held=timedelta(minutes=1))

    def take_over(conn, cursor, statement, parameters, context, executemany) -> None:
        # a sender takes the stale lease over between the purge's select and its delete
        if statement.lstrip().upper().startswith("DELETE FROM TF_CHUNK_LEASE"):
            cursor.execute(
                "UPDATE tf_chunk_lease SET holder = 'taker', acquired_at = "
                "(SELECT acquired_at FROM tf_chunk_lease WHERE batch_id = 'held') WHERE batch_id = 'left'"
            )

    sa_event.listen(history.engine, "before_cursor_execute", take_over)
    try:
        purge(history.engine)
    finally:
        sa_event.remove(history.engine, "before_cursor_execute", take_over)
    assert {r["batch_id"]: r["holder"] for r in history.rows(chunk_lease)} == {"left": "taker", "held": "trigger_emails|held"}
