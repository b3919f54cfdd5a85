"""Stage 1 — pull and land: raw messages into ``tf_event``, positions advanced in the same commit.

Invariants this module keeps:

* A message is in ``tf_event`` (unique on source/partition/position) before anything else looks
  at it, and the stored source position moves in the same transaction as the insert. A task that
  dies mid-pull loses nothing (the uncommitted page is read again) and lands nothing twice.
* A run's batch is frozen once landed: a retry, clear or replay of that run reuses it and pulls
  nothing. A batch left half-pulled by a dead task is resumed by the same run's retry.
* Two pullers racing on the same source cannot both land a page: the position update is a
  compare-and-set, and the loser's transaction rolls back.
* Landing never fails on content, so no message can hold the position back. Whatever a source
  delivers is landed: bytes are decoded as UTF-8 with replacement, a leading byte order mark is
  removed, NUL and lone surrogates (which no store can hold as text) are replaced, and a message
  over ``max_message_bytes`` keeps its first bytes with its real size in ``raw_size``. When the
  stored ``payload`` differs from what arrived, ``raw_payload`` keeps what arrived (capped too)
  and ``landing_note`` says why; validate quarantines on the note. The identity columns are
  sanitised text and a trigger timestamp within range, or NULL. Should the store still refuse a
  message, it is found and landed as a last-resort row (raw bytes and a note only) instead of
  rolling the page back on every run.

The module holds the pull loop; what a message becomes is :mod:`.landing_payload`, and a page's
commit with its position advance and counters is :mod:`.landing_bookkeeping`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError, StatementError

from include.triggerflow.events import parse_envelope
from include.triggerflow.payloads import LandedXCom
from include.triggerflow.sources.base import Page, RawMessage, TriggerSource
from include.triggerflow.stages.landing_bookkeeping import (
    PositionConflict,
    commit_page,
    dropped_counts,
    record_source_alive,
    record_source_failure,
    stored_positions,
)
from include.triggerflow.stages.landing_payload import (
    BENIGN_NOTES,
    MAX_MESSAGE_BYTES,
    LandedPayload,
    LandingNote,
    bigint_or_none,
    id_text,
    oversize_note,
    prepare_payload,
)
from include.triggerflow.states import BatchState, EventStatus
from include.triggerflow.stats import refresh_quietly
from include.triggerflow.store.schema import batch, event
from include.triggerflow.timeutil import as_utc, utcnow

# Re-exported: importers name these by their old address (hooks/triggers.py, stages/report.py,
# stages/validate.py, tests).
__all__ = [
    "BENIGN_NOTES", "MAX_MESSAGE_BYTES", "BatchRef", "LandResult", "LandedPayload", "LandingNote",
    "PositionConflict", "dropped_counts", "land_batch", "oversize_note", "prepare_payload",
    "record_source_alive", "record_source_failure", "stored_positions",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchRef:
    """What identifies a batch: the DAG run, or its data interval when it has one."""

    dag_id: str
    run_id: str
    run_type: str | None = None
    interval_start: datetime | None = None
    interval_end: datetime | None = None

    @property
    def batch_id(self) -> str:
        # Keyed on the data interval when there is one, so a backfill or a re-triggered run of the
        # same minute finds the batch the scheduled run landed; manual runs without an interval
        # (Airflow 3 allows logical_date=None) are their own batch.
        if self.interval_start is not None and self.interval_end is not None:
            return f"{self.dag_id}/{_iso(self.interval_start)}/{_iso(self.interval_end)}"
        return f"{self.dag_id}/run/{self.run_id}"


@dataclass(frozen=True)
class LandResult:
    batch_id: str
    pulled: int  # events in the batch (landed now or earlier)
    newly_landed: int  # landed by this call
    reused: bool  # the batch was already landed: nothing was pulled
    bytes_read: int = 0
    exists: bool = True  # False: a replay-only run found no batch for its interval
    note: str | None = None
    dropped: int = 0  # lines/items the source received but could not place, by this call

    def as_xcom(self) -> LandedXCom:
        return {
            "batch_id": self.batch_id,
            "pulled": self.pulled,
            "newly_landed": self.newly_landed,
            "reused": self.reused,
            "exists": self.exists,
            "note": self.note,
            "dropped": self.dropped,
        }


def land_batch(
    engine: Engine,
    source: TriggerSource | None,
    ref: BatchRef,
    *,
    max_messages: int = 50_000,
    allow_pull: bool = True,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> LandResult:
    """Land this run's batch, or return the one it already landed.

    ``allow_pull=False`` (backfills and other replays) never reads the source: a replay
    reprocesses what was landed for its interval, and an interval with nothing landed is
    reported as such and left empty. A message over ``max_message_bytes`` is landed cut to that
    size, with its real size and a note (validate quarantines it).
    """
    if max_message_bytes < 1:
        raise ValueError(f"land_batch: max_message_bytes must be at least 1, got {max_message_bytes}")
    batch_id = ref.batch_id
    with engine.begin() as conn:
        existing = conn.execute(select(batch.c.state).where(batch.c.batch_id == batch_id)).scalar_one_or_none()
        if existing is None and not allow_pull:
            note = f"no batch was landed for {batch_id}: nothing to replay for this interval"
            log.info(note)
            return LandResult(batch_id=batch_id, pulled=0, newly_landed=0, reused=False, exists=False, note=note)
        if existing is None:
            if source is None:
                raise ValueError("land_batch needs a source to pull a new batch")
            conn.execute(
                insert(batch).values(
                    batch_id=batch_id,
                    dag_id=ref.dag_id,
                    run_id=ref.run_id,
                    run_type=ref.run_type,
                    interval_start=ref.interval_start,
                    interval_end=ref.interval_end,
                    source=source.source_key,
                    state=BatchState.PULLING,
                    pulled=0,
                    created_at=utcnow(),
                )
            )
    if existing == BatchState.PULLING and not allow_pull:
        # A replay never pulls: what the dead pull committed is the batch.
        with engine.begin() as conn:
            conn.execute(
                update(batch).where(batch.c.batch_id == batch_id).values(
                    state=BatchState.LANDED, pulled=_count_events(engine, batch_id), landed_at=utcnow()
                )
            )
        existing = BatchState.LANDED
    if existing == BatchState.LANDED:
        pulled = _count_events(engine, batch_id)
        if pulled == 0:
            _refuse_if_purged(engine, batch_id)
        note = f"batch {batch_id} already landed with {pulled} events: reprocessing it, pulling nothing"
        log.info(note)
        return LandResult(batch_id=batch_id, pulled=pulled, newly_landed=0, reused=True, note=note)

    if source is None:
        raise ValueError("land_batch needs a source to pull a new batch")
    already = _count_events(engine, batch_id)
    if already:
        log.info("batch %s was partly landed (%d events) by an earlier try: resuming the pull", batch_id, already)
    newly = 0
    bytes_read = 0
    dropped = 0
    keepalives = 0
    positions = stored_positions(engine, source.source_key)
    try:
        for page in source.read(positions, max(max_messages - already, 0)):
            landed = _land_page(engine, source, batch_id, page, positions, max_message_bytes)
            positions.update(page.next_positions)
            newly += landed
            bytes_read += page.bytes_read
            dropped += sum(page.dropped.values())
            keepalives += page.keepalives
            log.info("landed %d messages (batch total %d)", landed, already + newly)
    except PositionConflict:
        raise
    except Exception as exc:
        record_source_failure(engine, source, exc)
        raise
    # A pull that only heard keep-alives: counted, so a source that pings forever while it holds
    # messages shows in the status instead of passing for an idle one.
    record_source_alive(engine, source, empty_read=newly == 0 and keepalives > 0)

    with engine.begin() as conn:
        conn.execute(
            update(batch)
            .where(batch.c.batch_id == batch_id)
            .values(state=BatchState.LANDED, pulled=already + newly, landed_at=utcnow())
        )
    refresh_quietly(engine, batch_id)  # the status counters (include/triggerflow/stats.py)
    return LandResult(
        batch_id=batch_id, pulled=already + newly, newly_landed=newly, reused=False, bytes_read=bytes_read,
        dropped=dropped,
    )


class BatchPurged(RuntimeError):
    """A cleared or replayed run whose batch's events the maintenance DAG has deleted: there is
    nothing left to reprocess, and reprocessing what is left (its ledger rows) could not balance."""


def _refuse_if_purged(engine: Engine, batch_id: str) -> None:
    """Fail with the reason when a batch landed events that retention has since deleted (its
    tf_batch row keeps the count it landed with)."""
    with engine.connect() as conn:
        landed_with = conn.execute(select(batch.c.pulled).where(batch.c.batch_id == batch_id)).scalar_one_or_none()
    if landed_with:
        raise BatchPurged(
            f"batch {batch_id} landed {landed_with} events, and they have been deleted by the retention of "
            "trigger_maintenance (older than event_days): there is nothing left to reprocess. Its emails stay "
            "in the send ledger (and are never sent again); see README, Operating triggerflow."
        )


def _count_events(engine: Engine, batch_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(event).where(event.c.batch_id == batch_id)).scalar_one())


def _event_row(batch_id: str, source_key: str, msg: RawMessage, received_at: datetime, max_bytes: int) -> dict[str, Any]:
    landed = prepare_payload(msg.payload, max_bytes)
    parsed = parse_envelope(landed.payload)
    return {
        "batch_id": batch_id,
        "source": source_key,
        "src_partition": msg.partition,
        "src_position": msg.position,
        "message_id": id_text(parsed.message_id),
        "trigger_id": id_text(parsed.trigger_id),
        "trigger_ts": bigint_or_none(parsed.trigger_ts),
        "payload": landed.payload,
        "raw_payload": landed.raw_payload,
        "raw_size": landed.raw_size,
        "landing_note": landed.landing_note,
        "received_at": received_at,
        "status": EventStatus.LANDED,
    }


def _last_resort_row(row: dict[str, Any], msg: RawMessage, max_bytes: int, exc: BaseException) -> dict[str, Any]:
    """Only what cannot fail: the position, the raw bytes and a note naming the error's class
    (its text may quote the content)."""
    raw = msg.payload.encode("utf-8", "surrogatepass") if isinstance(msg.payload, str) else bytes(msg.payload)
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    note = f"{LandingNote.UNSTORABLE} ({cause.__class__.__name__})"
    if len(raw) > max_bytes:
        note = f"{oversize_note(max_bytes)}; {note}"
    return {
        **row,
        "message_id": None,
        "trigger_id": None,
        "trigger_ts": None,
        "payload": "",
        "raw_payload": raw[:max_bytes],
        "raw_size": len(raw),
        "landing_note": note,
    }


def _content_error(engine: Engine, exc: BaseException) -> bool:
    """Whether the store refused a value (encoding, length, range) rather than being unreachable
    or the row colliding with a stored one."""
    if isinstance(exc, IntegrityError):
        return False
    if isinstance(exc, StatementError) and exc.orig is not None:
        exc = exc.orig  # a bind processor or the driver failed on the value
    dbapi = engine.dialect.loaded_dbapi
    return isinstance(exc, (ValueError, TypeError, OverflowError, dbapi.DataError))


def _refused(engine: Engine, row: dict[str, Any]) -> BaseException | None:
    """Insert one row with a plain INSERT in a transaction that is always rolled back: the
    content error the store raises for it, or None. (A plain INSERT, because a COPY reports a
    value the driver cannot encode as a cancelled query, indistinguishable from other causes.)"""
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            conn.execute(insert(event), [row])
        except Exception as exc:
            if _content_error(engine, exc):
                return exc
            if isinstance(exc, IntegrityError):
                return None  # a collision is the page's conflict, reported by the real insert
            raise
        finally:
            trans.rollback()
    return None


def _land_page(
    engine: Engine, source: TriggerSource, batch_id: str, page: Page, expected: Mapping[int, str], max_bytes: int
) -> int:
    source_key = source.source_key
    received_at = utcnow()
    rows = [_event_row(batch_id, source_key, msg, received_at, max_bytes) for msg in page.messages]
    try:
        commit_page(engine, source, batch_id, page, expected, rows, received_at)
    except PositionConflict:
        raise
    except Exception as exc:
        if not rows:
            raise
        # If the page rolled back on one message's content, find the messages the store refuses
        # and land those as raw bytes, or the position would never move past them. When every
        # row goes in on its own, the failure was not content's: it is raised as it was.
        refused = {i: e for i, row in enumerate(rows) if (e := _refused(engine, row)) is not None}
        if not refused:
            raise
        log.warning(
            "%s: the store refused %d of a page of %d messages (%s); landing those as raw bytes",
            source_key, len(refused), len(rows), exc.__class__.__name__,
        )
        for index, error in refused.items():
            rows[index] = _last_resort_row(rows[index], page.messages[index], max_bytes, error)
        commit_page(engine, source, batch_id, page, expected, rows, received_at)
    return len(rows)


def _iso(value: datetime) -> str:
    """A batch id's instant: UTC, to the second (a naive value is taken as UTC)."""
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")
