"""The send ledger: its detail columns stripped early, its rows deleted late, children first.

Rows are deleted only in a final state (sent, failed): a pending, scheduled, sending, deferred or
ambiguous row is an email still owed (or held for an operator) and is never deleted, whatever its
age. The deletion cutoff is the plan's ``ledger_days``, never shorter than the routing file's
rule look-back (plan.py). tf_send_log and tf_dry_run rows of a deleted ledger row go in the same
transaction, before it (they reference tf_send).

The ledger outlives the events (three days by default): tf_send.event_id is therefore a plain
column, no foreign key (migration 0010); the row holds everything the rule look-ups read
(profile, route, trigger time, created_at).

Stripping sets ``subject`` and ``smtp_reply`` to NULL: what an email said and what the server
answered are for the operator's first days; the counting columns stay. Each strip continues from
where the last one ended (the send_id recorded in its tf_maintenance row), so a day's run reads a
day of ledger rows, not the whole table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, or_, select, update

from include.triggerflow.maintenance.batches import settle_stats
from include.triggerflow.maintenance.chunks import ChunkCounter, walk_by_id
from include.triggerflow.maintenance.plan import Plan
from include.triggerflow.states import SendState
from include.triggerflow.store.schema import dry_run as dry_run_table
from include.triggerflow.store.schema import maintenance, send, send_log

log = logging.getLogger(__name__)

#: states a ledger row may be deleted in
FINAL_STATES = (SendState.SENT, SendState.FAILED)
#: the columns set to NULL after ``ledger_detail_days``
DETAIL_COLUMNS = ("subject", "smtp_reply")
_THROUGH = re.compile(r"through send_id (\d+)")


def last_stripped_id(engine: Engine) -> int | None:
    """The send_id the last strip walked to (from its tf_maintenance row), or None."""
    with engine.connect() as conn:
        detail = conn.execute(
            select(maintenance.c.detail)
            .where(maintenance.c.table_name == send.name, maintenance.c.action == "strip", maintenance.c.detail.like("%through send_id%"))
            .order_by(maintenance.c.at.desc(), maintenance.c.maintenance_id.desc())
            .limit(1)
        ).scalar_one_or_none()
    match = _THROUGH.search(detail or "")
    return int(match.group(1)) if match else None


def strip_details(engine: Engine, plan: Plan, *, dry_run: bool, counter: ChunkCounter) -> tuple[int, int | None]:
    """NULL the detail columns of final ledger rows older than the detail cutoff.
    Returns (rows stripped, the send_id the walk reached: the next strip starts after it)."""
    cutoff = plan.ledger_detail_cutoff
    start = last_stripped_id(engine)
    has_detail = or_(*(send.c[name].is_not(None) for name in DETAIL_COLUMNS))

    def act(conn: Connection, rows: Sequence[Any]) -> int:
        ids = [int(r[0]) for r in rows if r[1] is not None and r[1] < cutoff and r[2] in FINAL_STATES]
        if not ids:
            return 0
        where = and_(send.c.send_id.in_(ids), has_detail)
        if dry_run:
            from sqlalchemy import func

            return int(conn.execute(select(func.count()).select_from(send).where(where)).scalar_one())
        return int(conn.execute(update(send).where(where).values(**dict.fromkeys(DETAIL_COLUMNS))).rowcount or 0)

    stripped, last = walk_by_id(
        engine, send, send.c.send_id, send.c.created_at, cutoff, act, counter,
        chunk_rows=plan.settings.chunk_rows, lock_timeout_ms=plan.settings.lock_timeout_ms,
        start_after=start, extra=(send.c.state,),
    )
    # The next strip resumes after the last row older than the cutoff: rows from there on were
    # not old enough this time (or were not final yet, and are stripped on deletion anyway).
    with engine.connect() as conn:
        through = conn.execute(
            select(send.c.send_id)
            .where(send.c.send_id <= (last or 0), send.c.created_at < cutoff)
            .where(send.c.send_id > (start or 0))
            .order_by(send.c.send_id.desc())
            .limit(1)
        ).scalar_one_or_none()
    return stripped, int(through) if through is not None else start


def delete_ledger(engine: Engine, plan: Plan, *, dry_run: bool, counter: ChunkCounter) -> dict[str, int]:
    """Delete final ledger rows older than the ledger cutoff with their send-log and dry-run
    rows. Returns rows per table."""
    cutoff = plan.ledger_cutoff
    totals = {send.name: 0, send_log.name: 0, dry_run_table.name: 0}

    def act(conn: Connection, rows: Sequence[Any]) -> int:
        ids = [int(r[0]) for r in rows if r[1] is not None and r[1] < cutoff and r[2] in FINAL_STATES]
        if not ids:
            return 0
        if dry_run:
            from sqlalchemy import func

            for table in (send_log, dry_run_table):
                totals[table.name] += int(
                    conn.execute(select(func.count()).select_from(table).where(table.c.send_id.in_(ids))).scalar_one()
                )
            totals[send.name] += len(ids)
            return len(ids)
        # children first (foreign keys to tf_send)
        batch_ids = set(conn.execute(select(send.c.batch_id).where(send.c.send_id.in_(ids)).distinct()).scalars())
        for table in (send_log, dry_run_table):
            totals[table.name] += int(conn.execute(delete(table).where(table.c.send_id.in_(ids))).rowcount or 0)
        n = int(conn.execute(delete(send).where(send.c.send_id.in_(ids))).rowcount or 0)
        totals[send.name] += n
        # the status summary of a batch whose ledger rows went (see batches.settle_stats)
        for batch_id in sorted(batch_ids):
            settle_stats(conn, batch_id)
        return n

    walk_by_id(
        engine, send, send.c.send_id, send.c.created_at, cutoff, act, counter,
        chunk_rows=plan.settings.chunk_rows, lock_timeout_ms=plan.settings.lock_timeout_ms,
        extra=(send.c.state,),
    )
    return totals
