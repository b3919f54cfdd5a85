"""The words of an alert: email subject and body, and the webhook's JSON.

A detail may quote what a server or an event said (an SMTP reply, an IMS error description):
hostile text. So the subject line is built from the kind and the DAG id only, the HTML body
escapes every value, control characters are replaced, and the length is capped. The Airflow
notifiers render their fields as Jinja templates when *called*; :mod:`.channels` calls their
``notify`` directly so that no text here is ever evaluated as a template.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from include.triggerflow.alerts.kinds import AlertKind, Firing

MAX_DETAIL_CHARS = 2_000
_SPACE = re.compile(r"[\t\n\r\v\f\u2028\u2029]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

HEADLINES: dict[AlertKind, str] = {
    AlertKind.SLA_BREACH: "SLA alert: {dag} is falling behind",
    AlertKind.FAILED_RUNS: "{dag}: runs keep failing",
    AlertKind.SOURCE_STALLED: "{dag}: the trigger source is not advancing",
    AlertKind.CREDENTIALS_REFUSED: "{dag}: Adobe refused the credentials",
    AlertKind.QUARANTINE_SHARE: "{dag}: many triggers quarantined",
    AlertKind.AMBIGUOUS_SENDS: "{dag}: emails with an unknown outcome",
    AlertKind.RELAY_REFUSING: "{dag}: the SMTP relay refuses the messages",
}

WHAT_TO_DO: dict[AlertKind, str] = {
    AlertKind.SLA_BREACH: "See the run report (tf_run_summary) and `cli status`.",
    AlertKind.FAILED_RUNS: "Open the failed runs' task logs in Airflow; the run outcomes are in tf_run_outcome.",
    AlertKind.SOURCE_STALLED: "Check `cli status` (pointer, last error) and the source's task logs.",
    AlertKind.CREDENTIALS_REFUSED: "Fix the credential in the named Airflow connection; nothing is pulled until then.",
    AlertKind.QUARANTINE_SHARE: "See the quarantine reasons on the Triggers page or in tf_quarantine.",
    AlertKind.AMBIGUOUS_SENDS: "The ledger holds them as 'ambiguous'; decide whether to resend (ambiguous_policy).",
    AlertKind.RELAY_REFUSING: "The rest of the chunk stays pending; fix the relay (credentials, SPF/DKIM/DMARC, "
    "content filter) and the next run sends it.",
}


def clean(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """One safe, bounded line: line breaks become spaces, control and bidi characters U+FFFD, capped."""
    out = _CONTROL.sub("\ufffd", _SPACE.sub(" ", str(text)))
    return out if len(out) <= limit else out[: limit - 1] + "…"


@dataclass(frozen=True)
class AlertMessage:
    """What every channel sends for one ``tf_alert`` row."""

    subject: str  # the email subject: from the kind and the DAG id, never from event data
    text: str
    html: str
    payload: dict[str, Any]  # the webhook's JSON; ``text`` is what chat tools show


def headline(firing: Firing) -> str:
    return HEADLINES[firing.kind].format(dag=clean(firing.dag_id or "triggerflow", 100))


def alert_message(firing: Firing, *, alert_id: int, fired_at: datetime) -> AlertMessage:
    title = headline(firing)
    detail = clean(firing.detail)
    where = ", ".join(
        f"{name} {clean(value, 250)}"
        for name, value in (("DAG", firing.dag_id), ("run", firing.run_id), ("about", firing.subject))
        if value
    )
    todo = WHAT_TO_DO[firing.kind]
    text = f"{detail}\n\n{where}.\n{todo}\n\n(alert {alert_id}, {firing.kind.value}, fired {fired_at.isoformat()})\n"
    body = (
        f"<p>{html.escape(detail)}</p><p>{html.escape(where)}.</p><p>{html.escape(todo)}</p>"
        f"<p><small>alert {alert_id}, {html.escape(firing.kind.value)}, fired {html.escape(fired_at.isoformat())}"
        "</small></p>"
    )
    payload = {
        "text": f"[triggerflow] {title}: {detail}",
        "alert_id": alert_id,
        "kind": firing.kind.value,
        "subject": clean(firing.subject, 250),
        "value": firing.value,
        "threshold": firing.threshold,
        "dag_id": firing.dag_id,
        "run_id": firing.run_id,
        "detail": detail,
        "fired_at": fired_at.isoformat(),
    }
    return AlertMessage(subject=f"[triggerflow] {title}", text=text, html=body, payload=payload)
