"""Tests for include.triggerflow.hooks.ims that need no server: the connection's fields, the token
record and its reuse margin. Minting against the emulator process is in
tests/integration/hooks/test_ims.py; the token flow against an in-thread IMS in test_ims_flow.py."""

from __future__ import annotations

import json
import time

import pytest

from include.triggerflow.adobe.ims_token import EXPIRY_MARGIN_S
from include.triggerflow.hooks.ims import AdobeImsHook, ImsAuthError, ImsToken


def test_missing_password_and_host_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps(
        {"conn_type": "http", "host": "http://127.0.0.1:9", "login": "cid", "extra": {"org_id": "O@AdobeOrg"}}
    ))
    with pytest.raises(ImsAuthError, match="has no password \\(the client secret\\)"):
        AdobeImsHook().get_token()
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({"conn_type": "http", "login": "cid", "password": "x"}))
    with pytest.raises(ImsAuthError, match="has no host \\(the IMS base URL\\)"):
        AdobeImsHook().get_token()


def test_unreachable_ims_is_an_auth_error_naming_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({
        "conn_type": "http", "host": f"http://127.0.0.1:{port}", "login": "cid", "password": "secret-value",
        "extra": {"org_id": "O@AdobeOrg"},
    }))
    with pytest.raises(ImsAuthError, match=f"IMS token request to http://127.0.0.1:{port}/ims/token/v3 failed") as info:
        AdobeImsHook(timeout=2).get_token()
    assert "failed: ConnectionError" in str(info.value)
    assert "secret-value" not in str(info.value)


def test_host_without_scheme_gets_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps(
        {"conn_type": "http", "host": "ims-na1.adobelogin.com", "schema": "https", "login": "cid", "password": "x"}
    ))
    assert AdobeImsHook().base_url == "https://ims-na1.adobelogin.com"


def test_token_repr_never_shows_the_token() -> None:
    token = ImsToken(access_token="eyJhbGciOiJSUzI1NiJ9.very-secret-token", expires_at=1_900_000_000.0)
    assert "very-secret-token" not in repr(token)
    assert "eyJ" not in repr(token)
    assert repr(token) == "ImsToken(expires_at=1900000000)"


def test_token_of_unknown_lifetime_usable_until_the_full_margin() -> None:
    now = time.time()
    token = ImsToken(access_token="t", expires_at=now + EXPIRY_MARGIN_S + 60)
    assert token.lifetime_s is None
    assert token.usable(now)
    assert not token.usable(now + 61)


def test_token_usable_until_a_margin_scaled_to_its_lifetime() -> None:
    # 10% of a 600 s token (60 s) is less than the 300 s cap: usable until 540 s
    token = ImsToken(access_token="t", expires_at=1_000_600.0, minted_at=1_000_000.0)
    assert token.usable(1_000_539.0)
    assert not token.usable(1_000_541.0)
    assert token.usable(0.0)  # "now" of 0 is a time, not "use the clock"
