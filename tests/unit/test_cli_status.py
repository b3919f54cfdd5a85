"""Tests for the CLI's ``status`` command, run in-process through ``main`` (tests/cli_support.py)
against a store landed from a scripted journal source (the ``TriggerSource`` protocol). The
source key an emulator-backed ``adobe_triggers`` connection yields is checked against the real
hook in tests/integration/status/test_status_sources.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from include.triggerflow.stages.land import BatchRef, land_batch
from include.triggerflow.store.schema import source_health, source_position
from tests.cli_support import Done, run_cli
from tests.status_support import HOST, JournalPages, journal_connection

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FIELDS = {"consumer", "source", "generated-at", "http-request", "pointer", "routing", "stats", "settings", "messages-per-hour", "warnings"}
def cli(store_url: str, *args: str, env: dict[str, str] | None = None) -> Done:
    return run_cli("--db-url", store_url, *args, env=env)


def status(store_url: str, *args: str, env: dict[str, str] | None = None) -> dict:
    done = cli(store_url, "status", *args, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def landed(kit, monkeypatch: pytest.MonkeyPatch):
    journal_connection(monkeypatch, page_limit=2)
    source = JournalPages(3, page_limit=2)
    result = land_batch(kit.engine, source, BatchRef("trigger_emails", "manual__1", "manual", T0, T0 + timedelta(minutes=1)))
    assert result.pulled == 3
    return source, result


def test_status_prints_the_document(landed, kit, store_url: str, routing) -> None:
    source, result = landed

    doc = status(store_url)

    assert set(doc) == FIELDS
    [position] = kit.rows(source_position)
    assert doc["consumer"] == "triggerflow-reg"  # the journal registration of connection adobe_triggers
    assert doc["source"] == source.source_key
    assert doc["http-request"]["pipeline-host"] == HOST
    assert 0 <= doc["http-request"]["last-alive-ms-ago"] < 60_000
    assert doc["pointer"]["current-offsets"] == f"0:{position['position']}"
    assert doc["pointer"]["processed-since-last-flush"] == 3
    assert doc["stats"] == {
        "trigger-received": 3,
        "trigger-processed": 0,
        "trigger-discarded": 0,
        "trigger-failures": 0,
        "current-messages": 3,
        "current-retries": 0,
        "bytes-read": result.bytes_read,
        "average-trigger-processing-time-ms": None,
        "pointer-flushes": 2,
        "gaps": 0,
        "lines-dropped": 0,
    }
    assert doc["warnings"] == []  # the source delivered: no keep-alives-only warning
    assert doc["settings"]["flush-pointer-msg-count"] == 2  # the connection's page_limit
    assert doc["settings"]["retry-validity-duration-ms"] == 137_000
    assert doc["routing"] == routing.routing_map()
    assert len(doc["messages-per-hour"]) == 120
    assert sum(h["messages"] for h in doc["messages-per-hour"]) == 3


def test_consumer_and_source_flags(landed, store_url: str) -> None:
    source, _ = landed
    assert status(store_url, "--consumer", "customer_dev")["consumer"] == "customer_dev"
    other = status(store_url, "--source", "journal:/elsewhere")
    assert other["source"] == "journal:/elsewhere"
    assert other["stats"]["trigger-received"] == 0 and other["pointer"]["current-offsets"] == ""
    assert other["consumer"] == "triggerflow-reg"
    assert status(store_url, "--source", source.source_key)["stats"]["trigger-received"] == 3


def test_without_the_source_connection(kit, store_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_ADOBE_TRIGGERS", raising=False)
    with kit.engine.begin() as conn:
        conn.execute(insert(source_health).values(source="journal:/x/reg", bytes_read=42, updated_at=T0))
    broken = tmp_path / "routing.yaml"
    broken.write_text("version: 2\n")

    doc = status(store_url, env={"TRIGGERFLOW_ROUTING_FILE": str(broken)})

    assert (doc["source"], doc["consumer"]) == ("journal:/x/reg", "journal:/x/reg")  # most recent source
    assert doc["stats"]["bytes-read"] == 42
    assert doc["settings"]["flush-pointer-msg-count"] == 500  # the default page_limit
    assert doc["routing"]["triggers"] == {}
    assert doc["routing"]["error"].splitlines() == [
        f"{broken}: missing required key: triggers",
        f"{broken}: version must be 1, got 2",
    ]
    assert status(store_url, "--consumer", "c1")["consumer"] == "c1"


def test_recount_repairs_the_summaries(landed, kit, store_url: str) -> None:
    """A lost refresh (summaries behind the events) shows stale counters until ``--recount``,
    which rebuilds them from every batch's rows."""
    from sqlalchemy import delete, update

    from include.triggerflow.store.schema import batch_stats, source_stats

    source, _ = landed
    with kit.engine.begin() as conn:
        conn.execute(delete(batch_stats))
        conn.execute(update(source_stats).values(received=0, unprocessed=0))
    assert status(store_url, "--source", source.source_key)["stats"]["trigger-received"] == 0
    done = cli(store_url, "status", "--source", source.source_key, "--recount")
    assert done.returncode == 0, done.stderr
    assert "recounted 1 batches" in done.stderr
    doc = json.loads(done.stdout)
    assert (doc["stats"]["trigger-received"], doc["stats"]["current-messages"]) == (3, 3)
    assert doc["pointer"]["processed-since-last-flush"] == 3
    assert status(store_url, "--source", source.source_key)["stats"]["trigger-received"] == 3  # kept
