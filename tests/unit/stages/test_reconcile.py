"""Tests for include.triggerflow.stages.reconcile: valid events x profiles -> decisions and ledger."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from devstack.messages import BROWSE_ABANDONMENT_TRIGGER_ID, CART_ABANDONMENT_TRIGGER_ID
from include.triggerflow.config import load_routing
from include.triggerflow.stages.reconcile import ReconcileResult, idempotency_key, reconcile_batch
from include.triggerflow.store.schema import decision, send
from tests.fixtures import decisions_by_event, envelope_json, write_routing

UNCONFIGURED_TRIGGER_ID = "0badc0de-0000-4000-8000-00000000beef"
TS = 1_772_366_340_000  # 2026-03-01T11:59:00Z


def profiles(kit) -> None:
    kit.add_profiles(
        {"customer_id": "C1", "email": "ada@example.com", "first_name": "Ada", "shopper_id": "SHOP-ADA"},
        {"customer_id": "C3", "email": "donald@example.com", "shopper_id": "SHOP-OPTOUT", "opted_out": True},
        {"customer_id": "C2", "email": "grace@example.com", "shopper_id": "SHOP-GRACE"},
    )


def ledger(kit, batch_id: str | None = None) -> list[dict]:
    where = [send.c.batch_id == batch_id] if batch_id else []
    return kit.rows(send, *where, order_by=send.c.send_id)


def test_one_decision_per_valid_event(kit, routing) -> None:
    profiles(kit)
    b = kit.add_batch("b1")
    matched = kit.add_event(b, envelope_json(shopper_id="SHOP-ADA", triggered_at_ms=TS))
    browse = kit.add_event(b, envelope_json(trigger_id=BROWSE_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-GRACE", triggered_at_ms=TS))
    unmatched = kit.add_event(b, envelope_json(shopper_id="SHOP-NOBODY"))
    opted_out = kit.add_event(b, envelope_json(shopper_id="SHOP-OPTOUT"))
    ignored = kit.add_event(b, envelope_json(trigger_id=UNCONFIGURED_TRIGGER_ID, shopper_id="SHOP-ADA"))
    kit.add_event(b, envelope_json(shopper_id="SHOP-ADA"), status="quarantined")  # not considered

    result = reconcile_batch(kit.engine, b, routing)

    assert result.counts == {"matched": 2, "unmatched": 1, "suppressed:opt-out": 1, "ignored": 1}
    assert result.chunks == [0]
    got = decisions_by_event(kit, b)
    assert set(got) == {matched, browse, unmatched, opted_out, ignored}
    summary = {eid: (d["decision"], d["route"], d["customer_key"], d["profile_id"], d["detail"]) for eid, d in got.items()}
    assert summary == {
        matched: ("matched", "cart_abandonment", "SHOP-ADA", "C1", "matched by eVar01->shopper_id"),
        browse: ("matched", "browse_abandonment", "SHOP-GRACE", "C2", "matched by eVar01->shopper_id"),
        unmatched: ("unmatched", "cart_abandonment", "SHOP-NOBODY", None, "no profile with shopper_id='SHOP-NOBODY'"),
        opted_out: ("suppressed:opt-out", "cart_abandonment", "SHOP-OPTOUT", "C3", "profile opted out"),
        ignored: ("ignored", None, None, None, "no route for this trigger id"),
    }
    assert got[ignored]["trigger_id"] == UNCONFIGURED_TRIGGER_ID

    rows = ledger(kit, b)
    assert [(r["event_id"], r["profile_id"], r["route"], r["recipient"], r["state"], r["chunk"], r["attempts"]) for r in rows] == [
        (matched, "C1", "cart_abandonment", "ada@example.com", "pending", 0, 0),
        (browse, "C2", "browse_abandonment", "grace@example.com", "pending", 0, 0),
    ]
    assert rows[0]["idempotency_key"] == idempotency_key(CART_ABANDONMENT_TRIGGER_ID, TS, "C1", "cart_abandonment")
    assert rows[1]["idempotency_key"] == idempotency_key(BROWSE_ABANDONMENT_TRIGGER_ID, TS, "C2", "browse_abandonment")
    assert (rows[0]["trigger_id"], rows[0]["trigger_ts"]) == (CART_ABANDONMENT_TRIGGER_ID, TS)
    assert rows[0]["sent_at"] is None and rows[0]["message_id"] is None


def test_idempotency_key_depends_on_every_part() -> None:
    base = idempotency_key("t", 1, "C1", "tpl")
    assert len(base) == 64 and base == idempotency_key("t", 1, "C1", "tpl")
    assert len({base, idempotency_key("t2", 1, "C1", "tpl"), idempotency_key("t", 2, "C1", "tpl"),
                idempotency_key("t", 1, "C2", "tpl"), idempotency_key("t", 1, "C1", "tpl2")}) == 5


def test_several_profiles_with_the_same_shopper_id_take_the_first_by_customer_id(kit, routing) -> None:
    kit.add_profiles(
        {"customer_id": "C9", "email": "nine@example.com", "shopper_id": "SHOP-TWIN"},
        {"customer_id": "C10", "email": "ten@example.com", "shopper_id": "SHOP-TWIN"},
        {"customer_id": "C2", "email": "two@example.com", "shopper_id": "SHOP-TWIN"},
    )
    b = kit.add_batch("b1")
    eid = kit.add_event(b, envelope_json(shopper_id="SHOP-TWIN"))

    reconcile_batch(kit.engine, b, routing)

    d = decisions_by_event(kit, b)[eid]
    # customer_id is text: "C10" < "C2" < "C9"
    assert (d["decision"], d["profile_id"]) == ("matched", "C10")
    assert d["detail"] == "matched by eVar01->shopper_id; 3 profiles matched, took the first by customer_id asc"
    assert [(r["profile_id"], r["recipient"]) for r in ledger(kit, b)] == [("C10", "ten@example.com")]


def test_same_trigger_in_a_later_batch_is_a_duplicate_without_a_new_ledger_row(kit, routing) -> None:
    profiles(kit)
    payload = envelope_json(shopper_id="SHOP-ADA", triggered_at_ms=TS)
    kit.add_batch("b1")
    kit.add_batch("b2")
    first = kit.add_event("b1", payload)
    reconcile_batch(kit.engine, "b1", routing)
    # redelivered (at-least-once): another message id and position, same trigger, time and shopper
    again = kit.add_event("b2", envelope_json(shopper_id="SHOP-ADA", triggered_at_ms=TS))

    result = reconcile_batch(kit.engine, "b2", routing)

    assert result.counts == {"duplicate": 1}
    d = decisions_by_event(kit, "b2")[again]
    assert (d["decision"], d["profile_id"]) == ("duplicate", "C1")
    assert d["detail"] == f"same trigger message already queued for event {first} of batch b1"
    assert [r["event_id"] for r in ledger(kit)] == [first]
    assert ledger(kit, "b2") == []
    assert result.chunks == [0]


def test_same_trigger_twice_in_one_batch(kit, routing) -> None:
    profiles(kit)
    b = kit.add_batch("b1")
    first = kit.add_event(b, envelope_json(shopper_id="SHOP-ADA", triggered_at_ms=TS))
    second = kit.add_event(b, envelope_json(shopper_id="SHOP-ADA", triggered_at_ms=TS))
    # another trigger, outside the default 24 h deduplication window
    later = kit.add_event(b, envelope_json(shopper_id="SHOP-ADA", triggered_at_ms=TS + 25 * 3600 * 1000))

    result = reconcile_batch(kit.engine, b, routing)

    assert result.counts == {"matched": 2, "duplicate": 1}
    got = decisions_by_event(kit, b)
    assert (got[first]["decision"], got[second]["decision"], got[later]["decision"]) == ("matched", "duplicate", "matched")
    assert [r["event_id"] for r in ledger(kit, b)] == [first, later]


def test_reconciling_again_queues_nothing_new(kit, routing) -> None:
    profiles(kit)
    b = kit.add_batch("b1")
    for shopper in ("SHOP-ADA", "SHOP-GRACE", "SHOP-NOBODY", "SHOP-OPTOUT"):
        kit.add_event(b, envelope_json(shopper_id=shopper))

    first = reconcile_batch(kit.engine, b, routing)
    ledger_before = ledger(kit)
    decisions_before = {k: v["decision"] for k, v in decisions_by_event(kit, b).items()}
    second = reconcile_batch(kit.engine, b, routing)

    assert first.counts == second.counts == {"matched": 2, "unmatched": 1, "suppressed:opt-out": 1}
    assert ledger(kit) == ledger_before
    assert len(ledger_before) == 2
    assert {k: v["decision"] for k, v in decisions_by_event(kit, b).items()} == decisions_before
    assert kit.count(decision) == 4


def test_chunks_are_bounded_by_max_chunks(kit, routing) -> None:
    kit.add_profiles(*[
        {"customer_id": f"C{i}", "email": f"c{i}@example.com", "shopper_id": f"SHOP-{i}"} for i in range(5)
    ])
    b = kit.add_batch("b1")
    for i in range(5):
        kit.add_event(b, envelope_json(shopper_id=f"SHOP-{i}"))

    result = reconcile_batch(kit.engine, b, routing, chunk_size=2, max_chunks=2)

    assert result.chunks == [0, 1]
    assert Counter(r["chunk"] for r in ledger(kit, b)) == {0: 3, 1: 2}
    assert result.as_xcom() == {"batch_id": b, "counts": {"matched": 5}, "chunks": [0, 1]}
    # a second run keeps the chunks the first assigned
    assert reconcile_batch(kit.engine, b, routing, chunk_size=1, max_chunks=16).chunks == [0, 1]


@pytest.mark.parametrize(("chunk_size", "max_chunks", "expected"), [(2000, 8, [0]), (1, 8, [0, 1, 2]), (2, 8, [0, 1])])
def test_chunk_count_follows_chunk_size(kit, routing, chunk_size: int, max_chunks: int, expected: list[int]) -> None:
    kit.add_profiles(*[
        {"customer_id": f"C{i}", "email": f"c{i}@example.com", "shopper_id": f"SHOP-{i}"} for i in range(3)
    ])
    b = kit.add_batch("b1")
    for i in range(3):
        kit.add_event(b, envelope_json(shopper_id=f"SHOP-{i}"))
    assert reconcile_batch(kit.engine, b, routing, chunk_size=chunk_size, max_chunks=max_chunks).chunks == expected


def test_batch_without_emails_has_chunk_zero(kit, routing) -> None:
    b = kit.add_batch("b1")
    kit.add_event(b, envelope_json(shopper_id="SHOP-NOBODY"))
    assert reconcile_batch(kit.engine, b, routing) == ReconcileResult(batch_id=b, counts={"unmatched": 1}, chunks=[0])
    empty = kit.add_batch("b2")
    assert reconcile_batch(kit.engine, empty, routing) == ReconcileResult(batch_id=empty, counts={}, chunks=[0])


def test_identity_by_mcid_field_matches_the_ecid_column(kit, tmp_path: Path) -> None:
    routing = load_routing(write_routing(tmp_path / "routing.yaml", [{
        "name": "cart_by_ecid",
        "trigger_id": CART_ABANDONMENT_TRIGGER_ID,
        "template": "cart_abandonment",
        "subject": "{{ profile.first_name }}, your cart",
        "identity": {"field": "mcId", "profile_column": "ecid"},
    }]))
    ecid = "63414232495406281051419829407713574233"
    kit.add_profiles(
        {"customer_id": "C1", "email": "ada@example.com", "ecid": ecid, "shopper_id": "SHOP-OTHER"},
        {"customer_id": "C2", "email": "grace@example.com", "ecid": "1" * 38},
    )
    b = kit.add_batch("b1")
    hit = kit.add_event(b, envelope_json(shopper_id=None, mc_id=ecid, triggered_at_ms=TS))
    miss = kit.add_event(b, envelope_json(shopper_id="SHOP-OTHER", mc_id="9" * 38))

    result = reconcile_batch(kit.engine, b, routing)

    assert result.counts == {"matched": 1, "unmatched": 1}
    got = decisions_by_event(kit, b)
    assert (got[hit]["decision"], got[hit]["route"], got[hit]["customer_key"], got[hit]["profile_id"]) == (
        "matched", "cart_by_ecid", ecid, "C1"
    )
    assert got[miss]["detail"] == f"no profile with ecid={'9' * 38!r}"
    [row] = ledger(kit, b)
    assert (row["profile_id"], row["route"], row["recipient"]) == ("C1", "cart_by_ecid", "ada@example.com")
    assert row["idempotency_key"] == idempotency_key(CART_ABANDONMENT_TRIGGER_ID, TS, "C1", "cart_abandonment")


def test_catch_all_route_reconciles_unlisted_triggers(kit, tmp_path: Path) -> None:
    routing = load_routing(write_routing(tmp_path / "routing.yaml", [{
        "name": "anything",
        "trigger_id": "*",
        "template": "browse_abandonment",
        "subject": "Hello",
        "identity": {"dimension": "eVar01", "profile_column": "shopper_id"},
    }]))
    profiles(kit)
    b = kit.add_batch("b1")
    eid = kit.add_event(b, envelope_json(trigger_id=UNCONFIGURED_TRIGGER_ID, shopper_id="SHOP-ADA"))
    assert reconcile_batch(kit.engine, b, routing).counts == {"matched": 1}
    assert decisions_by_event(kit, b)[eid]["route"] == "anything"
    [row] = ledger(kit, b)
    assert (row["trigger_id"], row["route"], row["profile_id"]) == (UNCONFIGURED_TRIGGER_ID, "anything", "C1")


def test_runtime_routing_follows_the_routing_file_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from include.triggerflow.runtime import routing as runtime_routing

    path = write_routing(tmp_path / "other.yaml", [{
        "name": "only_cart", "trigger_id": CART_ABANDONMENT_TRIGGER_ID, "template": "cart_abandonment",
        "subject": "Hi", "identity": {"field": "mcId", "profile_column": "ecid"},
    }])
    monkeypatch.setenv("TRIGGERFLOW_ROUTING_FILE", str(path))
    loaded = runtime_routing()
    assert [r.name for r in loaded.routes] == ["only_cart"]
    assert loaded.route_for(BROWSE_ABANDONMENT_TRIGGER_ID) is None
