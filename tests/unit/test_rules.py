"""The reconcile rules (include/triggerflow/rules.py) as pure functions over records: no store.

The same rules through reconcile_batch on a real store: tests/unit/stages/test_reconcile_rules.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from devstack.messages import CART_ABANDONMENT_TRIGGER_ID
from include.triggerflow.config import FrequencyCap, IdentityRule, QuietHours, RouteRules, TriggerRoute
from include.triggerflow.events import parse_envelope
from include.triggerflow.rules import (
    Candidate,
    EventProblem,
    Facts,
    NoMatch,
    ProfileMatch,
    RecentSend,
    checked_ts,
    choose,
    decide,
    fmt_s,
    idempotency_key,
    resolve_identities,
)
from include.triggerflow.states import Decision
from tests.fixtures import envelope_json

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
EVAR = IdentityRule("dimension", "eVar01", "shopper_id")
MCID = IdentityRule("field", "mcId", "visitor_id")
ADA: dict[str, Any] = {"customer_id": "C1", "email": "ada@example.com", "opted_out": False, "timezone": "Europe/Paris"}


def route(**rules: Any) -> TriggerRoute:
    return TriggerRoute(
        name="cart", trigger_id=CART_ABANDONMENT_TRIGGER_ID, template="cart_abandonment", subject="Hi",
        identities=(EVAR, MCID), rules=RouteRules(**rules),
    )


def candidate(event_id: int = 1, *, ts: int | None = NOW_MS, keys: tuple[str | None, ...] = ("SHOP-ADA", None),
              of: TriggerRoute | None = None) -> Candidate:
    return Candidate(
        event_id=event_id, batch_id="b1", trigger_id=CART_ABANDONMENT_TRIGGER_ID, route=of or route(), keys=keys,
        trigger_ts=ts, event=parse_envelope(envelope_json(shopper_id=keys[0], triggered_at_ms=ts)),
    )


def match(profile: Mapping[str, Any] = ADA, matches: int = 1) -> ProfileMatch:
    return ProfileMatch(profile=profile, customer_key="SHOP-ADA", rule="eVar01->shopper_id", matches=matches)


def facts(**kw: Any) -> Facts:
    return Facts(now=NOW, suppressions=kw.get("suppressions", {}), unsubscribed=kw.get("unsubscribed", set()),
                 recent=kw.get("recent", {}))


# -- identity ----------------------------------------------------------------------------------------
def test_identity_rules_fall_back_in_order_with_one_lookup_per_column_and_level() -> None:
    profiles = {"shopper_id": {"SHOP-ADA": [ADA]}, "visitor_id": {"9" * 38: [{**ADA, "customer_id": "C2"}]}}
    calls: list[tuple[str, list[str]]] = []

    def lookup(column: str, keys: list[str]) -> Mapping[str, Sequence[Mapping[str, Any]]]:
        calls.append((column, keys))
        return profiles[column]

    found = resolve_identities([
        candidate(1, keys=("SHOP-ADA", "0" * 38)),
        candidate(2, keys=(None, "9" * 38)),
        candidate(3, keys=("SHOP-NOBODY", "8" * 38)),
        candidate(4, keys=("SHOP-GONE", None)),
    ], lookup)

    assert calls == [("shopper_id", ["SHOP-ADA", "SHOP-GONE", "SHOP-NOBODY"]), ("visitor_id", ["8" * 38, "9" * 38])]
    assert found[1] == ProfileMatch(ADA, "SHOP-ADA", "eVar01->shopper_id", 1)
    two = found[2]
    assert isinstance(two, ProfileMatch) and (two.customer_id, two.rule) == ("C2", "mcId->visitor_id")
    assert found[3] == NoMatch(("no profile with shopper_id='SHOP-NOBODY'", f"no profile with visitor_id='{'8' * 38}'"))
    assert found[4] == NoMatch(("no profile with shopper_id='SHOP-GONE'", "mcId not in the event"))


def test_several_profiles_are_ordered_by_the_route_then_customer_id() -> None:
    old = {"customer_id": "C2", "updated_at": datetime(2026, 1, 1)}  # naive: taken as UTC
    new = {"customer_id": "C3", "updated_at": datetime(2026, 6, 1, tzinfo=UTC)}
    blank = {"customer_id": "C1", "updated_at": None}
    newest_first = TriggerRoute(name="r", trigger_id="t", template="x", subject="s", identity=EVAR,
                                profile_order=("updated_at", True))
    assert [p["customer_id"] for p in choose(newest_first, [blank, old, new])] == ["C3", "C2", "C1"]
    assert [p["customer_id"] for p in choose(route(), [new, blank, old])] == ["C1", "C2", "C3"]


# -- decisions, in the documented order ------------------------------------------------------------------
def test_a_mailable_match_is_queued_with_how_it_was_found() -> None:
    got = decide(candidate(), match(), facts())
    assert (got.decision, got.detail, got.profile_id, got.customer_key, got.queued) == (
        Decision.MATCHED, "matched by eVar01->shopper_id", "C1", "SHOP-ADA", True,
    )


def test_several_matches_skip_or_take_the_first() -> None:
    skip = TriggerRoute(name="cart", trigger_id="t", template="x", subject="s", identity=EVAR, multiple_profiles="skip")
    got = decide(candidate(of=skip), match(matches=3), facts())
    assert (got.decision, got.detail) == (Decision.AMBIGUOUS, "3 profiles matched by eVar01->shopper_id; multiple_profiles: skip")
    first = decide(candidate(), match(matches=2), facts())
    assert first.detail == "matched by eVar01->shopper_id; 2 profiles matched, took the first by customer_id asc"


def test_expiry_comes_before_suppression() -> None:
    stale = candidate(ts=NOW_MS - 2 * 3600 * 1000, of=route(validity_s=3600))
    got = decide(stale, match({**ADA, "opted_out": True}), facts())
    assert got.decision == Decision.EXPIRED
    assert got.detail == "triggered at 2026-12-01T10:00:00+00:00, 120 min before reconciliation; validity 1h"


@pytest.mark.parametrize(
    ("profile", "kw", "expected"),
    [
        ({**ADA, "opted_out": "t"}, {}, (Decision.SUPPRESSED_OPT_OUT, "profile opted out")),
        (ADA, {"unsubscribed": {"C1"}},
         (Decision.SUPPRESSED_OPT_OUT, "customer used an unsubscribe link (tf_unsubscribe)")),
        ({**ADA, "email": "Ada@Blocked.Example"}, {"suppressions": {"@blocked.example": "block-list"}},
         (Decision.SUPPRESSED_BLOCK_LIST, "domain blocked.example is on the suppression list (block-list)")),
        (ADA, {"suppressions": {"ada@example.com": "hard-bounce"}},
         (Decision.SUPPRESSED_HARD_BOUNCE, "ada@example.com is on the suppression list (hard-bounce)")),
    ],
    ids=["opted-out", "unsubscribed", "blocked-domain", "hard-bounce"],
)
def test_suppressions(profile: dict[str, Any], kw: dict[str, Any], expected: tuple[Decision, str]) -> None:
    got = decide(candidate(), match(profile), facts(**kw))
    assert (got.decision, got.detail) == expected


def test_an_invalid_address_is_suppressed_only_when_the_route_checks_it() -> None:
    bad = {**ADA, "email": "not an address"}
    assert decide(candidate(), match(bad), facts()).decision == Decision.SUPPRESSED_INVALID_ADDRESS
    unchecked = route(suppress=frozenset({"opt-out"}))
    assert decide(candidate(of=unchecked), match(bad), facts()).decision == Decision.MATCHED


def test_the_dedup_window_and_the_exact_same_message() -> None:
    window = route(dedup_window_s=3600)
    earlier = RecentSend("cart", NOW_MS - 60_000, 7, "b0", NOW - timedelta(minutes=1))
    got = decide(candidate(of=window), match(), facts(recent={"C1": [earlier]}))
    assert (got.decision, got.detail) == (
        Decision.DUPLICATE, "cart already queued for this customer within 1h (event 7 of batch b0)"
    )
    same = RecentSend("cart", NOW_MS, 8, "b0", NOW)
    got = decide(candidate(of=window), match(), facts(recent={"C1": [same]}))
    assert got.detail == "same trigger message already queued for event 8 of batch b0"
    outside = RecentSend("cart", NOW_MS - 2 * 3600 * 1000, 9, "b0", NOW)
    assert decide(candidate(of=window), match(), facts(recent={"C1": [outside]})).decision == Decision.MATCHED


def test_the_frequency_cap_counts_every_route() -> None:
    capped = route(dedup_window_s=None, frequency_cap=FrequencyCap(max=2, per_s=86400))
    recent = [RecentSend("browse", None, i, "b0", NOW - timedelta(hours=i)) for i in (1, 2)]
    got = decide(candidate(of=capped), match(), facts(recent={"C1": recent}))
    assert (got.decision, got.detail) == (
        Decision.CAPPED, "2 trigger emails queued for this customer in the last 24h; cap 2 per 24h"
    )
    older = [RecentSend("browse", None, 1, "b0", NOW - timedelta(days=2)), recent[0]]
    assert decide(candidate(of=capped), match(), facts(recent={"C1": older})).decision == Decision.MATCHED


def test_quiet_hours_defer_to_the_end_of_the_customers_window() -> None:
    quiet = route(quiet_hours=QuietHours(start=time(12, 0), end=time(14, 0)))  # 13:00 in Paris
    got = decide(candidate(of=quiet), match(), facts())
    assert got.decision == Decision.DEFERRED and got.queued
    assert got.not_before == datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
    assert got.detail == "quiet hours 12:00-14:00 Europe/Paris; scheduled for 2026-12-01T13:00:00+00:00"


# -- helpers -----------------------------------------------------------------------------------------
def test_checked_ts_and_the_idempotency_key() -> None:
    assert checked_ts(None) is None and checked_ts(NOW_MS) == NOW_MS
    with pytest.raises(EventProblem, match="out of range"):
        checked_ts(-5)
    key = idempotency_key("t", NOW_MS, "C1", "cart_abandonment")
    assert key == idempotency_key("t", NOW_MS, "C1", "cart_abandonment") != idempotency_key("t", NOW_MS, "C2", "cart_abandonment")
    assert len(key) == 64


def test_fmt_s() -> None:
    assert [fmt_s(s) for s in (90, 60, 3600, 86400, 2 * 86400, 7 * 86400)] == ["90s", "1m", "1h", "24h", "2d", "7d"]
