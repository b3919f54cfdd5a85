"""Lines the Pipeline reader drops, from a real emulator stream to every place an operator looks:
landing counts them in tf_batch, the run report keeps them outside the balance, `cli runs` and
the status document show them (issue 10 item 10). Real emulator process, real stages, the test
store (SQLite, or PostgreSQL with TRIGGERFLOW_TEST_PG_URL)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import redirect_stdout

import pytest

from devstack.messages import (
    CART_ABANDONMENT_TRIGGER_ID,
    load_demo_catalog,
    trigger_message,
)
from devstack.processes import RunningEmulator, start_emulator
from include.triggerflow import cli
from include.triggerflow.config import load_routing
from include.triggerflow.hooks.ims import clear_token_cache
from include.triggerflow.hooks.triggers import TriggerSourceHook
from include.triggerflow.stages.land import BatchRef, land_batch
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.stages.report import report_batch
from include.triggerflow.stages.validate import validate_batch
from include.triggerflow.status import build_status
from tests.fixtures import StoreKit

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def emulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    with start_emulator(log_path=tmp_path_factory.mktemp("emulator") / "emulator.log", ping_interval=0.2, stream_max_seconds=5) as emu:
        yield emu


@pytest.fixture
def pipeline_conns(emulator_process: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    emu = emulator_process
    emu.client.reset()
    clear_token_cache()
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({
        "conn_type": "http", "host": emu.base_url, "login": emu.client.client_id, "password": emu.client.client_secret,
        "extra": {"org_id": emu.client.org_id, "scopes": "openid,AdobeID"},
    }))
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_TRIGGERS", json.dumps({
        "conn_type": "http", "host": emu.base_url,
        "extra": {"kind": "pipeline", "consumer": "triggerflow-{env}", "environment": "test", "ims_conn_id": "adobe_ims",
                  "read_timeout_s": 2, "keepalive_wait_s": 1},
    }))
    yield emu
    clear_token_cache()


def test_dropped_lines_reach_the_report_cli_runs_and_the_status(pipeline_conns, store_engine, store_url: str) -> None:
    emu = pipeline_conns
    kit = StoreKit(store_engine)
    kit.add_profiles({"customer_id": "C1", "email": "ada@example.com", "shopper_id": "SHOP-ADA"})
    load_demo_catalog(store_engine)  # the shipped routes email only products the catalogue knows
    emu.client.publish([trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id=s) for s in ("SHOP-ADA", "SHOP-NOBODY")])
    emu.client.publish_bytes([b"", b"not json at all", b"{broken", b"[1, 2]"], as_="envelope")
    routing = load_routing()

    source = TriggerSourceHook().get_source()
    landed = land_batch(store_engine, source, BatchRef(dag_id="trigger_emails", run_id="run-1"))
    validate_batch(store_engine, landed.batch_id, routing)
    reconcile_batch(store_engine, landed.batch_id, routing)
    report = report_batch(store_engine, landed.batch_id, dag_id="trigger_emails", run_id="run-1")

    # the report: 2 events balance; the 4 lines that are no event are counted beside them
    assert report.balanced
    assert (report.counts["pulled"], report.counts["matched"], report.counts["unmatched"]) == (2, 1, 1)
    assert report.counts["dropped"] == 4
    assert report.counts["dropped_reasons"] == {"blank line": 1, "not JSON": 2, "not a JSON object": 1}
    assert "dropped            4" in report.table()

    # cli runs
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["--db-url", store_url, "runs", "--limit", "1"]) == 0
    header, line = out.getvalue().splitlines()
    shown = dict(zip(header.split("\t"), line.split("\t"), strict=True))
    assert (shown["pulled"], shown["pending"], shown["dropped"], shown["balanced"]) == ("2", "1", "4", "True")

    # the status document of that source
    doc = build_status(store_engine, routing, source_key=source.source_key, consumer="c", settings={})
    assert doc["stats"]["lines-dropped"] == 4
    assert doc["stats"]["trigger-received"] == 2
    assert doc["http-request"]["empty-reads"] == 0 and doc["http-request"]["last-data-ms-ago"] is not None
    assert doc["warnings"] == []
