"""Landing's bookkeeping: a page's rows, its position advance and the source's counters, in one
transaction.

The stored source position moves in the same transaction as the page's insert, as a
compare-and-set (:func:`advance`): two pullers racing on the same source cannot both land a page,
and the loser's transaction rolls back with :class:`PositionConflict`. The same commit records the
page's gaps, its dropped lines (summed into the batch) and the source's health and hourly
counters, so the status never counts a page that did not land.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from include.triggerflow.sources.base import Page, TriggerSource
from include.triggerflow.store.bulk import bulk_insert
from include.triggerflow.store.schema import (
    batch,
    event,
    source_gap,
    source_health,
    source_hourly,
    source_position,
)
from include.triggerflow.timeutil import utcnow

log = logging.getLogger(__name__)


class PositionConflict(RuntimeError):
    """Another puller advanced the source while this page was being read."""


def stored_positions(engine: Engine, source_key: str) -> dict[int, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(source_position.c.partition, source_position.c.position).where(
                source_position.c.source == source_key
            )
        ).all()
    return {int(p): str(pos) for p, pos in rows}


def commit_page(
    engine: Engine,
    source: TriggerSource,
    batch_id: str,
    page: Page,
    expected: Mapping[int, str],
    rows: list[dict[str, Any]],
    received_at: datetime,
) -> None:
    source_key = source.source_key
    dropped = {str(reason): int(count) for reason, count in page.dropped.items() if count}
    try:
        with engine.begin() as conn:
            for partition, new_position in page.next_positions.items():
                advance(conn, source_key, partition, expected.get(partition), new_position)
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
            if dropped:
                log.warning("%s: the source dropped %s", source_key, dropped)
                add_dropped(conn, batch_id, dropped)
            bump_health(
                conn, source, alive=True, bytes_read=page.bytes_read, messages=len(rows),
                flushes=1 if page.next_positions else 0, dropped=sum(dropped.values()),
            )
            if rows:
                bump_hourly(conn, source_key, received_at, len(rows))
    except IntegrityError as exc:
        raise PositionConflict(
            f"{source_key}: this page collides with what is already stored (another run advanced "
            "the position or landed these messages concurrently, or the source served an "
            "already-landed position again); nothing of this page was stored and the stored "
            "position did not move"
        ) from exc


def dropped_counts(row: Any) -> tuple[int, dict[str, int]]:
    """(count, {reason: count}) of a batch's dropped lines from its ``(dropped, dropped_reasons)``
    row. Read defensively: a report must never fail on this bookkeeping, and a batch landed before
    these columns existed has NULLs."""
    if row is None:
        return 0, {}
    reasons: dict[str, int] = {}
    try:
        loaded = json.loads(row.dropped_reasons) if row.dropped_reasons else {}
    except ValueError:
        loaded = {}
    if isinstance(loaded, dict):
        reasons = {str(k): int(v) for k, v in loaded.items() if isinstance(v, int) and not isinstance(v, bool)}
    total = int(row.dropped) if row.dropped is not None else sum(reasons.values())
    return total, reasons


def add_dropped(conn: Connection, batch_id: str, dropped: Mapping[str, int]) -> None:
    """Sum the page's dropped lines into its batch (count and {reason: count})."""
    row = conn.execute(select(batch.c.dropped, batch.c.dropped_reasons).where(batch.c.batch_id == batch_id)).first()
    if row is None:  # pragma: no cover - land_batch inserts the batch before reading
        return
    total, reasons = dropped_counts(row)
    for reason, count in dropped.items():
        reasons[reason] = reasons.get(reason, 0) + count
    conn.execute(
        update(batch)
        .where(batch.c.batch_id == batch_id)
        .values(dropped=total + sum(dropped.values()), dropped_reasons=json.dumps(reasons, sort_keys=True))
    )


def bump_health(
    conn: Connection,
    source: TriggerSource,
    *,
    alive: bool = False,
    error: str | None = None,
    bytes_read: int = 0,
    messages: int = 0,
    flushes: int = 0,
    dropped: int = 0,
    empty_read: bool = False,
) -> None:
    """Counters and last contact per source, for the pipelined-style status document.

    ``empty_reads`` counts pulls in a row that heard only keep-alives; a page with messages
    resets it and sets ``last_data_at``."""
    now = utcnow()
    row = conn.execute(select(source_health).where(source_health.c.source == source.source_key)).mappings().first()
    values: dict[str, object] = {"endpoint": getattr(source, "endpoint", None), "updated_at": now}
    if alive:
        values["last_alive_at"] = now
    if error is not None:
        values["last_failed_at"] = now
        values["last_error"] = error[:1000]
    if messages:
        values["last_data_at"] = now
        values["empty_reads"] = 0
    elif empty_read:
        values["empty_reads"] = (row["empty_reads"] or 0) + 1 if row is not None else 1
    if row is None:
        conn.execute(
            insert(source_health).values(
                source=source.source_key, bytes_read=bytes_read, messages_received=messages,
                pointer_flushes=flushes, lines_dropped=dropped, **values,
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
                lines_dropped=(row["lines_dropped"] or 0) + dropped,
                **values,
            )
        )


def bump_hourly(conn: Connection, source_key: str, at: datetime, messages: int) -> None:
    hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    where = and_(source_hourly.c.source == source_key, source_hourly.c.hour == hour)
    done = conn.execute(update(source_hourly).where(where).values(messages=source_hourly.c.messages + messages))
    if done.rowcount == 0:
        conn.execute(insert(source_hourly).values(source=source_key, hour=hour, messages=messages))


def record_source_alive(engine: Engine, source: TriggerSource, *, empty_read: bool = False) -> None:
    with engine.begin() as conn:
        bump_health(conn, source, alive=True, empty_read=empty_read)


def record_source_failure(engine: Engine, source: TriggerSource, exc: BaseException) -> None:
    """Best effort: the failure being reported must not be hidden by a failing store."""
    try:
        with engine.begin() as conn:
            bump_health(conn, source, error=f"{exc.__class__.__name__}: {exc}")
    except Exception:
        log.exception("could not record the source failure in tf_source_health")


def advance(conn: Connection, source_key: str, partition: int, old: str | None, new: str) -> None:
    now = utcnow()
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
