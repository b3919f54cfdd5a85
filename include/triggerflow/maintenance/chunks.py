"""Short transactions for the purge: each chunk of rows is its own transaction, so the minute
runs keep writing while the maintenance run goes on.

On PostgreSQL each chunk sets ``lock_timeout``: a chunk that would wait behind a minute run's
locks (a send chunk holding ledger rows, a refresh holding a tf_batch_stats row) gives up quickly,
is retried, and after the last retry skipped, to be picked up by the next maintenance run. SQLite
serialises writers anyway; its busy_timeout (store/engines.py) bounds the wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Column, Connection, Engine, Table, select
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: PostgreSQL's SQLSTATE for lock_timeout (lock_not_available)
PG_LOCK_NOT_AVAILABLE = "55P03"


@dataclass
class ChunkCounter:
    """Chunks run and skipped (lock timeouts) for one table/action."""

    chunks: int = 0
    skipped: int = 0
    retried: int = 0


def _lock_timed_out(exc: OperationalError) -> bool:
    code = getattr(getattr(exc, "orig", None), "pgcode", None)
    if code == PG_LOCK_NOT_AVAILABLE:
        return True
    text = str(getattr(exc, "orig", exc)).lower()
    return "lock timeout" in text or "database is locked" in text


def in_chunk(
    engine: Engine,
    work: Callable[[Connection], T],
    counter: ChunkCounter,
    *,
    lock_timeout_ms: int,
    retries: int = 2,
) -> T | None:
    """Run ``work`` in its own transaction; None when it was skipped after lock timeouts."""
    for attempt in range(retries + 1):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql" and lock_timeout_ms > 0:
                    # SET LOCAL: only for this transaction, the pooled connection keeps its default
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
                result = work(conn)
            counter.chunks += 1
            return result
        except OperationalError as exc:
            if not _lock_timed_out(exc):
                raise
            if attempt < retries:
                counter.retried += 1
                log.info("chunk waited too long for a lock; retrying (%d/%d)", attempt + 1, retries)
                time.sleep(0.2 * (attempt + 1))  # back off so the minute run can finish its transaction
                continue
    counter.skipped += 1
    log.warning("chunk skipped after %d lock timeouts: the next maintenance run picks it up", retries + 1)
    return None


def walk_by_id(
    engine: Engine,
    table: Table,
    id_col: Column[Any],
    time_col: Column[Any],
    cutoff: datetime,
    act: Callable[[Connection, Sequence[Any]], int],
    counter: ChunkCounter,
    *,
    chunk_rows: int,
    lock_timeout_ms: int,
    start_after: int | None = None,
    extra: Sequence[Column[Any]] = (),
) -> tuple[int, int | None]:
    """Walk ``table`` in primary-key order, ``chunk_rows`` at a time (keyset pagination: each
    chunk reads by the primary key index only), and call ``act(conn, rows)`` in each chunk's
    transaction with rows of ``(id, time, *extra)``; ``act`` returns how many rows it changed.

    Ids grow with time in these tables (autoincrement keys written at that time), so the walk
    stops after the first chunk whose last row is not older than ``cutoff``: a table's old rows
    are read, its recent ones never. Returns (rows changed, the last id walked)."""
    total = 0
    last = start_after
    while True:
        state: dict[str, Any] = {}

        def work(conn: Connection, last: int | None = last, state: dict[str, Any] = state) -> int:
            stmt = select(id_col, time_col, *extra).order_by(id_col).limit(chunk_rows)
            if last is not None:
                stmt = stmt.where(id_col > last)
            rows = conn.execute(stmt).all()
            state["rows"] = rows
            return act(conn, rows) if rows else 0

        changed = in_chunk(engine, work, counter, lock_timeout_ms=lock_timeout_ms)
        rows = state.get("rows") or []
        if not rows:
            break
        total += int(changed or 0)
        last = int(rows[-1][0])
        if rows[-1][1] is not None and rows[-1][1] >= cutoff:
            break
        if len(rows) < chunk_rows:
            break
    return total, last
