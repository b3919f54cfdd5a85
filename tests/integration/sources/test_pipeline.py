"""Tests for include.triggerflow.sources.pipeline (and the adobe_triggers hook that builds it),
read against the real Adobe emulator process over HTTP, with its fault injection; the landing
tests put the pages through include.triggerflow.stages.land into the test store."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devstack.adobe_emulator import partition_for
from devstack.messages import CART_ABANDONMENT_TRIGGER_ID, trigger_message
from devstack.processes import RunningEmulator, start_emulator
from include.triggerflow.events import PIPELINE_MESSAGE, parse_envelope
from include.triggerflow.hooks.triggers import TriggerSourceHook
from include.triggerflow.sources.base import Gap, Page, SourceError
from include.triggerflow.sources.pipeline import PipelineSource

PARTITIONS = 15
CONSUMER = "triggerflow-test"


@pytest.fixture(scope="module")
def emulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    """This module's emulator: the conftest one, with a short ping interval and stream life."""
    log = tmp_path_factory.mktemp("emulator") / "emulator.log"
    with start_emulator(log_path=log, ping_interval=0.2, stream_max_seconds=5) as emu:
        yield emu


@pytest.fixture
def pipeline_conn(emu: RunningEmulator, adobe_conns, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Point connection adobe_triggers at the emulator as a pipeline source; call to change it.

    ``forced`` is the connection host: True = the emulator (forced endpoint), a string = that
    URL, None = empty host (use discovery)."""

    def configure(*, forced: bool | str | None = True, **extra: Any) -> None:
        host = emu.base_url if forced is True else (forced or "")
        monkeypatch.setenv("AIRFLOW_CONN_ADOBE_TRIGGERS", json.dumps({
            "conn_type": "http",
            "host": host,
            "extra": {
                "kind": "pipeline", "consumer": "triggerflow-{env}", "environment": "test",
                "ims_conn_id": "adobe_ims", "read_timeout_s": 2, "keepalive_wait_s": 1, **extra,
            },
        }))

    configure()
    return configure


def source(**overrides: Any) -> PipelineSource:
    """The source as the DAG builds it, with quick retries unless a test says otherwise."""
    src = TriggerSourceHook().get_source()
    assert isinstance(src, PipelineSource)
    src.max_retry_wait_s = 0.05
    for name, value in overrides.items():
        setattr(src, name, value)
    return src


def read_all(src: PipelineSource, positions: dict[int, str] | None = None, max_messages: int = 10_000) -> list[Page]:
    return list(src.read(positions or {}, max_messages))


def places(pages: list[Page]) -> list[tuple[int, str]]:
    return [(m.partition, m.position) for p in pages for m in p.messages]


def advanced(positions: dict[int, str], pages: list[Page]) -> dict[int, str]:
    """Positions after landing these pages (what land_batch stores)."""
    out = dict(positions)
    for page in pages:
        out.update(page.next_positions)
    return out


def publish(emu: RunningEmulator, count: int, partition: int | None = None) -> set[tuple[int, str]]:
    """Publish ``count`` triggers (into one partition if given); the (partition, offset) the
    producer endpoint accepted, offsets as text."""
    messages = []
    for i in range(count):
        message_id = str(uuid.uuid4())
        while partition is not None and partition_for(message_id, PARTITIONS) != partition:
            message_id = str(uuid.uuid4())
        messages.append(trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id=f"S{i}", message_id=message_id))
    receipt = emu.client.publish(messages)
    return {(p["partition"], str(p["offset"])) for p in receipt["positions"]}


def consume_requests(emu: RunningEmulator) -> int:
    return emu.client.stats()["consume_requests"]


# -- building and reading --------------------------------------------------------------------------
def test_hook_builds_a_pipeline_source(emu, pipeline_conn) -> None:
    src = TriggerSourceHook().get_source()
    assert isinstance(src, PipelineSource)
    assert src.source_key == f"pipeline:{CONSUMER}:triggers"
    assert (src.consumer, src.topic, src.partitions, src.reset, src.page_size) == (CONSUMER, "triggers", 15, "earliest", 1000)
    assert (src.endpoint, src.endpoint_origin) == (emu.base_url, "forced")
    assert src.org_id == emu.client.org_id


def test_reads_everything_published_across_partitions(emu, pipeline_conn) -> None:
    accepted = publish(emu, 40)
    assert len({p for p, _ in accepted}) > 5
    src = source()
    pages = read_all(src)
    got = places(pages)
    assert sorted(got) == sorted(accepted) and len(got) == len(set(got))
    # offset order within each partition
    for partition in {p for p, _ in got}:
        offsets = [int(o) for p, o in got if p == partition]
        assert offsets == sorted(offsets)
    # payloads are the envelopes as received: parseable, at the partition/offset they claim
    for message in (m for p in pages for m in p.messages):
        parsed = parse_envelope(message.payload)
        assert parsed.parse_error is None
        assert (parsed.partition, str(parsed.offset)) == (message.partition, message.position)
        assert parsed.trigger_id == CART_ABANDONMENT_TRIGGER_ID
    # nothing was stored: every partition read is a first read, reported once
    gaps = [g for p in pages for g in p.gaps]
    assert sorted(g.partition for g in gaps) == sorted({p for p, _ in accepted})
    assert all(g.expected is None and g.reason == "first read of this partition (reset=earliest)" for g in gaps)
    assert all(g.resumed == "1000" for g in gaps)
    # caught up: the read ends on the second PING in a row after DATA (caught_up_pings=2)
    assert src.stats.data_lines == 40 and src.stats.pings == 2
    assert sum(p.keepalives for p in pages) == 2 and all(not p.dropped for p in pages)
    assert src.stats.bytes_read == sum(p.bytes_read for p in pages) > 0


def test_page_size_is_respected_and_positions_advance_to_last_plus_one(emu, pipeline_conn) -> None:
    pipeline_conn(page_size=7)
    accepted = publish(emu, 30)
    pages = read_all(source())
    assert [len(p.messages) for p in pages] == [7, 7, 7, 7, 2]
    for page in pages:
        expected: dict[int, str] = {}
        for m in page.messages:
            expected[m.partition] = str(int(m.position) + 1)
        assert page.next_positions == expected
    final = advanced({}, pages)
    per_partition: dict[int, int] = {}
    for partition, offset in accepted:
        per_partition[partition] = max(per_partition.get(partition, 0), int(offset) + 1)
    assert final == {p: str(o) for p, o in per_partition.items()}


def test_second_read_continues_without_repeat(emu, pipeline_conn) -> None:
    first_batch = publish(emu, 12)
    pages = read_all(source())
    positions = advanced({}, pages)
    assert set(places(pages)) == first_batch
    second_batch = publish(emu, 9)
    again = read_all(source(), positions)
    assert set(places(again)) == second_batch
    # partitions that were stored resume exactly where asked: no gap for them
    stored = set(positions)
    assert [g for p in again for g in p.gaps if g.partition in stored] == []
    assert places(read_all(source(), advanced(positions, again))) == []


def test_max_messages_bounds_the_read(emu, pipeline_conn) -> None:
    accepted = publish(emu, 20)
    src = source()
    pages = read_all(src, max_messages=5)
    assert len(places(pages)) == 5
    rest = read_all(source(), advanced({}, pages))
    assert sorted(places(pages) + places(rest)) == sorted(accepted)
    before = consume_requests(emu)
    assert read_all(source(), max_messages=0) == []
    assert consume_requests(emu) == before


def test_the_request_assigns_every_partition_with_the_reset_policy(emu, pipeline_conn) -> None:
    pipeline_conn(reset="latest")
    publish(emu, 3, partition=2)  # offsets 1000..1002: all read already per the positions below
    assert places(read_all(source(), {2: "1003", 5: "1000"})) == []
    log_text = emu.log_path.read_text()
    assign = ",".join(f"{p}:{ {2: 1003, 5: 1000}.get(p, 0) }" for p in range(PARTITIONS))
    assert f"group={CONSUMER}&assign={assign}&reset=latest" in log_text


def test_reset_latest_skips_what_was_there_reset_earliest_reads_it(emu, pipeline_conn) -> None:
    accepted = publish(emu, 4)
    pipeline_conn(reset="latest")
    assert places(read_all(source())) == []
    pipeline_conn(reset="earliest")
    assert set(places(read_all(source()))) == accepted


# -- endpoint --------------------------------------------------------------------------------------
def test_forced_endpoint_skips_discovery(emu, pipeline_conn) -> None:
    publish(emu, 2)
    src = source()
    assert len(places(read_all(src))) == 2
    assert emu.client.stats()["discovery_requests"] == 0
    assert (src.endpoint, src.endpoint_origin) == (emu.base_url, "forced")


def test_discovery_picks_the_topic_endpoint_once(emu, pipeline_conn, caplog) -> None:
    # Discovery at "localhost", so the endpoint it answers (127.0.0.1) is visibly another URL.
    discovery = emu.base_url.replace("127.0.0.1", "localhost")
    pipeline_conn(forced=None, discovery_url=discovery)
    publish(emu, 3)
    src = source()
    assert (src.endpoint, src.endpoint_origin) == (discovery, "unresolved")
    with caplog.at_level(logging.INFO, logger="include.triggerflow.sources.pipeline"):
        assert len(places(read_all(src))) == 3
        read_all(src)
    assert (src.endpoint, src.endpoint_origin) == (emu.base_url, "discovered")
    assert emu.client.stats()["discovery_requests"] == 1  # once per source
    assert f"pipeline endpoint {emu.base_url} (discovered via {discovery}/v1/endpoints" in caplog.text


def test_discovery_without_the_topic_is_a_source_error(emu, pipeline_conn) -> None:
    pipeline_conn(forced=None, discovery_url=emu.base_url, topic="someone-elses")
    with pytest.raises(SourceError, match="lists no endpoint for topic 'someone-elses'"):
        read_all(source())
    assert consume_requests(emu) == 0


def test_discovery_retries_on_503(emu, pipeline_conn) -> None:
    pipeline_conn(forced=None, discovery_url=emu.base_url)
    emu.client.add_faults([{"endpoint": "discovery", "kind": "status", "status": 503, "times": 2}])
    publish(emu, 1)
    assert len(places(read_all(source()))) == 1
    assert emu.client.stats()["discovery_requests"] == 3


# -- HTTP errors -----------------------------------------------------------------------------------
def test_503_and_429_wait_retry_after_then_succeed(emu, pipeline_conn) -> None:
    # The waits the source asks for, recorded instead of slept: judged by what it asked, not by
    # wall time, which a loaded machine stretches.
    waits: list[float] = []
    accepted = publish(emu, 3)
    emu.client.add_faults([
        {"endpoint": "consume", "kind": "status", "status": 503, "retry_after": 0.3},
        {"endpoint": "consume", "kind": "status", "status": 429, "retry_after": 0},
    ])
    pages = read_all(source(max_retry_wait_s=30, sleep=waits.append))
    assert set(places(pages)) == accepted
    # Retry-After, not the back-off (0.5 s then 1 s), sets the waits: 0.3 s, then none.
    assert waits[:2] == [pytest.approx(0.3), 0]
    assert consume_requests(emu) == 3


def test_retry_after_is_capped(emu, pipeline_conn) -> None:
    publish(emu, 1)
    emu.client.add_faults([{"endpoint": "consume", "kind": "status", "status": 503, "retry_after": 60}])
    waits: list[float] = []
    assert len(places(read_all(source(max_retry_wait_s=0.2, sleep=waits.append)))) == 1
    assert waits == [pytest.approx(0.2)]  # 60 s asked, capped at max_retry_wait_s


def test_three_503_are_retried_with_the_default_four_tries(emu, pipeline_conn) -> None:
    publish(emu, 2)
    emu.client.add_faults([{"endpoint": "consume", "kind": "status", "status": 503, "times": 3}])
    assert len(places(read_all(source()))) == 2
    assert consume_requests(emu) == 4


@pytest.mark.parametrize("status", [503, 500, 502, 504, 429])
def test_retryable_errors_exhausted_are_a_source_error(emu, pipeline_conn, status) -> None:
    pipeline_conn(max_tries=3)
    emu.client.add_faults([{"endpoint": "consume", "kind": "status", "status": status, "times": 5}])
    with pytest.raises(SourceError) as info:
        read_all(source())
    assert f"answered HTTP {status}" in str(info.value)
    assert "gave up after 3 consecutive tries" in str(info.value)
    assert consume_requests(emu) == 3


def test_400_is_not_retried_and_carries_adobes_message(emu, pipeline_conn) -> None:
    # A connection that claims 20 partitions on a 15-partition topic: the emulator refuses assign.
    pipeline_conn(partitions=20)
    with pytest.raises(SourceError) as info:
        read_all(source())
    text = str(info.value)
    assert "(400, not retried)" in text
    assert "partition 15 is not in 0..14" in text
    assert consume_requests(emu) == 1


def test_404_names_the_topic_and_the_endpoint(emu, pipeline_conn) -> None:
    pipeline_conn(topic="no-such-topic")
    with pytest.raises(SourceError) as info:
        read_all(source())
    assert str(info.value) == f"topic 'no-such-topic' missing or not accessible (404) at {emu.base_url}"
    assert consume_requests(emu) == 1


def test_expired_token_is_refreshed_once(emu, pipeline_conn) -> None:
    accepted = publish(emu, 3)  # the publishing client mints its own token
    src = source()
    pages = read_all(src)
    assert set(places(pages)) == accepted
    minted = emu.client.stats()["token_requests"]
    emu.client.expire_tokens()
    more = publish(emu, 2)  # mints again (its token expired too)
    read_again = read_all(src, advanced({}, pages))
    assert set(places(read_again)) == more
    stats = emu.client.stats()
    assert stats["token_requests"] == minted + 2  # the publisher's and exactly one for the source


def test_persistent_401_is_a_source_error(emu, pipeline_conn) -> None:
    calls: list[bool] = []

    def bogus_token(refresh: bool) -> str:
        calls.append(refresh)
        return "bogus-token"

    src = source(_token=bogus_token)
    with pytest.raises(SourceError, match="refused a freshly minted IMS token"):
        read_all(src)
    assert calls == [False, True]
    assert consume_requests(emu) == 2


def test_unreachable_endpoint_is_a_source_error_after_the_tries(emu, pipeline_conn) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pipeline_conn(forced=f"http://127.0.0.1:{port}", max_tries=2)
    with pytest.raises(SourceError, match=r"unreachable .*gave up after 2 consecutive tries"):
        read_all(source())


# -- broken streams --------------------------------------------------------------------------------
def test_cut_streams_lose_and_repeat_nothing(emu, pipeline_conn) -> None:
    pipeline_conn(page_size=5)
    accepted = publish(emu, 25)
    emu.client.add_faults([
        {"endpoint": "consume", "kind": "cut", "after_messages": 7},
        {"endpoint": "consume", "kind": "status", "status": 503},
        {"endpoint": "consume", "kind": "cut", "after_messages": 4},
    ])
    src = source()
    pages = read_all(src)
    got = places(pages)
    assert sorted(got) == sorted(accepted) and len(got) == 25
    # what was read before each cut came out as its own (short) page before reconnecting
    assert [len(p.messages) for p in pages] == [5, 2, 4, 5, 5, 4]
    assert src.stats.reconnects == 2 and src.stats.duplicates_dropped == 0
    assert consume_requests(emu) == 4


def test_repeated_cuts_without_progress_are_a_source_error(emu, pipeline_conn) -> None:
    pipeline_conn(max_tries=3)
    publish(emu, 2)
    emu.client.add_faults([{"endpoint": "consume", "kind": "cut", "after_messages": 0, "times": 3}])
    with pytest.raises(SourceError, match=r"failed without progress .*(ChunkedEncodingError|ProtocolError).*gave up after 3"):
        read_all(source())


def test_slow_stream_is_read_to_the_end(emu, pipeline_conn) -> None:
    accepted = publish(emu, 6)
    emu.client.add_faults([{"endpoint": "consume", "kind": "slow", "delay_ms": 100}])
    src = source()
    assert set(places(read_all(src))) == accepted
    # slow is not broken: one stream, read to its end, no reconnect
    assert (src.stats.requests, src.stats.reconnects) == (1, 0)
    assert consume_requests(emu) == 1


def test_stalled_stream_times_out_and_reconnects(emu, pipeline_conn) -> None:
    pipeline_conn(read_timeout_s=0.5)
    accepted = publish(emu, 6)
    emu.client.add_faults([{"endpoint": "consume", "kind": "stall", "seconds": 3, "after_messages": 2}])
    src = source()
    pages = read_all(src)
    assert sorted(places(pages)) == sorted(accepted)
    # the 3 s stall ended at the 0.5 s socket timeout: one reconnect, not a wait for the stall
    assert src.read_timeout_s == 0.5
    assert (src.stats.requests, src.stats.reconnects) == (2, 1)
    assert [len(p.messages) for p in pages] == [2, 4]  # the two before the stall, then the rest


def test_duplicate_delivery_is_dropped(emu, pipeline_conn) -> None:
    accepted = publish(emu, 8)
    emu.client.add_faults([{"endpoint": "consume", "kind": "duplicate"}])
    src = source()
    got = places(read_all(src))
    assert sorted(got) == sorted(accepted) and len(got) == len(set(got))
    assert src.stats.duplicates_dropped == 8 and src.stats.data_lines == 16


def test_malformed_body_is_yielded_at_its_position(emu, pipeline_conn) -> None:
    accepted = publish(emu, 3, partition=4)
    emu.client.add_faults([{"endpoint": "consume", "kind": "malformed", "partition": 4, "offset": 1001}])
    pages = read_all(source())
    assert set(places(pages)) == accepted
    garbled = next(m for p in pages for m in p.messages if m.position == "1001")
    assert json.loads(garbled.payload)[PIPELINE_MESSAGE] == "not an object"
    parsed = parse_envelope(garbled.payload)
    assert (parsed.partition, parsed.offset, parsed.trigger_id) == (4, 1001, None)


def test_non_json_line_is_counted_unplaceable(emu, pipeline_conn, caplog) -> None:
    accepted = publish(emu, 3)
    emu.client.add_faults([
        {"endpoint": "consume", "kind": "malformed", "line": "this is not json"},
        {"endpoint": "consume", "kind": "malformed", "line": '{"envelopeType":"DATA","partition":"x"}'},
    ])
    src = source()
    with caplog.at_level(logging.WARNING, logger="include.triggerflow.sources.pipeline"):
        pages = read_all(src)
    assert set(places(pages)) == accepted
    assert src.unplaceable == 1 == src.stats.unplaceable
    assert "unplaceable line (not JSON, 16 bytes)" in caplog.text
    # the second rule fires on the next stream
    publish(emu, 1)
    read_all(src, advanced({}, pages))
    assert src.unplaceable == 2
    assert "unplaceable line (no integer partition/offset" in caplog.text


def test_expired_offsets_are_reported_as_a_gap(emu, pipeline_conn) -> None:
    publish(emu, 6, partition=3)
    first = read_all(source(), max_messages=2)
    positions = advanced({}, first)
    assert positions == {3: "1002"}
    emu.client.expire(3, before_offset=1004)
    pages = read_all(source(), positions)
    assert places(pages) == [(3, "1004"), (3, "1005")]
    assert [g for p in pages for g in p.gaps] == [
        Gap(
            partition=3, expected="1002", resumed="1004",
            reason="the source resumed past the requested offset: offsets 1002..1003 expired from "
            "retention or were skipped by reset=earliest",
        )
    ]


# -- through the landing stage ---------------------------------------------------------------------
def _land(store_engine, src: PipelineSource, run: str):
    from include.triggerflow.stages.land import BatchRef, land_batch

    return land_batch(store_engine, src, BatchRef(dag_id="trigger_emails", run_id=run))


def test_land_cut_and_duplicated_streams_store_each_message_exactly_once(emu, pipeline_conn, kit) -> None:
    from include.triggerflow.stages.land import stored_positions
    from include.triggerflow.store.schema import event, source_gap

    pipeline_conn(page_size=4)
    accepted = publish(emu, 30)
    emu.client.add_faults([
        {"endpoint": "consume", "kind": "cut", "after_messages": 9},
        {"endpoint": "consume", "kind": "duplicate", "times": 2},
    ])
    src = source()
    result = _land(kit.engine, src, "run-1")
    assert (result.pulled, result.newly_landed) == (30, 30)
    rows = kit.rows(event)
    assert sorted((r["src_partition"], r["src_position"]) for r in rows) == sorted(accepted)
    assert {r["source"] for r in rows} == {src.source_key}
    assert src.stats.duplicates_dropped > 0 and src.stats.reconnects == 1
    last = {}
    for partition, offset in accepted:
        last[partition] = max(last.get(partition, 0), int(offset))
    assert stored_positions(kit.engine, src.source_key) == {p: str(o + 1) for p, o in last.items()}
    # first reads are on record, one per partition
    assert sorted(r["partition"] for r in kit.rows(source_gap)) == sorted(last)

    more = publish(emu, 5)
    emu.client.add_faults([{"endpoint": "consume", "kind": "duplicate"}])
    again = _land(kit.engine, source(), "run-2")
    assert again.newly_landed == 5
    rows = kit.rows(event)
    assert sorted((r["src_partition"], r["src_position"]) for r in rows) == sorted(accepted | more)


def test_land_expired_offsets_record_a_gap_row(emu, pipeline_conn, kit) -> None:
    from include.triggerflow.stages.land import stored_positions
    from include.triggerflow.store.schema import event, source_gap

    publish(emu, 3, partition=9)
    src = source()
    _land(kit.engine, src, "run-1")
    assert stored_positions(kit.engine, src.source_key) == {9: "1003"}
    publish(emu, 4, partition=9)  # 1003..1006
    emu.client.expire(9, before_offset=1005)
    _land(kit.engine, source(), "run-2")
    gaps = kit.rows(source_gap, source_gap.c.expected_position.is_not(None))
    assert [(g["source"], g["partition"], g["expected_position"], g["resumed_position"], g["batch_id"]) for g in gaps] == [
        (src.source_key, 9, "1003", "1005", "trigger_emails/run/run-2")
    ]
    assert "expired from retention" in gaps[0]["reason"]
    assert sorted(int(r["src_position"]) for r in kit.rows(event)) == [1000, 1001, 1002, 1005, 1006]
    assert stored_positions(kit.engine, src.source_key) == {9: "1007"}
