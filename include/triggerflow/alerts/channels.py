"""Where alerts go: Airflow notifiers.

* email — the smtp provider's ``SmtpNotifier`` to the addresses in the Variable
  ``triggerflow_alert_emails``, over connection ``smtp_alerts`` when it exists, else
  ``smtp_triggers`` (a relay that refuses the trigger emails is then also the one that would carry
  the alert about it: give alerts their own relay in production);
* chat — the http provider's ``HttpNotifier`` POSTing the alert as JSON to connection
  ``triggerflow_alert_webhook`` (its host is the incoming-webhook URL), only when that connection
  exists.

The notifiers' ``notify`` is called directly rather than the notifier itself: calling it renders
every field as a Jinja template first, and an alert quotes hostile text. A channel that fails says
so in its result; it never raises into the run (an alert is never a new failure).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from include.triggerflow.addresses import validate_address
from include.triggerflow.alerts.kinds import (
    ALERT_EMAILS_VARIABLE,
    SMTP_ALERTS_CONN_ID,
    SMTP_TRIGGERS_CONN_ID,
    WEBHOOK_CONN_ID,
)
from include.triggerflow.alerts.texts import AlertMessage, clean

log = logging.getLogger(__name__)

NOBODY = f"nobody: set the Airflow Variable {ALERT_EMAILS_VARIABLE} to be emailed"


class Channel(Protocol):
    """One way of telling people. ``send`` returns what it did, as ``tf_alert.notified`` text:
    ``emailed …`` / ``posted …`` when somebody was told (what the rate limit counts), anything
    else when not."""

    def send(self, message: AlertMessage) -> str: ...


def alert_recipients() -> list[str]:
    """Addresses from the Airflow Variable ``triggerflow_alert_emails`` (none when unset)."""
    from airflow.sdk import Variable

    raw = Variable.get(ALERT_EMAILS_VARIABLE, default=None) or ""
    return [validate_address(a) for a in (part.strip() for part in str(raw).split(",")) if a]


def connection_exists(conn_id: str) -> bool:
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException, or no way to look it up: not configured
        return False
    return True


@dataclass(frozen=True)
class EmailChannel:
    recipients: Sequence[str]
    smtp_conn_id: str

    def send(self, message: AlertMessage) -> str:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        if not self.recipients:
            return NOBODY
        notifier = SmtpNotifier(
            to=list(self.recipients), subject=message.subject, html_content=message.html,
            smtp_conn_id=self.smtp_conn_id, custom_headers={"X-Triggerflow-Alert": str(message.payload["alert_id"])},
        )
        try:
            notifier.notify({})  # not notifier({}): that renders the fields as templates
        except Exception as exc:
            log.exception("alert email over %s failed", self.smtp_conn_id)
            return f"email failed over {self.smtp_conn_id}: {clean(f'{exc.__class__.__name__}: {exc}', 300)}"
        return "emailed " + ", ".join(self.recipients)


@dataclass(frozen=True)
class WebhookChannel:
    http_conn_id: str = WEBHOOK_CONN_ID

    def send(self, message: AlertMessage) -> str:
        from airflow.providers.http.notifications.http import HttpNotifier

        notifier = HttpNotifier(
            http_conn_id=self.http_conn_id, json=message.payload, headers={"Content-Type": "application/json"},
        )
        try:
            notifier.notify({})
        except Exception as exc:
            log.exception("alert webhook %s failed", self.http_conn_id)
            return f"webhook {self.http_conn_id} failed: {clean(exc.__class__.__name__, 100)}"
        return f"posted to webhook {self.http_conn_id}"


def airflow_channels() -> list[Channel]:
    """The configured channels: email (always; it says "nobody" without recipients) and the
    webhook when its connection exists."""
    smtp_conn = SMTP_ALERTS_CONN_ID if connection_exists(SMTP_ALERTS_CONN_ID) else SMTP_TRIGGERS_CONN_ID
    channels: list[Channel] = [EmailChannel(alert_recipients(), smtp_conn)]
    if connection_exists(WEBHOOK_CONN_ID):
        channels.append(WebhookChannel(WEBHOOK_CONN_ID))
    return channels
