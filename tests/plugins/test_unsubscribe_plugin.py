"""Tests for plugins/unsubscribe.py: the public one-click unsubscribe endpoint (RFC 8058).

In process with FastAPI's TestClient (every branch: pages, refusals, 503s, what is logged). The
tests against a REAL ``airflow standalone`` stack are in
tests/integration/plugins/test_unsubscribe_server.py.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import Engine, select

from include.triggerflow.store.schema import unsubscribe
from include.triggerflow.unsubscribe import URL_PREFIX, UnsubscribeLinks
from tests.plugins.conftest import add_profile, load_plugin, opted_out

with warnings.catch_warnings():  # starlette's note about httpx, raised by this import only
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

SECRET = "plugin-test-secret-" + secrets.token_hex(16)
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture(scope="module")
def plugin() -> ModuleType:
    return load_plugin("unsubscribe")


@pytest.fixture(autouse=True)
def fresh_caches(plugin: ModuleType) -> Iterator[None]:
    """Each test sets its own connections: the plugin's cached signer and engine start empty."""
    plugin.reset_caches()
    yield
    plugin.reset_caches()


@pytest.fixture
def client(plugin: ModuleType) -> Iterator[TestClient]:
    with TestClient(plugin.app, base_url="http://testserver") as test_client:
        yield test_client


def assert_generic_503(response, *, busy: bool = False) -> None:
    """The public 503 page: "try again", Retry-After, and nothing about connections,
    configuration or the exception."""
    assert response.status_code == 503 and 'id="unavailable"' in response.text
    assert response.headers["retry-after"] == ("5" if busy else "60")
    assert ("try again in a moment" if busy else "please try again later") in response.text
    for leak in ("triggers_db", "triggerflow_unsubscribe", "connection", "Connection", "Error", "sqlite", "postgres", "table", "Traceback"):
        assert leak not in response.text, leak


@pytest.fixture
def links(monkeypatch: pytest.MonkeyPatch) -> UnsubscribeLinks:
    monkeypatch.setenv(
        "AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE",
        json.dumps({"conn_type": "generic", "host": "http://testserver", "password": SECRET}),
    )
    return UnsubscribeLinks(SECRET, "http://testserver")


def requests_for(engine: Engine, customer_id: str) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(unsubscribe.c.method, unsubscribe.c.route)
            .where(unsubscribe.c.customer_id == customer_id)
            .order_by(unsubscribe.c.unsubscribe_id)
        ).all()
    return [tuple(r) for r in rows]


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path.removeprefix(URL_PREFIX)}?{parts.query}"


def tampered(url: str) -> str:
    """The URL with one character of the token's signature changed."""
    head, signature = url.rsplit(".", 1)
    return f"{head}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"


# -- the plugin object -------------------------------------------------------------------------------
def test_plugin_mounts_a_public_app_at_an_unreserved_prefix(plugin: ModuleType) -> None:
    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES
    from airflow.plugins_manager import AirflowPlugin

    cls = plugin.UnsubscribePlugin
    assert issubclass(cls, AirflowPlugin) and cls.name == "triggerflow_unsubscribe"
    [app] = cls.fastapi_apps
    assert (app["app"], app["url_prefix"]) == (plugin.app, URL_PREFIX)  # where the links point
    assert not any(app["url_prefix"].startswith(prefix) for prefix in RESERVED_URL_PREFIXES)
    assert {(route.path, tuple(sorted(route.methods))) for route in plugin.app.routes} == {("/", ("GET",)), ("/", ("POST",))}


def test_get_shows_a_form_and_records_nothing(client: TestClient, links: UnsubscribeLinks, store: Engine) -> None:
    add_profile(store, "C0001")
    url = links.url_for("C0001", "cart_abandonment")
    page = client.get(path_of(url))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    token = parse_qs(urlsplit(url).query)["token"][0]
    form = re.search(r'<form id="unsubscribe-form" method="post" action="([^"]+)"', page.text)
    assert form and form.group(1) == f"?token={token}"
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page.text
    assert '<input type="hidden" name="via" value="page">' in page.text
    assert "<script" not in page.text
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert not opted_out(store, "C0001") and requests_for(store, "C0001") == []


def test_one_click_post_records_the_opt_out(client: TestClient, links: UnsubscribeLinks, store: Engine) -> None:
    add_profile(store, "C0001")
    add_profile(store, "C0002")
    url = links.url_for("C0001", "cart_abandonment")
    done = client.post(path_of(url), data=ONE_CLICK)
    assert done.status_code == 200, done.text
    assert 'id="done"' in done.text and "you will not receive these emails any more" in done.text
    assert opted_out(store, "C0001") and not opted_out(store, "C0002")
    assert requests_for(store, "C0001") == [("one-click", "cart_abandonment")]
    # a second click is fine, and adds nothing (one row per customer and link)
    assert client.post(path_of(url), data=ONE_CLICK).status_code == 200
    assert opted_out(store, "C0001") and requests_for(store, "C0001") == [("one-click", "cart_abandonment")]


def test_the_pages_button_posts_with_method_page(client: TestClient, links: UnsubscribeLinks, store: Engine) -> None:
    add_profile(store, "C0003")
    page = client.get(path_of(links.url_for("C0003")))
    action = re.search(r'action="([^"]+)"', page.text).group(1).replace("&amp;", "&")
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]+)">', page.text))
    done = client.post(f"/{action}", data=fields)  # the browser resolves ?token=... against the page URL
    assert done.status_code == 200 and 'id="done"' in done.text
    assert opted_out(store, "C0003") and requests_for(store, "C0003") == [("page", None)]


