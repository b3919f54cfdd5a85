"""Tests for include.triggerflow.hooks.triggers: connection ``adobe_triggers`` -> a trigger source.

Connections come from AIRFLOW_CONN_* variables (JSON), as for any Airflow hook outside a task.
Building a source makes no network call; the token provider is checked against the emulator
process in tests/integration/hooks/test_triggers_hook.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from include.triggerflow.hooks.triggers import SOURCE_KINDS, TriggerSourceHook
from include.triggerflow.sources.base import SourceError
from include.triggerflow.sources.journal import JournalSource
from include.triggerflow.sources.pipeline import DEFAULT_DISCOVERY_URL, PipelineSource

ORG = "C0FFEE0123456789ABCDEF01@AdobeOrg"
JOURNAL_URL = f"https://events.adobe.io/events/organizations/{ORG}/integrations/int-1/reg-1"


@pytest.fixture
def conns(monkeypatch: pytest.MonkeyPatch):
    """Set ``adobe_ims`` (no network needed to build a source) and return a setter for
    ``adobe_triggers``."""
    monkeypatch.delenv("TRIGGERFLOW_ENVIRONMENT", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({
        "conn_type": "http", "host": "https://ims-na1.adobelogin.com", "login": "client-1",
        "password": "secret-1", "extra": {"org_id": ORG},
    }))

    def set_triggers(host: str | None = None, **extra: Any) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_ADOBE_TRIGGERS", json.dumps({"conn_type": "http", "host": host, "extra": extra}))

    return set_triggers


def build() -> Any:
    return TriggerSourceHook().get_source()


def test_source_kinds() -> None:
    assert SOURCE_KINDS == ("journal", "pipeline")


def test_journal_is_the_default_kind(conns) -> None:
    conns(JOURNAL_URL, page_limit=50)
    src = build()
    assert isinstance(src, JournalSource)
    assert (src.journal_url, src.api_key, src.org_id, src.page_limit, src.reset) == (JOURNAL_URL, "client-1", ORG, 50, "earliest")
    conns(JOURNAL_URL, kind="journal")
    assert isinstance(build(), JournalSource)


def test_pipeline_with_defaults_uses_discovery(conns) -> None:
    conns(None, kind="pipeline", consumer="campaign-prod")
    src = build()
    assert isinstance(src, PipelineSource)
    assert src.source_key == "pipeline:campaign-prod:triggers"
    assert (src.consumer, src.topic, src.partitions, src.reset) == ("campaign-prod", "triggers", 15, "earliest")
    assert (src.page_size, src.read_timeout_s, src.idle_stop_s, src.max_tries) == (1000, 10.0, 30.0, 4)
    assert (src.forced_endpoint, src.discovery_url) == (None, DEFAULT_DISCOVERY_URL)
    assert (src.endpoint, src.endpoint_origin) == (DEFAULT_DISCOVERY_URL, "unresolved")
    assert src.org_id == ORG


def test_pipeline_with_every_field(conns) -> None:
    conns(
        "https://producer-pipeline-lon.adobe.net/", kind="pipeline", consumer="acme-{env}", environment="stage",
        topic="aliases", partitions=20, discovery_url="https://discovery.example/", reset="latest",
        page_size="250", read_timeout_s=2.5, idle_stop_s=5, max_tries=6, ims_conn_id="adobe_ims",
    )
    src = build()
    assert src.source_key == "pipeline:acme-stage:aliases"
    assert (src.endpoint, src.endpoint_origin) == ("https://producer-pipeline-lon.adobe.net", "forced")
    assert (src.partitions, src.reset, src.page_size, src.read_timeout_s, src.idle_stop_s, src.max_tries) == (
        20, "latest", 250, 2.5, 5.0, 6
    )
    assert src.discovery_url == "https://discovery.example"


def test_env_placeholder_comes_from_extra_then_environment_variable_then_dev(conns, monkeypatch) -> None:
    conns(None, kind="pipeline", consumer="triggerflow-{env}")
    assert build().consumer == "triggerflow-dev"
    monkeypatch.setenv("TRIGGERFLOW_ENVIRONMENT", "prod")
    assert build().consumer == "triggerflow-prod"
    conns(None, kind="pipeline", consumer="triggerflow-{env}", environment="stage")
    src = build()
    assert (src.consumer, src.source_key) == ("triggerflow-stage", "pipeline:triggerflow-stage:triggers")
    conns(None, kind="pipeline", consumer="fixed-name")
    assert build().consumer == "fixed-name"  # no placeholder: taken as is


@pytest.mark.parametrize(
    ("host", "extra", "message"),
    [
        (None, {"kind": "webhook"}, "connection 'adobe_triggers': extra.kind 'webhook' is not one of ('journal', 'pipeline')"),
        (None, {"kind": "pipeline"}, "connection 'adobe_triggers': extra.consumer is required for kind 'pipeline'"),
        (None, {"kind": "pipeline", "consumer": "  "}, "extra.consumer is required"),
        (None, {"kind": "pipeline", "consumer": "a b"}, "extra.consumer 'a b' must not contain spaces or commas"),
        (None, {"kind": "pipeline", "consumer": "c", "reset": "newest"},
         "connection 'adobe_triggers': extra.reset must be 'earliest' or 'latest', not 'newest'"),
        (None, {"kind": "pipeline", "consumer": "c", "partitions": 0}, "extra.partitions must be a positive integer, got 0"),
        (None, {"kind": "pipeline", "consumer": "c", "partitions": "many"}, "extra.partitions must be a positive integer"),
        (None, {"kind": "pipeline", "consumer": "c", "page_size": 2.5}, "extra.page_size must be a positive integer, got 2.5"),
        (None, {"kind": "pipeline", "consumer": "c", "read_timeout_s": -1}, "extra.read_timeout_s must be a positive number"),
        (None, {"kind": "pipeline", "consumer": "c", "discovery_url": "pipeline.adobe.net"},
         "extra.discovery_url must be a full URL"),
        (None, {"kind": "pipeline", "consumer": "c", "topic": "a/b"}, "extra.topic 'a/b' is not a topic name"),
        ("producer-pipeline-lon.adobe.net", {"kind": "pipeline", "consumer": "c"},
         "host is the forced Pipeline endpoint and must be a full URL"),
        ("events.adobe.io/x", {"kind": "journal"}, "host must be the full journal URL"),
    ],
)
def test_connection_mistakes_name_the_connection_and_the_field(conns, host, extra, message) -> None:
    conns(host, **extra)
    with pytest.raises(SourceError) as info:
        build()
    assert message in str(info.value)
    assert str(info.value).startswith("connection 'adobe_triggers': ")


def test_another_connection_id_is_named_in_errors(conns, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_STAGE", json.dumps({"conn_type": "http", "extra": {"kind": "pipeline"}}))
    with pytest.raises(SourceError, match=r"^connection 'triggers_stage': extra.consumer is required"):
        TriggerSourceHook("triggers_stage").get_source()


def test_read_bounds_have_documented_defaults(conns) -> None:
    from include.triggerflow.sources import journal, pipeline

    conns(JOURNAL_URL)
    src = build()
    assert (src.max_page_bytes, src.request_deadline_s, src.timeout) == (
        journal.DEFAULT_MAX_PAGE_BYTES, journal.DEFAULT_REQUEST_DEADLINE_S, journal.DEFAULT_TIMEOUT_S,
    ) == (64 * 1024 * 1024, 60.0, 30.0)
    conns(None, kind="pipeline", consumer="c")
    src = build()
    got = (src.max_line_bytes, src.max_read_bytes, src.read_deadline_s, src.keepalive_wait_s, src.caught_up_pings)
    assert got == (
        pipeline.DEFAULT_MAX_LINE_BYTES, pipeline.DEFAULT_MAX_READ_BYTES, pipeline.DEFAULT_READ_DEADLINE_S,
        pipeline.DEFAULT_KEEPALIVE_WAIT_S, pipeline.DEFAULT_CAUGHT_UP_PINGS,
    ) == (4 * 1024 * 1024, 256 * 1024 * 1024, 45.0, 5.0, 2)


def test_message_cap_defaults_to_pipeline_limit_and_comes_from_the_extras(conns) -> None:
    from include.triggerflow.stages.land import MAX_MESSAGE_BYTES

    conns(JOURNAL_URL)
    hook = TriggerSourceHook()
    hook.get_source()
    assert hook.max_message_bytes == MAX_MESSAGE_BYTES == 1024 * 1024
    conns(None, kind="pipeline", consumer="c", max_message_bytes=5000)
    hook = TriggerSourceHook()
    hook.get_source()
    assert hook.max_message_bytes == 5000
    conns(JOURNAL_URL, max_message_bytes=0)
    with pytest.raises(SourceError, match=r"extra.max_message_bytes must be a positive integer, got 0"):
        TriggerSourceHook().get_source()


def test_read_bounds_come_from_the_extras(conns) -> None:
    conns(JOURNAL_URL, max_page_bytes=1000, request_deadline_s=2.5, timeout_s=3)
    src = build()
    assert (src.max_page_bytes, src.request_deadline_s, src.timeout) == (1000, 2.5, 3.0)
    conns(
        None, kind="pipeline", consumer="c", max_line_bytes=100, max_read_bytes=1000, read_deadline_s=9,
        keepalive_wait_s=0.5, caught_up_pings=1,
    )
    src = build()
    assert (src.max_line_bytes, src.max_read_bytes, src.read_deadline_s, src.keepalive_wait_s, src.caught_up_pings) == (
        100, 1000, 9.0, 0.5, 1,
    )


@pytest.mark.parametrize(
    ("kind", "extra", "message"),
    [
        ("journal", {"max_page_bytes": 0}, "extra.max_page_bytes must be a positive integer, got 0"),
        ("journal", {"request_deadline_s": "soon"}, "extra.request_deadline_s must be a positive number, got 'soon'"),
        ("pipeline", {"max_line_bytes": 1.5}, "extra.max_line_bytes must be a positive integer, got 1.5"),
        ("pipeline", {"caught_up_pings": 0}, "extra.caught_up_pings must be a positive integer, got 0"),
        ("pipeline", {"read_deadline_s": -1}, "extra.read_deadline_s must be a positive number, got -1"),
        ("pipeline", {"keepalive_wait_s": True}, "extra.keepalive_wait_s must be a positive number, got True"),
    ],
)
def test_unusable_read_bounds_name_the_extra(conns, kind: str, extra: dict[str, Any], message: str) -> None:
    if kind == "journal":
        conns(JOURNAL_URL, **extra)
    else:
        conns(None, kind="pipeline", consumer="c", **extra)
    with pytest.raises(SourceError, match=f"connection 'adobe_triggers': {message}".replace("(", r"\(").replace(".", r"\.")):
        build()
