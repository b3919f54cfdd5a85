"""Tests for include.triggerflow.stages.land: pull from a source into the store, in-process.

The sources are fakes through the TriggerSource protocol: an in-memory journal that serves what
follows the stored position (as the Adobe journal does), and scripted pages to interleave a
competing puller between two pages (PositionConflict). The same behaviours against the real
emulator journal: tests/integration/stages/test_land_emulator.py."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import update

from devstack.messages import envelope, trigger_message
from include.triggerflow.events import PIPELINE_MESSAGE, TRIGGER_BODY
from include.triggerflow.runtime import batch_ref
from include.triggerflow.sources.base import Page, RawMessage
from include.triggerflow.stages.land import (
    MAX_MESSAGE_BYTES,
    BatchRef,
    LandResult,
    PositionConflict,
    land_batch,
    stored_positions,
)
from include.triggerflow.stages.validate import validate_batch
from include.triggerflow.store.schema import batch, event, quarantine, source_health, source_position
from tests.fixtures import envelope_json

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def ref(minute: int = 0, run_id: str | None = None) -> BatchRef:
    start = T0 + timedelta(minutes=minute)
    return BatchRef(
        dag_id="trigger_emails", run_id=run_id or f"scheduled__{start.isoformat()}", run_type="scheduled",
        interval_start=start, interval_end=start + timedelta(minutes=1),
    )


def events_of(kit, batch_id: str) -> list[dict]:
    return kit.rows(event, event.c.batch_id == batch_id, order_by=event.c.event_id)


# -- BatchRef ----------------------------------------------------------------------------------------
def test_batch_id_is_keyed_on_the_data_interval() -> None:
    assert ref(0).batch_id == "trigger_emails/2026-03-01T12:00:00Z/2026-03-01T12:01:00Z"
    # the run id does not matter when there is an interval: a re-triggered run finds the same batch
    assert ref(0, run_id="manual__again").batch_id == ref(0).batch_id


def test_batch_id_normalises_intervals_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    aware = BatchRef("d", "r", interval_start=datetime(2026, 3, 1, 13, 0, tzinfo=paris),
                     interval_end=datetime(2026, 3, 1, 13, 1, tzinfo=paris))
    naive = BatchRef("d", "r", interval_start=datetime(2026, 3, 1, 12, 0), interval_end=datetime(2026, 3, 1, 12, 1))
    assert aware.batch_id == naive.batch_id == "d/2026-03-01T12:00:00Z/2026-03-01T12:01:00Z"


def test_batch_id_without_interval_is_the_run() -> None:
    assert BatchRef("trigger_emails", "manual__2026-03-01T12:00:05").batch_id == "trigger_emails/run/manual__2026-03-01T12:00:05"
    half = BatchRef("trigger_emails", "manual__x", interval_start=T0, interval_end=None)
    assert half.batch_id == "trigger_emails/run/manual__x"


def test_runtime_batch_ref_reads_the_context() -> None:
    dag_run = SimpleNamespace(dag_id="trigger_emails", run_id="scheduled__1", run_type=SimpleNamespace(value="scheduled"),
                              data_interval_start=None, data_interval_end=None)
    with_interval = batch_ref({"dag_run": dag_run, "data_interval_start": T0, "data_interval_end": "2026-03-01T12:01:00+00:00"})
    assert with_interval == BatchRef("trigger_emails", "scheduled__1", "scheduled", T0, T0 + timedelta(minutes=1))
    # a manual run of Airflow 3 may have no interval at all: its own batch
    manual = SimpleNamespace(dag_id="trigger_emails", run_id="manual__2", run_type=None)
    assert batch_ref({"dag_run": manual}).batch_id == "trigger_emails/run/manual__2"


def test_land_result_as_xcom() -> None:
    result = LandResult(batch_id="b", pulled=3, newly_landed=2, reused=False, bytes_read=99, dropped=4)
    assert result.as_xcom() == {
        "batch_id": "b", "pulled": 3, "newly_landed": 2, "reused": False, "exists": True, "note": None, "dropped": 4,
    }


# -- an in-memory journal (the TriggerSource protocol) ---------------------------------------------
class MemoryJournal:
    """Messages in publication order on partition 0, served after the stored position, at most
    ``page_limit`` per page and ``max_messages`` per read (as the Adobe journal serves them)."""

    source_key = "test:journal"
    endpoint = "memory://journal"

    def __init__(self, page_limit: int = 100) -> None:
        self.page_limit = page_limit
        self.messages: list[RawMessage] = []
        self.reads = 0
        self.served = 0

    def publish(self, *payloads: str | bytes) -> list[str]:
        """Append messages; their positions, in order."""
        start = len(self.messages)
        added = [RawMessage(0, f"{start + i + 1:06d}", payload) for i, payload in enumerate(payloads)]
        self.messages.extend(added)
        return [m.position for m in added]

    def publish_triggers(self, count: int, **kwargs: Any) -> list[str]:
        return self.publish(*(envelope_json(offset=len(self.messages) + i, **kwargs) for i in range(count)))

    def read(self, positions: Mapping[int, str], max_messages: int) -> Iterator[Page]:
        self.reads += 1
        after = positions.get(0)
        start = 0 if after is None else next(i for i, m in enumerate(self.messages) if m.position == after) + 1
        wanted = self.messages[start:start + max(max_messages, 0)]
        for i in range(0, len(wanted), self.page_limit):
            chunk = wanted[i:i + self.page_limit]
            self.served += len(chunk)
            size = sum(len(m.payload if isinstance(m.payload, bytes) else m.payload.encode()) for m in chunk)
            yield Page(messages=chunk, next_positions={0: chunk[-1].position}, bytes_read=size)


def test_first_pull_lands_everything_and_advances_the_position(kit) -> None:
    journal = MemoryJournal()
    published = journal.publish_triggers(3, shopper_id="SHOP-ADA")

    result = land_batch(kit.engine, journal, ref(0))

    assert (result.batch_id, result.pulled, result.newly_landed, result.reused) == (ref(0).batch_id, 3, 3, False)
    assert result.bytes_read > 0
    assert stored_positions(kit.engine, journal.source_key) == {0: published[-1]}
    rows = events_of(kit, result.batch_id)
    assert [r["src_position"] for r in rows] == published
    assert {r["status"] for r in rows} == {"landed"}
    assert {r["source"] for r in rows} == {journal.source_key}
    envelopes = [json.loads(m.payload) for m in journal.messages]
    assert [r["message_id"] for r in rows] == [env[PIPELINE_MESSAGE]["header"]["messageId"] for env in envelopes]
    assert [json.loads(r["payload"]) for r in rows] == envelopes
    assert all(r["trigger_id"] == "5c2c6a3e-2b8f-4d6e-9a51-7f0d3c9b1a01" and r["trigger_ts"] > 0 for r in rows)
    [batch_row] = kit.rows(batch, batch.c.batch_id == result.batch_id)
    assert (batch_row["state"], batch_row["pulled"], batch_row["run_type"]) == ("landed", 3, "scheduled")
    assert batch_row["landed_at"] is not None


def test_second_land_of_the_same_batch_reuses_it_without_reading_the_source(kit) -> None:
    journal = MemoryJournal()
    journal.publish_triggers(2)
    first = land_batch(kit.engine, journal, ref(0))
    journal.publish_triggers(2)  # newer events must not sneak into the frozen batch
    reads_before = journal.reads

    again = land_batch(kit.engine, journal, ref(0))

    assert (again.batch_id, again.pulled, again.newly_landed, again.reused) == (first.batch_id, 2, 0, True)
    assert journal.reads == reads_before
    assert len(events_of(kit, first.batch_id)) == 2


def test_a_new_batch_pulls_only_what_is_new(kit) -> None:
    journal = MemoryJournal()
    old = journal.publish_triggers(2)
    land_batch(kit.engine, journal, ref(0))
    new = journal.publish_triggers(3)

    result = land_batch(kit.engine, journal, ref(1))

    assert (result.pulled, result.newly_landed, result.reused) == (3, 3, False)
    assert [r["src_position"] for r in events_of(kit, result.batch_id)] == new
    assert [r["src_position"] for r in events_of(kit, ref(0).batch_id)] == old
    # and a batch with nothing new is landed empty
    empty = land_batch(kit.engine, journal, ref(2))
    assert (empty.pulled, empty.newly_landed) == (0, 0)
    assert kit.rows(batch, batch.c.batch_id == empty.batch_id)[0]["state"] == "landed"


def test_max_messages_bounds_a_batch_and_the_next_continues_without_gap_or_repeat(kit) -> None:
    journal = MemoryJournal(page_limit=2)
    published = journal.publish_triggers(7)
    landed: list[list[str]] = []
    for minute in range(4):
        result = land_batch(kit.engine, journal, ref(minute), max_messages=3)
        landed.append([r["src_position"] for r in events_of(kit, result.batch_id)])
    assert [len(b) for b in landed] == [3, 3, 1, 0]
    flat = [p for b in landed for p in b]
    assert flat == published  # in order: no gap, no repeat
    assert len(set(flat)) == len(flat)
    assert journal.served == 7  # nothing was read twice from the source


class CrashAfterFirstPage:
    """A source whose task 'dies' after landing its first page."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.source_key = real.source_key
        self.endpoint = real.endpoint

    def read(self, positions: Mapping[int, str], max_messages: int) -> Iterator[Page]:
        pages = self.real.read(positions, max_messages)
        yield next(pages)
        raise RuntimeError("task killed")


