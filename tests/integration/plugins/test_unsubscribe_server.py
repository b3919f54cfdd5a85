"""plugins/unsubscribe.py against a REAL ``airflow standalone`` stack (devstack.airflow_stack,
e2e): anonymous requests to the API server, with the store on SQLite (or PostgreSQL when
TRIGGERFLOW_TEST_PG_URL is set). One stack serves every test of this module (it takes ~30-60 s to
start); each test uses its own customers. Moved from tests/plugins/test_unsubscribe_plugin.py
(they start processes)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import Engine

from include.triggerflow.unsubscribe import UnsubscribeLinks
from tests.plugins.conftest import add_profile, opted_out
from tests.plugins.test_unsubscribe_plugin import ONE_CLICK, SECRET, requests_for, tampered


@pytest.fixture(scope="module")
def e2e_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Engine]]:
    """One store for the module's stack: SQLite, or a fresh PostgreSQL database."""
    from include.triggerflow.store.engines import get_engine
    from include.triggerflow.store.migrations import create_schema
    from tests.conftest import empty_store

    with empty_store(tmp_path_factory.mktemp("unsub-store")) as url:
        engine = get_engine(url)
        create_schema(engine)
        yield url, engine


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, e2e_store: tuple[str, Engine]) -> Iterator[object]:
    """``airflow standalone`` with the project's plugins and connections triggers_db and
    triggerflow_unsubscribe (host = this stack's API server, as recipients would reach it)."""
    from devstack.airflow_stack import airflow_standalone, free_port

    port = free_port()
    store_url, _ = e2e_store
    env = {
        "AIRFLOW_CONN_TRIGGERS_DB": json.dumps({"conn_type": "sqlite", "extra": {"sqlalchemy_url": store_url}}),
        "AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE": json.dumps(
            {"conn_type": "generic", "host": f"http://127.0.0.1:{port}", "password": SECRET, "extra": {"max_age_days": 30}}
        ),
    }
    with airflow_standalone(tmp_path_factory.mktemp("unsub-airflow"), env_overrides=env, api_port=port) as running:
        yield running


@pytest.fixture
def e2e(stack, e2e_store: tuple[str, Engine]) -> tuple[object, Engine, UnsubscribeLinks, str]:
    """(stack, store engine, links signed like a worker, a fresh customer id in profiles)."""
    _, engine = e2e_store
    customer = f"E2E-{uuid.uuid4().hex[:8]}"
    add_profile(engine, customer)
    return stack, engine, UnsubscribeLinks(SECRET, stack.base_url), customer


@pytest.mark.e2e
def test_real_server_get_shows_the_form_and_unsubscribes_nobody(e2e) -> None:
    stack, engine, links, customer = e2e
    url = links.url_for(customer, "cart_abandonment")
    assert url.startswith(f"{stack.base_url}/triggerflow/unsubscribe/?token=v1.")
    page = requests.get(url, timeout=30, allow_redirects=False)  # anonymous: no cookie, no token
    assert page.status_code == 200, page.text[:500]
    assert '<form id="unsubscribe-form" method="post"' in page.text  # ours, not the UI's index.html
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page.text
    assert not opted_out(engine, customer) and requests_for(engine, customer) == []


@pytest.mark.e2e
def test_real_server_one_click_post_opts_out(e2e) -> None:
    _stack, engine, links, customer = e2e
    url = links.url_for(customer, "browse_abandonment")
    # as a mail client does it (RFC 8058 §3.2): no cookies, no authorization, the fixed body
    done = requests.post(url, data="List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30, allow_redirects=False)
    assert done.status_code == 200, done.text[:500]
    assert 'id="done"' in done.text
    assert opted_out(engine, customer)
    assert requests_for(engine, customer) == [("one-click", "browse_abandonment")]


@pytest.mark.e2e
def test_real_server_page_button_opts_out_with_method_page(e2e) -> None:
    _stack, engine, links, customer = e2e
    url = links.url_for(customer)
    with requests.Session() as browser:
        page = browser.get(url, timeout=30)
        action = re.search(r'<form id="unsubscribe-form" method="post" action="([^"]+)"', page.text).group(1).replace("&amp;", "&")
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]+)">', page.text))
        done = browser.post(requests.compat.urljoin(page.url, action), data=fields, timeout=30, allow_redirects=False)
    assert done.status_code == 200, done.text[:500]
    assert opted_out(engine, customer) and requests_for(engine, customer) == [("page", None)]


def wait_for_log(stack, *needles: str, timeout: float = 20) -> str:
    """The stack's log once it contains every needle (standalone relays its components' output
    with a delay)."""
    deadline = time.monotonic() + timeout
    while True:
        text = stack.log_path.read_text(errors="replace")
        if all(n in text for n in needles) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


@pytest.mark.e2e
def test_real_server_never_logs_a_token(e2e) -> None:
    """Airflow's access log writes each request's query string: the token's value must be ***."""
    stack, _engine, links, customer = e2e
    url = links.url_for(customer, "cart_abandonment")
    run = uuid.uuid4().hex
    ids = [f"{run}-get", f"{run}-post", f"{run}-bad"]
    assert requests.get(url, headers={"x-request-id": ids[0]}, timeout=30).status_code == 200
    assert requests.post(url, data=ONE_CLICK, headers={"x-request-id": ids[1]}, timeout=30).status_code == 200
    assert requests.post(tampered(url), data=ONE_CLICK, headers={"x-request-id": ids[2]}, timeout=30).status_code == 400
    log = wait_for_log(stack, *(f"request_id={i}" for i in ids))
    lines = [line for line in log.splitlines() if "request finished" in line and run in line]
    assert len(lines) == 3, log[-3000:]
    assert all("path=/triggerflow/unsubscribe/ query='token=%2A%2A%2A'" in line for line in lines), lines
    assert url.rsplit(".", 1)[1] not in log and tampered(url).rsplit(".", 1)[1] not in log and SECRET not in log
    assert f"customer {customer} opted out (one-click)" in log  # what is logged instead
    assert "refused a link (POST, signature)" in log


@pytest.mark.e2e
def test_real_server_refuses_tampered_and_missing_tokens(e2e) -> None:
    stack, engine, links, customer = e2e
    url = links.url_for(customer)
    foreign = UnsubscribeLinks("not-the-servers-secret-0123456789", stack.base_url).url_for(customer)
    for bad in (tampered(url), foreign, f"{stack.base_url}/triggerflow/unsubscribe/", f"{stack.base_url}/triggerflow/unsubscribe/?token=v1.x.y"):
        for response in (
            requests.get(bad, timeout=30, allow_redirects=False),
            requests.post(bad, data=ONE_CLICK, timeout=30, allow_redirects=False),
        ):
            assert response.status_code == 400, (bad, response.status_code, response.text[:300])
            assert 'id="invalid"' in response.text
    assert not opted_out(engine, customer) and requests_for(engine, customer) == []
    log = stack.log_path.read_text(errors="replace")
    assert SECRET not in log and "Traceback" not in log
