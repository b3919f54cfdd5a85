"""Identity fallback and the eligibility rules of the routing config, through reconcile_batch on a
real store: every event gets one decision whose detail explains it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack.messages import BROWSE_ABANDONMENT_TRIGGER_ID, CART_ABANDONMENT_TRIGGER_ID
from include.triggerflow.config import load_routing
from include.triggerflow.stages.reconcile import due_scheduled, reconcile_batch
from include.triggerflow.store.schema import profile_visitor_ids, send
from include.triggerflow.suppression import add_entries
from tests.fixtures import decisions_by_event, envelope_json, write_routing

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
HOUR_MS = 3600 * 1000
ECID = "12345678901234567890123456789012345678"


def route(name: str = "cart", trigger_id: str = CART_ABANDONMENT_TRIGGER_ID, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "trigger_id": trigger_id,
        "template": "cart_abandonment",
        "subject": "Hi",
        "identity": {"dimension": "eVar01", "profile_column": "shopper_id"},
        **extra,
    }


def load(tmp_path: Path, *routes: dict[str, Any]):
    return load_routing(write_routing(tmp_path / "routing.yaml", list(routes)))


def decide(kit, routing, *events: str, batch: str = "b1", now: datetime = NOW) -> list[tuple[str, str | None]]:
    kit.add_batch(batch)
    ids = [kit.add_event(batch, payload) for payload in events]
    reconcile_batch(kit.engine, batch, routing, now=now)
    got = decisions_by_event(kit, batch)
    return [(got[i]["decision"], got[i]["detail"]) for i in ids]


def cart(shopper: str | None = "SHOP-ADA", ts: int = NOW_MS, **kw: Any) -> str:
    return envelope_json(shopper_id=shopper, triggered_at_ms=ts, **kw)


ADA = {"customer_id": "C1", "email": "ada@example.com", "shopper_id": "SHOP-ADA", "timezone": "Europe/Paris"}


# -- identity ----------------------------------------------------------------------------------------
def test_identity_falls_back_from_evar_to_ecid_via_stored_visitor_ids(kit, tmp_path) -> None:
    routing = load(tmp_path, route(identity=[
        {"dimension": "eVar01", "profile_column": "shopper_id"},
        {"field": "mcId", "profile_column": "visitor_id"},
    ]))
    kit.add_profiles(ADA, {"customer_id": "C2", "email": "grace@example.com", "ecid": "9" * 38})
    with kit.engine.begin() as conn:
        conn.execute(profile_visitor_ids.insert(), [{"visitor_id": ECID, "customer_id": "C1", "seen_at": NOW}])

    got = decide(kit, routing,
                 cart(None, mc_id=ECID),               # no eVar01: the stored visitor id finds C1
                 cart(None, mc_id="9" * 38, ts=NOW_MS + 1),  # the profile's own ecid column finds C2
                 cart("SHOP-NOBODY", mc_id="0" * 38, ts=NOW_MS + 2))
    assert got[0] == ("matched", "matched by mcId->visitor_id")
    assert got[1] == ("matched", "matched by mcId->visitor_id")
    assert got[2] == ("unmatched", "no profile with shopper_id='SHOP-NOBODY'; no profile with visitor_id='" + "0" * 38 + "'")
    rows = kit.rows(send, order_by=send.c.send_id)
    assert [r["profile_id"] for r in rows] == ["C1", "C2"]


def test_dimension_keys_with_whitespace_are_tolerated(kit, routing) -> None:
    # Adobe's own sample has the key " eVar01" (leading space).
    kit.add_profiles(ADA)
    got = decide(kit, routing, cart(None, extra_dimensions={" eVar01": {"type": "string", "data": ["SHOP-ADA"], "name": " eVar01"}}))
    assert got == [("matched", "matched by eVar01->shopper_id")]


@pytest.mark.parametrize(
    ("policy", "order", "expected"),
    [
        ("skip", "customer_id", ("ambiguous", None, "2 profiles matched by eVar01->shopper_id; multiple_profiles: skip")),
        ("first", "updated_at desc", ("matched", "C9", "matched by eVar01->shopper_id; 2 profiles matched, took the first by updated_at desc")),
        ("first", "customer_id", ("matched", "C1", "matched by eVar01->shopper_id; 2 profiles matched, took the first by customer_id asc")),
    ],
)
def test_several_matching_profiles_follow_the_policy(kit, tmp_path, policy, order, expected) -> None:
    routing = load(tmp_path, route(multiple_profiles=policy, profile_order=order))
    kit.add_profiles(ADA)
    kit.add_profiles({"customer_id": "C9", "email": "ada.new@example.com", "shopper_id": "SHOP-ADA"})  # updated later
    kit.add_batch("b1")
    event_id = kit.add_event("b1", cart())
    reconcile_batch(kit.engine, "b1", routing, now=NOW)
    d = decisions_by_event(kit, "b1")[event_id]
    ledger = kit.rows(send)
    assert (d["decision"], ledger[0]["profile_id"] if ledger else None, d["detail"]) == expected
    if policy == "skip":
        assert d["profile_id"] == "C1" and ledger == []


# -- rules -------------------------------------------------------------------------------------------
def test_stale_trigger_expires(kit, tmp_path) -> None:
    routing = load(tmp_path, route(rules={"validity": "6h"}))
    kit.add_profiles(ADA)
    got = decide(kit, routing, cart(ts=NOW_MS - 7 * HOUR_MS), cart(ts=NOW_MS - 5 * HOUR_MS))
    assert got[0][0] == "expired" and "420 min before reconciliation; validity 6h" in got[0][1]
    assert got[1][0] == "matched"


def test_suppression_reasons(kit, tmp_path) -> None:
    routing = load(tmp_path, route(identity={"dimension": "eVar01", "profile_column": "customer_id"}))
    kit.add_profiles(
        {"customer_id": "OPT", "email": "opt@example.com", "opted_out": True},
        {"customer_id": "BAD", "email": "not an address"},
        {"customer_id": "BLK", "email": "blocked@example.com"},
        {"customer_id": "DOM", "email": "anyone@spam.example"},
        {"customer_id": "BNC", "email": "bounced@example.com"},
        {"customer_id": "OK", "email": "ok@example.com"},
    )
    add_entries(kit.engine, ["Blocked@Example.com", "@spam.example"], reason="complaint")
    add_entries(kit.engine, ["bounced@example.com"], source="hard-bounce")
    got = decide(kit, routing, *(cart(c, ts=NOW_MS + i) for i, c in enumerate(["OPT", "BAD", "BLK", "DOM", "BNC", "OK"])))
    assert [g[0] for g in got] == [
        "suppressed:opt-out", "suppressed:invalid-address", "suppressed:block-list",
        "suppressed:block-list", "suppressed:hard-bounce", "matched",
    ]
    assert "whitespace" in got[1][1]
    assert got[3][1] == "domain spam.example is on the suppression list (block-list)"


def test_a_route_can_turn_suppression_checks_off(kit, tmp_path) -> None:
    routing = load(tmp_path, route(rules={"suppress": ["opt-out"]}))
    kit.add_profiles(ADA)
    add_entries(kit.engine, ["ada@example.com"])
    assert decide(kit, routing, cart())[0][0] == "matched"


def test_dedup_window_per_customer_and_trigger(kit, tmp_path) -> None:
    routing = load(
        tmp_path,
        route(rules={"dedup_window": "24h"}),
        route("browse", BROWSE_ABANDONMENT_TRIGGER_ID, template="browse_abandonment"),
    )
    kit.add_profiles(ADA)
    got = decide(kit, routing,
                 cart(ts=NOW_MS - 3 * HOUR_MS),
                 cart(ts=NOW_MS),                                 # 3 h later: duplicate
                 envelope_json(trigger_id=BROWSE_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-ADA", triggered_at_ms=NOW_MS))
    # the earlier trigger wins (events are decided in trigger-time order); another trigger is not a duplicate
    assert [g[0] for g in got] == ["matched", "duplicate", "matched"]
    assert got[1][1].startswith("cart already queued for this customer within 24h (event ")
    # a later batch 25 h after the first trigger sends again; 23 h after does not
    later = decide(kit, routing, cart(ts=NOW_MS + 20 * HOUR_MS), batch="b2", now=NOW + timedelta(hours=20))
    assert later[0][0] == "duplicate"
    again = decide(kit, routing, cart(ts=NOW_MS + 22 * HOUR_MS), batch="b3", now=NOW + timedelta(hours=22))
    assert again[0][0] == "matched"


def test_frequency_cap_counts_every_trigger(kit, tmp_path) -> None:
    cap = {"frequency_cap": {"max": 2, "per": "24h"}, "dedup_window": 0}
    routing = load(
        tmp_path,
        route(rules=cap),
        route("browse", BROWSE_ABANDONMENT_TRIGGER_ID, template="browse_abandonment", rules=cap),
    )
    kit.add_profiles(ADA)
    first = decide(kit, routing, cart(ts=NOW_MS - 2 * HOUR_MS))
    got = decide(kit, routing,
                 envelope_json(trigger_id=BROWSE_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-ADA", triggered_at_ms=NOW_MS),
                 cart(ts=NOW_MS + 1),  # another cart trigger (no dedup window here): the third email
                 batch="b2")
    assert first[0][0] == "matched"
    assert got[0][0] == "matched"
    assert got[1] == ("capped", "2 trigger emails queued for this customer in the last 24h; cap 2 per 24h")
    # a day later the cap has room again
    assert decide(kit, routing, cart(ts=NOW_MS + 30 * HOUR_MS), batch="b3", now=NOW + timedelta(hours=30))[0][0] == "matched"


def test_quiet_hours_defer_to_the_end_of_the_window_in_the_customers_zone(kit, tmp_path) -> None:
    routing = load(tmp_path, route(rules={"quiet_hours": {"start": "21:00", "end": "08:00"}}))
    kit.add_profiles(ADA, {"customer_id": "C2", "email": "grace@example.com", "shopper_id": "SHOP-GRACE",
                           "timezone": "America/New_York"})
    # 22:30 UTC = 23:30 in Paris (quiet), 17:30 in New York (not quiet)
    late = datetime(2026, 12, 1, 22, 30, tzinfo=UTC)
    ms = int(late.timestamp() * 1000)
    got = decide(kit, routing, cart(ts=ms), cart("SHOP-GRACE", ts=ms), now=late)
    assert got[0] == ("deferred", "quiet hours 21:00-08:00 Europe/Paris; scheduled for 2026-12-02T07:00:00+00:00")
    assert got[1][0] == "matched"
    rows = {r["profile_id"]: r for r in kit.rows(send)}
    assert rows["C1"]["state"] == "scheduled"
    assert rows["C1"]["not_before"].replace(tzinfo=UTC) == datetime(2026, 12, 2, 7, 0, tzinfo=UTC)
    assert rows["C2"]["state"] == "pending"
    # nothing is due before 07:00 UTC; afterwards the chunk is released to any run
    assert due_scheduled(kit.engine, datetime(2026, 12, 2, 6, 59, tzinfo=UTC)) == []
    assert due_scheduled(kit.engine, datetime(2026, 12, 2, 7, 0, tzinfo=UTC)) == [{"batch_id": "b1", "chunk": 0}]
    assert due_scheduled(kit.engine, datetime(2026, 12, 2, 7, 0, tzinfo=UTC), exclude_batch="b1") == []


def test_defaults_apply_to_every_route_and_routes_override(tmp_path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(
        "version: 1\n"
        "defaults:\n"
        "  rules: {validity: 6h, frequency_cap: {max: 3, per: 1d}}\n"
        "triggers:\n"
        f"  - {{name: cart, trigger_id: {CART_ABANDONMENT_TRIGGER_ID}, template: cart_abandonment, subject: Hi,\n"
        "     identity: {dimension: eVar01, profile_column: shopper_id}, rules: {validity: 2h},\n"
        "     link_hosts: [shop.example.com]}\n",
        encoding="utf-8",
    )
    rules = load_routing(path).routes[0].rules
    assert rules.validity_s == 2 * 3600
    assert (rules.frequency_cap.max, rules.frequency_cap.per_s) == (3, 86400)
    assert rules.dedup_window_s == 86400  # the built-in default


def test_an_unsubscribe_survives_a_profile_reload(kit, routing) -> None:
    from include.triggerflow.unsubscribe import UnsubscribeClaim, record_opt_out

    kit.add_profiles(ADA)
    record_opt_out(kit.engine, UnsubscribeClaim("C1", "cart_abandonment", NOW), method="one-click")
    kit.add_profiles({**ADA, "opted_out": False})  # a CRM export that has not heard of it
    got = decide(kit, routing, cart())
    assert got == [("suppressed:opt-out", "customer used an unsubscribe link (tf_unsubscribe)")]