def test_a_batch_left_pulling_is_resumed_by_the_retry(kit) -> None:
    journal = MemoryJournal(page_limit=2)
    published = journal.publish_triggers(6)
    with pytest.raises(RuntimeError, match="task killed"):
        land_batch(kit.engine, CrashAfterFirstPage(journal), ref(0), max_messages=5)
    assert kit.rows(batch, batch.c.batch_id == ref(0).batch_id)[0]["state"] == "pulling"
    assert [r["src_position"] for r in events_of(kit, ref(0).batch_id)] == published[:2]
    [health] = kit.rows(source_health, source_health.c.source == journal.source_key)
    assert health["last_error"] == "RuntimeError: task killed"

    retry = land_batch(kit.engine, journal, ref(0), max_messages=5)

    # resumes from the stored position, and the bound counts what the first try landed
    assert (retry.pulled, retry.newly_landed, retry.reused) == (5, 3, False)
    assert [r["src_position"] for r in events_of(kit, ref(0).batch_id)] == published[:5]
    assert kit.rows(batch, batch.c.batch_id == ref(0).batch_id)[0]["state"] == "landed"


def test_malformed_events_are_landed_not_refused(kit) -> None:
    """Landing never judges content: junk is stored for validate to quarantine, and never crashes
    the pull (a crash here would block the source at this position forever)."""
    journal = MemoryJournal()
    for literal in ("--5", "²"):
        message = trigger_message(trigger_id="t", shopper_id="S")
        message["message"]["triggerTimestamp"] = literal
        journal.publish(json.dumps(envelope(message, partition=0, offset=len(journal.messages))))
    journal.publish("not json at all", json.dumps({"envelopeType": "DATA"}), json.dumps([1, 2]))

    result = land_batch(kit.engine, journal, ref(0))

    rows = events_of(kit, result.batch_id)
    assert result.newly_landed == 5
    assert [r["trigger_ts"] for r in rows] == [None] * 5
    assert rows[2]["payload"] == "not json at all"
    assert [r["message_id"] is None for r in rows] == [False, False, True, True, True]


