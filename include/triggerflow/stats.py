"""Status summaries: each batch's counters in ``tf_batch_stats``, their sums per source in
``tf_source_stats``, so the status document costs the same at 10 k or 10 M stored events.

Why: the status endpoint is polled (and may be public); counting ``tf_event`` / ``tf_send`` per
request grows with everything ever landed (0.32 s at 400 k events) and lets anyone make the store
work. Instead every stage that changes a batch's rows calls :func:`refresh_batch_stats` at its end:
it recounts THAT batch only (every query bounded by an index on ``batch_id``) and adds the
difference to the source's totals in the same transaction.

Exactness under concurrency (parallel send chunks of one batch refresh it at the same time): a
refresh first makes sure the batch's ``tf_batch_stats`` row exists, then locks it (``SELECT ... FOR
UPDATE`` on PostgreSQL; SQLite serialises writers anyway), counts after taking the lock (so it sees
every transaction that refreshed before it), writes the new counters and adds ``new - old`` to the
source row. Locks are always taken in that order (batch row, then source row), and one batch per
transaction when given an engine, so two refreshes cannot deadlock; the source update is an
in-place ``col = col + delta``, so refreshes of different batches of one source add up.

A refresh that fails must not fail its stage (:func:`refresh_quietly`): the counters are only
monitoring; the next refresh of the batch, or ``cli status --recount`` (:func:`rebuild_all`),
repairs them.

Counters (see ``store/schema.py``): ``received`` = the batch's ``tf_event`` rows; ``unprocessed``
= its events ``landed``, or ``valid`` without a ``tf_decision`` row; ``discarded`` = its events
still ``quarantined`` (with a ``tf_quarantine`` row); ``failures`` / ``retries`` / ``sent`` = its
``tf_send`` rows in state ``failed`` / ``deferred`` / ``sent``; ``processing_ms_sum`` = the sum over
its ``sent`` rows of ``sent_at - event.received_at`` in milliseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)

from include.triggerflow.states import EventStatus, SendState
from include.triggerflow.store.bulk import dialect_insert
from include.triggerflow.store.schema import (
    STATS_COLUMNS,
    batch,
    batch_stats,
    decision,
    event,
    quarantine,
    send,
    source_stats,
)
from include.triggerflow.timeutil import utcnow

log = logging.getLogger(__name__)

__all__ = [
    "BatchCounts",
    "batch_counts",
    "rebuild_all",
    "recount_source",
    "refresh_batch_stats",
    "refresh_quietly",
]


@dataclass(frozen=True)
class BatchCounts:
    """The status counters of one batch (or, summed, of one source)."""

    received: int = 0
    unprocessed: int = 0
    discarded: int = 0
    failures: int = 0
    retries: int = 0
    sent: int = 0
    processing_ms_sum: float = 0.0

    def minus(self, other: BatchCounts) -> BatchCounts:
        return BatchCounts(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def plus(self, other: BatchCounts) -> BatchCounts:
        return BatchCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @property
    def is_zero(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))

    @classmethod
    def from_row(cls, row: Any) -> BatchCounts:
        if row is None:
            return cls()
        values = {name: int(row[name] or 0) for name in STATS_COLUMNS}
        return cls(**values, processing_ms_sum=float(row["processing_ms_sum"] or 0.0))


def _unprocessed() -> Any:
    undecided = ~select(literal(1)).where(decision.c.event_id == event.c.event_id).exists()
    return or_(event.c.status == EventStatus.LANDED, and_(event.c.status == EventStatus.VALID, undecided))


def batch_counts(conn: Connection, batch_id: str) -> BatchCounts:
    """Recount one batch from its own rows (every query by ``batch_id``, bounded by the batch)."""
    received = int(conn.execute(select(func.count()).select_from(event).where(event.c.batch_id == batch_id)).scalar_one())
    unprocessed = int(
        conn.execute(
            select(func.count()).select_from(event).where(event.c.batch_id == batch_id, _unprocessed())
        ).scalar_one()
    )
    discarded = int(
        conn.execute(
            select(func.count())
            .select_from(event.join(quarantine, quarantine.c.event_id == event.c.event_id))
            .where(event.c.batch_id == batch_id, event.c.status == EventStatus.QUARANTINED)
        ).scalar_one()
    )
    ledger = {
        SendState(state): int(n)
        for state, n in conn.execute(
            select(send.c.state, func.count())
            .where(send.c.batch_id == batch_id, send.c.state.in_((SendState.FAILED, SendState.DEFERRED, SendState.SENT)))
            .group_by(send.c.state)
        )
    }
    processing_ms = 0.0
    if ledger.get(SendState.SENT):
        # Python rather than SQL date arithmetic: the two dialects differ, and the rows are one batch's.
        for sent_at, received_at in conn.execute(
            select(send.c.sent_at, event.c.received_at)
            .select_from(send.join(event, event.c.event_id == send.c.event_id))
            .where(send.c.batch_id == batch_id, send.c.state == SendState.SENT, send.c.sent_at.is_not(None))
        ):
            # both UtcDateTime columns: aware UTC on every dialect
            processing_ms += (sent_at - received_at).total_seconds() * 1000
    return BatchCounts(
        received=received,
        unprocessed=unprocessed,
        discarded=discarded,
        failures=ledger.get(SendState.FAILED, 0),
        retries=ledger.get(SendState.DEFERRED, 0),
        sent=ledger.get(SendState.SENT, 0),
        processing_ms_sum=processing_ms,
    )


def _insert_ignore(conn: Connection, table: Any, values: dict[str, Any], key: str) -> None:
    """INSERT the row unless one with the same primary key exists (no error, no lock wait beyond
    the conflicting row's)."""
    conn.execute(dialect_insert(conn, table).values(**values).on_conflict_do_nothing(index_elements=[key]))


def _zeros() -> dict[str, Any]:
    return {name: 0 for name in STATS_COLUMNS}


def _refresh_one(conn: Connection, batch_id: str, now: datetime) -> BatchCounts | None:
    """Refresh one batch inside ``conn``'s transaction; returns the delta applied (None: no such batch)."""
    info = conn.execute(select(batch.c.source, batch.c.created_at).where(batch.c.batch_id == batch_id)).first()
    if info is None:
        existing = conn.execute(select(batch_stats.c.source).where(batch_stats.c.batch_id == batch_id)).first()
        if existing is None:
            return None  # never landed: nothing to count
        source, created_at = str(existing[0]), None
    else:
        source, created_at = str(info[0]), info[1]
    # 1. the batch row exists, then lock it: concurrent refreshes of this batch queue up here
    _insert_ignore(
        conn,
        batch_stats,
        {"batch_id": batch_id, "source": source, **_zeros(), "processing_ms_sum": 0.0,
         "batch_created_at": created_at or now, "refreshed_at": now},
        "batch_id",
    )
    locked = select(batch_stats).where(batch_stats.c.batch_id == batch_id)
    if conn.dialect.name == "postgresql":
        locked = locked.with_for_update()
    old_row = conn.execute(locked).mappings().one()
    old = BatchCounts.from_row(old_row)
    # 2. count after the lock: every refresh that held it before has committed
    new = batch_counts(conn, batch_id)
    delta = new.minus(old)
    conn.execute(
        update(batch_stats)
        .where(batch_stats.c.batch_id == batch_id)
        .values(**asdict(new), refreshed_at=now)
    )
    # 3. then the source row: insert-if-missing, then an in-place add (row-locked by the UPDATE)
    _insert_ignore(conn, source_stats, {"source": source, **_zeros(), "updated_at": now}, "source")
    if not delta.is_zero:
        conn.execute(
            update(source_stats)
            .where(source_stats.c.source == source)
            .values(
                **{name: source_stats.c[name] + int(getattr(delta, name)) for name in STATS_COLUMNS},
                updated_at=now,
            )
        )
    return delta


def refresh_batch_stats(engine_or_conn: Engine | Connection, batch_ids: str | Iterable[str]) -> None:
    """Recount the given batches and add the differences to their sources' totals.

    With an engine, each batch is refreshed in its own transaction (one batch lock, then one
    source lock, per transaction); with a connection, inside the caller's transaction, batches in
    sorted order (so two callers lock them in the same order)."""
    ids = [batch_ids] if isinstance(batch_ids, str) else sorted(set(batch_ids))
    now = utcnow()
    if isinstance(engine_or_conn, Connection):
        for batch_id in ids:
            _refresh_one(engine_or_conn, batch_id, now)
        return
    for batch_id in ids:
        with engine_or_conn.begin() as conn:
            _refresh_one(conn, batch_id, now)


def refresh_quietly(engine_or_conn: Engine | Connection, batch_ids: str | Iterable[str]) -> bool:
    """:func:`refresh_batch_stats` for the stages: a failure is logged, never raised (the stage's
    own work is done and committed; the next refresh or ``cli status --recount`` repairs the
    counters). Returns whether it succeeded."""
    try:
        refresh_batch_stats(engine_or_conn, batch_ids)
        return True
    except Exception:
        log.exception("status counters of batch(es) %s not refreshed (repaired by the next refresh or `cli status --recount`)", batch_ids)
        return False


def rebuild_all(conn: Connection) -> int:
    """Recompute every batch's counters and the source totals from scratch, in ``conn``'s
    transaction (migration 0008's data step and ``cli status --recount``). A no-op on an empty
    store. Returns the number of batches counted."""
    now = utcnow()
    conn.execute(delete(batch_stats))
    conn.execute(delete(source_stats))
    batches = conn.execute(select(batch.c.batch_id, batch.c.source, batch.c.created_at).order_by(batch.c.batch_id)).all()
    for batch_id, source, created_at in batches:
        counts = batch_counts(conn, batch_id)
        conn.execute(
            batch_stats.insert().values(
                batch_id=batch_id, source=source, **asdict(counts),
                batch_created_at=created_at or now, refreshed_at=now,
            )
        )
    if batches:
        sums = conn.execute(
            select(batch_stats.c.source, *(func.sum(batch_stats.c[name]) for name in STATS_COLUMNS))
            .group_by(batch_stats.c.source)
        ).all()
        for row in sums:
            conn.execute(
                source_stats.insert().values(
                    source=row[0], **{name: int(row[i + 1] or 0) for i, name in enumerate(STATS_COLUMNS)}, updated_at=now
                )
            )
    return len(batches)


def recount_source(conn: Connection, source: str) -> BatchCounts:
    """The counters of ``source`` counted from the event and ledger tables (for ``--recount``
    checks and tests: what the summaries must equal). Reads every row of the source."""
    total = BatchCounts()
    for (batch_id,) in conn.execute(select(batch.c.batch_id).where(batch.c.source == source)):
        total = total.plus(batch_counts(conn, batch_id))
    return total
