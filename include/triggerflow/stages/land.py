"""Stage 1 — pull and land: raw messages into ``tf_event``, positions advanced in the same commit.

Invariants this module keeps:

* A message is in ``tf_event`` (unique on source/partition/position) before anything else looks
  at it, and the stored source position moves in the same transaction as the insert. A task that
  dies mid-pull loses nothing (the uncommitted page is read again) and lands nothing twice.
* A run's batch is frozen once landed: a retry, clear or replay of that run reuses it and pulls
  nothing. A batch left half-pulled by a dead task is resumed by the same run's retry.
* Two pullers racing on the same source cannot both land a page: the position update is a
  compare-and-set, and the loser's transaction rolls back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Engine, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from include.triggerflow.events import as_int, parse_envelope
from include.triggerflow.sources.base import Page, TriggerSource
from include.triggerflow.store.db import bulk_insert
from include.triggerflow.store.schema import (
    batch,
    event,
    source_gap,
    source_health,
    source_hourly,
    source_position,
)

log = logging.getLogger(__name__)


class PositionConflict(RuntimeError):
    """Another puller advanced the source while this page was being read."""


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

    def as_xcom(self) -> dict[str, object]:
        return {
            "batch_id": self.batch_id,
            "pulled": self.pulled,
            "newly_landed": self.newly_landed,
            "reused": self.reused,
            "exists": self.exists,
            "note": self.note,
        }


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def stored_positions(engine: Engine, source_key: str) -> dict[int, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(source_position.c.partition, source_position.c.position).where(
                source_position.c.source == source_key
            )
        ).all()
    return {int(p): str(pos) for p, pos in rows}


def land_batch(
    engine: Engine,
    source: TriggerSource | None,
    ref: BatchRef,
    *,
    max_messages: int = 50_000,
    allow_pull: bool = True,
) -> LandResult:
    """Land this run's batch, or return the one it already landed.

    ``allow_pull=False`` (backfills and other replays) never reads the source: a replay
    reprocesses what was landed for its interval, and an interval with nothing landed is
    reported as such and left empty.
    """
    batch_id = ref.batch_id
    with engine.begin() as conn:
        existing = conn.execute(select(batch.c.state).where(batch.c.batch_id == batch_id)).scalar_one_or_none()
        if existing is None and not allow_pull:
            note = f"no batch was landed for {batch_id}: nothing to replay for this interval"
            log.info(note)
            return LandResult(batch_id=batch_id, pulled=0, newly_landed=0, reused=False, exists=False, note=note)
        if existing is None:
            conn.execute(
                insert(batch).values(
                    batch_id=batch_id,
                    dag_id=ref.dag_id,
                    run_id=ref.run_id,
                    run_type=ref.run_type,
                    interval_start=ref.interval_start,
                    interval_end=ref.interval_end,
                    source=source.source_key,
                    state="pulling",
                    pulled=0,
                    created_at=_now(),
                )
            )
    if existing == "pulling" and not allow_pull:
        # A replay never pulls: what the dead pull committed is the batch.
        with engine.begin() as conn:
            conn.execute(
                update(batch).where(batch.c.batch_id == batch_id).values(
                    state="landed", pulled=_count_events(engine, batch_id), landed_at=_now()
                )
            )
        existing = "landed"
    if existing == "landed":
        pulled = _count_events(engine, batch_id)
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
    positions = stored_positions(engine, source.source_key)
    try:
        for page in source.read(positions, max(max_messages - already, 0)):
            landed = _land_page(engine, source, batch_id, page, positions)
            positions.update(page.next_positions)
            newly += landed
            bytes_read += page.bytes_read
            log.info("landed %d messages (batch total %d)", landed, already + newly)
    except PositionConflict:
        raise
    except Exception as exc:
        record_source_failure(engine, source, exc)
        raise
    record_source_alive(engine, source)

    with engine.begin() as conn:
        conn.execute(
            update(batch)
            .where(batch.c.batch_id == batch_id)
            .values(state="landed", pulled=already + newly, landed_at=_now())
        )
    return LandResult(
        batch_id=batch_id, pulled=already + newly, newly_landed=newly, reused=False, bytes_read=bytes_read
    )


def _count_events(engine: Engine, batch_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(event).where(event.c.batch_id == batch_id)).scalar_one())


def _land_page(engine: Engine, source: TriggerSource, batch_id: str, page: Page, expected: Mapping[int, str]) -> int:
    source_key = source.source_key
    received_at = _now()
    rows = []
    for msg in page.messages:
        parsed = parse_envelope(msg.payload)
        rows.append(
            {
                "batch_id": batch_id,
                "source": source_key,
                "src_partition": msg.partition,
                "src_position": msg.position,
                "message_id": _short(parsed.message_id),
                "trigger_id": _short(parsed.trigger_id),
                "trigger_ts": as_int(parsed.trigger_ts),
                "payload": msg.payload,
                "received_at": received_at,
                "status": "landed",
            }
        )
    try:
        with engine.begin() as conn:
            for partition, new_position in page.next_positions.items():
                _advance(conn, source_key, partition, expected.get(partition), new_position)
            if rows:
                # COPY on PostgreSQL, the driver's executemany on SQLite: same rows, same constraint
                # errors (a collision still raises IntegrityError and rolls the whole page back)
                bulk_insert(conn, event, rows)
            for gap in page.gaps:
                log.warning(
                    "%s partition %d: asked for %s, the source resumed at %s (%s)",
                    source_key, gap.partition, gap.expected, gap.resumed, gap.reason,
                )
                conn.execute(
                    insert(source_gap).values(
                        source=source_key,
                        partition=gap.partition,
                        expected_position=gap.expected,
                        resumed_position=gap.resumed,
                        reason=gap.reason,
                        batch_id=batch_id,
                        detected_at=received_at,
                    )
                )
            _bump_health(
                conn, source, alive=True, bytes_read=page.bytes_read, messages=len(rows),
                flushes=1 if page.next_positions else 0,
            )
            if rows:
                _bump_hourly(conn, source_key, received_at, len(rows))
    except IntegrityError as exc:
        raise PositionConflict(
            f"{source_key}: this page collides with what is already stored (another run advanced "
            "the position or landed these messages concurrently, or the source served an "
            "already-landed position again); nothing of this page was stored and the stored "
            "position did not move"
        ) from exc
    return len(rows)


def _bump_health(
    conn,
    source: TriggerSource,
    *,
    alive: bool = False,
    error: str | None = None,
    bytes_read: int = 0,
    messages: int = 0,
    flushes: int = 0,
) -> None:
    """Counters and last contact per source, for the pipelined-style status document."""
    now = _now()
    row = conn.execute(select(source_health).where(source_health.c.source == source.source_key)).mappings().first()
    values: dict[str, object] = {"endpoint": getattr(source, "endpoint", None), "updated_at": now}
    if alive:
        values["last_alive_at"] = now
    if error is not None:
        values["last_failed_at"] = now
        values["last_error"] = error[:1000]
    if row is None:
        conn.execute(
            insert(source_health).values(
                source=source.source_key, bytes_read=bytes_read, messages_received=messages,
                pointer_flushes=flushes, **values,
            )
        )
    else:
        conn.execute(
            update(source_health)
            .where(source_health.c.source == source.source_key)
            .values(
                bytes_read=row["bytes_read"] + bytes_read,
                messages_received=row["messages_received"] + messages,
                pointer_flushes=row["pointer_flushes"] + flushes,
                **values,
            )
        )


def _bump_hourly(conn, source_key: str, at: datetime, messages: int) -> None:
    hour = at.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
    where = and_(source_hourly.c.source == source_key, source_hourly.c.hour == hour)
    done = conn.execute(update(source_hourly).where(where).values(messages=source_hourly.c.messages + messages))
    if done.rowcount == 0:
        conn.execute(insert(source_hourly).values(source=source_key, hour=hour, messages=messages))


def record_source_alive(engine: Engine, source: TriggerSource) -> None:
    with engine.begin() as conn:
        _bump_health(conn, source, alive=True)


def record_source_failure(engine: Engine, source: TriggerSource, exc: BaseException) -> None:
    """Best effort: the failure being reported must not be hidden by a failing store."""
    try:
        with engine.begin() as conn:
            _bump_health(conn, source, error=f"{exc.__class__.__name__}: {exc}")
    except Exception:  # noqa: BLE001 - the original exception is re-raised by the caller
        log.exception("could not record the source failure in tf_source_health")


def _advance(conn, source_key: str, partition: int, old: str | None, new: str) -> None:
    now = _now()
    if old is None:
        # First read of this partition: the insert fails on the primary key if someone else won.
        conn.execute(insert(source_position).values(source=source_key, partition=partition, position=new, updated_at=now))
        return
    result = conn.execute(
        update(source_position)
        .where(
            and_(
                source_position.c.source == source_key,
                source_position.c.partition == partition,
                source_position.c.position == old,
            )
        )
        .values(position=new, updated_at=now)
    )
    if result.rowcount != 1:
        raise PositionConflict(
            f"position of {source_key} partition {partition} moved from {old!r} while this page was read"
        )


def _short(value: object, limit: int = 200) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text[:limit]
