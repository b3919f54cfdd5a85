"""Tests for include.triggerflow.config.model: the values the rest of triggerflow reads."""

from __future__ import annotations

from datetime import UTC, datetime, time
from pathlib import Path

import pytest

from include.triggerflow.config import (
    SUPPRESSION_CHECKS,
    IdentityRule,
    QuietHours,
    RouteRules,
    RoutingConfig,
    RoutingConfigError,
    TriggerRoute,
    parse_duration,
)
from include.triggerflow.states import Suppression

EVENING = QuietHours(start=time(21, 0), end=time(8, 0), default_timezone="Europe/Paris")


@pytest.mark.parametrize(
    ("value", "seconds"), [("90s", 90), ("30m", 1800), ("6h", 21600), ("7d", 604800), (" 2 h ", 7200), (0, 0), (45, 45)]
)
def test_parse_duration(value: object, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "True is not a duration"),
        (-5, "-5 is negative"),
        ("5 weeks", "'5 weeks' is not a duration such as 90s, 30m, 6h or 7d"),
        (1.5, "1.5 is not a duration such as 90s, 30m, 6h or 7d"),
    ],
)
def test_parse_duration_refuses(value: object, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        parse_duration(value)


def test_default_rules_apply_every_suppression_check_in_order() -> None:
    assert SUPPRESSION_CHECKS == ("opt-out", "block-list", "hard-bounce", "invalid-address")
    assert tuple(Suppression) == SUPPRESSION_CHECKS
    assert RouteRules().suppress == frozenset({"opt-out", "block-list", "hard-bounce", "invalid-address"})


def test_quiet_hours_spanning_midnight_end_next_morning_in_the_profile_zone() -> None:
    # 20:30 UTC is 21:30 in Paris (winter): inside, the window ends at 08:00 Paris = 07:00 UTC next day.
    at = datetime(2026, 1, 10, 20, 30, tzinfo=UTC)
    assert EVENING.window_end(at, "Europe/Paris") == datetime(2026, 1, 11, 7, 0, tzinfo=UTC)
    # The same instant is 15:30 in New York: outside.
    assert EVENING.window_end(at, "America/New_York") is None
    # 06:00 Paris is before the end: the window ends the same day.
    assert EVENING.window_end(datetime(2026, 1, 10, 5, 0, tzinfo=UTC), "Europe/Paris") == datetime(
        2026, 1, 10, 7, 0, tzinfo=UTC
    )


@pytest.mark.parametrize("zone", [None, "", "Mars/Olympus", "../etc/passwd", 42])
def test_quiet_hours_use_the_default_zone_for_an_unknown_profile_zone(zone: object) -> None:
    at = datetime(2026, 1, 10, 20, 30, tzinfo=UTC)
    assert EVENING.window_end(at, zone) == datetime(2026, 1, 11, 7, 0, tzinfo=UTC)  # type: ignore[arg-type]


def test_quiet_hours_same_day_window_and_naive_times_taken_as_utc() -> None:
    lunch = QuietHours(start=time(12, 0), end=time(14, 0))
    assert lunch.window_end(datetime(2026, 1, 10, 13, 0), None) == datetime(2026, 1, 10, 14, 0, tzinfo=UTC)
    assert lunch.window_end(datetime(2026, 1, 10, 14, 0, tzinfo=UTC), None) is None


def test_trigger_route_needs_an_identity_and_fills_both_fields() -> None:
    rule = IdentityRule("field", "mcId", "ecid")
    by_one = TriggerRoute(name="a", trigger_id="x", template="t", subject="s", identity=rule)
    by_list = TriggerRoute(name="a", trigger_id="x", template="t", subject="s", identities=(rule,))
    assert by_one == by_list
    assert by_one.identities == (rule,) and by_list.identity == rule
    with pytest.raises(ValueError, match="route 'a' needs at least one identity rule"):
        TriggerRoute(name="a", trigger_id="x", template="t", subject="s")


def test_routing_map_without_campaign_lists_templates() -> None:
    rule = IdentityRule("field", "mcId", "ecid")
    config = RoutingConfig(
        path=Path("routing.yaml"),
        routes=(TriggerRoute(name="all", trigger_id="*", template="cart", subject="s", identity=rule),),
    )
    assert config.routing_map() == {"triggers": {"*": "cart"}}
    assert config.campaign_consumer is None
    assert config.route_for("anything").name == "all"  # type: ignore[union-attr]


def test_routing_config_error_keeps_each_problem() -> None:
    error = RoutingConfigError(["a: one", "a: two"])
    assert error.problems == ("a: one", "a: two")
    assert str(error) == "a: one\na: two"
    assert RoutingConfigError("a: only").problems == ("a: only",)
