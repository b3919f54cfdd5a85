"""Tests for include.triggerflow.hooks.ims against the real Adobe emulator process.

Token requests are counted on the emulator side (``/_emulator/stats``), so "cached" means the
IMS endpoint really was not called again."""

from __future__ import annotations

import json

import pytest

from include.triggerflow.hooks.ims import AdobeImsHook, ImsAuthError


def token_requests(emu) -> int:
    return emu.client.stats()["token_requests"]


def test_token_is_minted_once_and_shared_by_hook_instances(emu, adobe_conns) -> None:
    first = AdobeImsHook()
    token = first.get_token()
    assert isinstance(token, str) and len(token) > 20
    assert first.get_token() == token
    assert first.get_conn() == token
    second = AdobeImsHook()
    assert second.get_token() == token
    assert token_requests(emu) == 1
    assert (first.token_requests, second.token_requests) == (1, 0)


def test_minted_token_is_accepted_by_the_journal(emu, adobe_conns) -> None:
    token = AdobeImsHook().get_token()
    import requests

    resp = requests.get(emu.client.journal_url, headers=emu.client.journal_headers(token), timeout=10)
    assert resp.status_code == 204  # empty journal, but authorised


def test_force_refresh_mints_a_new_token_and_caches_it(emu, adobe_conns) -> None:
    hook = AdobeImsHook()
    old = hook.get_token()
    new = hook.get_token(force_refresh=True)
    assert new != old
    assert AdobeImsHook().get_token() == new
    assert token_requests(emu) == 2


def test_invalidate_drops_the_cached_token(emu, adobe_conns) -> None:
    hook = AdobeImsHook()
    old = hook.get_token()
    hook.invalidate()
    assert hook.get_token() != old
    assert token_requests(emu) == 2


def test_wrong_secret_names_client_id_and_secret(emu, adobe_conns) -> None:
    adobe_conns(client_secret="not-the-secret")
    with pytest.raises(ImsAuthError) as info:
        AdobeImsHook().get_token()
    message = str(info.value)
    assert "401 invalid_client" in message
    assert "client id (login)" in message and "client secret (password)" in message
    assert "'adobe_ims'" in message
    assert "not-the-secret" not in message
    assert token_requests(emu) == 1
    assert emu.client.stats()["tokens_issued"] == 0


def test_empty_org_id_explains_like_pipelined(emu, adobe_conns) -> None:
    adobe_conns(org_id="  ")
    with pytest.raises(ImsAuthError, match="the subject must be a valid organization or client") as info:
        _ = AdobeImsHook().org_id
    assert "extra.org_id is empty" in str(info.value)
    # checked before any request, not only when a source asks for the org id
    hook = AdobeImsHook()
    with pytest.raises(ImsAuthError, match=r"connection 'adobe_ims': extra.org_id is empty"):
        hook.get_token()
    assert token_requests(emu) == 0 and hook.token_requests == 0


def test_unknown_auth_type_is_refused_before_any_request(emu, adobe_conns, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({
        "conn_type": "http", "host": emu.base_url, "login": emu.client.client_id,
        "password": emu.client.client_secret, "extra": {"org_id": emu.client.org_id, "auth_type": "basic"},
    }))
    with pytest.raises(ImsAuthError, match=r"extra.auth_type 'basic' is not one of"):
        AdobeImsHook().get_token()
    assert token_requests(emu) == 0


def test_explicit_oauth_auth_type_is_the_default_mode(emu, adobe_conns, monkeypatch: pytest.MonkeyPatch) -> None:
    default_key = AdobeImsHook().cache_key
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({
        "conn_type": "http", "host": emu.base_url, "login": emu.client.client_id,
        "password": emu.client.client_secret,
        "extra": {"org_id": emu.client.org_id, "scopes": "openid,AdobeID", "auth_type": "oauth"},
    }))
    hook = AdobeImsHook()
    assert hook.cache_key == default_key
    assert hook.get_token()
    assert token_requests(emu) == 1


def test_ims_server_error_is_reported_with_its_status(emu, adobe_conns) -> None:
    emu.client.add_faults({"endpoint": "token", "kind": "status", "status": 503})
    hook = AdobeImsHook()
    with pytest.raises(ImsAuthError) as info:
        hook.get_token()
    message = str(info.value)
    assert "connection 'adobe_ims': IMS refused the token request (503 " in message
    assert "IMS may be unavailable; retry later" in message
    assert hook.get_token()  # the next attempt goes through and is not blocked by the failure
    assert token_requests(emu) == 2


def test_tokens_are_cached_per_scope(emu, adobe_conns, monkeypatch: pytest.MonkeyPatch) -> None:
    first = AdobeImsHook().get_token()
    monkeypatch.setenv("AIRFLOW_CONN_OTHER_IMS", json.dumps({
        "conn_type": "http", "host": emu.base_url, "login": emu.client.client_id,
        "password": emu.client.client_secret, "extra": {"org_id": emu.client.org_id, "scopes": "openid"},
    }))
    other = AdobeImsHook("other_ims").get_token()
    assert other != first
    assert AdobeImsHook("other_ims").get_token() == other
    assert token_requests(emu) == 2
