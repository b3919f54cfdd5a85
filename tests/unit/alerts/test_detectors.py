"""The detectors on the real store: failed runs in a row, a stalled source, the quarantine share,
ambiguous sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, update

from include.triggerflow.alerts import AlertKind
from include.triggerflow.alerts import detectors as d
from include.triggerflow.store.schema import batch, run_outcome, source_health, source_position

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SRC = "journal:test"


def _outcome(kit, run_id: str, outcome: d.RunOutcome, minutes: int) -> bool:
    return d.record_outcome(kit.engine, "trigger_emails", run_id, outcome, task_id="send", error="boom",
                            now=NOW + timedelta(minutes=minutes))


def test_consecutive_failures_count_the_failed_runs_after_the_last_succeeded_one(kit) -> None:
    assert d.consecutive_failures(kit.engine, "trigger_emails") == 0
    assert _outcome(kit, "r1", d.RunOutcome.FAILED, 1)
    assert not _outcome(kit, "r1", d.RunOutcome.FAILED, 2)  # a second failed task of the same run
    _outcome(kit, "r2", d.RunOutcome.FAILED, 3)
    assert d.consecutive_failures(kit.engine, "trigger_emails") == 2
    assert d.failed_runs(kit.engine, "trigger_emails", "r2", threshold=3, task_id="send", error="e") is None
    _outcome(kit, "r3", d.RunOutcome.FAILED, 4)
    firing = d.failed_runs(kit.engine, "trigger_emails", "r3", threshold=3, task_id="send", error="SMTPError: x")
    assert firing is not None and (firing.kind, firing.value, firing.threshold) == (AlertKind.FAILED_RUNS, 3, 3)
    assert "3 runs of trigger_emails failed in a row" in firing.detail and "task send: SMTPError: x" in firing.detail
    _outcome(kit, "r4", d.RunOutcome.SUCCEEDED, 5)
    assert d.consecutive_failures(kit.engine, "trigger_emails") == 0
    _outcome(kit, "r5", d.RunOutcome.FAILED, 6)
    assert d.consecutive_failures(kit.engine, "trigger_emails") == 1
    assert d.consecutive_failures(kit.engine, "other_dag") == 0
    assert {r["run_id"]: r["outcome"] for r in kit.rows(run_outcome)}["r4"] == "succeeded"


def _position(kit, minutes_ago: float) -> None:
    with kit.engine.begin() as conn:
        conn.execute(insert(source_position).values(source=SRC, partition=0, position="p1",
                                                    updated_at=NOW - timedelta(minutes=minutes_ago)))


def _health(kit, *, failed_ago: float | None, alive_ago: float | None) -> None:
    with kit.engine.begin() as conn:
        conn.execute(insert(source_health).values(
            source=SRC, bytes_read=0, messages_received=0, pointer_flushes=0, updated_at=NOW, last_error="HTTP 404 <x>",
            last_failed_at=None if failed_ago is None else NOW - timedelta(minutes=failed_ago),
            last_alive_at=None if alive_ago is None else NOW - timedelta(minutes=alive_ago),
        ))


def _stalled(kit, max_events: int = 100):
    return d.source_stalled(kit.engine, SRC, stall_s=15 * 60, max_events=max_events, dag_id="trigger_emails",
                            run_id="r1", now=NOW)


def test_a_source_never_read_or_quietly_idle_is_not_stalled(kit) -> None:
    assert _stalled(kit) is None  # no pointer yet
    _position(kit, 60)
    _health(kit, failed_ago=None, alive_ago=1)  # reads succeed, nothing new: a quiet source
    assert _stalled(kit) is None


def test_failing_reads_with_an_old_pointer_are_a_stall_a_recent_pointer_is_not(kit) -> None:
    _position(kit, 20)
    _health(kit, failed_ago=1, alive_ago=25)
    firing = _stalled(kit)
    assert firing is not None and firing.kind is AlertKind.SOURCE_STALLED and firing.subject == SRC
    assert firing.value == 1200.0 and firing.threshold == 900.0
    assert "has not advanced for 20.0 min" in firing.detail and "its reads fail (last error: HTTP 404 <x>)" in firing.detail
    with kit.engine.begin() as conn:  # the pointer moved 10 min ago: under the threshold
        conn.execute(update(source_position).values(updated_at=NOW - timedelta(minutes=10)))
    assert _stalled(kit) is None
    with kit.engine.begin() as conn:  # old pointer, but the last read succeeded after the failure
        conn.execute(update(source_position).values(updated_at=NOW - timedelta(minutes=30)))
        conn.execute(update(source_health).values(last_alive_at=NOW))
    assert _stalled(kit) is None


def test_a_backlog_left_by_a_capped_pull_and_no_progress_since_is_a_stall(kit) -> None:
    _position(kit, 20)
    _health(kit, failed_ago=None, alive_ago=1)  # reads "succeed" (keep-alives only)
    kit.add_batch("b1", source=SRC)
    with kit.engine.begin() as conn:
        conn.execute(update(batch).where(batch.c.batch_id == "b1").values(pulled=100))
    firing = _stalled(kit, max_events=100)
    assert firing is not None and "stopped at max_events (100)" in firing.detail
    assert _stalled(kit, max_events=500) is None  # that pull was not capped


def test_quarantine_share_needs_enough_events_and_a_share_above_the_threshold() -> None:
    common = dict(share=0.2, min_events=10, dag_id="trigger_emails", run_id="r1", batch_id="b1")
    assert d.quarantine_share({"pulled": 9, "quarantined": 9}, **common) is None  # too few to matter
    assert d.quarantine_share({"pulled": 10, "quarantined": 2}, **common) is None  # 20 %: not above
    firing = d.quarantine_share({"pulled": 10, "quarantined": 3}, **common)
    assert firing is not None and (firing.value, firing.threshold) == (0.3, 0.2)
    assert firing.detail == "3 of the 10 triggers of batch b1 were quarantined (30%, threshold 20%)"
    assert d.quarantine_share({"pulled": 0, "quarantined": 0}, **{**common, "min_events": 0}) is None


def test_ambiguous_sends_fire_on_any_ambiguous_row_of_the_batch() -> None:
    assert d.ambiguous_sends({"ambiguous": 0}, dag_id="t", run_id="r", batch_id="b") is None
    firing = d.ambiguous_sends({"ambiguous": 2}, dag_id="t", run_id="r", batch_id="b")
    assert firing is not None and firing.value == 2 and "2 email(s) of batch b" in firing.detail
