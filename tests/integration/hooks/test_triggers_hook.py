"""Tests for include.triggerflow.hooks.triggers: connection ``adobe_triggers`` -> a trigger source.

Connections come from AIRFLOW_CONN_* variables (JSON), as for any Airflow hook outside a task.
Building a source makes no network call; the token provider is checked against the real
emulator (fixtures ``emu``/``adobe_conns`` from tests/fixtures.py)."""

from __future__ import annotations

import json

from include.triggerflow.hooks.triggers import TriggerSourceHook

ORG = "C0FFEE0123456789ABCDEF01@AdobeOrg"
JOURNAL_URL = f"https://events.adobe.io/events/organizations/{ORG}/integrations/int-1/reg-1"


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