def test_a_replay_without_a_landed_batch_pulls_nothing_and_says_so(kit) -> None:
    journal = MemoryJournal()
    journal.publish_triggers(1, shopper_id="SHOP-ADA")
    replay = BatchRef(dag_id="d", run_id="backfill__x", run_type="backfill",
                      interval_start=datetime(2026, 1, 1, 10, 0, tzinfo=UTC),
                      interval_end=datetime(2026, 1, 1, 10, 1, tzinfo=UTC))
    result = land_batch(kit.engine, journal, replay, allow_pull=False)
    assert (result.exists, result.pulled, result.reused) == (False, 0, False)
    assert "no batch was landed" in (result.note or "")
    assert journal.reads == 0  # the source was not read
    assert kit.rows(batch) == []  # and no empty batch was invented


def test_a_new_batch_needs_a_source(kit) -> None:
    with pytest.raises(ValueError, match="needs a source"):
        land_batch(kit.engine, None, ref(0))
    assert kit.rows(batch) == []


# -- competing pullers (fake source) -----------------------------------------------------------------
class ScriptedSource:
    """Yields prepared pages; ``between`` runs after each yielded page (e.g. another puller)."""

    source_key = "test:scripted"
    endpoint = "memory://scripted"

    def __init__(self, pages: list[Page], between: Callable[[int], None] | None = None) -> None:
        self.pages = pages
        self.between = between
        self.asked: list[tuple[dict[int, str], int]] = []

    def read(self, positions: Mapping[int, str], max_messages: int) -> Iterator[Page]:
        self.asked.append((dict(positions), max_messages))
        for index, page in enumerate(self.pages):
            yield page
            if self.between is not None:
                self.between(index)


