"""include.triggerflow.suppression and `cli suppress`: categories, expiry, listing and lifting a
bad day's suppressions by category, time range and batch. On SQLite, and on PostgreSQL with
TRIGGERFLOW_TEST_PG_URL set."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from include.triggerflow.cli import main
from include.triggerflow.store.schema import suppression
from include.triggerflow.suppression import (
    Category,
    Selection,
    SuppressionEntryError,
    add_entries,
    lift,
    list_entries,
    parse_when,
)

NOW = datetime.now(UTC)
DAY = timedelta(days=1)


def put(kit, address: str, category: str, *, created: datetime, batch: str | None = None, expires: datetime | None = None) -> None:
    with kit.engine.begin() as conn:
        conn.execute(insert(suppression).values(address=address, source=category, reason="test", smtp_code=None,
                                                created_at=created, expires_at=expires, batch_id=batch))


@pytest.fixture
def bad_day(kit):
    """Yesterday a relay answered "user unknown" for everyone in batch b-bad; other entries around it."""
    put(kit, "old@example.com", "hard-bounce", created=NOW - 10 * DAY, batch="b-old")
    for i in range(4):
        put(kit, f"c{i}@example.com", "hard-bounce", created=NOW - DAY + timedelta(minutes=i), batch="b-bad")
    put(kit, "angry@example.com", "complaint", created=NOW - DAY + timedelta(minutes=5))
    put(kit, "gone@example.com", "hard-bounce", created=NOW - 3 * DAY, expires=NOW - DAY)
    return kit


def addresses(rows) -> list[str]:
    return sorted(r["address"] for r in rows)


def test_categories_and_expiry_are_stored(kit) -> None:
    expires = NOW + 30 * DAY
    assert add_entries(kit.engine, ["Someone@Example.com"], source=Category.COMPLAINT, reason="feed", expires_at=expires) == 1
    assert add_entries(kit.engine, ["@spam.example"], source="manual") == 1
    assert add_entries(kit.engine, ["someone@example.com"], source="unsubscribe") == 0  # already listed: kept
    got = {r["address"]: (r["source"], r["expires_at"] is not None) for r in list_entries(kit.engine)}
    assert got == {"someone@example.com": ("complaint", True), "@spam.example": ("manual", False)}
    with pytest.raises(SuppressionEntryError, match="category 'bounce' is not one of: hard-bounce, complaint, manual, block-list, unsubscribe"):
        add_entries(kit.engine, ["x@example.com"], source="bounce")


def test_list_by_category_time_range_and_batch(bad_day) -> None:
    engine = bad_day.engine
    assert addresses(list_entries(engine, Selection(batch_id="b-bad"))) == [f"c{i}@example.com" for i in range(4)]
    assert addresses(list_entries(engine, Selection(category=Category.COMPLAINT))) == ["angry@example.com"]
    window = Selection(since=NOW - 2 * DAY, until=NOW - DAY + timedelta(minutes=2))
    assert addresses(list_entries(engine, window)) == ["c0@example.com", "c1@example.com"]
    assert "gone@example.com" in addresses(list_entries(engine))
    assert "gone@example.com" not in addresses(list_entries(engine, Selection(expired=False)))


def test_lift_a_bad_day_by_category_and_time_range(bad_day) -> None:
    engine = bad_day.engine
    lifted = lift(engine, Selection(category=Category.HARD_BOUNCE, since=NOW - 2 * DAY, until=NOW))
    assert lifted == 4
    assert addresses(list_entries(engine)) == ["angry@example.com", "gone@example.com", "old@example.com"]


def test_lift_by_batch_and_an_empty_selection_is_refused(bad_day) -> None:
    with pytest.raises(SuppressionEntryError, match="say what to lift"):
        lift(bad_day.engine, Selection())
    assert lift(bad_day.engine, Selection(batch_id="b-bad")) == 4
    assert lift(bad_day.engine, Selection(batch_id="b-bad")) == 0


def test_cli_lists_and_lifts_and_prints_how_many(bad_day, store_url: str, capsys) -> None:
    def cli(*args: str) -> tuple[int, str, str]:
        code = main(["--db-url", store_url, "suppress", *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = cli("list", "--category", "hard-bounce", "--since", "2d")
    assert code == 0 and addresses(json.loads(line) for line in out.splitlines()) == [f"c{i}@example.com" for i in range(4)]
    assert cli("lift", "--batch", "b-bad", "--dry-run")[1] == "would lift 4 suppression(s)\n"
    assert cli("lift", "--category", "hard-bounce", "--since", "2d")[1] == "lifted 4 suppression(s)\n"
    assert cli("lift", "--batch", "b-bad")[1] == "lifted 0 suppression(s)\n"
    code, _, err = cli("lift")
    assert code == 2 and "say what to lift" in err
    code, _, err = cli("list", "--since", "yesterday")
    assert code == 2 and "is neither a date/time" in err
    code, out, _ = cli("add", "x@example.com", "--category", "complaint", "--days", "30")
    assert code == 0 and out.startswith("added 1 of 1 entry (complaint, until ")
    [entry] = [json.loads(line) for line in cli("list", "--category", "complaint")[1].splitlines() if "x@example.com" in line]
    assert entry["expires_at"] is not None


def test_when_forms() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert parse_when("6h", now=now) == datetime(2026, 12, 5, 6, 0, tzinfo=UTC)
    assert parse_when("2d", now=now) == datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert parse_when("90m", now=now) == datetime(2026, 12, 5, 10, 30, tzinfo=UTC)
    assert parse_when("2026-12-04") == datetime(2026, 12, 4, tzinfo=UTC)
    assert parse_when("2026-12-04T14:00+01:00") == datetime(2026, 12, 4, 13, 0, tzinfo=UTC)
    with pytest.raises(SuppressionEntryError):
        parse_when("soon")


def test_reconcile_ignores_expired_entries(kit, routing, demo_catalog) -> None:
    from include.triggerflow.stages.reconcile import reconcile_batch
    from include.triggerflow.store.schema import decision
    from tests.fixtures import envelope_json

    kit.add_profiles({"customer_id": "C1", "email": "ada@example.com", "shopper_id": "SHOP-1"},
                     {"customer_id": "C2", "email": "bob@example.com", "shopper_id": "SHOP-2"})
    put(kit, "ada@example.com", "hard-bounce", created=NOW - 3 * DAY, expires=NOW - DAY)
    put(kit, "@example.com", "block-list", created=NOW - 3 * DAY, expires=NOW + DAY)  # the domain, still on
    kit.add_batch("b1")
    kit.add_event("b1", envelope_json(shopper_id="SHOP-1"))
    reconcile_batch(kit.engine, "b1", routing)
    assert [d["decision"] for d in kit.rows(decision)] == ["suppressed:block-list"]  # not hard-bounce: expired
    lift(kit.engine, Selection(category=Category.BLOCK_LIST))
    kit.add_batch("b2")
    kit.add_event("b2", envelope_json(shopper_id="SHOP-2", offset=2))
    reconcile_batch(kit.engine, "b2", routing)
    assert [d["decision"] for d in kit.rows(decision, decision.c.batch_id == "b2")] == ["matched"]
