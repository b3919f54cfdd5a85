"""What an alert is: its kind, the firing a detector hands over, and what firing it did.

A detector says *that* something is wrong (a :class:`Firing`); :mod:`.record` decides whether
anybody is told (the rate limit) and writes the ``tf_alert`` row; :mod:`.channels` does the telling.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TypedDict


class AlertKind(StrEnum):
    """``tf_alert.kind``: one per condition an operator is told about without looking."""

    SLA_BREACH = "sla-breach"  # the oldest waiting trigger is older than the threshold
    FAILED_RUNS = "failed-runs"  # N runs of the DAG failed in a row
    SOURCE_STALLED = "source-stalled"  # the source's pointer does not move while it holds messages
    CREDENTIALS_REFUSED = "credentials-refused"  # IMS or the source refused the credentials
    QUARANTINE_SHARE = "quarantine-share"  # too large a share of a batch went to quarantine
    AMBIGUOUS_SENDS = "ambiguous-sends"  # emails whose outcome is unknown (a task died mid-send)
    RELAY_REFUSING = "relay-refusing"  # the same message-level SMTP refusal stopped a chunk


SLA_BREACH = AlertKind.SLA_BREACH
ALERT_EMAILS_VARIABLE = "triggerflow_alert_emails"
SMTP_ALERTS_CONN_ID = "smtp_alerts"  # optional: a relay for alerts apart from the one that sends triggers
SMTP_TRIGGERS_CONN_ID = "smtp_triggers"  # the fallback
WEBHOOK_CONN_ID = "triggerflow_alert_webhook"  # optional: a chat tool's incoming webhook

# Defaults of the DAG Params that set the thresholds (dags/trigger_emails.py; README "Alerts").
DEFAULT_FAILED_RUNS = 3
DEFAULT_SOURCE_STALL_MINUTES = 15.0
DEFAULT_QUARANTINE_SHARE = 0.2
DEFAULT_QUARANTINE_MIN_EVENTS = 20
DEFAULT_RENOTIFY_MINUTES = 60.0


@dataclass(frozen=True)
class Firing:
    """A detector's finding: the condition holds now.

    ``subject`` says what within the kind (a DAG, a source, a connection): rate limit and
    resolution are per (kind, subject). ``detail`` is the one-line text an operator reads; a
    detector escapes nothing (the channels do) but must never put a secret in it.
    """

    kind: AlertKind
    subject: str
    detail: str
    value: float | None = None
    threshold: float | None = None
    dag_id: str | None = None
    run_id: str | None = None
    batch_id: str | None = None
    oldest_waiting_age_s: float | None = None  # the SLA alert's figure (its historical column)


class AlertOutcome(TypedDict):
    """What firing did: the ``tf_alert`` row, its text, and who was told (or why nobody was)."""

    alert_id: int
    detail: str
    notified: str