def page(*positions: str, partition: int = 0) -> Page:
    return Page(
        messages=[RawMessage(partition=partition, position=p, payload=envelope_json(offset=i)) for i, p in enumerate(positions)],
        next_positions={partition: positions[-1]},
    )


def test_position_moved_by_another_puller_is_a_conflict_and_the_page_is_not_stored(kit) -> None:
    def other_puller(index: int) -> None:
        if index == 0:
            with kit.engine.begin() as conn:
                conn.execute(
                    update(source_position)
                    .where(source_position.c.source == ScriptedSource.source_key)
                    .values(position="p9")
                )

    source = ScriptedSource([page("p1", "p2"), page("p3", "p4")], between=other_puller)
    with pytest.raises(PositionConflict, match="moved from 'p2'"):
        land_batch(kit.engine, source, ref(0))

    assert [r["src_position"] for r in events_of(kit, ref(0).batch_id)] == ["p1", "p2"]
    assert kit.count(event, event.c.src_position.in_(["p3", "p4"])) == 0
    assert stored_positions(kit.engine, ScriptedSource.source_key) == {0: "p9"}
    assert kit.rows(batch, batch.c.batch_id == ref(0).batch_id)[0]["state"] == "pulling"


def test_first_read_of_a_partition_conflicts_when_another_puller_inserted_it(kit) -> None:
    source = ScriptedSource([page("p1", "p2")])
    original_read = source.read

    def racing_read(positions: Mapping[int, str], max_messages: int) -> Iterator[Page]:
        # after we read the (empty) positions, another puller lands the first page of partition 0
        with kit.engine.begin() as conn:
            conn.execute(source_position.insert().values(
                source=ScriptedSource.source_key, partition=0, position="p2", updated_at=datetime.now(UTC)
            ))
        yield from original_read(positions, max_messages)

    source.read = racing_read  # type: ignore[method-assign]
    with pytest.raises(PositionConflict, match=r"test:scripted\b.*\bstored\b"):  # names the source, says what was kept
        land_batch(kit.engine, source, ref(0))
    assert kit.count(event) == 0
    assert stored_positions(kit.engine, ScriptedSource.source_key) == {0: "p2"}


def test_messages_already_landed_elsewhere_are_a_conflict(kit) -> None:
    land_batch(kit.engine, ScriptedSource([page("p1", "p2")]), ref(0))
    # a source that ignores the stored position and serves p2 again
    assert stored_positions(kit.engine, ScriptedSource.source_key) == {0: "p2"}
    replay = ScriptedSource([Page(messages=page("p2", "p3").messages, next_positions={})])
    with pytest.raises(PositionConflict, match=r"test:scripted\b.*\bstored\b"):
        land_batch(kit.engine, replay, ref(1))
    assert kit.count(event, event.c.batch_id == ref(1).batch_id) == 0
    assert kit.count(event) == 2


def test_max_messages_passed_to_the_source_accounts_for_already_landed(kit) -> None:
    kit.add_batch(ref(0).batch_id, state="pulling", source=ScriptedSource.source_key)
    kit.add_event(ref(0).batch_id, envelope_json(), status="landed", source="other")
    source = ScriptedSource([])
    result = land_batch(kit.engine, source, ref(0), max_messages=10)
    assert source.asked == [({}, 9)]
    assert (result.pulled, result.newly_landed, result.reused) == (1, 0, False)


# -- hostile content: landing never fails on it, and the position always advances --------------------
# Each reproduction of issue 10 lands next to good messages in one page; validate then quarantines
# exactly the hostile ones with the reason that names the problem (the real GX suite, both stores).
def hostile_envelope(**changes: Any) -> dict[str, Any]:
    env = json.loads(envelope_json())
    body = env[PIPELINE_MESSAGE][TRIGGER_BODY]
    if "message_id" in changes:
        env[PIPELINE_MESSAGE]["header"]["messageId"] = changes.pop("message_id")
    if "evar" in changes:
        body["enrichments"]["analyticsHitSummary"]["dimensions"]["eVar01"]["data"] = [changes.pop("evar")]
    body.update(changes)
    return env


