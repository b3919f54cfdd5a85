"""Tests for include.triggerflow.positions: moving a stored position by hand, recorded as a gap."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import insert

from include.triggerflow.positions import PositionError, PositionMove, set_position, skip_messages
from include.triggerflow.store.schema import source_gap, source_health, source_position

PIPELINE = "pipeline:customer_dev:triggers"
JOURNAL = "journal:/events/organizations/o/integrations/i/r"


def store_positions(kit, source: str, **by_partition: str) -> None:
    now = datetime.now(UTC)
    with kit.engine.begin() as conn:
        for partition, position in by_partition.items():
            conn.execute(insert(source_position).values(source=source, partition=int(partition[1:]), position=position, updated_at=now))


def positions(kit, source: str) -> dict[int, str]:
    return {r["partition"]: r["position"] for r in kit.rows(source_position) if r["source"] == source}


def test_skip_moves_one_partition_on_and_records_a_deliberate_gap(kit) -> None:
    store_positions(kit, PIPELINE, p0="1090921", p1="1071369")

    move = skip_messages(kit.engine, PIPELINE, 1, 3, reason="offset 1071369 crashes the reader, ticket 42")

    assert move == PositionMove(source=PIPELINE, partition=1, old="1071369", new="1071372")
    assert positions(kit, PIPELINE) == {0: "1090921", 1: "1071372"}  # the other partition is untouched
    [gap] = kit.rows(source_gap)
    assert (gap["source"], gap["partition"], gap["expected_position"], gap["resumed_position"], gap["batch_id"]) == (
        PIPELINE, 1, "1071369", "1071372", None
    )
    assert gap["reason"] == "deliberate skip: offset 1071369 crashes the reader, ticket 42"


def test_skip_refuses_a_journal_position_and_a_partition_without_one(kit) -> None:
    store_positions(kit, JOURNAL, p0="pos-abc")
    with pytest.raises(PositionError, match=r"not a Pipeline offset.*set-position"):
        skip_messages(kit.engine, JOURNAL, 0)
    with pytest.raises(PositionError, match="partition 4 has no stored position"):
        skip_messages(kit.engine, JOURNAL, 4)
    with pytest.raises(PositionError, match="at least 1"):
        skip_messages(kit.engine, JOURNAL, 0, 0)
    assert positions(kit, JOURNAL) == {0: "pos-abc"}
    assert kit.count(source_gap) == 0


def test_set_position_replaces_or_creates_and_records_the_gap(kit) -> None:
    store_positions(kit, JOURNAL, p0="pos-abc")

    moved = set_position(kit.engine, JOURNAL, 0, " pos-xyz ", reason="after the bad event")
    assert moved == PositionMove(source=JOURNAL, partition=0, old="pos-abc", new="pos-xyz")
    created = set_position(kit.engine, JOURNAL, 2, "77")
    assert created.old is None

    assert positions(kit, JOURNAL) == {0: "pos-xyz", 2: "77"}
    assert sorted((g["partition"], g["expected_position"], g["resumed_position"], g["reason"]) for g in kit.rows(source_gap)) == [
        (0, "pos-abc", "pos-xyz", "deliberate skip: after the bad event"),
        (2, None, "77", "deliberate skip: set by hand"),
    ]


def test_set_position_of_an_unknown_source_or_a_bad_position_changes_nothing(kit) -> None:
    with pytest.raises(PositionError, match="no source 'journal:/typo'"):
        set_position(kit.engine, "journal:/typo", 0, "pos-1")
    with kit.engine.begin() as conn:  # known through its health row only (never landed a page)
        conn.execute(insert(source_health).values(source=PIPELINE, updated_at=datetime.now(UTC)))
    with pytest.raises(PositionError, match="empty"):
        set_position(kit.engine, PIPELINE, 0, "  ")
    with pytest.raises(PositionError, match="201 characters"):
        set_position(kit.engine, PIPELINE, 0, "9" * 201)
    assert set_position(kit.engine, PIPELINE, 0, "5").new == "5"
    assert kit.count(source_gap) == 1
