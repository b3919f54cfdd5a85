"""Where the DAG checks the detectors: they fire and resolve, never swallow the task's own
exception, and never add one."""

from __future__ import annotations

from typing import Any

import pytest

from include.triggerflow.alerts import AlertKind, Firing
from include.triggerflow.alerts.checks import (
    Alerter,
    AlertSettings,
    PullAlerts,
    report_alerts,
    send_alerts,
    task_failed,
)
from include.triggerflow.alerts.texts import AlertMessage
from include.triggerflow.store.schema import alert, run_outcome


class Channel:
    def __init__(self) -> None:
        self.sent: list[AlertMessage] = []

    def send(self, message: AlertMessage) -> str:
        self.sent.append(message)
        return "emailed ops@shop.example"


@pytest.fixture
def channel() -> Channel:
    return Channel()


@pytest.fixture
def alerter(kit, channel: Channel) -> Alerter:
    return Alerter(kit.engine, "trigger_emails", "r1", AlertSettings(failed_runs=2), channels=lambda: [channel])


def _kinds(kit) -> list[tuple[str, bool]]:
    return [(r["kind"], r["resolved_at"] is None) for r in kit.rows(alert, order_by=alert.c.alert_id)]


def test_settings_come_from_the_params_with_documented_defaults() -> None:
    assert AlertSettings.from_params({}) == AlertSettings()
    assert AlertSettings() == AlertSettings(renotify_s=3600, failed_runs=3, source_stall_s=900, quarantine_share=0.2,
                                            quarantine_min_events=20)
    got = AlertSettings.from_params({"alert_renotify_minutes": 5, "failed_runs_alert": 2, "source_stall_minutes": 1,
                                     "quarantine_alert_share": 0.5, "quarantine_alert_min_events": 3})
    assert got == AlertSettings(renotify_s=300, failed_runs=2, source_stall_s=60, quarantine_share=0.5,
                                quarantine_min_events=3)


def test_a_refused_credential_alerts_and_the_pull_still_fails(kit, alerter: Alerter, channel: Channel) -> None:
    from include.triggerflow.hooks.ims import ImsCredentialsRefused

    with pytest.raises(ImsCredentialsRefused), PullAlerts(alerter, max_events=10):
        raise ImsCredentialsRefused("connection 'adobe_ims': IMS refused the token request (401 invalid_client)")
    assert _kinds(kit) == [("credentials-refused", True)]
    assert "401 invalid_client" in channel.sent[0].text
    with PullAlerts(alerter, max_events=10) as pull:  # a pull that read the source resolves it
        pull.source_key = "journal:x"
    assert _kinds(kit) == [("credentials-refused", False)]


def test_other_pull_errors_are_not_credential_alerts(kit, alerter: Alerter) -> None:
    from include.triggerflow.hooks.ims import ImsAuthError
    from include.triggerflow.sources.base import SourceError

    for exc in (ImsAuthError("IMS unreachable"), SourceError("journal answered HTTP 500")):
        with pytest.raises(type(exc)), PullAlerts(alerter, max_events=10):
            raise exc
    assert _kinds(kit) == []


def test_a_source_refusing_a_fresh_token_is_a_credential_alert(kit, alerter: Alerter) -> None:
    from include.triggerflow.adobe.ims_refusal import SourceCredentialsRefused

    with pytest.raises(SourceCredentialsRefused), PullAlerts(alerter, max_events=10) as pull:
        pull.source_key = "journal:x"
        raise SourceCredentialsRefused("journal refused a freshly minted IMS token (401 twice)")
    [row] = kit.rows(alert)
    assert (row["kind"], row["subject"]) == ("credentials-refused", "journal:x")


def test_a_chunk_stopped_by_refusals_alerts_and_still_fails(kit, alerter: Alerter) -> None:
    from include.triggerflow.stages.send import RelayRefusing

    with pytest.raises(RelayRefusing), send_alerts(alerter, "b1"):
        raise RelayRefusing("batch b1 chunk 0: 5 emails answered 530 5.7.0 at mail")
    [row] = kit.rows(alert)
    assert (row["kind"], row["subject"], row["batch_id"]) == ("relay-refusing", "smtp_triggers", "b1")
    with pytest.raises(ValueError), send_alerts(alerter, "b1"):  # anything else passes through, no alert
        raise ValueError("x")
    assert kit.count(alert) == 1


def test_failed_runs_alert_once_per_run_and_a_good_report_resolves(kit, alerter: Alerter, channel: Channel) -> None:
    task_failed(alerter, "send", "RelayRefusing: x")
    task_failed(alerter, "send", "RelayRefusing: x")  # another mapped chunk of the same run
    assert _kinds(kit) == []
    second = Alerter(kit.engine, "trigger_emails", "r2", AlertSettings(failed_runs=2), channels=lambda: [channel])
    task_failed(second, "report", "CountsDoNotBalance: y")
    assert _kinds(kit) == [("failed-runs", True)]
    third = Alerter(kit.engine, "trigger_emails", "r3", AlertSettings(failed_runs=2, quarantine_min_events=1),
                    channels=lambda: [channel])
    report_alerts(third, "b3", {"pulled": 4, "quarantined": 2, "ambiguous": 1, "sla": {"breached": False}})
    assert _kinds(kit) == [("failed-runs", False), ("quarantine-share", True), ("ambiguous-sends", True)]
    assert {r["run_id"]: r["outcome"] for r in kit.rows(run_outcome)} == {"r1": "failed", "r2": "failed", "r3": "succeeded"}
    report_alerts(third, "b4", {"pulled": 4, "quarantined": 0, "ambiguous": 0})
    assert [open_ for _, open_ in _kinds(kit)] == [False, False, False]


def test_an_alert_that_cannot_be_written_never_fails_the_task(kit, channel: Channel) -> None:
    class Broken:
        def begin(self) -> Any:
            raise RuntimeError("store down")

        def connect(self) -> Any:
            raise RuntimeError("store down")

    alerter = Alerter(Broken(), "trigger_emails", "r1", channels=lambda: [channel])  # type: ignore[arg-type]
    assert alerter.fire(Firing(kind=AlertKind.FAILED_RUNS, subject="s", detail="d")) is None
    alerter.resolve(AlertKind.FAILED_RUNS)
    task_failed(alerter, "send", "x")
    report_alerts(alerter, "b1", {"pulled": 1})
    assert alerter.sla("b1")({"age_s": 1.0, "where": "x", "threshold_s": 0.5})["notified"] == "alert failed: RuntimeError"
    assert channel.sent == []
