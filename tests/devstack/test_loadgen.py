"""Tests of the load generator: messages, profiles, injection into a real emulator process."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from devstack.loadgen import (
    BLOCK_LIST_REASON,
    MALFORMED_KINDS,
    UNCONFIGURED_TRIGGER_IDS,
    MessageFactory,
    Mix,
    inject_backlog,
    inject_rate,
    load_profiles,
    make_message,
    profile_for,
)
from devstack.messages import BROWSE_ABANDONMENT_TRIGGER_ID, CART_ABANDONMENT_TRIGGER_ID, envelope
from devstack.processes import PROJECT_ROOT, RunningEmulator, start_emulator
from include.triggerflow.events import parse_envelope
from include.triggerflow.store.schema import profiles, suppression

TS = 1_796_000_000_000
ROUTED = {CART_ABANDONMENT_TRIGGER_ID, BROWSE_ABANDONMENT_TRIGGER_ID}


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def classify(message: dict[str, Any], customers: int) -> tuple[str, int | None]:
    """What a consumer sees in a message: (malformed | unknown | unconfigured | known, customer),
    judged from the wire form only (parse_envelope), not from the generator's plan."""
    parsed = parse_envelope(envelope(message, partition=0, offset=1000, create_time_ms=TS))
    shopper = parsed.dimension_first("eVar01")
    if parsed.parse_error or not isinstance(parsed.trigger_ts, int) or shopper is None:
        return "malformed", None
    customer = int(shopper.removeprefix("SHOP-"))
    if parsed.trigger_id not in ROUTED:
        return "unconfigured", customer
    return ("unknown" if customer > customers else "known"), customer


# -- messages --------------------------------------------------------------------------------------
def test_make_message_is_deterministic_in_seed_and_index() -> None:
    first = make_message(42, seed=7, customers=1000, trigger_ts_ms=TS)
    assert make_message(42, seed=7, customers=1000, trigger_ts_ms=TS) == first
    assert compact(make_message(42, seed=7, customers=1000, trigger_ts_ms=TS)) == compact(first)
    # and a fresh factory (no shared cache) agrees
    assert MessageFactory(7, 1000, Mix()).message(42, TS) == first
    assert make_message(43, seed=7, customers=1000, trigger_ts_ms=TS)["messageId"] != first["messageId"]
    assert make_message(42, seed=8, customers=1000, trigger_ts_ms=TS)["messageId"] != first["messageId"]
    assert uuid.UUID(first["messageId"]).version == 4
    # triggerTimestamp is the given time, sentTime too (the reference message's convention)
    assert first["sentTime"] == TS


def test_mix_proportions_over_10k_messages() -> None:
    customers = 1_000_000
    factory = MessageFactory(7, customers, Mix())
    messages = [factory.message(i, TS) for i in range(10_000)]
    kinds: Counter[str] = Counter()
    opted_out = blocked = known = 0
    for message in messages:
        kind, customer = classify(message, customers)
        kinds[kind] += 1
        if kind == "known":
            known += 1
            profile = profile_for(customer, seed=7)
            opted_out += profile.opted_out
            blocked += profile.block_listed
    n = len(messages)
    assert abs(kinds["malformed"] / n - 0.02) < 0.006, kinds
    assert abs(kinds["unknown"] / n - 0.05) < 0.01, kinds
    assert abs(kinds["unconfigured"] / n - 0.03) < 0.008, kinds
    assert abs(kinds["known"] / n - 0.90) < 0.015, kinds
    # opted-out and block-listed customers are hit in their share of the population
    assert abs(opted_out / known - 0.03) < 0.008, opted_out / known
    assert abs(blocked / known - 0.005) < 0.004, blocked / known
    assert len({m["messageId"] for m in messages}) == n
    # both routed triggers and every malformed kind occur
    plans = [factory.plan(i) for i in range(n)]
    assert {p.malformed for p in plans if p.malformed} == set(MALFORMED_KINDS)
    triggers = Counter(m["message"]["triggerId"] for m in messages if isinstance(m["message"], dict))
    assert triggers[CART_ABANDONMENT_TRIGGER_ID] > triggers[BROWSE_ABANDONMENT_TRIGGER_ID] > n * 0.3
    assert set(triggers) - ROUTED <= set(UNCONFIGURED_TRIGGER_IDS)


