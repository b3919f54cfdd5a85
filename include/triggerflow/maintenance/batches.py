"""Whole batches: events, decisions and quarantine rows go together, by age, in chunks.

Why whole batches: a batch is the unit a run processes, clears and replays, and its report is
recomputed from its events, decisions and ledger rows together; deleting some of them would make
a replay of the batch (trigger_reprocess of a quarantined event, say) fail its balance check.

A batch older than the cutoff is KEPT, whole, while an invariant still needs it:

* ``failed`` — its run has no balanced tf_run_summary (failed, or never reported: landing or
  validation died, the report never ran) and it is younger than ``failed_batch_days``: an
  operator may still clear the run, and the run must then reprocess exactly its batch;
* ``ledger`` — it has ledger rows not yet final (pending, scheduled, sending, deferred,
  ambiguous): the send stage renders them from their event's payload;
* ``quarantine`` — an event of it is still quarantined and was quarantined more recently than
  ``quarantine_days`` (its reprocess window).

A purged batch keeps its tf_batch row (purged with the run summaries, ``run_days`` later): a
cleared old run then finds its batch already landed and pulls nothing, instead of landing new
messages under an old run id.

The status summaries: a purged batch's tf_batch_stats row is recounted from what is left of it
(its ledger rows, until they go too) and dropped with its tf_batch row. In tf_source_stats the
cumulative counters (received, sent, failures) stay: the status document's totals never go
backwards because of a purge; the gauges (unprocessed, discarded, retries: what is there now)
follow the rows that are left, which is what a recount gives. ``cli status --recount`` rebuilds
every counter from the rows that are left, so after a purge it lowers the cumulative ones.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, select, update

from include.triggerflow.maintenance.chunks import ChunkCounter, in_chunk
from include.triggerflow.maintenance.plan import Plan
from include.triggerflow.states import EventStatus, SendState
from include.triggerflow.store.schema import (
    batch,
    batch_stats,
    decision,
    event,
    quarantine,
    run_summary,
    send,
    source_stats,
)

log = logging.getLogger(__name__)

#: ledger states whose email is not final: the row (and its event) is still needed to send it
LIVE_STATES = (SendState.PENDING, SendState.SCHEDULED, SendState.SENDING, SendState.DEFERRED, SendState.AMBIGUOUS)
#: tf_source_stats counters that describe what is there now, not what ever happened
GAUGES = ("unprocessed", "discarded", "retries")


class KeepReason:
    FAILED = "failed"
    LEDGER = "ledger"
    QUARANTINE = "quarantine"


@dataclass
class BatchPurge:
    """What the batch purge did (or, in a dry run, would do)."""

    batches: int = 0
    rows: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    kept_ids: dict[str, list[str]] = field(default_factory=dict)
    counter: ChunkCounter = field(default_factory=ChunkCounter)


def keep_reason(conn: Connection, batch_id: str, plan: Plan) -> str | None:
    """Why this old batch must stay (None: it may go). Each query is bounded by the batch's index."""
    created = conn.execute(select(batch.c.created_at).where(batch.c.batch_id == batch_id)).scalar_one_or_none()
    balanced = conn.execute(
        select(run_summary.c.balanced).where(run_summary.c.batch_id == batch_id)
    ).scalar_one_or_none()
    if not balanced and created is not None and created >= plan.failed_batch_cutoff:
        return KeepReason.FAILED
    live = conn.execute(
        select(send.c.send_id).where(send.c.batch_id == batch_id, send.c.state.in_(LIVE_STATES)).limit(1)
    ).first()
    if live is not None:
        return KeepReason.LEDGER
    recent_quarantine = conn.execute(
        select(quarantine.c.event_id)
        .select_from(quarantine.join(event, event.c.event_id == quarantine.c.event_id))
        .where(
            quarantine.c.batch_id == batch_id,
            event.c.status == EventStatus.QUARANTINED,
            quarantine.c.quarantined_at >= plan.quarantine_cutoff,
        )
        .limit(1)
    ).first()
    if recent_quarantine is not None:
        return KeepReason.QUARANTINE
    return None


def _candidates(engine: Engine, cutoff: datetime) -> list[str]:
    """Batches created before ``cutoff`` that still hold events (tf_batch is one row a minute;
    ix_tf_batch_created bounds the read to the old ones)."""
    has_events = select(event.c.event_id).where(event.c.batch_id == batch.c.batch_id).exists()
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(batch.c.batch_id).where(batch.c.created_at < cutoff, has_events).order_by(batch.c.created_at)
            ).scalars()
        )


def _event_range(conn: Connection, batch_id: str) -> tuple[int | None, int | None]:
    # ``event_id + 0``: with a bare min()/max(), PostgreSQL's planner walks the primary key from
    # one end looking for the batch's rows (22 minutes on a 24 M-row tf_event in the soak
    # benchmark); the expression sends it through ix_tf_event_batch (about a millisecond).
    key = event.c.event_id + 0
    lo, hi = conn.execute(select(func.min(key), func.max(key)).where(event.c.batch_id == batch_id)).one()
    return (None if lo is None else int(lo)), (None if hi is None else int(hi))


def _count_batch(conn: Connection, batch_id: str) -> dict[str, int]:
    return {
        t.name: int(conn.execute(select(func.count()).select_from(t).where(t.c.batch_id == batch_id)).scalar_one())
        for t in (decision, quarantine, event)
    }


