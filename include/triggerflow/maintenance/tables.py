"""The other tables by their own settings, and ANALYZE / VACUUM after large deletes.

Every delete here is keyed: a chunk selects at most ``chunk_rows`` primary keys of old rows and
deletes those, in one short transaction, until none are left. The tables are small (one row per
run, hour, source or alert) or, for tf_send_log / tf_dry_run, walked in primary-key order
(chunks.walk_by_id), so no chunk scans a big table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Engine, Table, delete, func, select, text, tuple_

from include.triggerflow.ledger import LEASE_STALE_AFTER
from include.triggerflow.maintenance.chunks import ChunkCounter, in_chunk, walk_by_id
from include.triggerflow.maintenance.plan import Plan
from include.triggerflow.store.schema import (
    alert,
    chunk_lease,
    ims_token,
    maintenance,
    run_outcome,
    run_summary,
    send_log,
    source_gap,
    source_health,
    source_hourly,
)
from include.triggerflow.store.schema import (
    dry_run as dry_run_table,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgedTable:
    """A table whose rows go when ``condition`` holds (``cutoff``: what tf_maintenance records)."""

    table: Table
    condition: ColumnElement[bool]
    cutoff: datetime


def aged_tables(plan: Plan) -> list[AgedTable]:
    s = plan.settings
    from include.triggerflow.store.schema import event

    run_cutoff = plan.run_cutoff
    no_events = ~select(event.c.event_id).where(event.c.batch_id == run_summary.c.batch_id).exists()
    alert_cutoff = plan.cutoff(s.alert_days)
    source_cutoff = plan.cutoff(s.source_days)
    token_cutoff = plan.now - timedelta(days=1)
    lease_cutoff = plan.now - LEASE_STALE_AFTER
    return [
        # a summary stays while its batch's events do (a kept batch is judged by it)
        AgedTable(run_summary, (run_summary.c.reported_at < run_cutoff) & no_events, run_cutoff),
        AgedTable(run_outcome, run_outcome.c.at < run_cutoff, run_cutoff),
        AgedTable(source_hourly, source_hourly.c.hour < plan.cutoff(s.hourly_days), plan.cutoff(s.hourly_days)),
        # an active alert (resolved_at None) is never deleted: the operator still has to see it
        AgedTable(alert, (alert.c.fired_at < alert_cutoff) & alert.c.resolved_at.is_not(None), alert_cutoff),
        AgedTable(source_gap, source_gap.c.detected_at < source_cutoff, source_cutoff),
        # a source not read for that long is no longer configured
        AgedTable(source_health, source_health.c.updated_at < source_cutoff, source_cutoff),
        AgedTable(maintenance, maintenance.c.at < plan.cutoff(s.maintenance_days), plan.cutoff(s.maintenance_days)),
        # expired IMS tokens (a day's grace: a task may be using one that just expired)
        AgedTable(ims_token, ims_token.c.expires_at < token_cutoff, token_cutoff),
        # chunk leases a killed, never retried send task left behind. Past the ledger's staleness
        # limit (longer than a run may last) no live sender holds one; a younger one may be held
        AgedTable(chunk_lease, chunk_lease.c.acquired_at < lease_cutoff, lease_cutoff),
    ]


def _key(table: Table) -> Any:
    cols = list(table.primary_key.columns)
    return cols[0] if len(cols) == 1 else tuple_(*cols)


def purge_aged(engine: Engine, aged: AgedTable, plan: Plan, *, dry_run: bool, counter: ChunkCounter) -> int:
    table = aged.table
    pk: list[Column[Any]] = list(table.primary_key.columns)
    if dry_run:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table).where(aged.condition)).scalar_one())
    total = 0
    while True:

        def work(conn: Connection) -> int:
            keys = conn.execute(select(*pk).where(aged.condition).limit(plan.settings.chunk_rows)).all()
            if not keys:
                return 0
            if len(pk) == 1:
                where = pk[0].in_([k[0] for k in keys])
            else:
                where = _key(table).in_([tuple(k) for k in keys])
            # the condition again: a row may have changed since it was selected (a stale lease
            # taken over by a sender has a fresh acquired_at and must stay)
            return int(conn.execute(delete(table).where(where, aged.condition)).rowcount or 0)

        n = in_chunk(engine, work, counter, lock_timeout_ms=plan.settings.lock_timeout_ms)
        if not n:
            break
        total += n
    return total


def purge_by_age_walk(engine: Engine, table: Table, plan: Plan, *, dry_run: bool, counter: ChunkCounter) -> int:
    """tf_send_log (by ``at``) or tf_dry_run (by ``rendered_at``), older than ``send_log_days``,
    walked in primary-key order."""
    id_col, time_col = (send_log.c.log_id, send_log.c.at) if table is send_log else (dry_run_table.c.dry_run_id, dry_run_table.c.rendered_at)
    cutoff = plan.send_log_cutoff

    def act(conn: Connection, rows: Sequence[Any]) -> int:
        ids = [int(r[0]) for r in rows if r[1] is not None and r[1] < cutoff]
        if not ids or dry_run:
            return len(ids)
        return int(conn.execute(delete(table).where(id_col.in_(ids))).rowcount or 0)

    total, _ = walk_by_id(
        engine, table, id_col, time_col, cutoff, act, counter,
        chunk_rows=plan.settings.chunk_rows, lock_timeout_ms=plan.settings.lock_timeout_ms,
    )
    return total


def analyze(engine: Engine, tables: Sequence[str], *, vacuum: bool) -> list[tuple[str, str, float]]:
    """ANALYZE the tables (PostgreSQL: VACUUM (ANALYZE) when ``vacuum``), each outside any
    transaction (VACUUM refuses to run in one). Never VACUUM FULL: it locks the table for its
    whole rewrite. Returns (table, action, seconds) per table."""
    import time

    done: list[tuple[str, str, float]] = []
    postgres = engine.dialect.name == "postgresql"
    for name in tables:
        started = time.perf_counter()
        quoted = engine.dialect.identifier_preparer.quote(name)
        action = "vacuum" if (postgres and vacuum) else "analyze"
        statement = f"VACUUM (ANALYZE) {quoted}" if action == "vacuum" else f"ANALYZE {quoted}"
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(statement))
        done.append((name, action, time.perf_counter() - started))
        log.info("%s %s: %.1f s", action, name, done[-1][2])
    return done
