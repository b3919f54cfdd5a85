"""The demo's trigger stream, routing and progress line (devstack/run_local.py), without Airflow:
the demo's own messages go through the real validate and reconcile stages on the test store, with
the real demo profiles and the demo routing the demo writes."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devstack.messages import envelope
from devstack.run_local import (
    DEMO_CATALOG_FILE,
    DEMO_PROFILES,
    NO_SHOPPER_SHARE,
    REPEAT_SHARE,
    UNKNOWN_SHARE,
    DemoTriggers,
    demo_dedup_window_s,
    demo_progress,
    demo_shoppers,
    progress_line,
    write_demo_routing,
)
from include.triggerflow.catalog import load_catalog_csv
from include.triggerflow.config import load_routing
from include.triggerflow.profiles import load_profiles_csv
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.stages.validate import validate_batch
from tests.fixtures import StoreKit

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def shopper_of(message: dict) -> str | None:
    dimension = message["message"]["enrichments"]["analyticsHitSummary"]["dimensions"].get("eVar01")
    return dimension["data"][0] if dimension else None


def test_the_stream_goes_round_every_customer_before_one_comes_again() -> None:
    shoppers = demo_shoppers()
    stream = DemoTriggers(shoppers, random.Random(3))
    messages = stream.batch(3 * len(shoppers))
    known = set(shoppers)

    new = [s for s in map(shopper_of, messages) if s in known]
    # in turn: each customer's count differs from any other's by the repeats at most
    per_customer = Counter(new)
    assert set(per_customer) == known
    assert max(per_customer.values()) - min(per_customer.values()) <= stream.made["repeat"] + 1
    assert sum(stream.made.values()) == len(messages)
    assert stream.made["unknown"] == sum(1 for s in map(shopper_of, messages) if s and s.startswith("SHOP-UNKNOWN-"))
    assert stream.made["no-shopper"] == sum(1 for m in messages if shopper_of(m) is None)
    for kind, share in (("repeat", REPEAT_SHARE), ("unknown", UNKNOWN_SHARE), ("no-shopper", NO_SHOPPER_SHARE)):
        assert 0 < stream.made[kind] < 3 * share * len(messages), kind


def test_the_demo_dedup_window_is_shorter_than_one_round() -> None:
    customers = len(demo_shoppers())
    assert customers >= 200
    for triggers_per_s in (0.3, 1.0, 5.0, 50.0):  # the default 3 every 10 s, and faster demos
        window = demo_dedup_window_s(customers, triggers_per_s)
        known_per_s = triggers_per_s * (1 - UNKNOWN_SHARE - NO_SHOPPER_SHARE - REPEAT_SHARE)
        assert 60 <= window <= 600
        assert window < customers / known_per_s or window == 60


def test_demo_routing_is_the_shipped_routing_with_the_demo_window(tmp_path: Path) -> None:
    from include.triggerflow import DEFAULT_ROUTING_FILE

    shipped = load_routing(DEFAULT_ROUTING_FILE)
    demo = load_routing(write_demo_routing(tmp_path / "demo_routing.yaml", 416))
    assert [(r.name, r.trigger_id, r.template, r.identities) for r in demo.routes] == [
        (r.name, r.trigger_id, r.template, r.identities) for r in shipped.routes
    ]
    assert {r.rules.dedup_window_s for r in demo.routes} == {416}
    assert {r.rules.dedup_window_s for r in shipped.routes} == {24 * 3600}


def test_the_demo_keeps_sending_and_its_progress_line_says_what_was_decided(store_engine, tmp_path: Path) -> None:
    kit = StoreKit(store_engine)
    load_profiles_csv(kit.engine, DEMO_PROFILES)  # the real demo profiles pass the loader's checks
    # as bin/demo does: the shipped routes email only products the catalogue knows
    assert load_catalog_csv(kit.engine, DEMO_CATALOG_FILE).inserted == 6
    with DEMO_PROFILES.open(newline="", encoding="utf-8") as fh:
        opted_out = {r["shopper_id"] for r in csv.DictReader(fh) if r["opted_out"] == "true"}
    shoppers = demo_shoppers()
    routing = load_routing(write_demo_routing(tmp_path / "demo_routing.yaml", demo_dedup_window_s(len(shoppers), 0.3)))
    stream = DemoTriggers(shoppers, random.Random(42))
    since = datetime.now(UTC) - timedelta(seconds=1)

    offset, made = 0, []
    start_ms = int((since - timedelta(minutes=45)).timestamp() * 1000)  # triggers of the last 45 minutes, never future ones
    for minute in range(40):  # a 40-minute demo at the default pace: 3 triggers every 10 s
        batch_id = kit.add_batch(f"b{minute}")
        for burst in range(6):
            at_ms = start_ms + minute * 60_000 + burst * 10_000
            for kind, message in stream.kinds_and_messages(3, at_ms=at_ms):
                offset += 1
                kit.add_event(batch_id, json.dumps(envelope(message, partition=0, offset=offset)), status="landed")
                made.append((kind, shopper_of(message)))
        validate_batch(kit.engine, batch_id, routing)
        reconcile_batch(kit.engine, batch_id, routing)

    progress = demo_progress(kit.engine, since)

    kinds = Counter(kind if shopper not in opted_out else "opted-out" for kind, shopper in made)
    assert kinds["new"] > 500  # every customer came round more than twice
    assert {k: progress[k] for k in ("quarantined", "unmatched", "suppressed", "waiting", "duplicate")} == {
        "quarantined": kinds["no-shopper"],
        "unmatched": kinds["unknown"],
        "suppressed": kinds["opted-out"],
        # every customer in turn got an email: the demo window never turned one into a duplicate
        "waiting": kinds["new"],
        # and the deliberate repeats of a recent trigger are duplicates, as in production
        "duplicate": kinds["repeat"],
    }
    assert kinds["repeat"] > 0 and kinds["opted-out"] > 0
    line = progress_line(720, progress, 3)
    assert line == (
        f"720 triggers injected; decided since start: sent 0, duplicate {kinds['repeat']}, suppressed "
        f"{kinds['opted-out']}, unmatched {kinds['unknown']}, quarantined {kinds['no-shopper']}, waiting "
        f"{kinds['new']}; 3 emails in the outbox"
    )
