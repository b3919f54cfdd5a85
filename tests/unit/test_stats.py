"""include/triggerflow/stats.py: per-batch status counters and their per-source sums, on the real
store (SQLite, or PostgreSQL with TRIGGERFLOW_TEST_PG_URL)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update

from include.triggerflow.stats import (
    BatchCounts,
    batch_counts,
    rebuild_all,
    recount_source,
    refresh_batch_stats,
    refresh_quietly,
)
from include.triggerflow.store.schema import (
    batch_stats,
    decision,
    event,
    quarantine,
    schema_version,
    send,
    source_stats,
)
from tests.fixtures import envelope_json

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _send_row(kit: Any, batch_id: str, event_id: int, state: str, *, sent_after_s: float | None = None) -> None:
    with kit.engine.begin() as conn:
        conn.execute(
            insert(send).values(
                idempotency_key=f"{batch_id}-{event_id}-{state}".ljust(64, "x")[:64],
                batch_id=batch_id, chunk=0, event_id=event_id, profile_id="C1", trigger_id="t", route="cart",
                recipient="ada@example.com", state=state, attempts=1, created_at=T0, updated_at=T0,
                sent_at=T0 + timedelta(seconds=sent_after_s) if sent_after_s is not None else None,
            )
        )


def _decide(kit: Any, batch_id: str, event_id: int, what: str = "matched") -> None:
    with kit.engine.begin() as conn:
        conn.execute(insert(decision).values(event_id=event_id, batch_id=batch_id, decision=what, decided_at=T0))


def _quarantine(kit: Any, batch_id: str, event_id: int) -> None:
    with kit.engine.begin() as conn:
        conn.execute(insert(quarantine).values(event_id=event_id, batch_id=batch_id, reasons="[]", quarantined_at=T0))


def _arrange(kit: Any, batch_id: str, source: str = "test:src") -> list[int]:
    """A batch of 7 events: 1 landed, 2 valid undecided, 2 valid decided (1 sent 2 s after
    receipt, 1 deferred), 1 quarantined, 1 valid decided with a failed send."""
    kit.add_batch(batch_id, source=source)
    ids = [
        kit.add_event(batch_id, envelope_json(offset=i), status=status, received_at=T0, source=source)
        for i, status in enumerate(["landed", "valid", "valid", "valid", "valid", "quarantined", "valid"])
    ]
    _decide(kit, batch_id, ids[3])
    _decide(kit, batch_id, ids[4])
    _decide(kit, batch_id, ids[6])
    _quarantine(kit, batch_id, ids[5])
    _send_row(kit, batch_id, ids[3], "sent", sent_after_s=2.0)
    _send_row(kit, batch_id, ids[4], "deferred")
    _send_row(kit, batch_id, ids[6], "failed")
    return ids


EXPECTED = BatchCounts(received=7, unprocessed=3, discarded=1, failures=1, retries=1, sent=1, processing_ms_sum=2000.0)


def _batch_row(kit: Any, batch_id: str) -> BatchCounts:
    with kit.engine.connect() as conn:
        return BatchCounts.from_row(conn.execute(select(batch_stats).where(batch_stats.c.batch_id == batch_id)).mappings().first())


def _source_row(kit: Any, source: str = "test:src") -> BatchCounts:
    with kit.engine.connect() as conn:
        row = conn.execute(select(source_stats).where(source_stats.c.source == source)).mappings().first()
    assert row is not None, f"no tf_source_stats row for {source}"
    return BatchCounts(**{k: int(row[k]) for k in ("received", "unprocessed", "discarded", "failures", "retries", "sent")})


def _without_ms(counts: BatchCounts) -> BatchCounts:
    return BatchCounts(**{**counts.__dict__, "processing_ms_sum": 0.0})


def test_batch_counts_follow_the_schema_definitions(kit) -> None:
    _arrange(kit, "b1")
    with kit.engine.connect() as conn:
        assert batch_counts(conn, "b1") == EXPECTED


def test_refresh_writes_the_batch_row_and_adds_the_delta_to_the_source(kit) -> None:
    ids = _arrange(kit, "b1")
    refresh_batch_stats(kit.engine, ["b1"])
    assert _batch_row(kit, "b1") == EXPECTED
    assert _source_row(kit) == _without_ms(EXPECTED)

    # the stage moves on: the landed event is validated and decided, the deferred row is sent
    with kit.engine.begin() as conn:
        conn.execute(update(event).where(event.c.event_id == ids[0]).values(status="valid"))
        conn.execute(update(send).where(send.c.state == "deferred").values(state="sent", sent_at=T0 + timedelta(seconds=4)))
    _decide(kit, "b1", ids[0], "ignored")
    refresh_batch_stats(kit.engine, "b1")
    moved = BatchCounts(received=7, unprocessed=2, discarded=1, failures=1, retries=0, sent=2, processing_ms_sum=6000.0)
    assert _batch_row(kit, "b1") == moved
    assert _source_row(kit) == _without_ms(moved)

    # a second batch of the same source adds up; another source stays apart
    _arrange(kit, "b2")
    _arrange(kit, "b3", source="other:src")
    refresh_batch_stats(kit.engine, ["b2", "b3", "b1"])
    assert _source_row(kit) == _without_ms(moved.plus(EXPECTED))
    assert _source_row(kit, "other:src") == _without_ms(EXPECTED)
    with kit.engine.connect() as conn:
        assert _without_ms(recount_source(conn, "test:src")) == _source_row(kit)


def test_refreshing_an_unchanged_batch_twice_changes_nothing(kit) -> None:
    _arrange(kit, "b1")
    refresh_batch_stats(kit.engine, "b1")
    refresh_batch_stats(kit.engine, "b1")
    assert _source_row(kit) == _without_ms(EXPECTED)


def test_refresh_inside_the_callers_transaction_rolls_back_with_it(kit) -> None:
    _arrange(kit, "b1")
    with pytest.raises(RuntimeError), kit.engine.begin() as conn:
        refresh_batch_stats(conn, ["b1"])
        raise RuntimeError("the stage failed")
    assert kit.count(batch_stats) == 0 and kit.count(source_stats) == 0


def test_unknown_batch_is_ignored(kit) -> None:
    refresh_batch_stats(kit.engine, ["no-such-batch"])
    assert kit.count(batch_stats) == 0


def test_concurrent_refreshes_of_one_batch_stay_exact(kit) -> None:
    """Parallel send chunks finish together: each changes the batch and refreshes it. Whatever the
    interleaving, the source total must equal the batch's final count."""
    kit.add_batch("b1")
    ids = [kit.add_event("b1", envelope_json(offset=i), received_at=T0) for i in range(8)]
    for event_id in ids:
        _decide(kit, "b1", event_id)
        _send_row(kit, "b1", event_id, "pending")
    refresh_batch_stats(kit.engine, "b1")
    errors: list[BaseException] = []
    start = threading.Barrier(len(ids))

    def worker(event_id: int) -> None:
        try:
            start.wait()
            with kit.engine.begin() as conn:
                conn.execute(update(send).where(send.c.event_id == event_id).values(state="sent", sent_at=T0 + timedelta(seconds=1)))
            refresh_batch_stats(kit.engine, "b1")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _source_row(kit).sent == 8
    assert _batch_row(kit, "b1").sent == 8
    assert _batch_row(kit, "b1").processing_ms_sum == pytest.approx(8000.0)


