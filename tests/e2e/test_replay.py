"""Replays with the real DAGs under dag.test(): re-running a run's interval, dry runs, deliberate
resends and reprocessing after a fix. Emails are counted at the real SMTP server process."""

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

DAGS = Path(__file__).resolve().parents[2] / "dags"


def profile(customer_id: str, email: str, first_name: str, shopper_id: str) -> dict:
    return {"customer_id": customer_id, "email": email, "first_name": first_name, "last_name": None, "locale": None,
            "timezone": None, "shopper_id": shopper_id, "ecid": None, "declared_id": None, "opted_out": False}


@pytest.fixture
def stack(tmp_path: Path, airflow_db: Path, store_url: str, store_engine, monkeypatch: pytest.MonkeyPatch):
    with start_emulator() as emu, start_smtp_sink(tmp_path / "outbox") as smtp:
        monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({
            "conn_type": "http", "host": emu.base_url, "login": emu.client.client_id,
            "password": emu.client.client_secret, "extra": {"org_id": emu.client.org_id},
        }))
        monkeypatch.setenv("AIRFLOW_CONN_ADOBE_TRIGGERS", json.dumps({"conn_type": "http", "host": emu.client.journal_url}))
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", json.dumps({
            "conn_type": "smtp", "host": smtp.host, "port": smtp.port,
            "extra": {"from_email": "shop@triggerflow.test", "disable_ssl": True, "disable_tls": True},
        }))
        monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_DB", json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": store_url}}))
        monkeypatch.setenv("TRIGGERFLOW_DRY_RUN_DIR", str(tmp_path / "dry-run"))
        upsert_profiles(store_engine, [profile("C1", "ada@example.com", "Ada", "SHOP-ADA"),
                                       profile("C2", "grace@example.com", "Grace", "SHOP-GRACE")])
        load_demo_catalog(store_engine)  # the shipped routes email only products the catalogue knows
        emu.client.publish([
            trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-ADA"),
            trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-GRACE"),
        ])
        yield emu, smtp, store_engine, tmp_path


