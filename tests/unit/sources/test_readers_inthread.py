"""The Adobe readers through real HTTP, fast: the emulator's server runs in a thread of the test
process (devstack.adobe_emulator.AdobeEmulator.start()), not as a subprocess. These pin the wiring
of the one retry rule (adobe/http.py) in each reader: a 401 mints one new token, Retry-After sets
the wait (recorded, not slept), and what the IMS hook mints is shared by hook instances. The full
behaviour against the emulator process is in tests/integration/hooks|sources."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.adobe_emulator import AdobeEmulator, EmulatorSettings
from devstack.emulator_client import EmulatorClient
from devstack.messages import CART_ABANDONMENT_TRIGGER_ID, trigger_message
from include.triggerflow.hooks.ims import AdobeImsHook, clear_token_cache
from include.triggerflow.hooks.triggers import TriggerSourceHook
from include.triggerflow.sources.base import SourceError
from include.triggerflow.sources.journal import JournalSource
from include.triggerflow.sources.pipeline import PipelineSource
from include.triggerflow.sources.pipeline_endpoint import EndpointOrigin


@pytest.fixture(scope="module")
def threaded_adobe() -> Iterator[AdobeEmulator]:
    settings = EmulatorSettings(ping_interval=0.05, stream_max_seconds=2, read_ahead=False)
    with AdobeEmulator(settings) as emulator:
        yield emulator


@pytest.fixture
def adobe(threaded_adobe: AdobeEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorClient]:
    """The in-thread emulator, reset, with connections adobe_ims and adobe_triggers (journal) on it."""
    client = EmulatorClient(threaded_adobe.base_url)
    client.reset()
    clear_token_cache()
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({
        "conn_type": "http", "host": threaded_adobe.base_url, "login": client.client_id,
        "password": client.client_secret, "extra": {"org_id": client.org_id, "scopes": "openid,AdobeID"},
    }))
    triggers(monkeypatch, client.journal_url, kind="journal", page_limit=2)
    yield client
    clear_token_cache()


def triggers(monkeypatch: pytest.MonkeyPatch, host: str, **extra: Any) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_TRIGGERS", json.dumps({
        "conn_type": "http", "host": host, "extra": {"ims_conn_id": "adobe_ims", **extra},
    }))


def publish(client: EmulatorClient, count: int) -> None:
    receipt = client.publish([trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID) for _ in range(count)])
    assert receipt["accepted"] == count


def token_requests(client: EmulatorClient) -> int:
    return int(client.stats()["token_requests"])


def test_ims_token_is_minted_once_and_shared(adobe: EmulatorClient) -> None:
    before = token_requests(adobe)
    first, second = AdobeImsHook(), AdobeImsHook()
    assert first.get_token() == second.get_token()
    assert token_requests(adobe) == before + 1
    assert (first.token_requests, second.token_requests) == (1, 0)


def test_journal_401_mints_exactly_one_new_token_and_the_read_continues(adobe: EmulatorClient) -> None:
    publish(adobe, 4)
    source = TriggerSourceHook().get_source()
    assert isinstance(source, JournalSource)
    reader = source.read({}, 100)
    first = next(reader)
    minted = token_requests(adobe)
    assert adobe.expire_tokens() >= 1
    rest = list(reader)
    assert sum(len(page.messages) for page in [first, *rest]) == 4
    assert token_requests(adobe) == minted + 1
    assert source.retry.failures == 0 and source.retry.waits == []  # a 401 is not a failed try


def test_journal_waits_what_retry_after_says(adobe: EmulatorClient) -> None:
    publish(adobe, 1)
    adobe.add_faults([{"endpoint": "journal", "kind": "status", "status": 503, "retry_after": 7}])
    waits: list[float] = []
    source = TriggerSourceHook().get_source()
    assert isinstance(source, JournalSource)
    source.retry.sleep = waits.append
    assert sum(len(page.messages) for page in source.read({}, 10)) == 1
    assert waits == [7.0]


def test_journal_gives_up_after_max_tries(adobe: EmulatorClient) -> None:
    adobe.add_faults([{"endpoint": "journal", "kind": "status", "status": 502, "times": 5}])
    source = TriggerSourceHook().get_source()
    assert isinstance(source, JournalSource)
    source.retry.sleep = lambda seconds: None
    source.max_tries = 3
    with pytest.raises(SourceError, match="journal answered HTTP 502"):
        list(source.read({}, 10))
    assert source.retry.waits == [0.5, 1.0]


def pipeline_source(adobe: EmulatorClient, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> PipelineSource:
    triggers(
        monkeypatch, adobe.base_url, kind="pipeline", consumer="inthread-{env}", environment="test",
        read_timeout_s=2, keepalive_wait_s=0.5, **extra,
    )
    source = TriggerSourceHook().get_source()
    assert isinstance(source, PipelineSource)
    return source


def test_pipeline_401_mints_exactly_one_new_token(adobe: EmulatorClient, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(adobe, 2)
    source = pipeline_source(adobe, monkeypatch)
    AdobeImsHook().get_token()  # the source's token, minted before it expires
    minted = token_requests(adobe)
    adobe.expire_tokens()
    pages = list(source.read({}, 10))
    assert sum(len(page.messages) for page in pages) == 2
    assert token_requests(adobe) == minted + 1
    assert source.stats.requests == 2  # the refused request and the one with the new token


def test_pipeline_waits_what_retry_after_says(adobe: EmulatorClient, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(adobe, 1)
    adobe.add_faults([
        {"endpoint": "consume", "kind": "status", "status": 429, "retry_after": 2},
        {"endpoint": "consume", "kind": "status", "status": 503},
    ])
    waits: list[float] = []
    source = pipeline_source(adobe, monkeypatch)
    source.sleep = waits.append
    assert sum(len(page.messages) for page in source.read({}, 10)) == 1
    assert waits == [2.0, 1.0]  # Retry-After, then the back-off of a second failure
    assert source.stats.requests == 3


def test_pipeline_discovery_goes_through_the_same_rule(adobe: EmulatorClient, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(adobe, 1)
    adobe.add_faults([{"endpoint": "discovery", "kind": "status", "status": 503, "retry_after": 0, "times": 2}])
    source = pipeline_source(adobe, monkeypatch)
    source.forced_endpoint = None
    source.endpoint_origin = EndpointOrigin.UNRESOLVED
    source.discovery_url = adobe.base_url
    source.sleep = lambda seconds: None
    assert sum(len(page.messages) for page in source.read({}, 10)) == 1
    assert source.endpoint_origin == "discovered"
    assert adobe.stats()["discovery_requests"] == 3