def settle_stats(conn: Connection, batch_id: str, *, drop: bool = False) -> None:
    """Bring the batch's tf_batch_stats row in line with the rows left of it (or drop it with
    ``drop``) after a purge, moving only its gauges in its source's totals: the cumulative
    counters keep what was purged. A later refresh of the batch (a cleared old run) then
    recounts from this row and changes nothing. Locks in the stats module's order: batch row,
    then source row."""
    from dataclasses import asdict

    from include.triggerflow.stats import BatchCounts, batch_counts

    locked = select(batch_stats).where(batch_stats.c.batch_id == batch_id)
    if conn.dialect.name == "postgresql":
        locked = locked.with_for_update()
    row = conn.execute(locked).mappings().first()
    if row is None:
        return
    old = BatchCounts.from_row(row)
    if drop:
        conn.execute(delete(batch_stats).where(batch_stats.c.batch_id == batch_id))
        new = BatchCounts()
    else:
        new = batch_counts(conn, batch_id)
        conn.execute(update(batch_stats).where(batch_stats.c.batch_id == batch_id).values(**asdict(new)))
    shares = {name: int(getattr(new, name)) - int(getattr(old, name)) for name in GAUGES}
    if any(shares.values()):
        conn.execute(
            update(source_stats)
            .where(source_stats.c.source == row["source"])
            .values(**{name: source_stats.c[name] + n for name, n in shares.items()})
        )


def _purge_one(engine: Engine, batch_id: str, plan: Plan, result: BatchPurge) -> bool:
    """Delete one batch's decisions, quarantine rows and events, ``chunk_rows`` events per
    transaction (children first: tf_decision and tf_quarantine reference tf_event). The keep
    check is repeated inside the first chunk's transaction, so a batch that a run touched between
    the listing and the delete is left alone."""
    settings = plan.settings
    with engine.connect() as conn:
        lo, hi = _event_range(conn, batch_id)
    if lo is None or hi is None:
        return False
    start = lo
    first = True
    while start <= hi:
        end = start + settings.chunk_rows

        def work(conn: Connection, start: int = start, end: int = end, first: bool = first) -> dict[str, int] | None:
            if first and keep_reason(conn, batch_id, plan) is not None:
                return None
            counts: dict[str, int] = {}
            for table in (decision, quarantine, event):
                in_range = and_(table.c.batch_id == batch_id, table.c.event_id >= start, table.c.event_id < end)
                counts[table.name] = int(conn.execute(delete(table).where(in_range)).rowcount or 0)
            return counts

        counts = in_chunk(engine, work, result.counter, lock_timeout_ms=settings.lock_timeout_ms)
        if counts is None and first:
            return False  # kept after all, or the first chunk could not get its locks
        for name, n in (counts or {}).items():
            result.rows[name] += n
        first = False
        start = end
    # its own counter: the chunk counts in the log are the deletes'
    in_chunk(engine, lambda conn: settle_stats(conn, batch_id), ChunkCounter(), lock_timeout_ms=settings.lock_timeout_ms)
    return True


def purge_batches(engine: Engine, plan: Plan, *, dry_run: bool) -> BatchPurge:
    """Purge every batch older than the plan's batch cutoff that no invariant still needs."""
    result = BatchPurge()
    candidates = _candidates(engine, plan.batch_cutoff)
    log.info("%d batch(es) created before %s hold events", len(candidates), plan.batch_cutoff.isoformat())
    for n, batch_id in enumerate(candidates, start=1):
        with engine.connect() as conn:
            reason = keep_reason(conn, batch_id, plan)
            if reason is not None:
                result.kept[reason] += 1
                result.kept_ids.setdefault(reason, []).append(batch_id)
                continue
            if dry_run:
                result.rows.update(_count_batch(conn, batch_id))
                result.batches += 1
                continue
        if _purge_one(engine, batch_id, plan, result):
            result.batches += 1
        if n % 100 == 0:
            log.info("batches: %d/%d looked at, %d purged, rows so far %s", n, len(candidates), result.batches, dict(result.rows))
    return result


def purge_tombstones(engine: Engine, plan: Plan, *, dry_run: bool, counter: ChunkCounter) -> dict[str, int]:
    """tf_batch rows older than ``run_days`` without events, with their run summaries (and any
    tf_batch_stats row left behind), ``chunk_rows`` batches per transaction."""
    settings = plan.settings
    no_events = ~select(event.c.event_id).where(event.c.batch_id == batch.c.batch_id).exists()
    old = select(batch.c.batch_id).where(batch.c.created_at < plan.run_cutoff, no_events).order_by(batch.c.created_at)
    totals: Counter[str] = Counter()
    if dry_run:
        with engine.connect() as conn:
            totals[batch.name] = int(conn.execute(select(func.count()).select_from(old.subquery())).scalar_one())
        return dict(totals)
    while True:

        def work(conn: Connection) -> dict[str, int]:
            ids = list(conn.execute(old.limit(settings.chunk_rows)).scalars())
            if not ids:
                return {}
            for batch_id in ids:
                settle_stats(conn, batch_id, drop=True)
            return {batch.name: int(conn.execute(delete(batch).where(batch.c.batch_id.in_(ids))).rowcount or 0)}

        done = in_chunk(engine, work, counter, lock_timeout_ms=settings.lock_timeout_ms)
        if not done:
            break
        totals.update(done)
    return dict(totals)


def kept_detail(result: BatchPurge) -> str:
    """The tf_maintenance detail of the kept batches: how many per reason, a few ids each."""
    parts = []
    for reason, n in sorted(result.kept.items()):
        ids: list[Any] = result.kept_ids.get(reason, [])[:5]
        parts.append(f"{n} {reason} ({', '.join(map(str, ids))}{', ...' if n > len(ids) else ''})")
    return "kept: " + "; ".join(parts) if parts else "kept: none"
