"""A backfill through the real scheduler (`POST /api/v2/backfills`, what `airflow backfill create`
and the UI's backfill dialog do) reprocesses the batches landed for its intervals, pulls nothing,
and says so for intervals that have no batch. Running the same backfill again sends nothing twice.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from devstack.airflow_stack import airflow_standalone
from devstack.messages import (
    CART_ABANDONMENT_TRIGGER_ID,
    load_demo_catalog,
    trigger_message,
)
from devstack.processes import start_emulator, start_smtp_sink
from include.triggerflow.profiles import upsert_profiles
from tests.e2e.fault_helpers import metadata_db
from tests.support import UNSUBSCRIBE_CONN_JSON

pytestmark = pytest.mark.e2e

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
LOCAL_PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def _profile(customer_id: str, email: str, shopper_id: str) -> dict:
    return {"customer_id": customer_id, "email": email, "first_name": customer_id, "last_name": None, "locale": None,
            "timezone": None, "shopper_id": shopper_id, "ecid": None, "declared_id": None, "opted_out": False}


def _wait_backfill_runs(af, dag_id: str, backfill: dict, expected: int, timeout: float = 300.0) -> list[dict]:
    """The backfill's runs, once the scheduler has closed the backfill.

    A backfill that reprocesses completed runs re-queues the existing ones (same run ids, no
    backfill id in the listing), so the runs are found by logical date and must have ended after
    the backfill was created. The backfill's own ``completed_at`` is the signal to wait for: on a
    loaded machine the scheduler may take minutes to get to re-queued runs."""
    import time

    created = datetime.fromisoformat(str(backfill["created_at"]).replace("Z", "+00:00"))
    lo = datetime.fromisoformat(str(backfill["from_date"]).replace("Z", "+00:00"))
    hi = datetime.fromisoformat(str(backfill["to_date"]).replace("Z", "+00:00"))

    def ours() -> list[dict]:
        found = []
        for r in af.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]:
            logical = r.get("logical_date")
            if not logical:
                continue
            when = datetime.fromisoformat(logical.replace("Z", "+00:00"))
            ended = r.get("end_date")
            if lo <= when < hi and ended and datetime.fromisoformat(ended.replace("Z", "+00:00")) >= created:
                found.append(r)
        return found

    deadline = time.monotonic() + timeout
    record: dict = {}
    runs: list[dict] = []
    while time.monotonic() < deadline:
        record = af.api("GET", f"/backfills/{backfill['id']}")
        runs = ours()
        if record.get("completed_at") and len(runs) >= expected and all(r["state"] in ("success", "failed") for r in runs):
            return runs
        if record.get("completed_at") and len(runs) < expected:
            # Closed without (re)running every interval: give the listing a moment, then say so.
            time.sleep(3)
            runs = ours()
            if len(runs) >= expected:
                return runs
            raise AssertionError(f"backfill {backfill['id']} completed but ran only {[(r['dag_run_id'], r['state']) for r in runs]}: {record}")
        time.sleep(1)
    raise TimeoutError(
        f"backfill {backfill['id']} ({record}): runs {[(r['dag_run_id'], r['state']) for r in runs]}\n{af.log_tail()}"
    )


def _metadata_server() -> str | None:
    """The PostgreSQL server for Airflow's metadata DB, if one answers: TRIGGERFLOW_TEST_PG_URL or
    the local one. Airflow's POST /backfills on a SQLite metadata DB can answer 503 "database is
    locked" after committing part of the backfill (seen: one of its intervals), so this test uses
    PostgreSQL metadata, as production does, wherever there is a server."""
    from devstack.ensure_postgres import _answers

    url = os.environ.get("TRIGGERFLOW_TEST_PG_URL") or LOCAL_PG
    return url if _answers(url) is None else None


def _backfill_intervals(af, metadata_url: str | None, backfill_id: int) -> int:
    """How many intervals Airflow recorded for the backfill (its backfill_dag_run rows)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(metadata_url or f"sqlite:///{Path(af.home) / 'airflow.db'}")
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM backfill_dag_run WHERE backfill_id = :id"),
                                    {"id": backfill_id}).scalar_one())
    finally:
        engine.dispose()


def _create_backfill(af, body: dict, *, intervals: int, metadata_url: str | None) -> dict:
    """POST /backfills. On a SQLite metadata DB the API can answer 503 "database is locked" before
    creating the backfill, or after creating part of it: a failed POST is resolved by looking the
    backfill up, never by blindly posting again, and a partial backfill (fewer than ``intervals``)
    is left to finish and followed by a new one. Replaying twice is harmless here by design."""
    import time

    from devstack.airflow_stack import AirflowStackError

    for _ in range(5):
        try:
            return af.api("POST", "/backfills", json=body)
        except AirflowStackError as exc:
            if "503" not in str(exc) and "409" not in str(exc):
                raise
            time.sleep(2)
            open_ones = [b for b in af.api("GET", "/backfills", params={"dag_id": body["dag_id"]})["backfills"]
                         if not b.get("completed_at")]
            if not open_ones:
                continue
            found = max(open_ones, key=lambda b: b["id"])
            if _backfill_intervals(af, metadata_url, found["id"]) >= intervals:
                return found
            deadline = time.monotonic() + 300
            while not af.api("GET", f"/backfills/{found['id']}").get("completed_at"):
                assert time.monotonic() < deadline, f"partial backfill {found} did not close"
                time.sleep(1)
    raise AssertionError("could not create the backfill")