def test_rebuild_all_equals_incremental_refreshes_and_is_a_no_op_on_an_empty_store(kit) -> None:
    with kit.engine.begin() as conn:
        assert rebuild_all(conn) == 0
    assert kit.count(batch_stats) == 0 and kit.count(source_stats) == 0

    _arrange(kit, "b1")
    _arrange(kit, "b2", source="other:src")
    refresh_batch_stats(kit.engine, ["b1", "b2"])
    incremental = (_source_row(kit), _source_row(kit, "other:src"), _batch_row(kit, "b1"))
    # wreck the summaries, then rebuild
    with kit.engine.begin() as conn:
        conn.execute(update(source_stats).values(received=999))
        conn.execute(delete(batch_stats).where(batch_stats.c.batch_id == "b2"))
    with kit.engine.begin() as conn:
        assert rebuild_all(conn) == 2
    assert (_source_row(kit), _source_row(kit, "other:src"), _batch_row(kit, "b1")) == incremental


def test_migration_0008_builds_the_summaries_of_an_existing_store(kit) -> None:
    from include.triggerflow.store.migrations import create_schema

    _arrange(kit, "b1")
    with kit.engine.begin() as conn:  # as a store from before 0008: data, no summaries
        conn.execute(delete(schema_version).where(schema_version.c.migration == "0008_status_summaries"))
    assert kit.count(source_stats) == 0
    create_schema(kit.engine)
    assert _source_row(kit) == _without_ms(EXPECTED)
    assert kit.count(schema_version, schema_version.c.migration == "0008_status_summaries") == 1


def test_refresh_quietly_logs_a_failure_instead_of_raising(tmp_path, caplog) -> None:
    from include.triggerflow.store.engines import get_engine

    bare = get_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")  # a real store without its tables
    with caplog.at_level(logging.ERROR, logger="include.triggerflow.stats"):
        assert refresh_quietly(bare, ["b1"]) is False
    assert "not refreshed" in caplog.text