def _dag(dag_id: str):
    """A freshly parsed DAG: dag.test() leaves the previous run_conf in the DAG object's params."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / f"{dag_id}.py"))
    assert bag.import_errors == {}
    return bag.get_dag(dag_id)


_BASE = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
_used: list[int] = [0]


def _minute(offset: int) -> datetime:
    """A fixed minute per test (tests share Airflow's metadata DB: each gets its own 10 minutes)."""
    return _BASE + timedelta(minutes=_used[-1] + offset)


@pytest.fixture(autouse=True)
def _own_minutes():
    _used.append(_used[-1] + 10)


def _report(engine, run_id: str) -> dict:
    from include.triggerflow.store.schema import run_summary

    with engine.connect() as conn:
        return json.loads(conn.execute(select(run_summary.c.counts).where(run_summary.c.run_id == run_id)).scalar_one())


def _ok(run) -> None:
    from airflow.utils.state import DagRunState

    assert run.state == DagRunState.SUCCESS


def test_replaying_a_runs_interval_reprocesses_its_batch_and_sends_nothing_twice(stack) -> None:
    emu, smtp, engine, _ = stack
    first = _dag("trigger_emails").test(logical_date=_minute(0))
    _ok(first)
    assert len(smtp.wait_for(2)) == 2
    # A new trigger arrives; the replay of the first interval must not pull it.
    # (a browse trigger: another cart trigger for Ada inside 24 h would be a duplicate)
    emu.client.publish([trigger_message(trigger_id=BROWSE_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-ADA")])
    replay = _dag("trigger_emails").test(logical_date=_minute(0), run_conf={"replay_only": True})
    _ok(replay)
    counts = _report(engine, replay.run_id)
    assert (counts["pulled"], counts["sent"], counts["this_run"]["sent"], counts["skipped_already_sent"]) == (2, 2, 0, 2)
    assert counts["balanced"] is True
    assert len(smtp.messages()) == 2
    # A replay of an interval nothing was landed for does nothing, and says so.
    empty = _dag("trigger_emails").test(logical_date=_minute(5), run_conf={"replay_only": True})
    _ok(empty)
    counts = _report(engine, empty.run_id)
    assert counts["pulled"] == 0 and "no batch was landed" in counts["note"]
    # The waiting trigger is still there for the next real run.
    _ok(_dag("trigger_emails").test(logical_date=_minute(6)))
    assert len(smtp.wait_for(3)) == 3


def test_dry_run_renders_to_a_folder_sends_nothing_and_leaves_the_emails_pending(stack) -> None:
    from include.triggerflow.store.schema import dry_run, send

    _, smtp, engine, tmp_path = stack
    run = _dag("trigger_emails").test(logical_date=_minute(0), run_conf={"dry_run": True})
    _ok(run)
    files = sorted((tmp_path / "dry-run").rglob("*.eml"))
    assert len(files) == 2
    assert any(b"Ada" in f.read_bytes() for f in files)
    assert smtp.messages() == []
    with engine.connect() as conn:
        assert set(conn.execute(select(send.c.state)).scalars()) == {"pending"}
        assert conn.execute(select(dry_run.c.path)).scalars().all() != []
    counts = _report(engine, run.run_id)
    assert (counts["this_run"]["dry_run"], counts["sent"], counts["pending"], counts["balanced"]) == (2, 0, 2, True)
    # The real replay of the same interval sends them.
    _ok(_dag("trigger_emails").test(logical_date=_minute(0), run_conf={"replay_only": True}))
    assert len(smtp.wait_for(2)) == 2


def test_force_resend_sends_again_and_records_it(stack) -> None:
    from include.triggerflow.store.schema import send, send_log

    _, smtp, engine, _ = stack
    _ok(_dag("trigger_emails").test(logical_date=_minute(0)))
    first_ids = {m["Message-ID"] for m in smtp.wait_for(2)}
    resend = _dag("trigger_emails").test(logical_date=_minute(0), run_conf={"replay_only": True, "force_resend": True})
    _ok(resend)
    mails = smtp.wait_for(4)
    assert len(mails) == 4
    assert {m["Message-ID"] for m in mails[2:]}.isdisjoint(first_ids)  # a deliberate resend is a new message
    with engine.connect() as conn:
        assert set(conn.execute(select(send.c.resend)).scalars()) == {True}
        actions = conn.execute(select(send_log.c.action).where(send_log.c.run_id == resend.run_id)).scalars().all()
    assert sorted(actions) == ["resent", "resent"]
    assert _report(engine, resend.run_id)["this_run"]["resent"] == 2


def test_reprocess_after_loading_a_missing_profile_and_fixing_the_routing(stack, tmp_path: Path, monkeypatch) -> None:
    from include.triggerflow import DEFAULT_ROUTING_FILE

    emu, smtp, engine, _ = stack
    # One trigger for a customer not loaded yet; one browse trigger carrying the shopper id in
    # eVar07, which the browse route does not read yet (quarantined: identity missing).
    emu.client.publish([
        trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-LATE"),
        trigger_message(trigger_id=BROWSE_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-GRACE", shopper_dimension="eVar07"),
    ])
    _ok(_dag("trigger_emails").test(logical_date=_minute(0)))
    assert len(smtp.wait_for(2)) == 2  # Ada and Grace's first trigger only

    upsert_profiles(engine, [profile("C9", "late@example.com", "Late", "SHOP-LATE")])
    fixed = tmp_path / "routing.yaml"
    cart, browse = DEFAULT_ROUTING_FILE.read_text().split("- name: browse_abandonment")
    fixed.write_text(cart + "- name: browse_abandonment" + browse.replace("dimension: eVar01", "dimension: eVar07"))
    monkeypatch.setenv("TRIGGERFLOW_ROUTING_FILE", str(fixed))

    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    run = _dag("trigger_reprocess").test(run_conf={"since": since, "what": "both"})
    _ok(run)
    mails = smtp.wait_for(4)
    assert sorted(m["To"] for m in mails) == ["ada@example.com", "grace@example.com", "grace@example.com", "late@example.com"]
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(
            XComModel.dag_id == "trigger_reprocess", XComModel.run_id == run.run_id,
            XComModel.task_id == "summary", XComModel.key == "return_value",
        ).all()
        totals = rows[0].value
    assert totals["sent_now"] == 2 and totals["unmatched_after"] == 0 and totals["quarantined_after"] == 0
