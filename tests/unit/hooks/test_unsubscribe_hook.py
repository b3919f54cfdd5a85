"""Tests for include.triggerflow.hooks.unsubscribe: connection ``triggerflow_unsubscribe`` ->
working signed links, from AIRFLOW_CONN_* variables as for any hook outside a task, and from an
``airflow.models.connection.Connection`` as the API server reads it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from include.triggerflow.hooks.unsubscribe import (
    DEFAULT_CONN_ID,
    UnsubscribeConfigError,
    UnsubscribeHook,
    links_from_connection,
)
from include.triggerflow.unsubscribe import InvalidUnsubscribeToken, UnsubscribeLinks

SECRET = "hook-test-secret-0123456789abcdef"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str = DEFAULT_CONN_ID, **conn: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def _token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def test_connection_from_env_gives_working_links(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, conn_type="generic", host="http://localhost:8080", password=SECRET)
    hook = UnsubscribeHook()
    links = hook.get_links()
    assert isinstance(links, UnsubscribeLinks) and hook.get_links() is links  # key derived once per hook
    url = links.url_for("C0001", "cart_abandonment")
    assert url.startswith("http://localhost:8080/triggerflow/unsubscribe/?token=v1.")
    assert links.verify(_token(url)).customer_id == "C0001"
    # the same secret anywhere else (the API server) verifies it; another secret does not
    assert UnsubscribeLinks(SECRET, "http://other").verify(_token(url)).route == "cart_abandonment"
    with pytest.raises(InvalidUnsubscribeToken):
        UnsubscribeLinks(SECRET + "x", "http://localhost:8080").verify(_token(url))
    assert hook.mailto is None and links.max_age is None


def test_extras_max_age_and_mailto(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(
        monkeypatch, conn_type="http", host="https://airflow.example.com/", password=SECRET,
        extra={"max_age_days": 60, "mailto": "mailto:unsubscribe@example.com"},
    )
    hook = UnsubscribeHook()
    links = hook.get_links()
    assert links.max_age == timedelta(days=60) and hook.mailto == "unsubscribe@example.com"
    token = links.sign("C0001", issued_at=T0)
    assert links.verify(token, now=T0 + timedelta(days=60)).customer_id == "C0001"
    with pytest.raises(InvalidUnsubscribeToken, match="expired"):
        links.verify(token, now=T0 + timedelta(days=61))


def test_another_conn_id_and_http_style_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, "unsub_eu", conn_type="http", host="airflow.eu.example.com", schema="https", port=8443, password=SECRET)
    assert UnsubscribeHook("unsub_eu").get_links().url_for("C1").startswith("https://airflow.eu.example.com:8443/triggerflow/unsubscribe/?token=")


@pytest.mark.parametrize(("host", "ok"), [
    ("http://localhost:8080", True), ("http://127.0.0.1:8080", True), ("http://[::1]:8080", True),
    ("https://airflow.example.com", True), ("http://airflow.example.com", False), ("http://10.0.0.5:8080", False),
])
def test_plain_http_only_on_loopback(monkeypatch: pytest.MonkeyPatch, host: str, ok: bool) -> None:
    """RFC 8058: the one-click URL must be HTTPS; the local demo and tests use http on loopback."""
    _set_conn(monkeypatch, conn_type="generic", host=host, password=SECRET)
    if ok:
        assert UnsubscribeHook().get_links().url_for("C1").startswith(host)
    else:
        with pytest.raises(UnsubscribeConfigError, match=r"must use https:// \(RFC 8058"):
            UnsubscribeHook().get_links()
        # the API server only verifies: the same connection still checks signatures there
        from airflow.models.connection import Connection

        assert links_from_connection(Connection.get_connection_from_secrets(DEFAULT_CONN_ID)).base_url == host


def test_missing_password_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, conn_type="generic", host="http://localhost:8080")
    with pytest.raises(UnsubscribeConfigError, match=r"^triggerflow_unsubscribe: the signing secret is missing: set the connection's password"):
        UnsubscribeHook().get_links()


def test_missing_host_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, conn_type="generic", password=SECRET)
    with pytest.raises(UnsubscribeConfigError, match="host is missing: set the public base URL of the Airflow API server"):
        UnsubscribeHook().get_links()


def test_short_secret_and_relative_host_are_refused_without_echoing_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, conn_type="generic", host="http://localhost:8080", password="Zq9-short")
    with pytest.raises(UnsubscribeConfigError, match="signing secret is too short") as info:
        UnsubscribeHook().get_links()
    assert "Zq9-short" not in str(info.value)
    _set_conn(monkeypatch, conn_type="generic", host="localhost:8080", password=SECRET)
    with pytest.raises(UnsubscribeConfigError, match="must be an absolute http:// or https:// URL") as info:
        UnsubscribeHook().get_links()
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("value", [0, -1, "soon", True, float("nan")])
def test_bad_max_age_is_refused(monkeypatch: pytest.MonkeyPatch, value: object) -> None:
    _set_conn(monkeypatch, conn_type="generic", host="http://localhost:8080", password=SECRET, extra={"max_age_days": value})
    with pytest.raises(UnsubscribeConfigError, match=r"extra\.max_age_days must be a positive number of days"):
        UnsubscribeHook().get_links()


@pytest.mark.parametrize("value", ["nobody", "a b@example.com", "x@example.com>, <http://evil"])
def test_bad_mailto_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    _set_conn(monkeypatch, conn_type="generic", host="http://localhost:8080", password=SECRET, extra={"mailto": value})
    with pytest.raises(UnsubscribeConfigError, match=r"extra\.mailto must be an email address"):
        _ = UnsubscribeHook().mailto


def test_missing_connection_is_airflows_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.exceptions import AirflowNotFoundException

    monkeypatch.delenv("AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE", raising=False)
    with pytest.raises(AirflowNotFoundException):
        UnsubscribeHook().get_links()


def test_links_from_a_core_connection_object(monkeypatch: pytest.MonkeyPatch) -> None:
    """How the API server plugin reads it: airflow.models.connection.Connection."""
    from airflow.models.connection import Connection

    _set_conn(monkeypatch, conn_type="generic", host="http://127.0.0.1:8080", password=SECRET, extra={"max_age_days": 7})
    conn = Connection.get_connection_from_secrets(DEFAULT_CONN_ID)
    links = links_from_connection(conn)
    assert links.max_age == timedelta(days=7)
    worker_url = UnsubscribeHook().get_links().url_for("C0009", "browse_abandonment")
    assert links.verify(_token(worker_url)).customer_id == "C0009"


def test_the_secret_is_registered_with_the_log_masker(monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow.sdk.log as sdk_log

    seen: list[str] = []
    monkeypatch.setattr(sdk_log, "mask_secret", lambda value, *a, **k: seen.append(value))
    _set_conn(monkeypatch, conn_type="generic", host="http://localhost:8080", password=SECRET)
    UnsubscribeHook().get_links()
    assert SECRET in seen
    assert SECRET not in repr(UnsubscribeHook().get_links())
