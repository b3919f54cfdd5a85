"""Operator alerts end to end: the real DAG (dag.test), the Adobe emulator and the SMTP sink as
processes, the alert emails read back from the sink (and, in the second test, the webhook's JSON
from a real local HTTP server).

Faults are made the way they happen: a wrong client secret (IMS refuses it), a journal that
answers errors while it holds messages, a relay refusing the messages at DATA, a connection cut
after the message data before the server's reply, triggers that cannot be validated. Each test
runs its scenarios in order on one stack (one emulator and sink start per test): the alerts are
about sequences of runs anyway (N failed in a row, then a good run resolving them).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import select

from devstack.messages import CART_ABANDONMENT_TRIGGER_ID, load_demo_catalog, trigger_message
from include.triggerflow.events import MAX_TRIGGER_MS
from include.triggerflow.profiles import upsert_profiles
from tests.e2e.fault_helpers import connection_env, customers, load_dag, minute, triggers_for

pytestmark = pytest.mark.e2e

OPS = "ops@shop.test"


def _alert_mails(smtp) -> list[EmailMessage]:
    return [m for m in smtp.messages() if m["To"] == OPS]


def _subjects(smtp) -> list[str]:
    return sorted(str(m["Subject"]) for m in _alert_mails(smtp))


def _alerts(engine, kind: str | None = None) -> list[dict[str, Any]]:
    from include.triggerflow.store.schema import alert

    query = select(alert).order_by(alert.c.alert_id)
    if kind is not None:
        query = query.where(alert.c.kind == kind)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def _outcomes(engine) -> dict[str, tuple[str, str | None]]:
    from include.triggerflow.store.schema import run_outcome

    with engine.connect() as conn:
        rows = conn.execute(select(run_outcome.c.run_id, run_outcome.c.outcome, run_outcome.c.task_id)).all()
    return {run_id: (outcome, task_id) for run_id, outcome, task_id in rows}


def _told(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if (r["notified"] or "").startswith(("emailed", "posted"))]


@pytest.fixture
def stack(tmp_path: Path, airflow_db: Path, store_url: str, store_engine, monkeypatch: pytest.MonkeyPatch):
    from devstack.processes import start_emulator, start_smtp_sink
    from include.triggerflow.hooks.ims import clear_token_cache

    with (
        start_emulator(log_path=tmp_path / "emulator.log") as emu,
        start_smtp_sink(tmp_path / "outbox", log_path=tmp_path / "smtp.log") as smtp,
    ):
        conns = connection_env(emu, smtp, store_url)
        for key, value in conns.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("TRIGGERFLOW_RETRY_DELAY_S", "1")  # read when the DAG file is parsed
        monkeypatch.setenv("AIRFLOW_VAR_TRIGGERFLOW_ALERT_EMAILS", OPS)
        clear_token_cache()
        load_demo_catalog(store_engine)
        yield emu, smtp, store_engine, conns


def test_refused_credentials_failed_runs_and_a_stalled_source_alert_and_resolve(stack, monkeypatch) -> None:
    from airflow.utils.state import DagRunState

    from include.triggerflow.hooks.ims import clear_token_cache

    emu, smtp, engine, conns = stack
    people = customers(2)
    upsert_profiles(engine, people)
    good_ims = conns["AIRFLOW_CONN_ADOBE_IMS"]
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({**json.loads(good_ims), "password": "not-the-secret"}))
    emu.client.publish(triggers_for(people))

    # 1. IMS refuses the client secret: the pull fails on every try; the first refusal alerts.
    first = load_dag().test(logical_date=minute(0), run_conf={"failed_runs_alert": 2})
    assert first.state == DagRunState.FAILED
    refused = _alerts(engine, "credentials-refused")
    assert len(refused) == 4  # one firing per try (retries 3) ...
    assert [r["notified"] for r in _told(refused)] == [f"emailed {OPS}"]  # ... one email
    assert refused[0]["subject"] == "ims" and "IMS refused the token request (401" in refused[0]["detail"]
    assert "not-the-secret" not in json.dumps([r["detail"] for r in refused])
    assert _outcomes(engine) == {first.run_id: ("failed", "pull_and_land")}
    assert _alerts(engine, "failed-runs") == []  # one failed run of the two that alert

    # 2. Still refused: the second failed run in a row alerts; the credentials are not re-sent.
    second = load_dag().test(logical_date=minute(1), run_conf={"failed_runs_alert": 2})
    assert second.state == DagRunState.FAILED
    [failed_runs] = _alerts(engine, "failed-runs")
    assert (failed_runs["value"], failed_runs["threshold_s"], failed_runs["notified"]) == (2, 2, f"emailed {OPS}")
    assert "task pull_and_land" in failed_runs["detail"]
    assert len(_told(_alerts(engine, "credentials-refused"))) == 1
    mails = smtp.wait_for(2)
    assert sorted(str(m["Subject"]) for m in mails) == [
        "[triggerflow] trigger_emails: Adobe refused the credentials",
        "[triggerflow] trigger_emails: runs keep failing",
    ]
    body = next(m for m in mails if "credentials" in str(m["Subject"])).get_body(preferencelist=("html",)).get_content()
    assert "IMS refused the token request" in body and "not-the-secret" not in body

    # 3. The secret is fixed: the run succeeds and resolves both alerts.
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", good_ims)
    clear_token_cache()
    third = load_dag().test(logical_date=minute(2), run_conf={"failed_runs_alert": 2})
    assert third.state == DagRunState.SUCCESS
    assert len(smtp.wait_for(4)) == 4  # the two customers
    assert _outcomes(engine)[third.run_id] == ("succeeded", None)
    for row in _alerts(engine):
        assert row["resolved_at"] is not None, row

    # 4. The journal now answers errors while it holds messages: the pointer does not move.
    emu.client.add_faults({"endpoint": "journal", "kind": "status", "status": 404, "times": 50})
    emu.client.publish(triggers_for(customers(1)))
    conf = {"failed_runs_alert": 2, "source_stall_minutes": 0}
    stalled_run = load_dag().test(logical_date=minute(3), run_conf=conf)
    assert stalled_run.state == DagRunState.FAILED
    stalled = _alerts(engine, "source-stalled")
    assert stalled and all(r["resolved_at"] is None for r in stalled)
    assert stalled[0]["subject"].startswith("journal:") and "its reads fail" in stalled[0]["detail"]
    assert [r["notified"] for r in _told(stalled)] == [f"emailed {OPS}"]
    assert "[triggerflow] trigger_emails: the trigger source is not advancing" in _subjects(smtp)
    assert len(_alert_mails(smtp)) == 3  # one failed run after a good one does not alert

    # 5. The journal recovers: the pull advances the pointer and resolves the stall.
    emu.client.clear_faults()
    recovered = load_dag().test(logical_date=minute(4), run_conf=conf)
    assert recovered.state == DagRunState.SUCCESS
    assert all(r["resolved_at"] is not None for r in _alerts(engine, "source-stalled"))


class _Webhook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received.append({"path": self.path, "type": self.headers.get("Content-Type"), "json": json.loads(body)})
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """A real HTTP server on a free port standing in for a chat tool's incoming webhook."""
    received: ClassVar[list[dict[str, Any]]] = []
    handler = type("Hook", (_Webhook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGERFLOW_ALERT_WEBHOOK", json.dumps(
        {"conn_type": "http", "host": f"http://127.0.0.1:{server.server_address[1]}/hooks/ops"}))
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


