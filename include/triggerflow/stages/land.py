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
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError, StatementError

from include.triggerflow.events import clean_text, parse_envelope
from include.triggerflow.sources.base import Page, RawMessage, TriggerSource
from include.triggerflow.stats import refresh_quietly
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

#: Pipeline's own limit for one message (reference/adobe-triggers.md §1.7): anything larger did not
#: come from Adobe as sent and is quarantined with its size.
MAX_MESSAGE_BYTES = 1024 * 1024
#: message_id / trigger_id columns are String(200)
ID_LIMIT = 200
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
UTF8_BOM = b"\xef\xbb\xbf"
# What no store can hold in a text column: NUL (PostgreSQL) and lone surrogates (both).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class LandingNote(StrEnum):
    """Why a stored payload differs from what arrived (``tf_event.landing_note``, "; "-joined).

    The size note carries the limit: :func:`oversize_note`."""

    INVALID_UTF8 = "invalid UTF-8"
    BOM_REMOVED = "byte order mark removed"
    NUL_REPLACED = "NUL replaced"
    INVALID_TEXT = "lone surrogate replaced"
    UNSTORABLE = "the store refused the message as text; only its raw bytes are kept"


#: notes that do not make an event invalid: RFC 8259 lets a parser ignore a byte order mark
BENIGN_NOTES = frozenset({LandingNote.BOM_REMOVED})


def oversize_note(limit: int) -> str:
    return f"message larger than {limit} bytes"


@dataclass(frozen=True)
class LandedPayload:
    """A message made storable: the text to store, and what arrived when it differs."""

    payload: str
    raw_size: int  # bytes as received, before any cap
    raw_payload: bytes | None = None  # what arrived (capped), only when ``payload`` differs
    notes: tuple[str, ...] = ()

    @property
    def landing_note(self) -> str | None:
        return "; ".join(self.notes) or None


def prepare_payload(payload: str | bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> LandedPayload:
    """Turn whatever a source delivered into text every store can hold; never raises."""
    notes: list[str] = []
    data: bytes | None = None
    if isinstance(payload, str):
        text = payload
        if text.isascii():
            size = len(text)
        else:  # surrogatepass: a str holding a lone surrogate still has bytes to keep
            data = text.encode("utf-8", "surrogatepass")
            size = len(data)
    else:
        data = bytes(payload)
        size = len(data)
        text = ""
    if size > max_bytes:
        if data is None:
            data = text.encode("utf-8", "surrogatepass")
        data = _cut(data, max_bytes)
        notes.append(oversize_note(max_bytes))
        payload = data  # the cut bytes are decoded below like any delivered bytes
    if not isinstance(payload, str):
        assert data is not None
        body = data
        if body.startswith(UTF8_BOM):
            body = body[len(UTF8_BOM):]
            notes.append(LandingNote.BOM_REMOVED)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = body.decode("utf-8", errors="replace")
            notes.append(LandingNote.INVALID_UTF8)
    elif text.startswith("\ufeff"):
        text = text[1:]
        notes.append(LandingNote.BOM_REMOVED)
    # Text decoded from bytes, or ASCII, can hold no surrogate: a substring test settles it.
    may_hold_surrogate = isinstance(payload, str) and not text.isascii()
    if ("\x00" in text) if not may_hold_surrogate else _UNSTORABLE.search(text) is not None:
        if "\x00" in text:
            notes.append(LandingNote.NUL_REPLACED)
        if _SURROGATE.search(text) is not None:
            notes.append(LandingNote.INVALID_TEXT)
        text = _UNSTORABLE.sub("\ufffd", text)
    if not notes:
        # bytes that decoded cleanly are stored as their text; nothing else to keep
        return LandedPayload(payload=text, raw_size=size)
    if data is None:
        data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
    return LandedPayload(payload=text, raw_size=size, raw_payload=data[:max_bytes], notes=tuple(notes))


def _cut(data: bytes, limit: int) -> bytes:
    """The first ``limit`` bytes, backed off to a UTF-8 character boundary when the cut falls
    inside one (so a cap alone never reads as invalid UTF-8)."""
    end = limit
    while end > 0 and limit - end < 3 and (data[end] & 0xC0) == 0x80:
        end -= 1
    return data[:end] if (data[end] & 0xC0) != 0x80 else data[:limit]


def _identifier(value: Any) -> str | None:
    """An id column's value: text without NUL or lone surrogates, at most ID_LIMIT characters.
    Containers and booleans are not ids."""
    if value is None or isinstance(value, (bool, dict, list)):
        return None
    text = clean_text(value if isinstance(value, str) else str(value))[0]
    return text[:ID_LIMIT]


def _timestamp(value: int | None) -> int | None:
    return value if value is not None and BIGINT_MIN <= value <= BIGINT_MAX else None


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
    dropped: int = 0  # lines/items the source received but could not place, by this call

    def as_xcom(self) -> dict[str, object]:
        return {
            "batch_id": self.batch_id,
            "pulled": self.pulled,
            "newly_landed": self.newly_landed,
            "reused": self.reused,
            "exists": self.exists,
            "note": self.note,
            "dropped": self.dropped,
        }


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(UTC)


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
            .values(state="landed", pulled=already + newly, landed_at=_now())
        )
    refresh_quietly(engine, batch_id)  # the status counters (include/triggerflow/stats.py)
    return LandResult(
        batch_id=batch_id, pulled=already + newly, newly_landed=newly, reused=False, bytes_read=bytes_read,
        dropped=dropped,
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
        "message_id": _identifier(parsed.message_id),
        "trigger_id": _identifier(parsed.trigger_id),
        "trigger_ts": _timestamp(parsed.trigger_ts),
        "payload": landed.payload,
        "raw_payload": landed.raw_payload,
        "raw_size": landed.raw_size,
        "landing_note": landed.landing_note,
        "received_at": received_at,
        "status": "landed",
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
    received_at = _now()
    rows = [_event_row(batch_id, source_key, msg, received_at, max_bytes) for msg in page.messages]
    try:
        _commit_page(engine, source, batch_id, page, expected, rows, received_at)
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
        _commit_page(engine, source, batch_id, page, expected, rows, received_at)
    return len(rows)


def _commit_page(
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
            if dropped:
                log.warning("%s: the source dropped %s", source_key, dropped)
                _add_dropped(conn, batch_id, dropped)
            _bump_health(
                conn, source, alive=True, bytes_read=page.bytes_read, messages=len(rows),
                flushes=1 if page.next_positions else 0, dropped=sum(dropped.values()),
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


def _add_dropped(conn: Connection, batch_id: str, dropped: Mapping[str, int]) -> None:
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


def _bump_health(
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
    now = _now()
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


def _bump_hourly(conn, source_key: str, at: datetime, messages: int) -> None:
    hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    where = and_(source_hourly.c.source == source_key, source_hourly.c.hour == hour)
    done = conn.execute(update(source_hourly).where(where).values(messages=source_hourly.c.messages + messages))
    if done.rowcount == 0:
        conn.execute(insert(source_hourly).values(source=source_key, hour=hour, messages=messages))


def record_source_alive(engine: Engine, source: TriggerSource, *, empty_read: bool = False) -> None:
    with engine.begin() as conn:
        _bump_health(conn, source, alive=True, empty_read=empty_read)


def record_source_failure(engine: Engine, source: TriggerSource, exc: BaseException) -> None:
    """Best effort: the failure being reported must not be hidden by a failing store."""
    try:
        with engine.begin() as conn:
            _bump_health(conn, source, error=f"{exc.__class__.__name__}: {exc}")
    except Exception:
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


