"""The Triggers console (plugins/pipelined_status.py, include/triggerflow/console) on a real
``airflow api-server`` process: the views mounted inside Airflow's app behind its real tokens, and
the reprocess action calling the server's own REST API as the calling user, so Airflow's
authorization applies (a viewer is refused by Airflow itself). The admin's successful reprocess in
a real browser is tests/e2e/test_triggers_page_browser.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.fixtures import StoreKit
from tests.integration.plugins.test_pipelined_status_server import api_server
from tests.plugins.html_tree import by_id, inputs, parse, rows, text


@pytest.mark.e2e
def test_console_on_a_real_api_server(airflow_db: Path, store_url: str, store_engine, tmp_path: Path) -> None:
    kit = StoreKit(store_engine)
    kit.add_batch("b1")
    kit.add_event("b1", '{"bad": "<script>x</script>"}', status="quarantined")
    with api_server(airflow_db, store_url, tmp_path) as base:
        for path in ("runs", "run?batch_id=b1", "quarantine?batch_id=b1", "search?q=C1", "alerts"):
            assert requests.get(f"{base}/pipelined/{path}", timeout=30).status_code == 401, path
        login = requests.post(f"{base}/auth/token", json={"username": "monitor", "password": "monitor-pw"}, timeout=30)
        assert login.status_code == 201, login.text
        token = login.json()["access_token"]
        cookies = {"_token": token}  # as the UI's iframe sends it

        runs = requests.get(f"{base}/pipelined/runs", cookies=cookies, timeout=30)
        assert runs.status_code == 200, runs.text
        assert [r.get("data-batch-id") for r in rows(parse(runs.text), "runs")] == ["b1"]
        for path in ("run?batch_id=b1", "search?q=C1", "alerts"):
            assert requests.get(f"{base}/pipelined/{path}", cookies=cookies, timeout=30).status_code == 200, path
        assert requests.get(f"{base}/pipelined/nothing-here", cookies=cookies, timeout=30).status_code == 404

        page = parse(requests.get(f"{base}/pipelined/quarantine", params={"batch_id": "b1"}, cookies=cookies, timeout=30).text)
        form = inputs(by_id(page, "reprocess"))
        # the API server calls its own REST API with the viewer's token: Airflow refuses the trigger
        response = requests.post(f"{base}/pipelined/reprocess", data=form, cookies=cookies, headers={"Origin": base}, timeout=60)
        assert response.status_code == 403, response.text
        assert text(by_id(parse(response.text), "reprocess-error")).startswith("Airflow's API answered 403")
        # and a cross-site POST never reaches the API
        forged = requests.post(f"{base}/pipelined/reprocess", data=form, cookies=cookies, headers={"Origin": "http://evil.example"}, timeout=30)
        assert forged.status_code == 403 and "sent from another site" in forged.text