def test_messages_parse_except_the_malformed_ones() -> None:
    factory = MessageFactory(11, 5000, Mix(malformed=0.2))
    seen: Counter[str] = Counter()
    for i in range(2000):
        plan = factory.plan(i)
        message = factory.message(i, TS)
        parsed = parse_envelope(envelope(message, partition=3, offset=1000 + i, create_time_ms=TS + 1))
        if plan.malformed is None:
            assert parsed.parse_error is None
            assert parsed.message_id == message["messageId"] == plan.message_id
            assert parsed.trigger_ts == TS and parsed.trigger_id == plan.trigger_id
            assert parsed.dimension_first("eVar01") == f"SHOP-{plan.customer:07d}"
            assert len(parsed.dimension_values("eVar01")) == len(parsed.dimension_values("pageURL")) >= 3
            assert parsed.products and set(parsed.products) == set(plan.skus)
            assert parsed.pages()[0] == "https://shop.example.com/"
            assert len(parsed.mc_id) == 38 and parsed.mc_id.isdigit()
            continue
        seen[plan.malformed] += 1
        if plan.malformed == "not_object":
            assert parsed.parse_error and "object" in parsed.parse_error
            assert isinstance(message["message"], str) and json.loads(message["message"])["triggerId"]
        elif plan.malformed == "no_timestamp":
            assert parsed.parse_error is None and parsed.trigger_ts is None
        elif plan.malformed == "text_timestamp":
            # the parser types trigger_ts (int or None); the text it refused stays in raw_fields
            raw = parsed.raw_fields["triggerTimestamp"]
            assert parsed.trigger_ts is None and isinstance(raw, str) and not raw.strip().isdigit()
        else:
            assert plan.malformed == "no_identity"
            assert parsed.dimension_first("eVar01") is None and parsed.mc_id == "0" * 38
    assert set(seen) == set(MALFORMED_KINDS)


def test_fast_renderer_is_byte_identical_to_the_reference() -> None:
    """The emulator serves render_envelope(); it must be what envelope(make_message()) dumps."""
    factory = MessageFactory(5, 3000, Mix(malformed=0.1, unknown=0.1, unconfigured=0.1, browse=0.5))
    for i in range(3000):
        message = factory.message(i, TS + i)
        assert factory.render_producer(i, TS + i) == compact(message), i
        wrapped = envelope(message, partition=i % 15, offset=2000 + i, create_time_ms=TS + 7, topic="triggers")
        rendered = factory.render_envelope(i, TS + i, partition=i % 15, offset=2000 + i, create_time_ms=TS + 7)
        assert rendered == compact(wrapped), i


def test_permutation_draw_gives_each_customer_at_most_once_per_cycle() -> None:
    factory = MessageFactory(3, 5000, Mix(malformed=0, unknown=0, unconfigured=0))
    customers = [factory.plan(i).customer for i in range(5000)]
    assert sorted(customers) == list(range(1, 5001))
    assert [factory.plan(i).customer for i in range(5000, 5010)] == customers[:10]  # the next cycle
    randomly = MessageFactory(3, 5000, Mix(malformed=0, unknown=0, unconfigured=0, draw="random"))
    drawn = [randomly.plan(i).customer for i in range(5000)]
    assert min(drawn) >= 1 and max(drawn) <= 5000 and len(set(drawn)) < 4000  # with replacement


def test_customer_offset_addresses_a_disjoint_range(big_page_emulator: RunningEmulator) -> None:
    """A rate phase after a backlog can mail customers the backlog did not (no dedup hits)."""
    shifted = MessageFactory(3, 2000, Mix(), customer_offset=10_000)
    plans = [shifted.plan(i) for i in range(2000)]
    known = [p.customer for p in plans if p.category != "unknown"]
    assert min(known) >= 10_001 and max(known) <= 12_000 and len(set(known)) == len(known)
    assert all(p.customer > 12_000 for p in plans if p.category == "unknown")
    emu = big_page_emulator
    emu.client.reset()
    inject_backlog(emu.base_url, 50, seed=3, customers=2000, customer_offset=10_000, trigger_ts_ms=TS)
    served = [e["event"]["event"] for e in pull_journal(emu, 100)[0]]
    assert served == [
        envelope(shifted.message(i, TS), partition=env["partition"], offset=env["offset"], create_time_ms=env["createTime"])
        for i, env in enumerate(served)
    ]


