"""Tests for include.triggerflow.hooks.triggers: connection ``adobe_triggers`` -> a trigger source.

Connections come from AIRFLOW_CONN_* variables (JSON), as for any Airflow hook outside a task.
Building a source makes no network call; the token provider is checked against the real
emulator (fixtures ``emu``/``adobe_conns`` from tests/fixtures.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from include.triggerflow.hooks.triggers import TriggerSourceHook

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


def test_pipeline_token_provider_mints_through_the_ims_connection(emu, adobe_conns, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_TRIGGERS", json.dumps({
        "conn_type": "http", "host": emu.base_url, "extra": {"kind": "pipeline", "consumer": "c-{env}"},
    }))
    hook = TriggerSourceHook()
    src = hook.get_source()
    assert hook.ims_hook is not None and hook.ims_hook.adobe_ims_conn_id == "adobe_ims"
    first = src._token(False)
    assert src._token(False) == first  # cached
    assert emu.client.stats()["tokens_issued"] == 1
    fresh = src._token(True)
    assert fresh != first and emu.client.stats()["tokens_issued"] == 2