def hostile_text(**changes: Any) -> str:
    return json.dumps(hostile_envelope(**changes))


def with_timestamp(literal: str) -> str:
    text = hostile_text(triggerTimestamp=4242)
    assert '"triggerTimestamp": 4242' in text
    return text.replace('"triggerTimestamp": 4242', f'"triggerTimestamp": {literal}')


def good_text() -> str:
    return json.dumps(hostile_envelope(triggerTimestamp=int(datetime.now(UTC).timestamp() * 1000)))


BIG = 2_500_000
# (case id, payload as the source hands it over, (reason column, reason value) that must be among the reasons)
REPRODUCTIONS: list[tuple[str, Callable[[], str | bytes], tuple[str, str]]] = [
    ("nul-in-message-id", lambda: hostile_text(message_id="6b0ed1b6-2b4d-4b44-9b3a-\u0000"), ("problems", "control character in messageId")),
    ("surrogate-in-message-id", lambda: hostile_text(message_id="\ud800"), ("problems", "invalid text in messageId")),
    ("nul-in-trigger-id", lambda: hostile_text(triggerId="x\u0000"), ("problems", "control character in triggerId")),
    ("surrogate-in-trigger-id", lambda: hostile_text(triggerId="\udfff"), ("problems", "invalid text in triggerId")),
    ("nul-in-evar", lambda: hostile_text(evar="x\u0000"), ("problems", "control character in eVar01")),
    ("surrogate-in-evar", lambda: hostile_text(evar="\ud800"), ("problems", "invalid text in eVar01")),
    ("timestamp-1e30", lambda: with_timestamp("1e30"), ("problems", "triggerTimestamp out of range")),
    ("timestamp-2-pow-70", lambda: with_timestamp(str(2**70)), ("problems", "triggerTimestamp out of range")),
    ("timestamp-as-string", lambda: with_timestamp('"123"'), ("problems", "triggerTimestamp is a JSON string, not a number")),
    ("timestamp-nan", lambda: with_timestamp("NaN"), ("problems", "triggerTimestamp is not a finite number")),
    ("nesting-2000", lambda: "[" * 2_000 + "]" * 2_000, ("parse_error", "nesting deeper than 64")),
    ("nesting-100000", lambda: '{"a":' * 100_000 + "1" + "}" * 100_000, ("parse_error", "nesting deeper than 64")),
    ("invalid-utf8-bytes", lambda: good_text().encode().replace(b"SHOP-ADA", b"SHOP-\xff\xfeADA"), ("landing_note", "invalid UTF-8")),
    ("message-of-2.5-MB", lambda: hostile_text(evar="x" * BIG), ("landing_note", f"message larger than {MAX_MESSAGE_BYTES} bytes")),
    ("raw-nul-in-the-text", lambda: good_text()[:-1] + "\x00}", ("landing_note", "NUL replaced")),
    ("raw-surrogate-in-the-text", lambda: good_text().replace("SHOP-ADA", "SHOP-\ud800"), ("landing_note", "lone surrogate replaced")),
]


