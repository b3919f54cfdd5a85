"""End to end: the emulator and an SMTP server as real processes, the real DAG under dag.test().

Injected: two good triggers for known customers, one for an unknown customer, one for an
opted-out customer, one for a trigger nobody configured, and four malformed messages. Asserted:
the exact emails the SMTP server received, the quarantine reasons, the run's counts, and that
running again sends nothing more.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from devstack.messages import (
    BROWSE_ABANDONMENT_TRIGGER_ID,
    CART_ABANDONMENT_TRIGGER_ID,
    load_demo_catalog,
    trigger_message,
)
from devstack.processes import start_emulator, start_smtp_sink
from include.triggerflow.profiles import upsert_profiles

pytestmark = pytest.mark.e2e

UNCONFIGURED_TRIGGER_ID = "0badc0de-0000-4000-8000-00000000beef"

PROFILES = [
    {"customer_id": "C1", "email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace",
     "locale": "en_GB", "timezone": "Europe/London", "shopper_id": "SHOP-ADA", "ecid": None,
     "declared_id": None, "opted_out": False},
    {"customer_id": "C2", "email": "grace@example.com", "first_name": "Grace", "last_name": "Hopper",
     "locale": "en_US", "timezone": "America/New_York", "shopper_id": "SHOP-GRACE", "ecid": None,
     "declared_id": None, "opted_out": False},
    {"customer_id": "C3", "email": "donald@example.com", "first_name": "Donald", "last_name": "Knuth",
     "locale": "en_US", "timezone": "America/Los_Angeles", "shopper_id": "SHOP-OPTOUT", "ecid": None,
     "declared_id": None, "opted_out": True},
]


@pytest.fixture
def stack(tmp_path: Path, airflow_db: Path, store_url: str, store_engine, monkeypatch: pytest.MonkeyPatch):
    outbox = tmp_path / "outbox"
    with start_emulator(log_path=tmp_path / "emulator.log") as emu, start_smtp_sink(outbox, log_path=tmp_path / "smtp.log") as smtp:
        monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({
            "conn_type": "http", "host": emu.base_url, "login": emu.client.client_id,
            "password": emu.client.client_secret, "extra": {"org_id": emu.client.org_id, "scopes": "openid,AdobeID"},
        }))
        monkeypatch.setenv("AIRFLOW_CONN_ADOBE_TRIGGERS", json.dumps({
            "conn_type": "http", "host": emu.client.journal_url,
            "extra": {"kind": "journal", "ims_conn_id": "adobe_ims", "page_limit": 3},
        }))
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", json.dumps({
            "conn_type": "smtp", "host": smtp.host, "port": smtp.port,
            "extra": {"from_email": "shop@triggerflow.test", "from_name": "triggerflow shop",
                      "disable_ssl": True, "disable_tls": True, "retry_limit": 0},
        }))
        monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_DB", json.dumps({
            "conn_type": "generic", "extra": {"sqlalchemy_url": store_url},
        }))
        upsert_profiles(store_engine, PROFILES)
        load_demo_catalog(store_engine)  # the shipped routes email only products the catalogue knows
        yield emu, smtp, store_engine


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags" / "trigger_emails.py"))
    assert bag.import_errors == {}
    return bag.get_dag("trigger_emails")


def _inject(emu) -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    good = [
        trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-ADA",
                        products=["ALP-SHL-JKT"], triggered_at_ms=now_ms - 60_000),
        trigger_message(trigger_id=BROWSE_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-GRACE",
                        triggered_at_ms=now_ms - 30_000),
        trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-NOBODY"),
        trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-OPTOUT"),
        trigger_message(trigger_id=UNCONFIGURED_TRIGGER_ID, shopper_id="SHOP-ADA"),
    ]
    emu.client.publish(good)
    no_identity = trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id=None)
    bad_timestamp = trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-ADA")
    bad_timestamp["message"]["triggerTimestamp"] = "yesterday"
    from devstack.messages import envelope

    emu.client.publish([no_identity])
    emu.client.inject_raw([
        envelope(bad_timestamp, partition=3, offset=77),
        {"envelopeType": "DATA", "partition": 1, "offset": 5},  # no pipeline message at all
        "not even an object",
    ])


def _batch_of(engine, run_id: str) -> str:
    from include.triggerflow.store.schema import batch

    with engine.connect() as conn:
        return conn.execute(select(batch.c.batch_id).where(batch.c.run_id == run_id)).scalar_one()


def _xcom_values(run_id: str) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == "trigger_emails", XComModel.run_id == run_id).all()
        return {row.task_id: row.value for row in rows}


def _summary(engine, batch_id: str) -> dict:
    from include.triggerflow.store.schema import run_summary

    with engine.connect() as conn:
        row = conn.execute(select(run_summary.c.counts).where(run_summary.c.batch_id == batch_id)).scalar_one()
    return json.loads(row)


def test_trigger_emails_end_to_end(stack) -> None:
    from airflow.utils.state import DagRunState

    from include.triggerflow.store.schema import decision, quarantine

    emu, smtp, engine = stack
    _inject(emu)
    dag = _dag()
    logical = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    run = dag.test(logical_date=logical)
    assert run.state == DagRunState.SUCCESS

    mails = smtp.wait_for(2)
    by_rcpt = {m["To"]: m for m in mails}
    assert sorted(by_rcpt) == ["ada@example.com", "grace@example.com"]
    ada = by_rcpt["ada@example.com"]
    assert ada["Subject"] == "Ada, you left something in your cart"
    assert ada["From"] == "triggerflow shop <shop@triggerflow.test>"
    ada_text = ada.get_body(preferencelist=("plain",)).get_content()
    ada_html = ada.get_body(preferencelist=("html",)).get_content()
    assert "Ada" in ada_text and "Alpine Shell Waterproof Jacket" in ada_text
    assert "Alpine Shell Waterproof Jacket" in ada_html
    assert ada["Message-ID"].endswith("@triggerflow.local>")
    grace = by_rcpt["grace@example.com"]
    assert "Grace" in grace.get_body(preferencelist=("plain",)).get_content()

    batch_id = _batch_of(engine, run.run_id)
    # keyed on the run's one-minute data interval
    assert batch_id == f"trigger_emails/{(logical - timedelta(minutes=1)):%Y-%m-%dT%H:%M:%SZ}/{logical:%Y-%m-%dT%H:%M:%SZ}"
    counts = _summary(engine, batch_id)
    assert {k: counts[k] for k in ("pulled", "valid", "quarantined", "matched", "unmatched", "ignored",
                                   "sent", "suppressed", "failed", "duplicate")} == {
        "pulled": 9, "valid": 5, "quarantined": 4, "matched": 3, "unmatched": 1, "ignored": 1,
        "sent": 2, "suppressed": 1, "failed": 0, "duplicate": 0,
    }

    with engine.connect() as conn:
        reasons = [json.loads(r) for r in conn.execute(select(quarantine.c.reasons).where(quarantine.c.batch_id == batch_id)).scalars()]
        decisions = dict(conn.execute(select(decision.c.customer_key, decision.c.decision).where(decision.c.batch_id == batch_id)).all())
    failed = sorted(sorted({(r["expectation"], r["column"]) for r in reason}) for reason in reasons)
    assert [("expect_column_values_to_not_be_null", "identity")] in failed
    # a text timestamp: the parser's problem note and the GX regex on the column both name it
    assert [("expect_column_values_to_be_null", "problems"), ("expect_column_values_to_match_regex", "trigger_ts")] in failed
    assert any(
        r["column"] == "problems" and "triggerTimestamp" in str(r["value"]) for reason in reasons for r in reason
    )
    assert sum(1 for f in failed if ("expect_column_values_to_be_null", "parse_error") in f) == 2
    assert decisions["SHOP-NOBODY"] == "unmatched"
    assert decisions["SHOP-OPTOUT"] == "suppressed:opt-out"

    # XCom carries ids and counts only: no event data, no addresses, no secrets.
    xcoms = _xcom_values(run.run_id)
    assert {"pull_and_land", "validate", "reconcile", "send", "report"} <= set(xcoms)
    for task_id, value in xcoms.items():
        text = json.dumps(value)
        assert len(text) < 1000, task_id
        for secret_or_data in ("ada@example.com", "Lovelace", "SHOP-ADA", emu.client.client_secret, "eVar01"):
            assert secret_or_data not in text, (task_id, secret_or_data)

    # A later run finds nothing new and sends nothing more.
    run2 = dag.test(logical_date=logical + timedelta(minutes=1))
    assert run2.state == DagRunState.SUCCESS
    counts2 = _summary(engine, _batch_of(engine, run2.run_id))
    assert (counts2["pulled"], counts2["sent"], counts2["balanced"]) == (0, 0, True)
    assert len(smtp.messages()) == 2
