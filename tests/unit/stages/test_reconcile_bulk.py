"""Reconciliation gives the same decisions and ledger whether its look-ups run as IN-lists (a few
keys) or as joins with temporary key tables (many keys: store.lookups.IN_LIST_MAX), and validation the
same statuses and quarantine."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devstack.messages import BROWSE_ABANDONMENT_TRIGGER_ID, CART_ABANDONMENT_TRIGGER_ID
from include.triggerflow.config import load_routing
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.stages.validate import validate_batch
from include.triggerflow.store import lookups
from include.triggerflow.store.schema import decision, event, profile_visitor_ids, quarantine, send, unsubscribe
from include.triggerflow.suppression import add_entries
from tests.fixtures import envelope_json, write_routing

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def routing_with_fallback(tmp_path: Path):
    return load_routing(write_routing(tmp_path / "routing.yaml", [
        {"name": "cart", "trigger_id": CART_ABANDONMENT_TRIGGER_ID, "template": "cart_abandonment", "subject": "Hi",
         "identity": [{"dimension": "eVar01", "profile_column": "shopper_id"}, {"field": "mcId", "profile_column": "visitor_id"}],
         "rules": {"frequency_cap": {"max": 2, "per": "24h"}}},
        {"name": "browse", "trigger_id": BROWSE_ABANDONMENT_TRIGGER_ID, "template": "browse_abandonment", "subject": "Hi",
         "identity": {"dimension": "eVar01", "profile_column": "shopper_id"}, "multiple_profiles": "skip"},
    ]))


def arrange(kit) -> None:
    profiles = [
        {"customer_id": f"C{i:03d}", "email": f"c{i}@example.com" if i % 17 else f"c{i}@blocked.example",
         "shopper_id": f"SHOP-{i % 40:03d}", "ecid": f"{i:038d}", "opted_out": i % 13 == 0,
         "timezone": "Europe/Paris"}
        for i in range(60)
    ]
    kit.add_profiles(*profiles)
    with kit.engine.begin() as conn:
        conn.execute(profile_visitor_ids.insert(), [
            {"visitor_id": f"9{i:037d}", "customer_id": f"C{i:03d}", "seen_at": NOW} for i in range(0, 60, 5)
        ])
    add_entries(kit.engine, ["@blocked.example"], reason="test")
    add_entries(kit.engine, ["c24@example.com"], source="hard-bounce", reason="test")
    # an unsubscribe link used (tf_unsubscribe) by a customer whose profile still says opted_out=false
    with kit.engine.begin() as conn:
        conn.execute(unsubscribe.insert().values(customer_id="C011", route="cart", method="one-click", received_at=NOW))


def land(kit, batch_id: str) -> None:
    kit.add_batch(batch_id)
    for i in range(90):
        trigger = (CART_ABANDONMENT_TRIGGER_ID, BROWSE_ABANDONMENT_TRIGGER_ID, "0badc0de-0000-4000-8000-00000000beef")[i % 3]
        shopper = f"SHOP-{i % 45:03d}" if i % 7 else None
        mc_id = f"9{i % 60:037d}" if i % 2 else f"{i % 70:038d}"
        payload = envelope_json(trigger_id=trigger, shopper_id=shopper, mc_id=mc_id, offset=i,
                                triggered_at_ms=NOW_MS - (i % 11) * 60_000)
        if i % 29 == 0:
            payload = payload.replace('"DATA"', '"HEARTBEAT"')
        kit.add_event(batch_id, payload, status="landed", received_at=NOW)


def outcome(kit, batch_id: str) -> tuple:
    events = {r["event_id"]: r for r in kit.rows(event, event.c.batch_id == batch_id)}
    position = {eid: n for n, eid in enumerate(sorted(events))}  # the event's place in its batch
    decisions = sorted(
        (position[r["event_id"]], r["decision"], r["detail"], r["profile_id"], r["customer_key"])
        for r in kit.rows(decision, decision.c.batch_id == batch_id)
    )
    ledger = sorted(
        (position[r["event_id"]], r["profile_id"], r["state"], r["chunk"], r["recipient"], r["idempotency_key"])
        for r in kit.rows(send, send.c.batch_id == batch_id)
    )
    statuses = sorted((position[eid], r["status"]) for eid, r in events.items())
    reasons = sorted((position[r["event_id"]], json.dumps(json.loads(r["reasons"]), sort_keys=True))
                     for r in kit.rows(quarantine, quarantine.c.batch_id == batch_id))
    return statuses, reasons, decisions, ledger


def test_key_tables_and_in_lists_give_the_same_result(kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from include.triggerflow.stages import reconcile_load
    from include.triggerflow.store.engines import get_engine
    from include.triggerflow.store.migrations import create_schema
    from tests.conftest import empty_store
    from tests.fixtures import StoreKit, load_demo_catalog

    routing = routing_with_fallback(tmp_path)
    results = []
    (tmp_path / "second").mkdir()
    (tmp_path / "third").mkdir()
    with empty_store(tmp_path / "second") as second_url, empty_store(tmp_path / "third") as third_url:
        stores = [kit]
        for url in (second_url, third_url):
            engine = get_engine(url)
            create_schema(engine)
            load_demo_catalog(engine)  # as the test's own store (tests/unit/stages/conftest.py)
            stores.append(StoreKit(engine))
        # IN-lists; key tables; key tables and the small tables (suppressions, unsubscribes) read whole
        for store, in_list_max, small_table_keys in zip(stores, (100_000, 2, 2), (100_000, 100_000, 2)):
            monkeypatch.setattr(lookups, "IN_LIST_MAX", in_list_max)
            monkeypatch.setattr(reconcile_load, "IN_LIST_SIZE", small_table_keys)
            arrange(store)
            for batch_id in ("b1", "b2"):  # b2 repeats b1's triggers: duplicates of earlier batches
                land(store, batch_id)
                validate_batch(store.engine, batch_id, routing)
                reconcile_batch(store.engine, batch_id, routing, now=NOW, chunk_size=7, max_chunks=4)
            results.append([outcome(store, "b1"), outcome(store, "b2")])
    first, second_result, third_result = results
    assert first == second_result == third_result
    statuses, reasons, decisions, ledger = first[0]
    assert {s for _, s in statuses} == {"valid", "quarantined"} and reasons
    assert {d[1] for d in decisions} >= {"matched", "unmatched", "ignored", "duplicate", "suppressed:opt-out",
                                          "suppressed:block-list", "suppressed:hard-bounce", "ambiguous"}
    assert len(ledger) == sum(1 for d in decisions if d[1] == "matched")
    assert {d[1] for d in first[1][2]} >= {"duplicate"}


def test_a_decision_row_under_another_batch_id_is_replaced(kit, routing) -> None:
    from sqlalchemy import insert

    kit.add_profiles({"customer_id": "C1", "email": "ada@example.com", "shopper_id": "SHOP-ADA"})
    kit.add_batch("b1")
    event_id = kit.add_event("b1", envelope_json(shopper_id="SHOP-ADA"))
    with kit.engine.begin() as conn:  # not something triggerflow writes; the replacement is by event id
        conn.execute(insert(decision).values(event_id=event_id, batch_id="elsewhere", decision="unmatched", decided_at=NOW))
    reconcile_batch(kit.engine, "b1", routing)
    rows = kit.rows(decision)
    assert [(r["event_id"], r["batch_id"], r["decision"]) for r in rows] == [(event_id, "b1", "matched")]