def test_backfill_reprocesses_landed_batches_and_skips_empty_intervals(
    tmp_path: Path, store_url: str, store_engine
) -> None:
    from include.triggerflow.hooks.ims import clear_token_cache
    from include.triggerflow.sources.journal import JournalSource
    from include.triggerflow.stages.land import BatchRef, land_batch
    from include.triggerflow.store.schema import run_summary

    with start_emulator() as emu, start_smtp_sink(tmp_path / "outbox") as smtp:
        upsert_profiles(store_engine, [_profile("C1", "ada@example.com", "SHOP-ADA"), _profile("C2", "grace@example.com", "SHOP-GRACE")])
        load_demo_catalog(store_engine)  # the shipped routes email only products the catalogue knows
        emu.client.publish([
            trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-ADA"),
            trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-GRACE"),
        ])
        # The scheduled run of 10:00-10:01 landed these two and then (say) its send failed for good.
        source = JournalSource(journal_url=emu.client.journal_url, api_key=emu.client.client_id,
                               org_id=emu.client.org_id, token_provider=lambda refresh: emu.client.token())
        landed = land_batch(store_engine, source, BatchRef(
            dag_id="trigger_emails", run_id="scheduled__2026-11-26T10:00:00+00:00", run_type="scheduled",
            interval_start=START, interval_end=START + timedelta(minutes=1)))
        assert landed.pulled == 2
        # A later trigger waits in the journal: a backfill must not pull it.
        emu.client.publish([trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-ADA")])
        journal_requests = emu.client.stats()["journal_requests"]
        clear_token_cache()

        env = {
            "AIRFLOW_CONN_ADOBE_IMS": json.dumps({"conn_type": "http", "host": emu.base_url, "login": emu.client.client_id,
                                                  "password": emu.client.client_secret, "extra": {"org_id": emu.client.org_id}}),
            "AIRFLOW_CONN_ADOBE_TRIGGERS": json.dumps({"conn_type": "http", "host": emu.client.journal_url}),
            "AIRFLOW_CONN_SMTP_TRIGGERS": json.dumps({"conn_type": "smtp", "host": smtp.host, "port": smtp.port, "extra": {
                "from_email": "shop@triggerflow.test", "disable_ssl": True, "disable_tls": True}}),
            "AIRFLOW_CONN_TRIGGERS_DB": json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": store_url}}),
            "AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE": UNSUBSCRIBE_CONN_JSON,
            "TRIGGERFLOW_RETRY_DELAY_S": "2",
        }
        with metadata_db(_metadata_server()) as metadata_url, airflow_standalone(
            tmp_path / "airflow", env_overrides=env, metadata_url=metadata_url
        ) as af:
            af.unpause("trigger_emails")
            # from_date and to_date are both included: intervals 10:00, 10:01 and 10:02
            body = {"dag_id": "trigger_emails", "from_date": START.isoformat(),
                    "to_date": (START + timedelta(minutes=2)).isoformat(), "reprocess_behavior": "completed",
                    "max_active_runs": 1, "run_backwards": False, "dag_run_conf": {}}
            create = {"intervals": 3, "metadata_url": metadata_url}
            first = _create_backfill(af, body, **create)
            runs = _wait_backfill_runs(af, "trigger_emails", first, expected=2)
            assert {r["state"] for r in runs} == {"success"}, [(r["dag_run_id"], r["state"]) for r in runs]
            assert sorted(m["To"] for m in smtp.wait_for(2)) == ["ada@example.com", "grace@example.com"]

            # The same backfill again (the scheduler has closed the first): the batch is
            # replayed, nothing is sent twice.
            second = _create_backfill(af, body, **create)
            again = _wait_backfill_runs(af, "trigger_emails", second, expected=2)
            assert {r["state"] for r in again} == {"success"}

        assert len(smtp.messages()) == 2
        assert emu.client.stats()["journal_requests"] == journal_requests  # backfills never read the source
        with store_engine.connect() as conn:
            reports = {run_id: json.loads(c) for run_id, c in conn.execute(select(run_summary.c.run_id, run_summary.c.counts))}
        notes = [c.get("note", "") for c in reports.values()]
        assert any("no batch was landed" in n for n in notes), notes
        landed_report = reports[next(k for k, c in reports.items() if c["pulled"] == 2)]
        assert landed_report["balanced"] and landed_report["sent"] == 2
        # the last replay of the landed batch skipped both emails as already sent
        assert landed_report["this_run"]["skipped_already_sent"] == 2
