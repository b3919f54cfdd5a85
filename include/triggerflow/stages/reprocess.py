"""Reprocessing after a fix: quarantined or unmatched events of a time range, once more.

Once the cause is fixed (routing config corrected, missing profiles loaded), the batches that
hold such events are run through validate -> reconcile -> send -> report again. Every stage is
idempotent per batch, so this is exactly "clear those runs from validate on": events that now
pass validation or now match a profile get their email; emails already sent stay sent once
(the ledger's idempotency keys); the batch's report is recomputed and must balance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, func, select

from include.triggerflow.config import RoutingConfig
from include.triggerflow.payloads import ReprocessedXCom
from include.triggerflow.render import Renderer
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.stages.report import report_batch
from include.triggerflow.stages.send import MailSession, SendOptions, send_chunk
from include.triggerflow.stages.validate import validate_batch
from include.triggerflow.states import Decision, EventStatus
from include.triggerflow.store.schema import decision, event, send
from include.triggerflow.timeutil import as_utc, utcnow

log = logging.getLogger(__name__)

#: which events a run reprocesses (the DAG's ``what`` param): quarantined ones, unmatched ones, both
WHAT = (EventStatus.QUARANTINED.value, Decision.UNMATCHED.value, "both")
#: how far back ``since`` reaches when the run does not say: a day, from the start of its hour
DEFAULT_LOOKBACK = timedelta(days=1)


@dataclass(frozen=True)
class Reprocessed:
    batch_id: str
    quarantined_before: int
    quarantined_after: int
    unmatched_before: int
    unmatched_after: int
    sent_now: int
    skipped_already_sent: int

    def as_xcom(self) -> ReprocessedXCom:
        return {
            "batch_id": self.batch_id,
            "quarantined_before": self.quarantined_before,
            "quarantined_after": self.quarantined_after,
            "unmatched_before": self.unmatched_before,
            "unmatched_after": self.unmatched_after,
            "sent_now": self.sent_now,
            "skipped_already_sent": self.skipped_already_sent,
        }


def time_range(since: str | None, until: str | None, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The receive-time range ``[since, until)`` a run reprocesses, from its params (ISO 8601
    text, naive taken as UTC). ``since`` empty: :data:`DEFAULT_LOOKBACK` before ``now`` from the
    start of that hour; ``until`` empty: ``now``. Resolved when the run starts, not when the DAG
    file is parsed, so the serialised DAG does not change with the clock."""
    now = as_utc(now) if now is not None else utcnow()
    start = as_utc(datetime.fromisoformat(since)) if since else (now - DEFAULT_LOOKBACK).replace(
        minute=0, second=0, microsecond=0
    )
    end = as_utc(datetime.fromisoformat(until)) if until else now
    return start, end


def find_batches(engine: Engine, since: datetime, until: datetime, what: str = "both") -> list[str]:
    """Batches with events received in [since, until) that are quarantined and/or unmatched."""
    if what not in WHAT:
        raise ValueError(f"what must be one of {WHAT}, not {what!r}")
    in_range = and_(event.c.received_at >= since, event.c.received_at < until)
    found: set[str] = set()
    with engine.connect() as conn:
        if what in (EventStatus.QUARANTINED, "both"):
            found.update(
                conn.execute(select(event.c.batch_id).where(in_range, event.c.status == EventStatus.QUARANTINED).distinct()).scalars()
            )
        if what in (Decision.UNMATCHED, "both"):
            found.update(
                conn.execute(
                    select(event.c.batch_id)
                    .join(decision, decision.c.event_id == event.c.event_id)
                    .where(in_range, decision.c.decision == Decision.UNMATCHED)
                    .distinct()
                ).scalars()
            )
    return sorted(found)


def _snapshot(engine: Engine, batch_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        quarantined = conn.execute(
            select(func.count()).select_from(event).where(event.c.batch_id == batch_id, event.c.status == EventStatus.QUARANTINED)
        ).scalar_one()
        unmatched = conn.execute(
            select(func.count()).select_from(decision).where(decision.c.batch_id == batch_id, decision.c.decision == Decision.UNMATCHED)
        ).scalar_one()
    return {"quarantined": int(quarantined), "unmatched": int(unmatched)}


def reprocess_batch(
    engine: Engine,
    batch_id: str,
    routing: RoutingConfig,
    renderer: Renderer,
    open_session: Callable[[], AbstractContextManager[MailSession]],
    *,
    dag_id: str,
    run_id: str,
    options: SendOptions | None = None,
) -> Reprocessed:
    before = _snapshot(engine, batch_id)
    validate_batch(engine, batch_id, routing)
    reconcile_batch(engine, batch_id, routing)
    with engine.connect() as conn:
        chunks = sorted(set(conn.execute(select(send.c.chunk).where(send.c.batch_id == batch_id).distinct()).scalars()))
    results: list[dict[str, Any]] = [
        dict(send_chunk(engine, batch_id, c, routing, renderer, open_session, options).as_xcom()) for c in chunks
    ]
    report = report_batch(
        engine, batch_id, dag_id=dag_id, run_id=run_id, send_results=results, note=f"reprocessed by {dag_id} {run_id}"
    )
    after = _snapshot(engine, batch_id)
    outcome = Reprocessed(
        batch_id=batch_id,
        quarantined_before=before["quarantined"],
        quarantined_after=after["quarantined"],
        unmatched_before=before["unmatched"],
        unmatched_after=after["unmatched"],
        sent_now=report.counts["this_run"]["sent"],
        skipped_already_sent=report.counts["this_run"]["skipped_already_sent"],
    )
    log.info("reprocessed %s", outcome)
    return outcome