def test_mix_is_validated() -> None:
    with pytest.raises(ValueError, match="malformed"):
        Mix(malformed=1.5)
    with pytest.raises(ValueError, match="<= 1"):
        Mix(malformed=0.5, unknown=0.4, unconfigured=0.2)
    with pytest.raises(ValueError, match="unknown keys"):
        Mix.from_json({"malformd": 0.1})
    assert Mix.from_json({"unknown": 0.1}) == Mix(unknown=0.1)


# -- profiles --------------------------------------------------------------------------------------
def test_profiles_bulk_load_counts_shares_block_list_and_rerun(store_engine: Any) -> None:
    from include.triggerflow.profiles import upsert_profiles

    # A demo-style customer that the synthetic load must leave alone, even with replace.
    upsert_profiles(store_engine, [{"customer_id": "C0001", "email": "ada@example.com"}])
    partial = load_profiles(store_engine, 3000, seed=7, chunk=1000)
    assert (partial.inserted, partial.skipped_existing) == (3000, 0)
    result = load_profiles(store_engine, 5000, seed=7, chunk=2000)
    assert (result.inserted, result.skipped_existing) == (2000, 3000)

    expected = [profile_for(c, seed=7) for c in range(1, 5001)]
    with store_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(profiles)).scalar_one() == 5001
        rows = {r.customer_id: r for r in conn.execute(select(profiles).where(profiles.c.customer_id != "C0001"))}
        blocked = set(
            conn.execute(
                select(suppression.c.address).where(
                    suppression.c.source == "block-list", suppression.c.reason == BLOCK_LIST_REASON
                )
            ).scalars()
        )
    assert len(rows) == 5000
    for p in expected[:50] + expected[-50:]:
        row = rows[p.customer_id]
        assert (row.email, row.shopper_id, row.locale, row.timezone, row.ecid, row.opted_out) == (
            p.email, p.shopper_id, p.locale, p.timezone, p.ecid, p.opted_out
        )
        assert row.updated_at is not None
    opted = sum(r.opted_out for r in rows.values()) / 5000
    with_ecid = sum(r.ecid is not None for r in rows.values()) / 5000
    invalid = sum("@" not in r.email for r in rows.values()) / 5000
    assert 0.02 <= opted <= 0.04, opted
    assert 0.005 <= with_ecid <= 0.016, with_ecid
    assert 0.0002 <= invalid <= 0.005, invalid
    assert blocked == {p.email for p in expected if p.block_listed}
    assert 10 <= len(blocked) <= 45, len(blocked)
    assert all("@" in address for address in blocked)
    assert result.block_listed == len(blocked)

    rerun = load_profiles(store_engine, 5000, seed=7)
    assert (rerun.inserted, rerun.skipped_existing, rerun.block_listed) == (0, 5000, len(blocked))
    replaced = load_profiles(store_engine, 4000, seed=7, replace=True)
    assert (replaced.inserted, replaced.skipped_existing) == (4000, 0)
    with store_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(profiles)).scalar_one() == 4001
        assert conn.execute(select(profiles.c.email).where(profiles.c.customer_id == "C0001")).scalar_one() == "ada@example.com"
    assert replaced.block_listed == len({p.email for p in expected[:4000] if p.block_listed})


def test_profiles_cli_loads_into_a_db_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "devstack.loadgen", "profiles", "--count", "1500", "--db-url", url],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1500 inserted" in proc.stdout
    assert proc.stdout.rstrip().endswith("; 6 catalogue products")  # the demo catalogue came along
    from include.triggerflow.store.engines import get_engine

    with get_engine(url).connect() as conn:
        assert conn.execute(select(func.count()).select_from(profiles)).scalar_one() == 1500


