"""The status document against a real landing from the emulator process, processing and a failed
send through the SMTP sink process (moved from tests/unit/test_status.py: they start processes)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import update

from devstack.messages import trigger_message
from include.triggerflow.hooks.triggers import TriggerSourceHook
from include.triggerflow.render import Renderer
from include.triggerflow.stages.land import land_batch
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.stages.report import report_batch
from include.triggerflow.stages.validate import validate_batch
from include.triggerflow.status import (
    HOURS_SHOWN,
    source_key_for_connection,
)
from include.triggerflow.store.schema import (
    event,
    send,
    source_health,
    source_position,
)
from tests.fixtures import send_chunk
from tests.status_support import (
    SETTINGS,
    UNROUTED,
    cart,
    greylisting,
    iso_hour,
    ref,
    status_now,
    utc,
)


def test_status_follows_a_real_landing_processing_and_failure(emu, adobe_conns, smtp, kit, routing, demo_catalog) -> None:
    adobe_conns(page_limit=2)
    kit.add_profiles(
        {"customer_id": "C1", "email": "ada@example.com", "first_name": "Ada", "shopper_id": "SHOP-1"},
        {"customer_id": "C2", "email": "grace@example.com", "first_name": "Grace", "shopper_id": "SHOP-2"},
        {"customer_id": "C3", "email": "donald@example.com", "first_name": "Donald", "shopper_id": "SHOP-3"},
    )
    published = emu.client.publish([
        cart(shopper_id="SHOP-1"),  # sent
        cart(shopper_id="SHOP-2"),  # deferred (4xx): a retry
        cart(shopper_id="SHOP-3"),  # bad address: a failure
        trigger_message(trigger_id=UNROUTED, shopper_id="SHOP-1"),  # ignored: processed, not sent
    ])
    assert published["accepted"] == 4
    emu.client.inject_raw([{"not": "an envelope"}])  # quarantined: discarded
    source = TriggerSourceHook().get_source()

    # -- landed, nothing processed yet ---------------------------------------------------------------
    landed = land_batch(kit.engine, source, ref(0))
    assert landed.pulled == 5
    doc, now = status_now(kit, routing)

    [position] = kit.rows(source_position)
    events = kit.rows(event, order_by=event.c.event_id)
    landing_hour = iso_hour(events[0]["received_at"])
    assert doc["consumer"] == "customer_dev"
    assert doc["source"] == source.source_key  # the only source: found without being named
    assert doc["http-request"]["pipeline-host"] == emu.base_url
    assert 0 <= doc["http-request"]["last-alive-ms-ago"] < 30_000
    assert doc["http-request"]["last-failed-cnx-ms-ago"] is None
    assert doc["http-request"]["last-error"] is None
    assert doc["pointer"] == {
        "current-offsets": f"0:{position['position']}",
        "last-flush-ms-ago": doc["pointer"]["last-flush-ms-ago"],
        "processed-since-last-flush": 5,
    }
    assert position["position"] == events[-1]["src_position"]
    assert 0 <= doc["pointer"]["last-flush-ms-ago"] < 30_000
    assert doc["stats"] == {
        "trigger-received": 5,
        "trigger-processed": 0,
        "trigger-discarded": 0,
        "trigger-failures": 0,
        "current-messages": 5,
        "current-retries": 0,
        "bytes-read": landed.bytes_read,
        "average-trigger-processing-time-ms": None,
        "pointer-flushes": 3,  # pages of 2, 2 and 1
        "gaps": 0,
        "lines-dropped": 0,
    }
    assert landed.bytes_read > 0
    assert doc["routing"] == routing.routing_map()
    assert doc["settings"] == SETTINGS
    hours = doc["messages-per-hour"]
    assert len(hours) == HOURS_SHOWN == 120
    assert hours[-1]["hour"] == iso_hour(now)
    assert [datetime.fromisoformat(h["hour"].replace("Z", "+00:00")) for h in hours] == [
        utc(now).replace(minute=0, second=0, microsecond=0) - timedelta(hours=119 - i) for i in range(120)
    ]
    assert {h["hour"]: h["messages"] for h in hours if h["messages"]} == {landing_hour: 5}

    # -- processed: validated, reconciled, sent, reported -------------------------------------------
    batch_id = landed.batch_id
    assert validate_batch(kit.engine, batch_id, routing).quarantined == 1
    reconciled = reconcile_batch(kit.engine, batch_id, routing)
    assert reconciled.counts == {"matched": 3, "ignored": 1}
    # Reconciliation suppresses invalid addresses; one that reaches the ledger fails at send time.
    with kit.engine.begin() as conn:
        conn.execute(update(send).where(send.c.recipient == "donald@example.com").values(recipient="donald at example.com"))
    sent = send_chunk(kit.engine, batch_id, 0, routing, Renderer(), greylisting("grace@example.com"))
    assert {k: sent.counts[k] for k in ("sent", "deferred", "failed", "ambiguous")} == {"sent": 1, "deferred": 1, "failed": 1, "ambiguous": 0}
    assert report_batch(kit.engine, batch_id, dag_id="trigger_emails", run_id="scheduled__0").balanced
    assert [m["To"] for m in smtp.messages()] == ["ada@example.com"]
    doc, _ = status_now(kit, routing)

    [sent_row] = kit.rows(send, send.c.state == "sent")
    [sent_event] = kit.rows(event, event.c.event_id == sent_row["event_id"])
    expected_ms = round((utc(sent_row["sent_at"]) - utc(sent_event["received_at"])).total_seconds() * 1000)
    assert doc["stats"] == {
        "trigger-received": 5,
        "trigger-processed": 5,
        "trigger-discarded": 1,
        "trigger-failures": 1,
        "current-messages": 0,
        "current-retries": 1,
        "bytes-read": landed.bytes_read,
        "average-trigger-processing-time-ms": expected_ms,
        "pointer-flushes": 3,
        "gaps": 0,
        "lines-dropped": 0,
    }
    assert 0 <= expected_ms < 60_000
    assert doc["pointer"]["processed-since-last-flush"] == 0

    # -- a second run lands 2 more, not yet processed ------------------------------------------------
    emu.client.publish([cart(shopper_id="SHOP-1"), cart(shopper_id="SHOP-2")])
    second = land_batch(kit.engine, TriggerSourceHook().get_source(), ref(1))
    assert second.pulled == 2
    doc, _ = status_now(kit, routing)
    [position] = kit.rows(source_position)
    assert doc["pointer"]["current-offsets"] == f"0:{position['position']}"
    assert doc["pointer"]["processed-since-last-flush"] == 2
    assert (doc["stats"]["trigger-received"], doc["stats"]["trigger-processed"], doc["stats"]["current-messages"]) == (7, 5, 2)
    assert doc["stats"]["pointer-flushes"] == 4
    assert doc["stats"]["bytes-read"] == landed.bytes_read + second.bytes_read
    assert sum(h["messages"] for h in doc["messages-per-hour"]) == 7

    # -- a failed contact: the IMS refuses the secret --------------------------------------------------
    adobe_conns(page_limit=2, client_secret="wrong-secret")
    with pytest.raises(RuntimeError):  # ImsAuthError or SourceError: both say what to check
        land_batch(kit.engine, TriggerSourceHook().get_source(), ref(2))
    failed_doc, _ = status_now(kit, routing)
    http = failed_doc["http-request"]
    assert 0 <= http["last-failed-cnx-ms-ago"] < 30_000
    assert http["last-failed-cnx-ms-ago"] <= http["last-alive-ms-ago"]  # the failure is the latest contact
    [health] = kit.rows(source_health)
    assert http["last-error"] == health["last_error"] and http["last-error"]
    assert failed_doc["stats"]["pointer-flushes"] == 4  # nothing landed, nothing flushed
    assert failed_doc["stats"]["trigger-received"] == 7


def test_source_key_for_connection_is_the_journal_sources_key(emu, adobe_conns) -> None:
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection("adobe_triggers")
    key = source_key_for_connection(conn.host, conn.extra_dejson)
    assert key == TriggerSourceHook().get_source().source_key
    assert key == f"journal:{emu.client.journal_path}"
    assert source_key_for_connection("", {}) is None
    assert source_key_for_connection(conn.host, {"kind": "webhook"}) is None