def test_relay_refusal_quarantine_share_and_ambiguous_sends_alert_by_email_and_webhook(stack, webhook) -> None:
    from airflow.utils.state import DagRunState

    emu, smtp, engine, _ = stack

    # 1. The relay refuses the customers' messages at DATA (hostile reply text): the chunk stops
    #    at refusal_limit and the run fails. The alert (to another domain) goes through.
    people = customers(6)  # tries stop after 2, 1, 1, 1 refusals: one email stays pending
    upsert_profiles(engine, people)
    smtp.set_faults([{"data_code": 554, "rcpt_domain": "example.com", "message": "5.7.1 <b>spam</b> rejected"}])
    emu.client.publish(triggers_for(people))
    refused_run = load_dag().test(logical_date=minute(0), run_conf={"refusal_limit": 2})
    assert refused_run.state == DagRunState.FAILED
    relay = _alerts(engine, "relay-refusing")
    assert relay and relay[0]["subject"] == "smtp_triggers" and "554 5.7.1" in relay[0]["detail"]
    assert [r["notified"] for r in _told(relay)] == [
        f"emailed {OPS}; posted to webhook triggerflow_alert_webhook"]
    [mail] = smtp.wait_for(1)
    assert mail["To"] == OPS and mail["Subject"] == "[triggerflow] trigger_emails: the SMTP relay refuses the messages"
    html_body = mail.get_body(preferencelist=("html",)).get_content()
    assert "&lt;b&gt;spam&lt;/b&gt;" in html_body and "<b>spam" not in html_body  # escaped
    [post] = webhook
    assert post["path"] == "/hooks/ops" and post["type"] == "application/json"
    assert post["json"]["kind"] == "relay-refusing" and post["json"]["alert_id"] == relay[0]["alert_id"]
    assert post["json"]["text"].startswith("[triggerflow] trigger_emails: the SMTP relay refuses the messages: ")

    # 2. The relay is fixed, but a third of the next batch cannot be validated and the first
    #    message's connection is cut after its data, before the reply: both alert, on both
    #    channels; the run succeeds and resolves the relay alert.
    smtp.set_faults([{"drop_at": "end_of_data", "times": 1}])
    more = customers(4, prefix="D")
    upsert_profiles(engine, more)
    bad = [trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id=p["shopper_id"],
                           triggered_at_ms=MAX_TRIGGER_MS * 10) for p in customers(2, prefix="Q")]
    emu.client.publish(triggers_for(more) + bad)
    conf = {"quarantine_alert_share": 0.25, "quarantine_alert_min_events": 1}
    run = load_dag().test(logical_date=minute(1), run_conf=conf)
    assert run.state == DagRunState.SUCCESS
    [share] = _alerts(engine, "quarantine-share")
    assert (share["value"], share["threshold_s"]) == (round(2 / 6, 4), 0.25)
    assert "2 of the 6 triggers" in share["detail"]
    [ambiguous] = _alerts(engine, "ambiguous-sends")
    assert ambiguous["value"] == 1 and ambiguous["run_id"] == run.run_id
    for row in (share, ambiguous):
        assert row["notified"] == f"emailed {OPS}; posted to webhook triggerflow_alert_webhook"
        assert row["resolved_at"] is None  # active
    assert all(r["resolved_at"] is not None for r in _alerts(engine, "relay-refusing"))
    assert sorted(p["json"]["kind"] for p in webhook) == ["ambiguous-sends", "quarantine-share", "relay-refusing"]
    assert _subjects(smtp) == [
        "[triggerflow] trigger_emails: emails with an unknown outcome",
        "[triggerflow] trigger_emails: many triggers quarantined",
        "[triggerflow] trigger_emails: the SMTP relay refuses the messages",
    ]

    # 3. A clean batch clears both.
    emu.client.publish(triggers_for(customers(1, prefix="E")))
    upsert_profiles(engine, customers(1, prefix="E"))
    assert load_dag().test(logical_date=minute(2), run_conf=conf).state == DagRunState.SUCCESS
    assert all(r["resolved_at"] is not None for r in _alerts(engine))
    assert len(webhook) == 3