def reasons_of(kit, event_id: int) -> list[tuple[str, Any]]:
    [row] = kit.rows(quarantine, quarantine.c.event_id == event_id)
    return [(r["column"], r["value"]) for r in json.loads(row["reasons"])]


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pydantic.*")
def test_each_reproduction_lands_advances_the_position_and_is_quarantined_with_its_reason(kit, routing) -> None:
    payloads = [build() for _, build, _ in REPRODUCTIONS]
    messages = [RawMessage(partition=0, position="good-1", payload=good_text().encode())]
    messages += [RawMessage(partition=0, position=f"bad-{i:02d}", payload=p) for i, p in enumerate(payloads)]
    messages.append(RawMessage(partition=0, position="good-2", payload=good_text()))
    source = ScriptedSource([Page(messages=messages, next_positions={0: "good-2"})])

    landed = land_batch(kit.engine, source, ref(0))
    validated = validate_batch(kit.engine, landed.batch_id, routing)

    assert (landed.newly_landed, validated.valid, validated.quarantined) == (len(messages), 2, len(REPRODUCTIONS))
    assert stored_positions(kit.engine, ScriptedSource.source_key) == {0: "good-2"}
    rows = {r["src_position"]: r for r in events_of(kit, landed.batch_id)}
    assert (rows["good-1"]["status"], rows["good-2"]["status"]) == ("valid", "valid")
    assert rows["good-1"]["landing_note"] is None and rows["good-1"]["raw_payload"] is None
    for i, ((case, _, expected), payload) in enumerate(zip(REPRODUCTIONS, payloads)):
        row = rows[f"bad-{i:02d}"]
        assert row["status"] == "quarantined", case
        assert expected in reasons_of(kit, row["event_id"]), (case, reasons_of(kit, row["event_id"]))
        for column in ("payload", "message_id", "trigger_id"):  # what is stored holds no NUL/surrogate
            assert row[column] is None or not re.search("[\x00\ud800-\udfff]", row[column]), (case, column)
        raw = payload if isinstance(payload, bytes) else payload.encode("utf-8", "surrogatepass")
        assert row["raw_size"] == len(raw), case
        if expected[0] == "landing_note":  # the stored text differs: what arrived is kept
            assert row["raw_payload"] == raw[:len(row["raw_payload"])] and len(row["raw_payload"]) > 0, case
        else:
            assert row["raw_payload"] is None and row["landing_note"] is None, case
    big = rows[f"bad-{[c for c, _, _ in REPRODUCTIONS].index('message-of-2.5-MB'):02d}"]
    assert len(big["payload"].encode()) == len(big["raw_payload"]) == MAX_MESSAGE_BYTES
    assert big["raw_size"] > BIG
    # the timestamp column holds what fits, never what does not
    assert {rows[f"bad-{i:02d}"]["trigger_ts"] for i in range(6, 10)} == {None}


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pydantic.*")
def test_a_byte_order_mark_is_removed_and_the_event_stays_valid(kit, routing) -> None:
    text = good_text()
    source = ScriptedSource([Page(
        messages=[RawMessage(0, "p1", b"\xef\xbb\xbf" + text.encode()), RawMessage(0, "p2", "\ufeff" + text)],
        next_positions={0: "p2"},
    )])
    landed = land_batch(kit.engine, source, ref(0))
    assert validate_batch(kit.engine, landed.batch_id, routing).valid == 2
    for row in events_of(kit, landed.batch_id):
        assert (row["payload"], row["landing_note"]) == (text, "byte order mark removed")
        assert row["raw_payload"] == b"\xef\xbb\xbf" + text.encode()


def test_the_size_cap_is_a_parameter_and_cuts_on_a_character_boundary(kit) -> None:
    text = hostile_text(evar="é" * 300)
    source = ScriptedSource([Page(messages=[RawMessage(0, "p1", text.encode())], next_positions={0: "p1"})])
    landed = land_batch(kit.engine, source, ref(0), max_message_bytes=501)
    [row] = events_of(kit, landed.batch_id)
    assert row["landing_note"] == "message larger than 501 bytes"  # and not "invalid UTF-8": no character was split
    assert len(row["payload"].encode()) in (500, 501)
    assert row["raw_payload"] == text.encode()[:len(row["raw_payload"])]
    assert row["raw_size"] == len(text.encode())
    with pytest.raises(ValueError, match="max_message_bytes"):
        land_batch(kit.engine, source, ref(1), max_message_bytes=0)


def test_a_message_the_store_still_refuses_lands_as_raw_bytes_and_the_page_commits(kit, monkeypatch) -> None:
    """Should a value get past the sanitising (simulated by switching it off), the store's refusal
    costs that message its text, not the page its commit."""
    from include.triggerflow.stages import land

    real = land.prepare_payload

    def unsanitised(payload, max_bytes=land.MAX_MESSAGE_BYTES):
        if isinstance(payload, str) and "\ud800" in payload:
            return land.LandedPayload(payload=payload, raw_size=len(payload))
        return real(payload, max_bytes)

    monkeypatch.setattr(land, "prepare_payload", unsanitised)
    bad = good_text().replace("SHOP-ADA", "SHOP-\ud800")
    first, last = good_text(), good_text()
    source = ScriptedSource([Page(
        messages=[RawMessage(0, "p1", first), RawMessage(0, "p2", bad), RawMessage(0, "p3", last)],
        next_positions={0: "p3"},
    )])

    landed = land_batch(kit.engine, source, ref(0))

    assert landed.newly_landed == 3
    assert stored_positions(kit.engine, ScriptedSource.source_key) == {0: "p3"}
    rows = events_of(kit, landed.batch_id)
    assert [r["landing_note"] for r in rows] == [
        None, "the store refused the message as text; only its raw bytes are kept (UnicodeEncodeError)", None,
    ]
    assert rows[1]["payload"] == "" and rows[1]["raw_payload"] == bad.encode("utf-8", "surrogatepass")
    assert (rows[0]["payload"], rows[2]["payload"]) == (first, last)


