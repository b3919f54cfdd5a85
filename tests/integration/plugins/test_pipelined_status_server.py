"""plugins/pipelined_status.py on a real ``airflow api-server`` process (e2e): authentication
with real tokens, the nav view, the public mode's cached minimal document. Moved from
tests/plugins/test_pipelined_status.py (they start processes)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from sqlalchemy import insert

from tests.plugins.test_pipelined_status import (
    FIELDS,
    PRIVATE_TEXTS,
    PUBLIC_SHAPE,
    SECRET_SOURCE,
    fill_store,
    fill_with_secrets,
)

PROJECT_ROOT = Path(__file__).resolve().parents[3]


# -- a real API server -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def api_server(airflow_db: Path, store_url: str, tmp_path: Path, **extra_env: str) -> Iterator[str]:
    """A real ``airflow api-server`` process (SimpleAuthManager, user monitor/monitor-pw) on a free
    port, with connection triggers_db -> the test's store; yields its base URL."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({"monitor": "monitor-pw"}))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_db),
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "monitor:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW_CONN_TRIGGERS_DB": json.dumps({"conn_type": "sqlite", "extra": {"sqlalchemy_url": store_url}}),
    }
    env.pop("TRIGGERFLOW_STATUS_PUBLIC", None)
    env.update(extra_env)
    log_path = tmp_path / "api-server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "airflow", "api-server", "-H", "127.0.0.1", "-p", str(port), "-w", "1"],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, f"api-server exited:\n{log_path.read_text()[-3000:]}"
            try:
                if requests.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or slow to answer on a loaded machine
                pass
            assert time.monotonic() < deadline, f"api-server not up after 90 s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        yield base
        assert "Traceback" not in log_path.read_text()
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=5)


@pytest.mark.e2e
def test_real_api_server_protects_and_serves_the_status(airflow_db: Path, store_url: str, store_engine, tmp_path: Path) -> None:
    fill_store(store_engine)
    with api_server(airflow_db, store_url, tmp_path) as base:
        anonymous = requests.get(f"{base}/pipelined/status", timeout=30)
        assert anonymous.status_code == 401, anonymous.text
        assert requests.get(f"{base}/pipelined/", timeout=30).status_code == 401

        login = requests.post(f"{base}/auth/token", json={"username": "monitor", "password": "monitor-pw"}, timeout=30)
        assert login.status_code == 201, login.text
        token = login.json()["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}

        response = requests.get(f"{base}/pipelined/status", headers=bearer, timeout=30)
        assert response.status_code == 200, response.text
        doc = response.json()
        assert list(doc) == FIELDS
        assert doc["source"] == "journal:/events/organizations/O/integrations/I/reg-1"
        assert (doc["stats"]["bytes-read"], doc["stats"]["pointer-flushes"], doc["pointer"]["current-offsets"]) == (2048, 3, "0:pos-9")
        assert len(doc["messages-per-hour"]) == 120
        assert requests.get(f"{base}/pipelined/status", params={"source": "journal:/x"}, headers=bearer, timeout=30).status_code == 404

        page = requests.get(f"{base}/pipelined/", cookies={"_token": token}, timeout=30)  # as the UI iframe
        assert page.status_code == 200 and "<svg" in page.text
        assert requests.get(f"{base}/pipelined/status", headers={"Authorization": "Bearer x.y.z"}, timeout=30).status_code == 403

        plugins = requests.get(f"{base}/api/v2/plugins", headers=bearer, timeout=30)
        assert plugins.status_code == 200, plugins.text
        [ours] = [p for p in plugins.json()["plugins"] if p["name"] == "pipelined_status"]
        assert [(a["url_prefix"], a["name"]) for a in ours["fastapi_apps"]] == [("/pipelined", "pipelined status")]
        [view] = ours["external_views"]
        assert (view["name"], view["href"], view["destination"], view["url_route"]) == ("Triggers status", "/pipelined/", "nav", "pipelined")


@pytest.mark.e2e
def test_real_api_server_public_mode_serves_the_minimal_cached_document(
    airflow_db: Path, store_url: str, store_engine, tmp_path: Path
) -> None:
    """TRIGGERFLOW_STATUS_PUBLIC=true on a real API server: anonymous callers get counters and
    ages only, whatever they pass; the document is the cached one within the TTL."""
    fill_with_secrets(store_engine)
    with api_server(airflow_db, store_url, tmp_path, TRIGGERFLOW_STATUS_PUBLIC="true", TRIGGERFLOW_STATUS_CACHE_SECONDS="300") as base:
        first = requests.get(f"{base}/pipelined/status", timeout=30)
        assert first.status_code == 200, first.text
        doc = first.json()
        assert list(doc) == list(PUBLIC_SHAPE)
        assert doc["stats"]["trigger-received"] == 3
        assert [text for text in PRIVATE_TEXTS if text in first.text] == []
        # more events land meanwhile: within the TTL the same document is served, parameters ignored
        from include.triggerflow.stats import refresh_batch_stats
        from include.triggerflow.store.schema import event

        with store_engine.begin() as conn:
            conn.execute(insert(event).values(batch_id="b1", source=SECRET_SOURCE, src_partition=0, src_position="p9",
                                              payload="{}", received_at=datetime.now(UTC), status="landed"))
        refresh_batch_stats(store_engine, "b1")
        for params in ({}, {"source": "journal:/other"}, {"consumer": "x"}):
            again = requests.get(f"{base}/pipelined/status", params=params, timeout=30)
            assert again.json() == doc
        assert again.headers["cache-control"] == "max-age=300"
        page = requests.get(f"{base}/pipelined/", timeout=30)
        assert page.status_code == 200 and "REG-SECRET-3" not in page.text
