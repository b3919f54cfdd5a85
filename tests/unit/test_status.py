"""Tests for include.triggerflow.status: the pipelined status document, from a store filled by the
real stages (journal landed from the emulator process, validated, reconciled, sent to the SMTP sink
process), plus exact checks of each mapping on rows written directly."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from include.triggerflow.hooks.triggers import TriggerSourceHook
from include.triggerflow.stats import refresh_batch_stats
from include.triggerflow.status import (
    DAG_MAX_RETRY_DELAY_S,
    DAG_RETRIES,
    DAG_RETRY_DELAY_S,
    DAG_RETRY_EXPONENTIAL_BACKOFF,
    DAG_SCHEDULE_PERIOD_MS,
    KEEPALIVE_WARNING_AGE_S,
    KEEPALIVE_WARNING_READS,
    KeepaliveThresholds,
    build_status,
    collect_status,
    keepalive_thresholds,
    latest_source,
    resolve_consumer,
    retry_validity_ms,
    source_key_for_connection,
    status_settings_from_connection,
)
from include.triggerflow.status.settings import KEEPALIVE_AGE_ENV, KEEPALIVE_READS_ENV
from include.triggerflow.store.schema import (
    decision,
    event,
    quarantine,
    run_summary,
    send,
    source_gap,
    source_health,
    source_hourly,
    source_position,
)
from tests.fixtures import envelope_json
from tests.status_support import (
    T0,
)
from tests.support import captured_sql


# -- each mapping, on rows written directly ------------------------------------------------------
def add_decision(kit, event_id: int, batch_id: str, outcome: str = "matched") -> None:
    with kit.engine.begin() as conn:
        conn.execute(insert(decision).values(event_id=event_id, batch_id=batch_id, decision=outcome, decided_at=T0))


def add_quarantine(kit, event_id: int, batch_id: str) -> None:
    with kit.engine.begin() as conn:
        conn.execute(insert(quarantine).values(event_id=event_id, batch_id=batch_id, reasons="[]", quarantined_at=T0))


def add_summary(kit, batch_id: str, *, balanced: bool) -> None:
    zeros = dict.fromkeys(
        ("pulled", "valid", "quarantined", "matched", "unmatched", "ignored", "sent", "suppressed", "failed", "duplicate", "pending"), 0
    )
    with kit.engine.begin() as conn:
        conn.execute(
            insert(run_summary).values(
                batch_id=batch_id, dag_id="trigger_emails", run_id=batch_id, balanced=balanced, counts="{}", reported_at=T0, **zeros
            )
        )


def test_processed_current_discarded_and_since_last_flush(kit, routing) -> None:
    kit.add_batch("b1")
    done = [kit.add_event("b1", envelope_json(offset=i)) for i in range(2)]
    for event_id in done:
        add_decision(kit, event_id, "b1")
    bad = kit.add_event("b1", envelope_json(), status="quarantined")
    add_quarantine(kit, bad, "b1")
    add_summary(kit, "b1", balanced=True)

    kit.add_batch("b2")  # the latest batch
    kit.add_event("b2", envelope_json(), status="landed")  # not validated yet
    kit.add_event("b2", envelope_json(), status="valid")  # validated, not reconciled
    decided = kit.add_event("b2", envelope_json(), status="valid")
    add_decision(kit, decided, "b2", "unmatched")
    # another source's events never count
    kit.add_batch("other", source="journal:/other")
    kit.add_event("other", envelope_json(), status="landed", source="journal:/other")
    refresh_batch_stats(kit.engine, ["b1", "b2", "other"])  # what the stages do after writing

    doc = build_status(kit.engine, routing, source_key="test:src", consumer="c", settings={})

    stats = doc["stats"]
    assert (stats["trigger-received"], stats["trigger-processed"], stats["current-messages"]) == (6, 4, 2)
    assert stats["trigger-discarded"] == 1
    assert doc["pointer"]["processed-since-last-flush"] == 2

    # processing b2 catches up; a quarantined event put back to valid is no longer discarded
    with kit.engine.begin() as conn:
        conn.execute(update(event).where(event.c.batch_id == "b2").values(status="valid"))
        conn.execute(update(event).where(event.c.event_id == bad).values(status="valid"))
    for row in kit.rows(event, event.c.batch_id == "b2"):
        if row["event_id"] != decided:
            add_decision(kit, row["event_id"], "b2")
    add_decision(kit, bad, "b1", "ignored")
    refresh_batch_stats(kit.engine, ["b1", "b2"])
    doc = build_status(kit.engine, routing, source_key="test:src", consumer="c", settings={})
    assert (doc["stats"]["trigger-processed"], doc["stats"]["current-messages"], doc["stats"]["trigger-discarded"]) == (6, 0, 0)
    assert doc["pointer"]["processed-since-last-flush"] == 0


def _fill(kit, batches: int, per_batch: int, *, first: int = 0) -> None:
    """``batches`` batches of ``per_batch`` events in every state, with sends and quarantine rows,
    summarised as the stages would leave them."""
    from include.triggerflow.store.bulk import bulk_insert

    statuses = ("landed", "valid", "valid", "quarantined")
    for b in range(first, first + batches):
        batch_id = kit.add_batch(f"fill-{b:04d}")
        with kit.engine.begin() as conn:
            rows = [
                {"batch_id": batch_id, "source": "test:src", "src_partition": 0, "src_position": f"{b:04d}-{i:06d}",
                 "payload": "{}", "received_at": T0, "status": statuses[i % 4]}
                for i in range(per_batch)
            ]
            bulk_insert(conn, event, rows)
            ids = [int(i) for i in conn.execute(select(event.c.event_id).where(event.c.batch_id == batch_id).order_by(event.c.event_id)).scalars()]
            bulk_insert(conn, decision, [{"event_id": e, "batch_id": batch_id, "decision": "matched", "decided_at": T0} for e in ids[2::4]])
            bulk_insert(conn, quarantine, [{"event_id": e, "batch_id": batch_id, "reasons": "[]", "quarantined_at": T0} for e in ids[3::4]])
            bulk_insert(conn, send, [
                {"idempotency_key": f"{batch_id}-{e}", "batch_id": batch_id, "chunk": 0, "event_id": e, "profile_id": "C1",
                 "trigger_id": "t", "route": "cart", "recipient": "a@example.com", "state": ("sent", "failed", "deferred")[n % 3],
                 "attempts": 1, "created_at": T0, "updated_at": T0, "sent_at": T0 + timedelta(seconds=1)}
                for n, e in enumerate(ids[2::4])
            ])
        refresh_batch_stats(kit.engine, batch_id)





#: the tables whose size grows with the events stored: the document must never read them
EVENT_TABLES = re.compile(r"\b(tf_event|tf_send|tf_decision|tf_quarantine|tf_batch|tf_run_summary)\b")


def test_the_document_reads_only_summaries_whatever_the_number_of_events(kit, routing) -> None:
    """The cost of the status does not grow with tf_event: the same statements, none of them on the
    event, ledger, decision or quarantine tables, at 40 and at 2,000 events; and the counters
    still equal a full recount."""
    from include.triggerflow.stats import recount_source

    runs = []
    for batches, per_batch in ((2, 20), (8, 250)):
        _fill(kit, batches, per_batch, first=len(runs) * 100)
        with captured_sql(kit.engine) as statements:
            doc = build_status(kit.engine, routing, source_key="test:src", consumer="c", settings={})
        runs.append((doc, statements))
    for _doc, statements in runs:
        lowered = [" ".join(s.lower().split()) for s in statements]
        assert lowered, "no statement captured: the capture itself is broken"
        assert [s for s in lowered if EVENT_TABLES.search(s)] == []
        assert any("tf_source_stats" in s for s in lowered) and any("tf_batch_stats" in s for s in lowered)
    (small, small_sql), (large, large_sql) = runs
    assert len(small_sql) == len(large_sql)
    assert small["stats"]["trigger-received"] == 40 and large["stats"]["trigger-received"] == 2040
    with kit.engine.connect() as conn:
        recount = recount_source(conn, "test:src")
    stats = large["stats"]
    assert (stats["trigger-received"], stats["current-messages"], stats["trigger-discarded"]) == (
        recount.received, recount.unprocessed, recount.discarded
    )
    assert (stats["trigger-failures"], stats["current-retries"]) == (recount.failures, recount.retries)
    # the latest batch's landed events and valid ones without a decision
    assert large["pointer"]["processed-since-last-flush"] == sum(1 for i in range(250) if i % 4 in (0, 1))
    assert stats["average-trigger-processing-time-ms"] == 1000


def test_ledger_counts_and_average_processing_time(kit, routing) -> None:
    kit.add_batch("b1")
    received = T0
    ids = [kit.add_event("b1", envelope_json(offset=i), received_at=received) for i in range(4)]
    rows = [
        ("sent", timedelta(seconds=2)),
        ("sent", timedelta(seconds=5)),
        ("failed", None),
        ("deferred", None),
    ]
    with kit.engine.begin() as conn:
        for n, (event_id, (state, delay)) in enumerate(zip(ids, rows)):
            conn.execute(
                insert(send).values(
                    idempotency_key=f"k{n}", batch_id="b1", chunk=0, event_id=event_id, profile_id="C1",
                    trigger_id="t", route="cart", recipient="a@example.com", state=state, attempts=1,
                    created_at=T0, updated_at=T0, sent_at=received + delay if delay else None,
                )
            )
    refresh_batch_stats(kit.engine, "b1")
    doc = build_status(kit.engine, routing, source_key="test:src", consumer="c", settings={})
    assert doc["stats"]["average-trigger-processing-time-ms"] == 3500
    assert (doc["stats"]["trigger-failures"], doc["stats"]["current-retries"]) == (1, 1)
    # and for another source, none of them
    other = build_status(kit.engine, routing, source_key="journal:/other", consumer="c", settings={})
    assert other["stats"]["average-trigger-processing-time-ms"] is None
    assert (other["stats"]["trigger-failures"], other["stats"]["current-retries"]) == (0, 0)


def test_offsets_flush_health_and_gaps(kit, routing) -> None:
    key = "pipeline:customer_dev:triggers"
    now = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
    with kit.engine.begin() as conn:
        for partition, position, age_s in ((10, "77", 50), (2, "1071369", 3), (0, "1090921", 9)):
            conn.execute(
                insert(source_position).values(
                    source=key, partition=partition, position=position, updated_at=now - timedelta(seconds=age_s)
                )
            )
        conn.execute(
            insert(source_health).values(
                source=key, endpoint="https://user:pw@producer-pipeline-pnw.adobe.net:8443/pipeline/topics/triggers?x=1",
                last_alive_at=now - timedelta(milliseconds=1500), last_failed_at=now - timedelta(minutes=2),
                last_error="SourceError: boom", bytes_read=123_456, messages_received=9, pointer_flushes=17,
                updated_at=now,
            )
        )
        for partition in (0, 2):
            conn.execute(
                insert(source_gap).values(
                    source=key, partition=partition, expected_position="5", resumed_position="9", reason="retention",
                    detected_at=now,
                )
            )
        conn.execute(
            insert(source_gap).values(source="other", partition=0, resumed_position="1", reason="x", detected_at=now)
        )

    doc = build_status(kit.engine, routing, source_key=key, consumer="customer_dev", settings={}, now=now)

    assert doc["pointer"] == {
        "current-offsets": "0:1090921,2:1071369,10:77",  # by partition number, not as text
        "last-flush-ms-ago": 3000,
        "processed-since-last-flush": 0,
    }
    assert doc["http-request"] == {
        "last-alive-ms-ago": 1500,
        "last-failed-cnx-ms-ago": 120_000,
        "pipeline-host": "https://producer-pipeline-pnw.adobe.net:8443",  # no credentials, path or query
        "last-error": "SourceError: boom",
        "last-data-ms-ago": None,  # a store written before keep-alives were counted
        "empty-reads": 0,
    }
    assert doc["warnings"] == []  # nothing counted, nothing to warn about
    assert (doc["stats"]["bytes-read"], doc["stats"]["pointer-flushes"], doc["stats"]["gaps"]) == (123_456, 17, 2)
    assert doc["generated-at"] == "2026-03-02T10:30:00Z"


def _health(kit, key: str, now: datetime, **values: Any) -> None:
    with kit.engine.begin() as conn:
        conn.execute(insert(source_health).values(source=key, updated_at=now, last_alive_at=now, **values))


@pytest.mark.parametrize(
    ("empty_reads", "data_age_s", "warned"),
    [
        (KEEPALIVE_WARNING_READS, KEEPALIVE_WARNING_AGE_S, True),  # pings for long, data old
        (KEEPALIVE_WARNING_READS + 500, None, True),  # pings and never one message
        (KEEPALIVE_WARNING_READS - 1, None, False),  # not long enough yet
        (KEEPALIVE_WARNING_READS * 3, KEEPALIVE_WARNING_AGE_S - 1, False),  # data came recently
        (0, 3 * 86_400, False),  # the last read received data, however long ago the one before
    ],
    ids=["old-data", "never-data", "few-reads", "recent-data", "no-empty-reads"],
)
def test_a_source_that_only_sends_keep_alives_is_flagged(kit, routing, empty_reads, data_age_s, warned) -> None:
    key = "pipeline:customer_dev:triggers"
    now = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
    last_data = None if data_age_s is None else now - timedelta(seconds=data_age_s)
    _health(kit, key, now, empty_reads=empty_reads, last_data_at=last_data, lines_dropped=7)

    doc = build_status(kit.engine, routing, source_key=key, consumer="c", settings={}, now=now)

    assert doc["http-request"]["empty-reads"] == empty_reads
    assert doc["http-request"]["last-data-ms-ago"] == (None if data_age_s is None else data_age_s * 1000)
    assert doc["stats"]["lines-dropped"] == 7
    assert [w["code"] for w in doc["warnings"]] == (["keep-alives-only"] if warned else [])
    if warned:
        detail = doc["warnings"][0]["detail"]
        assert f"the last {empty_reads} reads received only keep-alives" in detail
        assert ("no read has ever received a message" in detail) is (data_age_s is None)


def test_keepalive_thresholds_are_settings(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Connection extra first, then the environment, then the defaults; a bad value is logged and
    the default applies (a typo must not take the status down)."""
    for name in (KEEPALIVE_READS_ENV, KEEPALIVE_AGE_ENV):
        monkeypatch.delenv(name, raising=False)
    assert keepalive_thresholds({}) == KeepaliveThresholds(KEEPALIVE_WARNING_READS, KEEPALIVE_WARNING_AGE_S) == KeepaliveThresholds(30, 1800)
    monkeypatch.setenv(KEEPALIVE_READS_ENV, "10")
    monkeypatch.setenv(KEEPALIVE_AGE_ENV, "600")
    assert keepalive_thresholds(None) == KeepaliveThresholds(10, 600.0)
    extra = {"keepalive_warning_reads": 5, "keepalive_warning_age_s": "90.5"}
    assert keepalive_thresholds(extra) == KeepaliveThresholds(5, 90.5)
    for bad in ({"keepalive_warning_reads": 0}, {"keepalive_warning_reads": 2.5}, {"keepalive_warning_reads": "many"},
                {"keepalive_warning_reads": True}, {"keepalive_warning_age_s": -1}, {"keepalive_warning_age_s": "nan"}):
        caplog.clear()
        thresholds = keepalive_thresholds(bad)
        assert thresholds in (KeepaliveThresholds(30, 600.0), KeepaliveThresholds(10, 1800)), bad
        assert "using" in caplog.text, bad


