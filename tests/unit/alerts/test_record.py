"""tf_alert rows, the rate limit per (kind, subject) and resolution, through fake channels on the
real store (SQLite, or PostgreSQL with TRIGGERFLOW_TEST_PG_URL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from include.triggerflow.alerts import AlertKind, EmailChannel, Firing, fire, fire_sla_alert, resolve
from include.triggerflow.alerts.channels import NOBODY
from include.triggerflow.alerts.texts import AlertMessage
from include.triggerflow.store.schema import alert

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOUR = 3600.0


class FakeChannel:
    """Keeps what it was asked to send; answers like a channel that told somebody (or failed)."""

    def __init__(self, answer: str = "emailed ops@shop.example") -> None:
        self.sent: list[AlertMessage] = []
        self.answer = answer

    def send(self, message: AlertMessage) -> str:
        self.sent.append(message)
        return self.answer


def _firing(subject: str = "trigger_emails", kind: AlertKind = AlertKind.FAILED_RUNS, value: float = 3) -> Firing:
    return Firing(kind=kind, subject=subject, detail=f"{value:g} runs failed", value=value, threshold=3,
                  dag_id="trigger_emails", run_id="r1")


def test_a_firing_is_a_row_and_tells_the_channels_once_per_renotify_while_active(kit) -> None:
    channel = FakeChannel()
    first = fire(kit.engine, _firing(), [channel], renotify_s=HOUR, now=NOW)
    assert first["notified"] == "emailed ops@shop.example" and len(channel.sent) == 1
    again = fire(kit.engine, _firing(value=4), [channel], renotify_s=HOUR, now=NOW + timedelta(minutes=59))
    assert again["notified"] == "not notified again: last notice at 2026-12-01T12:00:00+00:00"
    assert len(channel.sent) == 1
    later = fire(kit.engine, _firing(value=5), [channel], renotify_s=HOUR, now=NOW + timedelta(minutes=61))
    assert later["notified"] == "emailed ops@shop.example" and len(channel.sent) == 2
    rows = kit.rows(alert, order_by=alert.c.alert_id)
    assert [(r["kind"], r["subject"], r["value"], r["threshold_s"]) for r in rows] == [
        ("failed-runs", "trigger_emails", v, 3) for v in (3, 4, 5)]
    assert all(r["resolved_at"] is None for r in rows)  # all active


def test_the_rate_limit_is_per_kind_and_subject(kit) -> None:
    channel = FakeChannel()
    fire(kit.engine, _firing("a"), [channel], renotify_s=HOUR, now=NOW)
    fire(kit.engine, _firing("b"), [channel], renotify_s=HOUR, now=NOW)
    fire(kit.engine, _firing("a", AlertKind.SOURCE_STALLED), [channel], renotify_s=HOUR, now=NOW)
    fire(kit.engine, _firing("a"), [channel], renotify_s=HOUR, now=NOW + timedelta(minutes=1))
    assert len(channel.sent) == 3


def test_resolving_ends_the_active_alert_and_the_next_breach_tells_at_once(kit) -> None:
    channel = FakeChannel()
    fire(kit.engine, _firing("a"), [channel], renotify_s=HOUR, now=NOW)
    fire(kit.engine, _firing("b"), [channel], renotify_s=HOUR, now=NOW)
    assert resolve(kit.engine, AlertKind.FAILED_RUNS, "a", now=NOW + timedelta(minutes=5)) == 1
    assert resolve(kit.engine, AlertKind.FAILED_RUNS, "a", now=NOW + timedelta(minutes=6)) == 0  # already
    rows = {r["subject"]: r for r in kit.rows(alert)}
    assert rows["a"]["resolved_at"] == NOW + timedelta(minutes=5) and rows["b"]["resolved_at"] is None
    back = fire(kit.engine, _firing("a"), [channel], renotify_s=HOUR, now=NOW + timedelta(minutes=10))
    assert back["notified"].startswith("emailed") and len(channel.sent) == 3
    assert resolve(kit.engine, AlertKind.FAILED_RUNS, now=NOW + timedelta(minutes=11)) == 2  # every subject


def test_a_channel_that_failed_did_not_tell_anybody_so_the_next_firing_tries_again(kit) -> None:
    broken = FakeChannel("email failed over smtp_triggers: SMTPServerDisconnected: gone")
    first = fire(kit.engine, _firing(), [broken], renotify_s=HOUR, now=NOW)
    assert first["notified"].startswith("email failed")
    working = FakeChannel()
    second = fire(kit.engine, _firing(), [broken, working], renotify_s=HOUR, now=NOW + timedelta(minutes=1))
    # the channel that told somebody comes first: the rate limit reads the start
    assert second["notified"] == "emailed ops@shop.example; email failed over smtp_triggers: SMTPServerDisconnected: gone"
    third = fire(kit.engine, _firing(), [working], renotify_s=HOUR, now=NOW + timedelta(minutes=2))
    assert third["notified"].startswith("not notified again")


def test_no_recipients_and_no_channels_say_why_nobody_was_told(kit) -> None:
    nobody = fire(kit.engine, _firing(), [EmailChannel([], "smtp_triggers")], renotify_s=HOUR, now=NOW)
    assert nobody["notified"] == NOBODY == "nobody: set the Airflow Variable triggerflow_alert_emails to be emailed"
    none = fire(kit.engine, _firing(), None, renotify_s=HOUR, now=NOW + timedelta(minutes=1))
    assert none["notified"] == "nobody: no channel"
    told = fire(kit.engine, _firing(), [FakeChannel()], renotify_s=HOUR, now=NOW + timedelta(minutes=2))
    assert told["notified"].startswith("emailed")  # the earlier rows told nobody: no rate limit


def test_the_sla_alert_renotifies_every_threshold_and_keeps_its_age_column(kit) -> None:
    channel = FakeChannel()
    common = dict(dag_id="trigger_emails", run_id="r1", batch_id="b1", where="send ledger", threshold_s=1800.0,
                  channels=[channel])
    first = fire_sla_alert(kit.engine, age_s=2400.0, now=NOW, **common)
    assert "40.0 min old (in the send ledger); threshold 30 min" in first["detail"]
    assert channel.sent[0].subject == "[triggerflow] SLA alert: trigger_emails is falling behind"
    again = fire_sla_alert(kit.engine, age_s=2500.0, now=NOW + timedelta(minutes=29), **common)
    assert again["notified"].startswith("not notified again")
    later = fire_sla_alert(kit.engine, age_s=4000.0, now=NOW + timedelta(minutes=31), **common)
    assert later["notified"].startswith("emailed") and len(channel.sent) == 2
    rows = kit.rows(alert, order_by=alert.c.alert_id)
    first_row = rows[0]
    assert (first_row["kind"], first_row["subject"], first_row["oldest_waiting_age_s"], first_row["value"]) == (
        "sla-breach", "trigger_emails", 2400.0, 2400.0)
