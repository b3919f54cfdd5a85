"""Firing and resolving alerts: the ``tf_alert`` rows and the rate limit.

Every firing is a row (the history an operator reads) and an ERROR log line. Somebody is told at
most once per ``renotify`` while the condition lasts: a firing notifies unless a row of the same
(kind, subject) that is still active (``resolved_at`` NULL) told somebody less than ``renotify``
ago. When the condition clears, :func:`resolve` stamps ``resolved_at`` on the active rows of that
(kind, subject), so the next breach notifies at once. A row with ``resolved_at`` NULL is an
*active* alert (the Triggers page lists them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Engine, insert, or_, select, update

from include.triggerflow.alerts.channels import NOBODY, Channel
from include.triggerflow.alerts.kinds import SLA_BREACH, AlertKind, AlertOutcome, Firing
from include.triggerflow.alerts.texts import alert_message, clean
from include.triggerflow.store.schema import alert
from include.triggerflow.timeutil import utcnow

log = logging.getLogger(__name__)

# tf_alert.notified of a row that told somebody (what the channels return on success)
_TOLD = ("emailed %", "posted %")


def _told() -> ColumnElement[bool]:
    return or_(*(alert.c.notified.like(p) for p in _TOLD))


def fire(
    engine: Engine,
    firing: Firing,
    channels: Sequence[Channel] | None,
    *,
    renotify_s: float,
    now: datetime | None = None,
) -> AlertOutcome:
    """Record the firing, and tell the channels unless this (kind, subject) told somebody less
    than ``renotify_s`` ago while active. Never raises because of a channel."""
    now = now or utcnow()
    detail = clean(firing.detail)
    subject = clean(firing.subject, 250)
    log.error("%s alert (%s): %s", firing.kind.value, subject, detail)
    with engine.begin() as conn:
        alert_id = int(
            conn.execute(
                insert(alert).values(
                    kind=firing.kind.value, subject=subject, value=firing.value, threshold_s=firing.threshold,
                    dag_id=firing.dag_id, run_id=firing.run_id, batch_id=firing.batch_id,
                    oldest_waiting_age_s=firing.oldest_waiting_age_s, detail=detail, notified=None, fired_at=now,
                ).returning(alert.c.alert_id)
            ).scalar_one()
        )
        last_told = conn.execute(
            select(alert.c.fired_at)
            .where(
                alert.c.kind == firing.kind.value, alert.c.subject == subject, alert.c.resolved_at.is_(None),
                alert.c.alert_id != alert_id, _told(),
            )
            .order_by(alert.c.fired_at.desc())
            .limit(1)
        ).scalar()
    if last_told is not None and now - last_told < timedelta(seconds=renotify_s):  # aware UTC (UtcDateTime)
        notified = f"not notified again: last notice at {last_told.isoformat()}"
    elif channels is None:
        notified = "nobody: no channel"
    else:
        message = alert_message(firing, alert_id=alert_id, fired_at=now)
        results = [channel.send(message) for channel in channels]
        told = [r for r in results if r.startswith(("emailed ", "posted "))]
        # the told ones first: the rate limit reads the start of the text
        notified = "; ".join(told + [r for r in results if r not in told]) or NOBODY
    with engine.begin() as conn:
        conn.execute(update(alert).where(alert.c.alert_id == alert_id).values(notified=notified))
    return {"alert_id": alert_id, "detail": detail, "notified": notified}


def resolve(engine: Engine, kind: AlertKind, subject: str | None = None, *, now: datetime | None = None) -> int:
    """The condition cleared: stamp ``resolved_at`` on the active rows of (kind, subject), or of
    every subject of the kind when ``subject`` is None. Returns how many rows it resolved."""
    where = [alert.c.kind == kind.value, alert.c.resolved_at.is_(None)]
    if subject is not None:
        where.append(alert.c.subject == clean(subject, 250))
    with engine.begin() as conn:
        resolved = conn.execute(update(alert).where(*where).values(resolved_at=now or utcnow())).rowcount
    if resolved:
        log.info("%s alert (%s) resolved: the condition cleared", kind.value, subject or "every subject")
    return int(resolved or 0)


def fire_sla_alert(
    engine: Engine,
    *,
    dag_id: str,
    run_id: str,
    batch_id: str,
    age_s: float,
    where: str | None,
    threshold_s: float,
    channels: Sequence[Channel] | None,
    renotify_s: float | None = None,
    now: datetime | None = None,
) -> AlertOutcome:
    """The SLA breach (the oldest waiting trigger is older than the threshold), renotified every
    ``renotify_s`` (default: the threshold) while the breach lasts."""
    detail = (
        f"the oldest waiting trigger is {age_s / 60:.1f} min old (in the {where}); "
        f"threshold {threshold_s / 60:.0f} min — Adobe's response target is under an hour"
    )
    firing = Firing(
        kind=SLA_BREACH, subject=dag_id, detail=detail, value=age_s, threshold=threshold_s, dag_id=dag_id,
        run_id=run_id, batch_id=batch_id, oldest_waiting_age_s=age_s,
    )
    return fire(engine, firing, channels, renotify_s=renotify_s if renotify_s is not None else threshold_s, now=now)