def test_the_document_applies_the_thresholds_it_is_given(kit, routing, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "pipeline:customer_dev:triggers"
    now = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
    _health(kit, key, now, empty_reads=5, last_data_at=now - timedelta(seconds=120))
    quiet = build_status(kit.engine, routing, source_key=key, consumer="c", settings={}, now=now)
    assert quiet["warnings"] == []  # defaults: 30 reads, 30 min
    strict = KeepaliveThresholds(reads=5, age_s=60)
    flagged = build_status(kit.engine, routing, source_key=key, consumer="c", settings={}, now=now, thresholds=strict)
    assert [w["code"] for w in flagged["warnings"]] == ["keep-alives-only"]
    # the collector takes them from the adobe_triggers connection's extra
    conn = SimpleNamespace(host=None, extra_dejson={"kind": "pipeline", "consumer": "customer_dev", **{
        "keepalive_warning_reads": 5, "keepalive_warning_age_s": 60}})
    collected = collect_status(kit.engine, conn)
    assert collected["source"] == key and [w["code"] for w in collected["warnings"]] == ["keep-alives-only"]
    monkeypatch.setenv(KEEPALIVE_READS_ENV, "6")  # the extra wins over the environment
    assert collect_status(kit.engine, conn)["warnings"] != []
    conn.extra_dejson = {"kind": "pipeline", "consumer": "customer_dev"}
    assert collect_status(kit.engine, conn)["warnings"] == []  # 5 reads < 6 ($TRIGGERFLOW_KEEPALIVE_WARNING_READS)


def test_messages_per_hour_is_zero_filled_over_five_days(kit, routing) -> None:
    now = datetime(2026, 3, 6, 10, 42, 7, tzinfo=UTC)
    current = now.replace(minute=0, second=0)
    rows = [
        ("test:src", current, 7),
        ("test:src", current - timedelta(hours=3), 2),
        ("test:src", current - timedelta(hours=119), 4),  # the oldest hour shown
        ("test:src", current - timedelta(hours=120), 99),  # too old
        ("journal:/other", current, 1000),
    ]
    with kit.engine.begin() as conn:
        conn.execute(insert(source_hourly), [{"source": s, "hour": h, "messages": n} for s, h, n in rows])

    hours = build_status(kit.engine, routing, source_key="test:src", consumer="c", settings={}, now=now)["messages-per-hour"]

    assert len(hours) == 120
    assert hours[0] == {"hour": "2026-03-01T11:00:00Z", "messages": 4}
    assert hours[-1] == {"hour": "2026-03-06T10:00:00Z", "messages": 7}
    assert hours[-4] == {"hour": "2026-03-06T07:00:00Z", "messages": 2}
    assert sum(h["messages"] for h in hours) == 13
    assert [h["hour"] for h in hours] == sorted(h["hour"] for h in hours)


def test_source_defaults_to_the_most_recently_active(kit, routing) -> None:
    empty = build_status(kit.engine, None, consumer="c", settings={})
    assert empty["source"] is None and latest_source(kit.engine) is None
    assert empty["routing"] == {"triggers": {}}
    assert empty["pointer"] == {"current-offsets": "", "last-flush-ms-ago": None, "processed-since-last-flush": 0}
    assert set(empty["stats"].values()) == {0, None}
    assert len(empty["messages-per-hour"]) == 120 and not any(h["messages"] for h in empty["messages-per-hour"])

    with kit.engine.begin() as conn:
        for source, age in (("journal:/old", 60), ("journal:/new", 1), ("journal:/older", 600)):
            conn.execute(insert(source_health).values(source=source, updated_at=T0 - timedelta(seconds=age)))
    assert latest_source(kit.engine) == "journal:/new"
    assert build_status(kit.engine, routing, consumer="c", settings={})["source"] == "journal:/new"
    assert build_status(kit.engine, routing, source_key="journal:/old", consumer="c", settings={})["source"] == "journal:/old"


def test_document_is_json_serialisable(kit, routing) -> None:
    doc = build_status(kit.engine, routing, consumer="c", settings=status_settings_from_connection({}))
    assert json.loads(json.dumps(doc)) == doc
    assert list(doc) == [
        "consumer", "source", "generated-at", "http-request", "pointer", "routing", "stats", "settings", "messages-per-hour",
        "warnings",  # triggerflow's addition, after Campaign's own blocks
    ]


# -- settings, consumer, source key -----------------------------------------------------------------
def test_settings_from_the_connection() -> None:
    assert status_settings_from_connection({"kind": "journal", "page_limit": 200}, pool_slots=4) == {
        "flush-pointer-msg-count": 200,
        "flush-pointer-period-ms": 60_000,
        "processing-threads-JS": 4,
        "retry-period-ms": 10_000,
        "retry-validity-duration-ms": 137_000,
    }
    defaults = status_settings_from_connection(None)
    assert (defaults["flush-pointer-msg-count"], defaults["processing-threads-JS"]) == (500, None)
    assert status_settings_from_connection({"page_limit": "many"})["flush-pointer-msg-count"] is None
    assert status_settings_from_connection({"page_limit": "250"})["flush-pointer-msg-count"] == 250
    # a Pipeline source flushes every page_size messages (pipelined's pointerFlushMessageCount)
    assert status_settings_from_connection({"kind": "pipeline", "page_limit": 7})["flush-pointer-msg-count"] == 1000
    assert status_settings_from_connection({"kind": "pipeline", "page_size": 300})["flush-pointer-msg-count"] == 300


def test_retry_validity_follows_airflows_backoff() -> None:
    # tries wait at most 19, 39 and 79 s (between ceil(10*2**(n-1)) and twice that, minus 1)
    assert retry_validity_ms() == (19 + 39 + 79) * 1000
    assert retry_validity_ms(retries=2, retry_delay_s=30, backoff=1.0) == 60_000
    assert retry_validity_ms(retries=4, retry_delay_s=100, backoff=2.0, max_retry_delay_s=300) == (199 + 300 + 300 + 300) * 1000


def test_settings_constants_match_the_dag() -> None:
    """status.py mirrors the DAG's schedule and retry settings instead of parsing the DAG per request."""
    from airflow.dag_processing.dagbag import DagBag

    from tests.dags.test_dag_integrity import DAGS_DIR

    dag = DagBag(dag_folder=str(DAGS_DIR)).dags["trigger_emails"]
    args = dag.default_args
    assert args["retries"] == DAG_RETRIES
    assert args["retry_delay"] == timedelta(seconds=DAG_RETRY_DELAY_S)
    assert args["retry_exponential_backoff"] == DAG_RETRY_EXPONENTIAL_BACKOFF
    assert args["max_retry_delay"] == timedelta(seconds=DAG_MAX_RETRY_DELAY_S)
    assert dag.timetable.expression == "* * * * *" and DAG_SCHEDULE_PERIOD_MS == 60_000
    assert dag.get_task("send").pool == "smtp_sessions"


def test_source_key_of_a_pipeline_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIGGERFLOW_ENVIRONMENT", raising=False)
    assert source_key_for_connection(None, {"kind": "pipeline"}) is None  # no consumer: not known
    assert source_key_for_connection(None, {"kind": "pipeline", "consumer": "shop_prod"}) == "pipeline:shop_prod:triggers"
    extra = {"kind": "pipeline", "consumer": "triggerflow-{env}", "topic": "aliases"}
    assert source_key_for_connection(None, extra) == "pipeline:triggerflow-dev:aliases"
    monkeypatch.setenv("TRIGGERFLOW_ENVIRONMENT", "stage")
    assert source_key_for_connection(None, extra) == "pipeline:triggerflow-stage:aliases"
    assert source_key_for_connection(None, {**extra, "environment": "prod"}) == "pipeline:triggerflow-prod:aliases"
    assert resolve_consumer(extra={**extra, "environment": "prod"}, source_key="k") == "triggerflow-prod"


def test_source_key_matches_the_hooks_pipeline_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same key as the source the adobe_triggers hook builds for a pipeline connection
    (building the source reads the connections only: nothing is requested)."""
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({
        "conn_type": "http", "host": "http://127.0.0.1:9", "login": "client", "password": "secret", "extra": {"org_id": "ORG@AdobeOrg"},
    }))
    extra = {"kind": "pipeline", "consumer": "triggerflow-{env}", "environment": "qa", "ims_conn_id": "adobe_ims"}
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_TRIGGERS", json.dumps({"conn_type": "http", "host": "", "extra": extra}))
    assert source_key_for_connection("", extra) == TriggerSourceHook().get_source().source_key == "pipeline:triggerflow-qa:triggers"


def test_consumer_resolution_order(routing, tmp_path) -> None:
    from include.triggerflow.config import load_routing

    option = {"topics": [{"name": "triggers", "consumer": "campaign_prod", "triggers": [{"name": "*", "jsConnector": "j"}]}]}
    (tmp_path / "nms.json").write_text(json.dumps(option))
    (tmp_path / "routing.yaml").write_text(
        "version: 1\ncampaign:\n  config: nms.json\n  handlers:\n    j: {template: cart_abandonment, subject: Hi, "
        "identity: {dimension: eVar01, profile_column: shopper_id}, link_hosts: [shop.example.com]}\n"
    )
    campaign = load_routing(tmp_path / "routing.yaml")
    host = "https://events.adobe.io/events/organizations/ORG/integrations/INT/REG-1/"
    assert resolve_consumer(explicit="cli", extra={"consumer": "x"}, routing=campaign, host=host, source_key="k") == "cli"
    assert resolve_consumer(extra={"consumer": "x"}, routing=campaign, host=host, source_key="k") == "x"
    assert resolve_consumer(extra={}, routing=campaign, host=host, source_key="k") == "campaign_prod"
    assert resolve_consumer(extra={}, routing=routing, host=host, source_key="k") == "REG-1"
    assert resolve_consumer(routing=routing, source_key="journal:/a/b") == "journal:/a/b"
    assert resolve_consumer() == "triggerflow"
