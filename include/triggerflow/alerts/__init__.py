"""Alerts an operator gets without looking.

The conditions (:mod:`.detectors`), the ``tf_alert`` rows and the rate limit (:mod:`.record`), the
Airflow notifiers that tell people (:mod:`.channels`: SmtpNotifier to the Variable
``triggerflow_alert_emails``, HttpNotifier to the optional ``triggerflow_alert_webhook``), the
words (:mod:`.texts`), and where the DAG checks them (:mod:`.checks`, :mod:`.callbacks`).
"""

from include.triggerflow.alerts.channels import (
    Channel,
    EmailChannel,
    WebhookChannel,
    airflow_channels,
    alert_recipients,
)
from include.triggerflow.alerts.kinds import ALERT_EMAILS_VARIABLE, SLA_BREACH, AlertKind, AlertOutcome, Firing
from include.triggerflow.alerts.record import fire, fire_sla_alert, resolve

__all__ = [
    "ALERT_EMAILS_VARIABLE",
    "SLA_BREACH",
    "AlertKind",
    "AlertOutcome",
    "Channel",
    "EmailChannel",
    "Firing",
    "WebhookChannel",
    "airflow_channels",
    "alert_recipients",
    "fire",
    "fire_sla_alert",
    "resolve",
]
