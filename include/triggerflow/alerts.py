"""SLA alerts: the oldest waiting trigger is older than the threshold.

Fired by the run's report (not by a Deadline Alert: in Airflow 3.3.2 a DAG with ``deadline=``
crashes ``dag.test()`` at the end of the run, Deadline Alerts are still experimental, and a
deadline on the *run* would not see a backlog waiting in the source or in the ledger anyway).

Every firing is a row in ``tf_alert`` and an ERROR line in the report task's log. The people in
the Airflow Variable ``triggerflow_alert_emails`` (comma-separated) get an email over connection
``smtp_triggers`` — at most one per ``renotify_s`` (default: the threshold) while the breach lasts,
so a backlog does not send one email a minute.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypedDict

from sqlalchemy import Engine, insert, select, update

from include.triggerflow.addresses import validate_address
from include.triggerflow.mailer import build_message, message_id_for
from include.triggerflow.store.schema import alert
from include.triggerflow.timeutil import utcnow

log = logging.getLogger(__name__)


class AlertKind(StrEnum):
    """``tf_alert.kind``."""

    SLA_BREACH = "sla-breach"


SLA_BREACH = AlertKind.SLA_BREACH
ALERT_EMAILS_VARIABLE = "triggerflow_alert_emails"


class AlertOutcome(TypedDict):
    """What :func:`fire_sla_alert` did: the ``tf_alert`` row, its text, and who was told."""

    alert_id: int
    detail: str
    notified: str


def alert_recipients() -> list[str]:
    """Addresses from the Airflow Variable ``triggerflow_alert_emails`` (none when unset)."""
    from airflow.sdk import Variable

    raw = Variable.get(ALERT_EMAILS_VARIABLE, default=None) or ""
    return [validate_address(a) for a in (part.strip() for part in str(raw).split(",")) if a]


def fire_sla_alert(
    engine: Engine,
    *,
    dag_id: str,
    run_id: str,
    batch_id: str,
    age_s: float,
    where: str | None,
    threshold_s: float,
    recipients: Sequence[str],
    open_session: Callable[[], AbstractContextManager[Any]] | None = None,
    renotify_s: float | None = None,
    now: datetime | None = None,
) -> AlertOutcome:
    """Record the breach, log it, email the recipients unless they were told recently."""
    now = now or utcnow()
    renotify = timedelta(seconds=renotify_s if renotify_s is not None else threshold_s)
    detail = (
        f"the oldest waiting trigger is {age_s / 60:.1f} min old (in the {where}); "
        f"threshold {threshold_s / 60:.0f} min — Adobe's response target is under an hour"
    )
    log.error("SLA alert for %s %s: %s", dag_id, run_id, detail)
    with engine.begin() as conn:
        alert_id: int = conn.execute(
            insert(alert).values(
                kind=SLA_BREACH, dag_id=dag_id, run_id=run_id, batch_id=batch_id, oldest_waiting_age_s=age_s,
                threshold_s=threshold_s, detail=detail, notified=None, fired_at=now,
            ).returning(alert.c.alert_id)
        ).scalar_one()
        last_mail = conn.execute(
            select(alert.c.fired_at)
            .where(alert.c.kind == SLA_BREACH, alert.c.notified.like("emailed %"), alert.c.alert_id != alert_id)
            .order_by(alert.c.fired_at.desc())
            .limit(1)
        ).scalar()
    if not recipients:
        notified = f"nobody: set the Airflow Variable {ALERT_EMAILS_VARIABLE} to be emailed"
    elif last_mail is not None and now - last_mail < renotify:  # fired_at: aware UTC (UtcDateTime)
        notified = f"not emailed again: last email at {last_mail.isoformat()}"
    elif open_session is None:
        notified = "nobody: no mail session"
    else:
        _email(open_session, recipients, alert_id=int(alert_id), dag_id=dag_id, run_id=run_id, detail=detail)
        notified = "emailed " + ", ".join(recipients)
    with engine.begin() as conn:
        conn.execute(update(alert).where(alert.c.alert_id == alert_id).values(notified=notified))
    return {"alert_id": int(alert_id), "detail": detail, "notified": notified}


def _email(open_session: Callable[[], AbstractContextManager[Any]], recipients: Sequence[str], *,
           alert_id: int, dag_id: str, run_id: str, detail: str) -> None:
    subject = f"[triggerflow] SLA alert: {dag_id} is falling behind"
    text = f"{detail}\n\nDAG {dag_id}, run {run_id}.\nSee the run report (tf_run_summary) and `cli status`.\n"
    body = f"<p>{html.escape(detail)}</p><p>DAG {html.escape(dag_id)}, run {html.escape(run_id)}.</p>"
    with open_session() as mail:
        for rcpt in recipients:
            message = build_message(
                from_addr=mail.sender, from_name="triggerflow alerts", to_addr=rcpt, subject=subject,
                text=text, html=body, message_id=message_id_for(f"sla-alert-{alert_id}", mail.message_id_domain),
            )
            mail.send_prepared(rcpt, message)
