"""land_batch against the real Adobe emulator's journal (a process): the production JournalSource
built by the adobe_triggers hook.

The same behaviours over an in-memory source run in tests/unit/stages/test_land.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta

import pytest
import requests

from devstack.messages import trigger_message
from include.triggerflow.hooks.triggers import TriggerSourceHook
from include.triggerflow.sources.base import Page
from include.triggerflow.stages.land import BatchRef, land_batch, stored_positions
from include.triggerflow.store.schema import batch, event

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def ref(minute: int = 0, run_id: str | None = None) -> BatchRef:
    start = T0 + timedelta(minutes=minute)
    return BatchRef(
        dag_id="trigger_emails", run_id=run_id or f"scheduled__{start.isoformat()}", run_type="scheduled",
        interval_start=start, interval_end=start + timedelta(minutes=1),
    )


def events_of(kit, batch_id: str) -> list[dict]:
    return kit.rows(event, event.c.batch_id == batch_id, order_by=event.c.event_id)


def journal_requests(emu) -> int:
    return emu.client.stats()["journal_requests"]


def test_first_pull_lands_everything_and_advances_the_position(emu, adobe_conns, publisher: Callable, kit) -> None:
    published = publisher(3, shopper_id="SHOP-ADA")
    journal = requests.get(emu.client.journal_url, headers=emu.client.journal_headers(), timeout=10).json()
    source = TriggerSourceHook().get_source()

    result = land_batch(kit.engine, source, ref(0))

    assert (result.batch_id, result.pulled, result.newly_landed, result.reused) == (ref(0).batch_id, 3, 3, False)
    assert result.bytes_read > 0
    assert stored_positions(kit.engine, source.source_key) == {0: journal["_page"]["last"]}
    assert journal["_page"]["last"] == published[-1]
    rows = events_of(kit, result.batch_id)
    assert [r["src_position"] for r in rows] == published
    assert {r["status"] for r in rows} == {"landed"}
    assert {r["source"] for r in rows} == {source.source_key}
    envelopes = [e["event"]["event"] for e in journal["events"]]
    assert [r["message_id"] for r in rows] == [
        env["com.adobe.mcloud.pipeline.pipelineMessage"]["header"]["messageId"] for env in envelopes
    ]
    assert [json.loads(r["payload"]) for r in rows] == envelopes
    assert all(r["trigger_id"] == "5c2c6a3e-2b8f-4d6e-9a51-7f0d3c9b1a01" and r["trigger_ts"] > 0 for r in rows)
    [batch_row] = kit.rows(batch, batch.c.batch_id == result.batch_id)
    assert (batch_row["state"], batch_row["pulled"], batch_row["run_type"]) == ("landed", 3, "scheduled")
    assert batch_row["landed_at"] is not None


def test_second_land_of_the_same_batch_reuses_it_without_calling_the_journal(emu, adobe_conns, publisher: Callable, kit) -> None:
    publisher(2)
    first = land_batch(kit.engine, TriggerSourceHook().get_source(), ref(0))
    publisher(2)  # newer events must not sneak into the frozen batch
    requests_before = journal_requests(emu)

    again = land_batch(kit.engine, TriggerSourceHook().get_source(), ref(0))

    assert (again.batch_id, again.pulled, again.newly_landed, again.reused) == (first.batch_id, 2, 0, True)
    assert journal_requests(emu) == requests_before
    assert len(events_of(kit, first.batch_id)) == 2


def test_a_new_batch_pulls_only_what_is_new(emu, adobe_conns, publisher: Callable, kit) -> None:
    old = publisher(2)
    land_batch(kit.engine, TriggerSourceHook().get_source(), ref(0))
    new = publisher(3)

    result = land_batch(kit.engine, TriggerSourceHook().get_source(), ref(1))

    assert (result.pulled, result.newly_landed, result.reused) == (3, 3, False)
    assert [r["src_position"] for r in events_of(kit, result.batch_id)] == new
    assert [r["src_position"] for r in events_of(kit, ref(0).batch_id)] == old
    # and a batch with nothing new is landed empty
    empty = land_batch(kit.engine, TriggerSourceHook().get_source(), ref(2))
    assert (empty.pulled, empty.newly_landed) == (0, 0)
    assert kit.rows(batch, batch.c.batch_id == empty.batch_id)[0]["state"] == "landed"


def test_max_messages_bounds_a_batch_and_the_next_continues_without_gap_or_repeat(
    emu, adobe_conns, publisher: Callable, kit
) -> None:
    adobe_conns(page_limit=2)
    published = publisher(7)
    landed: list[list[str]] = []
    for minute in range(4):
        result = land_batch(kit.engine, TriggerSourceHook().get_source(), ref(minute), max_messages=3)
        landed.append([r["src_position"] for r in events_of(kit, result.batch_id)])
    assert [len(b) for b in landed] == [3, 3, 1, 0]
    flat = [p for b in landed for p in b]
    assert flat == published  # in order: no gap, no repeat
    assert len(set(flat)) == len(flat)
    assert emu.client.stats()["events_served"] == 7  # nothing was read twice from the journal


class CrashAfterFirstPage:
    """The real source, but the task 'dies' after landing its first page."""

    def __init__(self, real) -> None:
        self.real = real
        self.source_key = real.source_key
        self.endpoint = real.endpoint

    def read(self, positions: Mapping[int, str], max_messages: int) -> Iterator[Page]:
        pages = self.real.read(positions, max_messages)
        yield next(pages)
        raise RuntimeError("task killed")


def test_a_batch_left_pulling_is_resumed_by_the_retry(emu, adobe_conns, publisher: Callable, kit) -> None:
    adobe_conns(page_limit=2)
    published = publisher(6)
    with pytest.raises(RuntimeError, match="task killed"):
        land_batch(kit.engine, CrashAfterFirstPage(TriggerSourceHook().get_source()), ref(0), max_messages=5)
    assert kit.rows(batch, batch.c.batch_id == ref(0).batch_id)[0]["state"] == "pulling"
    assert [r["src_position"] for r in events_of(kit, ref(0).batch_id)] == published[:2]

    retry = land_batch(kit.engine, TriggerSourceHook().get_source(), ref(0), max_messages=5)

    # resumes from the stored position, and the bound counts what the first try landed
    assert (retry.pulled, retry.newly_landed, retry.reused) == (5, 3, False)
    assert [r["src_position"] for r in events_of(kit, ref(0).batch_id)] == published[:5]
    assert kit.rows(batch, batch.c.batch_id == ref(0).batch_id)[0]["state"] == "landed"


def test_malformed_events_are_landed_not_refused(emu, adobe_conns, kit) -> None:
    """Landing never judges content: junk is stored for validate to quarantine, and never crashes
    the pull (a crash here would block the source at this position forever)."""
    odd_ts = trigger_message(trigger_id="t", shopper_id="S")
    odd_ts["message"]["triggerTimestamp"] = "--5"
    super_ts = trigger_message(trigger_id="t", shopper_id="S")
    super_ts["message"]["triggerTimestamp"] = "²"
    emu.client.publish([odd_ts, super_ts])
    emu.client.inject_raw(["not json at all", {"envelopeType": "DATA"}, [1, 2]])

    result = land_batch(kit.engine, TriggerSourceHook().get_source(), ref(0))

    rows = events_of(kit, result.batch_id)
    assert result.newly_landed == 5
    assert [r["trigger_ts"] for r in rows] == [None] * 5
    assert rows[2]["payload"] == "not json at all"
    assert [r["message_id"] is None for r in rows] == [False, False, True, True, True]


def test_a_replay_without_a_landed_batch_pulls_nothing_and_says_so(emu, adobe_conns, publisher: Callable, kit) -> None:
    publisher(1, shopper_id="SHOP-ADA")
    before = emu.client.stats()["journal_requests"]
    replay = BatchRef(dag_id="d", run_id="backfill__x", run_type="backfill",
                      interval_start=datetime(2026, 1, 1, 10, 0, tzinfo=UTC),
                      interval_end=datetime(2026, 1, 1, 10, 1, tzinfo=UTC))
    result = land_batch(kit.engine, TriggerSourceHook().get_source(), replay, allow_pull=False)
    assert (result.exists, result.pulled, result.reused) == (False, 0, False)
    assert "no batch was landed" in (result.note or "")
    assert emu.client.stats()["journal_requests"] == before  # the source was not read
    assert kit.rows(batch) == []  # and no empty batch was invented