def test_multipart_one_click_is_accepted(client: TestClient, links: UnsubscribeLinks, store: Engine) -> None:
    """RFC 8058 §3.1: the POST may be multipart/form-data."""
    add_profile(store, "C0004")
    done = client.post(path_of(links.url_for("C0004")), files={"List-Unsubscribe": (None, "One-Click")})
    assert done.status_code == 200, done.text
    assert opted_out(store, "C0004") and requests_for(store, "C0004") == [("one-click", None)]


@pytest.mark.parametrize("body", [{}, {"List-Unsubscribe": "Yes"}, {"unsubscribe": "One-Click"}])
def test_a_post_without_the_one_click_field_is_refused(client: TestClient, links: UnsubscribeLinks, store: Engine, body: dict) -> None:
    add_profile(store, "C0005")
    refused = client.post(path_of(links.url_for("C0005")), data=body)
    assert refused.status_code == 400 and "List-Unsubscribe=One-Click" in refused.text
    assert not opted_out(store, "C0005") and requests_for(store, "C0005") == []


def test_bad_tokens_are_refused_and_nothing_is_recorded(client: TestClient, links: UnsubscribeLinks, store: Engine, caplog: pytest.LogCaptureFixture) -> None:
    add_profile(store, "C0006")
    url = links.url_for("C0006")
    other = UnsubscribeLinks("another-secret-0123456789abcdef", "http://testserver").url_for("C0006")
    caplog.set_level(logging.DEBUG)
    for bad in (tampered(url), other, url[:-5], f"{URL_PREFIX}/?token=garbage", f"{URL_PREFIX}/", f"{URL_PREFIX}/?token="):
        for response in (client.get(path_of(bad)), client.post(path_of(bad), data=ONE_CLICK)):
            assert response.status_code == 400, (bad, response.text)
            assert 'id="invalid"' in response.text and "<form" not in response.text
            assert "Invalid unsubscribe link" in response.text
    assert not opted_out(store, "C0006") and requests_for(store, "C0006") == []
    assert "incomplete" in client.get(f"{URL_PREFIX}/".removeprefix(URL_PREFIX)).text
    # logged: the reason, never a signature nor the secret
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused a link (POST, signature)" in logs and "refused a link (GET, missing)" in logs
    for value in (SECRET, url.rsplit(".", 1)[1], tampered(url).rsplit(".", 1)[1]):
        assert value not in logs


def test_expired_link_says_so(client: TestClient, store: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE",
        json.dumps({"conn_type": "generic", "host": "http://testserver", "password": SECRET, "extra": {"max_age_days": 1}}),
    )
    add_profile(store, "C0007")
    old = UnsubscribeLinks(SECRET, "http://testserver").url_for("C0007", issued_at=datetime(2020, 1, 1, tzinfo=UTC))
    response = client.post(path_of(old), data=ONE_CLICK)
    assert response.status_code == 400 and "has expired" in response.text
    assert not opted_out(store, "C0007")


def test_unknown_customer_gets_the_confirmation(client: TestClient, links: UnsubscribeLinks, store: Engine) -> None:
    done = client.post(path_of(links.url_for("NOT-IN-PROFILES")), data=ONE_CLICK)
    assert done.status_code == 200 and 'id="done"' in done.text
    assert requests_for(store, "NOT-IN-PROFILES") == [("one-click", None)]


def test_the_page_escapes_what_it_shows(plugin: ModuleType) -> None:
    page = plugin.render("<b>t</b>", "<script>alert(1)</script>", status=200, form_token='x"><script>')
    assert page.status_code == 200
    body = page.body.decode()
    assert "<script>" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert 'action="?token=x&quot;&gt;&lt;script&gt;"' in body and "&lt;b&gt;t&lt;/b&gt;" in body


# -- unavailable -------------------------------------------------------------------------------------
def test_missing_links_connection_is_a_generic_503_with_the_detail_in_the_log(
    client: TestClient, links: UnsubscribeLinks, store: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = links.url_for("C0008")
    monkeypatch.delenv("AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE")
    caplog.set_level(logging.DEBUG)
    for response in (client.get(path_of(url)), client.post(path_of(url), data=ONE_CLICK)):
        assert_generic_503(response)
    assert "Airflow connection 'triggerflow_unsubscribe' is not defined" in caplog.text


def test_links_connection_without_secret_is_503(
    client: TestClient, links: UnsubscribeLinks, store: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = links.url_for("C0008")
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE", json.dumps({"conn_type": "generic", "host": "http://testserver"}))
    caplog.set_level(logging.DEBUG)
    assert_generic_503(client.get(path_of(url)))
    assert "the signing secret is missing" in caplog.text


def test_missing_store_connection_is_503_and_nothing_is_recorded(
    client: TestClient, links: UnsubscribeLinks, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_TRIGGERS_DB", raising=False)
    caplog.set_level(logging.DEBUG)
    url = links.url_for("C0009")
    assert client.get(path_of(url)).status_code == 200  # the page needs no store
    assert_generic_503(client.post(path_of(url), data=ONE_CLICK))
    assert "Airflow connection 'triggers_db' is not defined" in caplog.text


def test_store_without_tables_is_503_without_a_traceback(
    client: TestClient, links: UnsubscribeLinks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_DB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "empty.db")}))
    caplog.set_level(logging.DEBUG)
    url = links.url_for("C0010")
    response = client.post(path_of(url), data=ONE_CLICK)
    assert_generic_503(response)
    assert "no such table" not in response.text
    assert "could not record an opt-out: OperationalError: no such table" in caplog.text
    assert url.rsplit(".", 1)[1] not in caplog.text and "Traceback" not in caplog.text
