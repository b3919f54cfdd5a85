"""Latency and SLA: how long triggers took to become emails, and how long the oldest one waits.

Adobe's figure for this integration is a response "typically under an hour". Each run reports:

* ``latency_s`` — trigger fired (``triggerTimestamp``) → SMTP server accepted (the 250), for every
  email this run sent (its own batch and any released from quiet hours): count, p50, p95, p99, max;
* ``oldest_waiting_age_s`` — the age of the oldest trigger not yet turned into an email or a
  decision, wherever it waits:

  - in the source: when this run's pull stopped at ``max_events`` more messages were waiting; the
    next one is about as old as the newest trigger pulled (sources deliver in arrival order);
  - in the store: ledger rows ``pending``/``deferred``/``sending`` of any batch (a failed run,
    a greylisting server), and landed events of other batches never validated or reconciled.

  Emails held on purpose for quiet hours (``scheduled``) are not "waiting": they wait by rule.

When ``oldest_waiting_age_s`` passes the threshold (default 30 min, well before the hour),
:mod:`include.triggerflow.alerts` fires.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import TypedDict

from sqlalchemy import Engine, and_, func, select

from include.triggerflow.states import WAITING_STATES, EventStatus, SendAction
from include.triggerflow.store.schema import decision, event, send, send_log
from include.triggerflow.timeutil import utcnow

DEFAULT_ALERT_AFTER_S = 30 * 60
__all__ = [
    "DEFAULT_ALERT_AFTER_S",
    "WAITING_STATES",
    "LatencySummary",
    "Waiting",
    "latency_summary",
    "oldest_waiting",
    "percentile",
    "run_latencies",
]


class LatencySummary(TypedDict):
    """Seconds from trigger to SMTP acceptance over a run's emails (None: no email)."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


class Waiting(TypedDict):
    """The oldest trigger still waiting: its age in seconds and where it waits (None: nothing)."""

    age_s: float | None
    where: str | None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list: a value that was observed."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def latency_summary(values: Sequence[float]) -> LatencySummary:
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    return {
        "count": len(ordered),
        "p50": round(percentile(ordered, 50), 3),
        "p95": round(percentile(ordered, 95), 3),
        "p99": round(percentile(ordered, 99), 3),
        "max": round(ordered[-1], 3),
    }


def run_latencies(engine: Engine, run_id: str) -> list[float]:
    """Seconds from trigger to SMTP acceptance of every email sent (or resent) by ``run_id``."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(send.c.trigger_ts, send_log.c.at)
            .join(send, send.c.send_id == send_log.c.send_id)
            .where(
                send_log.c.run_id == run_id,
                send_log.c.action.in_((SendAction.SENT, SendAction.RESENT)),
                send.c.trigger_ts.is_not(None),
            )
        ).all()
    return [(at.timestamp() * 1000 - ts) / 1000 for ts, at in rows]  # ``at``: aware UTC (UtcDateTime)


def oldest_waiting(
    engine: Engine, batch_id: str, *, source_capped: bool, now: datetime | None = None
) -> Waiting:
    """``{"age_s", "where"}`` of the oldest trigger still waiting (None when nothing waits)."""
    now = now or utcnow()
    now_ms = now.timestamp() * 1000
    candidates: list[tuple[float, str]] = []
    with engine.connect() as conn:
        if source_capped:
            newest = conn.execute(select(func.max(event.c.trigger_ts)).where(event.c.batch_id == batch_id)).scalar()
            if newest is not None:
                candidates.append((now_ms - newest, "source (the pull stopped at max_events)"))
        in_ledger = conn.execute(select(func.min(send.c.trigger_ts)).where(send.c.state.in_(WAITING_STATES))).scalar()
        if in_ledger is not None:
            candidates.append((now_ms - in_ledger, "send ledger (pending, deferred or sending)"))
        undecided = conn.execute(
            select(func.min(event.c.trigger_ts))
            .select_from(event.outerjoin(decision, decision.c.event_id == event.c.event_id))
            .where(
                event.c.batch_id != batch_id,
                event.c.trigger_ts.is_not(None),
                (event.c.status == EventStatus.LANDED)
                | and_(event.c.status == EventStatus.VALID, decision.c.event_id.is_(None)),
            )
        ).scalar()
        if undecided is not None:
            candidates.append((now_ms - undecided, "landed events of another batch not yet processed"))
    if not candidates:
        return {"age_s": None, "where": None}
    age_ms, where = max(candidates)
    return {"age_s": round(max(age_ms, 0) / 1000, 3), "where": where}