def test_a_position_conflict_is_still_a_conflict_when_the_page_holds_hostile_content(kit) -> None:
    land_batch(kit.engine, ScriptedSource([page("p1")]), ref(0))
    replay = ScriptedSource([Page(messages=[RawMessage(0, "p1", b"\xff\x00")], next_positions={})])
    with pytest.raises(PositionConflict):
        land_batch(kit.engine, replay, ref(1))
    assert kit.count(event) == 1


@dataclass
class PingPage(Page):
    """A page as the sources' reader reports it once it counts keep-alives."""

    keepalives: int = 0


def test_dropped_lines_are_summed_into_the_batch_and_source_health(kit) -> None:
    source = ScriptedSource([
        Page(messages=page("p1").messages, next_positions={0: "p1"}, dropped={"not JSON": 2, "blank": 1}),
        Page(messages=[], next_positions={0: "p2"}, dropped={"not JSON": 1, "BOM": 4}),
    ])
    landed = land_batch(kit.engine, source, ref(0))

    assert landed.dropped == 8 and landed.as_xcom()["dropped"] == 8
    [row] = kit.rows(batch, batch.c.batch_id == landed.batch_id)
    assert row["dropped"] == 8
    assert json.loads(row["dropped_reasons"]) == {"not JSON": 3, "blank": 1, "BOM": 4}
    [health] = kit.rows(source_health)
    assert health["lines_dropped"] == 8
    assert stored_positions(kit.engine, ScriptedSource.source_key) == {0: "p2"}

    land_batch(kit.engine, ScriptedSource([Page(messages=[], next_positions={0: "p3"}, dropped={"blank": 2})]), ref(1))
    assert kit.rows(source_health)[0]["lines_dropped"] == 10


def test_keepalive_only_pulls_are_counted_until_data_arrives(kit) -> None:
    def health() -> dict:
        [row] = kit.rows(source_health)
        return row

    land_batch(kit.engine, ScriptedSource([PingPage(messages=[], keepalives=3)]), ref(0))
    assert (health()["empty_reads"], health()["last_data_at"]) == (1, None)
    land_batch(kit.engine, ScriptedSource([PingPage(messages=[], keepalives=1), PingPage(messages=[], keepalives=2)]), ref(1))
    assert health()["empty_reads"] == 2
    land_batch(kit.engine, ScriptedSource([]), ref(2))  # an idle read without keep-alives: not counted
    assert health()["empty_reads"] == 2

    land_batch(kit.engine, ScriptedSource([PingPage(messages=page("p1").messages, next_positions={0: "p1"}, keepalives=5)]), ref(3))
    assert health()["empty_reads"] == 0
    assert health()["last_data_at"] is not None


# -- a batch whose events retention deleted ----------------------------------------------------------
def test_a_cleared_run_whose_events_were_purged_fails_with_the_reason(kit) -> None:
    from include.triggerflow.stages.land import BatchPurged

    batch_id = kit.add_batch(ref(0).batch_id)
    with kit.engine.begin() as conn:  # what the maintenance DAG leaves: the row, with its landed count
        conn.execute(update(batch).where(batch.c.batch_id == batch_id).values(pulled=3))
    with pytest.raises(BatchPurged, match=r"landed 3 events, and they have been deleted by the retention"):
        land_batch(kit.engine, None, ref(0), allow_pull=False)


def test_a_batch_that_landed_nothing_is_still_reprocessed_as_empty(kit) -> None:
    kit.add_batch(ref(0).batch_id)  # pulled=0: an empty minute, not a purge
    result = land_batch(kit.engine, None, ref(0), allow_pull=False)
    assert (result.reused, result.pulled) == (True, 0)