# -- injection into a real emulator ---------------------------------------------------------------
@pytest.fixture(scope="module")
def big_page_emulator() -> Iterator[RunningEmulator]:
    with start_emulator(max_limit=20_000) as emu:
        yield emu


def pull_journal(emu: RunningEmulator, limit: int) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Read the whole journal in pages, as the triggerflow reader does; also the raw pages."""
    client = emu.client
    headers = client.journal_headers()
    session = requests.Session()
    events: list[dict[str, Any]] = []
    pages: list[bytes] = []
    since = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if since:
            params["since"] = since
        response = session.get(client.journal_url, params=params, headers=headers, timeout=30)
        if response.status_code == 204:
            return events, pages
        assert response.status_code == 200, response.text[:300]
        body = response.json()
        assert body["_page"]["count"] == len(body["events"]) <= limit
        pages.append(response.content)
        events.extend(body["events"])
        since = body["_page"]["last"]


def test_backlog_reads_back_fully_in_pages(big_page_emulator: RunningEmulator) -> None:
    emu = big_page_emulator
    emu.client.reset()
    rss_before = _rss_kb(emu.process.pid)
    result = inject_backlog(emu.base_url, 20_000, seed=9, customers=50_000, chunk=7_000, trigger_ts_ms=TS)
    assert (result.injected, result.first_start, result.next_start) == (20_000, 0, 20_000)
    # memory: a generated message costs a couple of hundred bytes, not a rendered envelope (~2 KB)
    assert _rss_kb(emu.process.pid) - rss_before < 15_000
    events, pages = pull_journal(emu, 5_000)
    assert len(events) == 20_000 and len(pages) == 4
    seqs = [int(e["position"].split(":")[1]) for e in events]
    assert all(a < b for a, b in itertools.pairwise(seqs))
    assert len({e["event"]["event_id"] for e in events}) == 20_000
    factory = MessageFactory(9, 50_000, Mix())
    offsets: dict[int, list[int]] = {}
    for i, item in enumerate(events):
        env = item["event"]["event"]
        offsets.setdefault(env["partition"], []).append(env["offset"])
        if i % 97 == 0:  # the served envelope is the reference message, wrapped at its place
            expected = envelope(
                factory.message(i, TS), partition=env["partition"], offset=env["offset"],
                create_time_ms=env["createTime"],
            )
            assert env == expected
            assert uuid.UUID(item["event"]["event_id"]).version == 4
    assert len(offsets) == 15
    for per_partition in offsets.values():  # contiguous offsets from the first one, as published
        assert per_partition == list(range(1000, 1000 + len(per_partition)))
    # re-reading a position gives the same bytes
    middle = events[9_999]["position"]
    headers = emu.client.journal_headers()
    again = [
        requests.get(emu.client.journal_url, params={"since": middle, "limit": 3}, headers=headers, timeout=10).content
        for _ in range(2)
    ]
    assert again[0] == again[1]
    # pages 2-4 were rendered ahead while the previous one was read: a fresh read is identical
    for k in (1, 3):
        since = events[k * 5_000 - 1]["position"]
        fresh = requests.get(emu.client.journal_url, params={"since": since, "limit": 5_000}, headers=headers, timeout=30)
        assert fresh.content == pages[k]
    assert [e["position"] for e in json.loads(again[0])["events"]] == [e["position"] for e in events[10_000:10_003]]
    # a large limit is honoured up to the configured cap
    big = requests.get(emu.client.journal_url, params={"limit": 50_000}, headers=headers, timeout=30)
    assert big.json()["_page"]["count"] == 20_000 and "&limit=20000>" in big.headers["Link"]
    stats = emu.client.stats()
    assert stats["journal_size"] == 20_000 and stats["published"] == 20_000


def test_generated_messages_stream_on_the_pipeline_too(big_page_emulator: RunningEmulator) -> None:
    emu = big_page_emulator
    emu.client.reset()
    inject_backlog(emu.base_url, 30, seed=4, customers=100)
    journal = [e["event"]["event"] for e in pull_journal(emu, 100)[0]]
    streamed = [line for line in emu.client.consume(reset="earliest") if line.get("envelopeType") == "DATA"]
    key = lambda env: (env["partition"], env["offset"])  # noqa: E731
    assert sorted(streamed, key=key) == sorted(journal, key=key)


def test_retention_and_stream_faults_apply_to_generated_messages(big_page_emulator: RunningEmulator) -> None:
    from include.triggerflow.events import PIPELINE_MESSAGE

    client = big_page_emulator.client
    client.reset()
    inject_backlog(big_page_emulator.base_url, 60, seed=8, customers=100)
    by_partition = Counter(e["event"]["event"]["partition"] for e in pull_journal(big_page_emulator, 100)[0])
    partition = max(by_partition, key=by_partition.__getitem__)
    assert client.expire(partition, before_offset=1002)["expired"] == 2
    client.add_faults([{"endpoint": "consume", "kind": "malformed", "times": 1}])
    lines = [line for line in client.consume(reset="earliest") if line.get("envelopeType") == "DATA"]
    assert len(lines) == 58
    assert min(line["offset"] for line in lines if line["partition"] == partition) == 1002
    garbled = [line for line in lines if line[PIPELINE_MESSAGE] == "not an object"]
    assert len(garbled) == 1 and isinstance(garbled[0]["offset"], int)
    assert client.expire_created_before(int(time.time() * 1000) + 1000)["expired"] == 58
    assert [line for line in client.consume(reset="earliest") if line.get("envelopeType") == "DATA"] == []


def test_backlog_continues_after_the_last_generated_message(big_page_emulator: RunningEmulator) -> None:
    emu = big_page_emulator
    emu.client.reset()
    first = inject_backlog(emu.base_url, 100, seed=5, customers=1000)
    second = inject_backlog(emu.base_url, 50, seed=5, customers=1000)
    assert (first.first_start, second.first_start, second.next_start) == (0, 100, 150)
    info = requests.get(f"{emu.base_url}/_emulator/generate", timeout=5).json()
    assert info == {"generated": 150, "next_start": {"5": 150}}
    ids = [parse_envelope(e["event"]["event"]).message_id for e in pull_journal(emu, 1000)[0]]
    factory = MessageFactory(5, 1000, Mix())
    assert ids == [factory.message_id(i) for i in range(150)]


def test_generate_rejects_bad_requests(big_page_emulator: RunningEmulator) -> None:
    url = f"{big_page_emulator.base_url}/_emulator/generate"
    for body, needle in (
        ({"count": 0}, "count"),
        ({"count": "10"}, "count"),
        ({"count": 5, "customers": 0}, "customers"),
        ({"count": 5, "mix": {"malformed": 2}}, "mix"),
        ({"count": 5, "colour": "red"}, "unknown fields"),
        ([1, 2], "body must be"),
    ):
        response = requests.post(url, json=body, timeout=5)
        assert response.status_code == 400, body
        assert needle in response.json()["error_description"], (body, response.text)


def test_rate_mode_keeps_the_rate_and_stamps_injection_time(big_page_emulator: RunningEmulator) -> None:
    emu = big_page_emulator
    emu.client.reset()
    started_ms = int(time.time() * 1000)
    result = inject_rate(emu.base_url, 150, 2.0, seed=6, customers=1000, tick_s=0.25)
    assert result.injected == 300
    assert 120 <= result.per_second <= 160, result.per_second
    events = pull_journal(emu, 1000)[0]
    assert len(events) == 300
    stamps = [parse_envelope(e["event"]["event"]).trigger_ts for e in events]
    stamps = [s for s in stamps if isinstance(s, int)]
    assert started_ms <= min(stamps) and max(stamps) <= int(time.time() * 1000)
    assert max(stamps) - min(stamps) >= 1_000  # spread over the run, not one burst


def test_backlog_cli(big_page_emulator: RunningEmulator) -> None:
    emu = big_page_emulator
    emu.client.reset()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "devstack.loadgen", "backlog", "--count", "2500", "--chunk", "1000",
         "--customers", "5000", "--emulator-url", emu.base_url, "--seed", "3"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "backlog: 2500 messages" in proc.stdout
    assert emu.client.stats()["journal_size"] == 2500


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
