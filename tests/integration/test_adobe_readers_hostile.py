"""The Adobe readers against a hostile server (issue 10 items 2, 3, 4, 7, 10): the real emulator
process, the sources built by the adobe_triggers hook from connection extras, and landing into
the test store (SQLite, or PostgreSQL with TRIGGERFLOW_TEST_PG_URL).

Keep-alives: streams that open with PINGs, interleave them, or send only PINGs. Bounds: a huge
stream line, a read's byte budget and deadline, journal pages over their byte cap (Content-Length
and chunked), a trickled journal page, a single journal item over the cap. Content: invalid
UTF-8, deep nesting and unplaceable lines on both routes. IMS: expires_in of Infinity/1e12/NaN/
absent from the emulator's token endpoint. Assertions are on counts, positions and what the
source asked for, never on wall time.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.messages import CART_ABANDONMENT_TRIGGER_ID, envelope, trigger_message
from devstack.processes import RunningEmulator, start_emulator
from include.triggerflow.hooks.ims import AdobeImsHook, clear_token_cache
from include.triggerflow.hooks.triggers import TriggerSourceHook
from include.triggerflow.sources.base import Page, SourceError
from include.triggerflow.sources.journal import JournalSource
from include.triggerflow.sources.pipeline import PipelineSource

PING_INTERVAL_S = 0.2


@pytest.fixture(scope="module")
def emulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    log = tmp_path_factory.mktemp("emulator") / "emulator.log"
    with start_emulator(log_path=log, ping_interval=PING_INTERVAL_S, stream_max_seconds=10) as emu:
        yield emu


@pytest.fixture
def emu(emulator_process: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    emulator_process.client.reset()
    clear_token_cache()
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({
        "conn_type": "http",
        "host": emulator_process.base_url,
        "login": emulator_process.client.client_id,
        "password": emulator_process.client.client_secret,
        "extra": {"org_id": emulator_process.client.org_id, "scopes": "openid,AdobeID"},
    }))
    yield emulator_process
    clear_token_cache()


def _triggers_conn(monkeypatch: pytest.MonkeyPatch, host: str, extra: dict[str, Any]) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_TRIGGERS", json.dumps({
        "conn_type": "http", "host": host, "extra": {"ims_conn_id": "adobe_ims", **extra},
    }))


def pipeline(emu: RunningEmulator, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> PipelineSource:
    """The Pipeline source as the DAG builds it, from these connection extras."""
    settings = {
        "kind": "pipeline", "consumer": "triggerflow-{env}", "environment": "test",
        "read_timeout_s": 2, "keepalive_wait_s": 1, **extra,
    }
    _triggers_conn(monkeypatch, emu.base_url, settings)
    src = TriggerSourceHook().get_source()
    assert isinstance(src, PipelineSource)
    src.max_retry_wait_s = 0.05
    return src


def journal(emu: RunningEmulator, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> JournalSource:
    _triggers_conn(monkeypatch, emu.client.journal_url, {"kind": "journal", **extra})
    src = TriggerSourceHook().get_source()
    assert isinstance(src, JournalSource)
    src.max_retry_wait_s = 0.05
    return src


def publish(emu: RunningEmulator, count: int) -> list[dict[str, Any]]:
    """Publish ``count`` triggers; returns their receipts (partition, offset, position)."""
    messages = [trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id=f"SHOP-{i}") for i in range(count)]
    receipts = emu.client.publish(messages)["positions"]
    assert len(receipts) == count
    return receipts


def placed(pages: list[Page]) -> list[tuple[int, str]]:
    return [(m.partition, m.position) for p in pages for m in p.messages]


def receipts_places(receipts: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return sorted((r["partition"], str(r["offset"])) for r in receipts)


def dropped(pages: list[Page]) -> dict[str, int]:
    out: dict[str, int] = {}
    for page in pages:
        for reason, count in page.dropped.items():
            out[reason] = out.get(reason, 0) + count
    return out


def advanced(positions: dict[int, str], pages: list[Page]) -> dict[int, str]:
    out = dict(positions)
    for page in pages:
        out.update(page.next_positions)
    return out


def land(store_engine: Any, src: Any, run: str) -> Any:
    from include.triggerflow.stages.land import BatchRef, land_batch

    return land_batch(store_engine, src, BatchRef(dag_id="trigger_emails", run_id=run))


# -- Pipeline keep-alives ---------------------------------------------------------------------------------
def test_stream_that_opens_with_pings_is_read(emu, monkeypatch) -> None:
    receipts = publish(emu, 5)
    emu.client.add_faults({"endpoint": "consume", "kind": "ping_first", "count": 3, "delay_ms": 50})
    src = pipeline(emu, monkeypatch)
    pages = list(src.read({}, 1000))
    assert sorted(placed(pages)) == receipts_places(receipts)
    # 3 PINGs before any DATA did not end the read; it ended on 2 PINGs in a row after DATA
    assert sum(p.keepalives for p in pages) == 3 + 2
    assert emu.client.stats()["consume_requests"] == 1


def test_interleaved_pings_do_not_end_the_read_by_default(emu, monkeypatch) -> None:
    receipts = publish(emu, 6)
    emu.client.add_faults({"endpoint": "consume", "kind": "interleave_pings"})
    src = pipeline(emu, monkeypatch)
    pages = list(src.read({}, 1000))
    assert sorted(placed(pages)) == receipts_places(receipts)  # one read, one stream, everything
    assert emu.client.stats()["consume_requests"] == 1
    # a PING after each of the 6 DATA lines, then the caught-up PING: two in a row
    assert sum(p.keepalives for p in pages) == 6 + 1


def test_ending_on_the_first_ping_after_data_reads_interleaved_pings_in_steps(emu, monkeypatch) -> None:
    receipts = publish(emu, 4)
    src = pipeline(emu, monkeypatch, caught_up_pings=1)
    positions: dict[int, str] = {}
    got: list[tuple[int, str]] = []
    reads = 0
    while len(got) < len(receipts) and reads < 10:
        emu.client.add_faults({"endpoint": "consume", "kind": "interleave_pings"})
        pages = list(src.read(positions, 1000))
        got += placed(pages)
        positions = advanced(positions, pages)
        reads += 1
    # one message per read: each PING after DATA ended it; nothing lost, nothing repeated
    assert reads == len(receipts)
    assert sorted(got) == receipts_places(receipts)


def test_only_pings_end_the_read_with_nothing_pulled_and_keepalives_counted(emu, monkeypatch, store_engine) -> None:
    from include.triggerflow.stages.land import stored_positions
    from include.triggerflow.store.schema import source_health

    publish(emu, 3)  # waiting, but the server never serves them
    emu.client.add_faults({"endpoint": "consume", "kind": "pings_only"})
    src = pipeline(emu, monkeypatch, keepalive_wait_s=0.6)
    result = land(store_engine, src, "pings-only")
    assert result.pulled == 0
    assert src.stats.pings >= 1 and src.stats.data_lines == 0
    assert stored_positions(store_engine, src.source_key) == {}
    with store_engine.connect() as conn:
        health = conn.execute(source_health.select().where(source_health.c.source == src.source_key)).mappings().one()
    assert health["empty_reads"] == 1


def test_only_pings_end_by_the_read_deadline(emu, monkeypatch) -> None:
    publish(emu, 2)
    emu.client.add_faults({"endpoint": "consume", "kind": "pings_only"})
    # keepalive_wait_s longer than the deadline: the deadline ends it
    src = pipeline(emu, monkeypatch, keepalive_wait_s=60, read_deadline_s=0.8)
    pages = list(src.read({}, 1000))
    assert placed(pages) == []
    assert sum(p.keepalives for p in pages) == src.stats.pings >= 1
    assert src.stats.requests == 1  # no reconnect after the deadline


def test_stream_of_pings_then_data_is_read_within_the_keepalive_wait(emu, monkeypatch) -> None:
    receipts = publish(emu, 2)
    # 4 PINGs 100 ms apart before the data: the first PING used to end this read with nothing
    emu.client.add_faults({"endpoint": "consume", "kind": "ping_first", "count": 4, "delay_ms": 100})
    src = pipeline(emu, monkeypatch, keepalive_wait_s=5)
    pages = list(src.read({}, 1000))
    assert sorted(placed(pages)) == receipts_places(receipts)


def test_retries_end_at_the_read_deadline_with_the_last_failure(emu, monkeypatch) -> None:
    publish(emu, 1)
    emu.client.add_faults({"endpoint": "consume", "kind": "status", "status": 503, "retry_after": 30, "times": 10})
    src = pipeline(emu, monkeypatch, read_deadline_s=0.5, max_tries=10)
    src.max_retry_wait_s = 30  # Retry-After alone would wait 30 s per try
    with pytest.raises(SourceError, match=r"failed without progress until the read's 0.5 s deadline \(SourceError: HTTP 503"):
        list(src.read({}, 1000))
    assert emu.client.stats()["consume_requests"] == 1  # the wait was cut to the deadline, no second try


# -- Pipeline bounds and content ------------------------------------------------------------------------------
def test_huge_line_is_skipped_to_its_newline_in_bounded_memory(emu, monkeypatch) -> None:
    receipts = publish(emu, 4)
    line_cap = 1024 * 1024
    huge = 48 * 1024 * 1024  # the line: 26 s and +96 MB with requests.iter_lines
    emu.client.add_faults({"endpoint": "consume", "kind": "huge_line", "size": huge, "after_messages": 2})
    src = pipeline(emu, monkeypatch, max_line_bytes=line_cap, read_timeout_s=10)
    tracemalloc.start()
    try:
        pages = list(src.read({}, 1000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sorted(placed(pages)) == receipts_places(receipts)  # the stream went on after it
    assert dropped(pages) == {f"line larger than {line_cap} bytes": 1}
    assert src.stats.bytes_read > huge
    # the line is never held (a quadratic reader held it whole, twice); the margin above the
    # 1 MiB cap is for what else the process allocates meanwhile
    assert peak < huge / 4


def test_read_stops_at_its_byte_budget_and_the_next_read_continues(emu, monkeypatch) -> None:
    receipts = publish(emu, 12)
    src = pipeline(emu, monkeypatch, max_read_bytes=5000)
    first = list(src.read({}, 1000))
    assert 0 < len(placed(first)) < 12
    assert sum(p.bytes_read for p in first) >= 5000
    rest = list(pipeline(emu, monkeypatch).read(advanced({}, first), 1000))
    assert sorted(placed(first) + placed(rest)) == receipts_places(receipts)


def _wrapped_envelope(partition: int = 0) -> dict[str, Any]:
    return envelope(trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-RAW"), partition=partition, offset=0)


def test_unplaceable_lines_are_counted_by_reason(emu, monkeypatch) -> None:
    good = publish(emu, 2)
    raw = [
        b"",  # a blank line
        b"\xef\xbb\xbf" + json.dumps(_wrapped_envelope()).encode(),
        b"not json at all",
        b"[1, 2]",
        json.dumps({"envelopeType": "DATA", "partition": "0", "offset": 5}).encode(),
        json.dumps({"envelopeType": "DATA", "partition": 0, "offset": 10**30}).encode(),
        b"{" * 50_000,  # deep and broken: no partition/offset to be found
    ]
    emu.client.publish_bytes(raw, as_="envelope")
    src = pipeline(emu, monkeypatch)
    pages = list(src.read({}, 1000))
    assert sorted(placed(pages)) == receipts_places(good)
    assert dropped(pages) == {
        "blank line": 1,
        "line starts with a byte order mark": 1,
        "not JSON": 2,
        "not a JSON object": 1,
        "no integer partition/offset": 2,
    }
    assert src.unplaceable == 7


def test_invalid_utf8_and_deep_nesting_land_at_their_stream_positions(emu, monkeypatch, store_engine) -> None:
    from include.triggerflow.stages.land import stored_positions
    from include.triggerflow.store.schema import event

    deep = b"[" * 100_000 + b"]" * 100_000
    bad_utf8 = b'{"header":{"messageId":"m-\xff\xfe"},"message":{"x":"\xc3"}}'
    lone_surrogate = b'{"header":{"messageId":"\\ud800"}}'  # msgspec refuses it even when skipping
    receipts = emu.client.publish_bytes(
        [deep, bad_utf8, b'{"x": NaN}', lone_surrogate], as_="pipeline_message", partition=3
    )["positions"]
    src = pipeline(emu, monkeypatch)
    pages = list(src.read({}, 1000))
    by_place = {(m.partition, m.position): m.payload for p in pages for m in p.messages}
    assert sorted(by_place) == receipts_places(receipts)
    assert isinstance(by_place[(3, str(receipts[1]["offset"]))], bytes)  # handed over undecoded
    assert dropped(pages) == {}

    result = land(store_engine, pipeline(emu, monkeypatch), "hostile-stream")
    assert result.pulled == 4
    with store_engine.connect() as conn:
        rows = conn.execute(event.select().order_by(event.c.src_position)).mappings().all()
    assert [(r["src_partition"], r["src_position"]) for r in rows] == receipts_places(receipts)
    assert stored_positions(store_engine, src.source_key) == {3: str(receipts[-1]["offset"] + 1)}


# -- Journal ----------------------------------------------------------------------------------------------------
def test_journal_lands_invalid_utf8_and_deep_items_and_advances(emu, monkeypatch, store_engine) -> None:
    from include.triggerflow.stages.land import stored_positions
    from include.triggerflow.store.schema import event

    before = publish(emu, 1)
    env = json.dumps(_wrapped_envelope()).encode()
    bad_utf8 = env[:-1] + b',"note":"\xff\xfe\xc3"}'
    deep = env[:-1] + b',"deep":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    raw = emu.client.publish_bytes([bad_utf8, deep], as_="envelope")["positions"]
    after = publish(emu, 1)
    src = journal(emu, monkeypatch)
    pages = list(src.read({}, 1000))
    positions = [r["position"] for r in before + raw + after]
    assert [m.position for p in pages for m in p.messages] == positions
    payloads = {m.position: m.payload for p in pages for m in p.messages}
    assert payloads[raw[0]["position"]] == bad_utf8  # bytes as received, for landing to decode
    assert payloads[raw[1]["position"]] == deep.decode()

    result = land(store_engine, journal(emu, monkeypatch), "hostile-journal")
    assert result.pulled == 4
    with store_engine.connect() as conn:
        stored = [r.src_position for r in conn.execute(event.select().order_by(event.c.event_id))]
    assert stored == positions
    assert stored_positions(store_engine, src.source_key) == {0: positions[-1]}


def test_journal_page_over_the_cap_is_asked_for_again_smaller(emu, monkeypatch) -> None:
    receipts = publish(emu, 8)
    src = journal(emu, monkeypatch, page_limit=8, max_page_bytes=6000)
    pages = list(src.read({}, 1000))
    assert [m.position for p in pages for m in p.messages] == [r["position"] for r in receipts]
    assert dropped(pages) == {}
    # 8 items (~12 KB) and 4 items (~6 KB) are over 6000 bytes, 2 items fit; then it grows back
    assert src.limits_asked[:3] == [8, 4, 2]
    assert all(len(p.messages) <= 2 for p in pages)


def test_chunked_journal_page_over_the_cap_is_counted_while_read(emu, monkeypatch) -> None:
    receipts = publish(emu, 1)
    emu.client.add_faults({"endpoint": "journal", "kind": "pad", "size": 3 * 1024 * 1024})
    src = journal(emu, monkeypatch, page_limit=4, max_page_bytes=1024 * 1024)
    pages = list(src.read({}, 1000))
    assert [m.position for p in pages for m in p.messages] == [receipts[0]["position"]]
    assert src.limits_asked[:2] == [4, 2]


def test_single_journal_item_over_the_cap_is_skipped_and_counted(emu, monkeypatch, store_engine) -> None:
    from include.triggerflow.stages.land import stored_positions
    from include.triggerflow.store.schema import batch

    first = publish(emu, 1)
    huge_env = _wrapped_envelope()
    huge_env["pad"] = "x" * 300_000
    huge = emu.client.publish_bytes([json.dumps(huge_env).encode()], as_="envelope")["positions"]
    last = publish(emu, 1)
    src = journal(emu, monkeypatch, page_limit=4, max_page_bytes=100_000)
    pages = list(src.read({}, 1000))
    assert [m.position for p in pages for m in p.messages] == [first[0]["position"], last[0]["position"]]
    assert dropped(pages) == {"journal item larger than 100000 bytes": 1}
    assert advanced({}, pages) == {0: last[0]["position"]}
    assert huge[0]["position"] not in [m.position for p in pages for m in p.messages]

    result = land(store_engine, journal(emu, monkeypatch, page_limit=4, max_page_bytes=100_000), "huge-item")
    assert result.pulled == 2
    assert stored_positions(store_engine, src.source_key) == {0: last[0]["position"]}
    with store_engine.connect() as conn:
        row = conn.execute(batch.select()).mappings().one()
    assert row["dropped"] == 1


def test_trickled_journal_page_ends_at_the_request_deadline_and_is_retried(emu, monkeypatch) -> None:
    receipts = publish(emu, 1)
    # 2 MB in 64 KB chunks 100 ms apart: every socket read succeeds, only a deadline ends it
    emu.client.add_faults({"endpoint": "journal", "kind": "pad", "size": 2 * 1024 * 1024, "delay_ms": 100})
    src = journal(emu, monkeypatch, request_deadline_s=0.5, timeout_s=5)
    pages = list(src.read({}, 1000))
    assert [m.position for p in pages for m in p.messages] == [receipts[0]["position"]]
    assert emu.client.stats()["journal_requests"] >= 2  # the trickled answer, then the retry


def test_journal_trickled_every_time_is_a_source_error_naming_the_deadline(emu, monkeypatch) -> None:
    publish(emu, 1)
    emu.client.add_faults({
        "endpoint": "journal", "kind": "pad", "size": 2 * 1024 * 1024, "delay_ms": 100, "times": 2,
    })
    src = journal(emu, monkeypatch, request_deadline_s=0.3, timeout_s=5)
    src.max_tries = 2
    with pytest.raises(SourceError, match=r"request_deadline_s \(0.3 s\)"):
        list(src.read({}, 1000))


# -- IMS ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [(float("inf"), 86_400), (1e12, 86_400), (float("nan"), 60), (-5, 60), ("soon", 60), (None, 60), (3600, 3600)],
)
def test_ims_expires_in_from_the_emulator_is_clamped(emu, store_engine, expires_in, lifetime) -> None:
    rule: dict[str, Any] = {"endpoint": "token", "kind": "token_answer"}
    if expires_in is not None:  # None: the answer has no expires_in at all
        rule["expires_in"] = expires_in
    emu.client.add_faults(rule)
    hook = AdobeImsHook(token_store=store_engine)
    token = hook.fetch_token()
    assert token.lifetime_s == pytest.approx(lifetime)
    # the token works, and the stored copy (the old crash site) is reused by a new process
    clear_token_cache()
    assert AdobeImsHook(token_store=store_engine).get_token() == token.access_token
    assert emu.client.stats()["tokens_issued"] == 1


def test_padded_ims_answer_over_the_cap_is_an_auth_error(emu, monkeypatch) -> None:
    emu.client.add_faults({"endpoint": "token", "kind": "pad", "size": 200_000})
    from include.triggerflow.hooks.ims import ImsAuthError

    with pytest.raises(ImsAuthError, match=r"larger than 65536 bytes.*max_answer_bytes"):
        AdobeImsHook().get_token()
