"""One maintenance run of the store: every step in order, a tf_maintenance row per table and
action, progress in the task log, counts for XCom.

Order: batches (events, decisions, quarantine) first, then the tombstones and run summaries,
then the ledger (strip, then delete with its children), the send log and dry runs by their own
age, the small tables, and ANALYZE / VACUUM for every table that lost many rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert

from include.triggerflow.config import RoutingConfig
from include.triggerflow.maintenance import batches as batch_purge
from include.triggerflow.maintenance import ledger as ledger_purge
from include.triggerflow.maintenance import tables as table_purge
from include.triggerflow.maintenance.chunks import ChunkCounter
from include.triggerflow.maintenance.plan import Plan, make_plan
from include.triggerflow.maintenance.settings import RetentionSettings
from include.triggerflow.store.schema import (
    batch,
    decision,
    event,
    maintenance,
    quarantine,
    send,
    send_log,
)
from include.triggerflow.store.schema import (
    dry_run as dry_run_table,
)
from include.triggerflow.timeutil import utcnow

log = logging.getLogger(__name__)


@dataclass
class Step:
    """One tf_maintenance row: what was done to one table."""

    table: str
    action: str
    rows: int
    seconds: float
    cutoff: datetime | None = None
    detail: str | None = None


@dataclass
class MaintenanceResult:
    plan: Plan
    dry_run: bool
    steps: list[Step] = field(default_factory=list)

    def rows(self, action: str = "delete") -> dict[str, int]:
        """Rows per table for ``action`` (the XCom of the purge task)."""
        out: dict[str, int] = {}
        for step in self.steps:
            if step.action == action:
                out[step.table] = out.get(step.table, 0) + step.rows
        return out

    def as_xcom(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "deleted": self.rows("delete"),
            "stripped": self.rows("strip").get(send.name, 0),
            "kept_batches": self.rows("kept").get(batch.name, 0),
        }


def _chunks(counter: ChunkCounter) -> str:
    text = f"{counter.chunks} chunk(s)"
    if counter.retried:
        text += f", {counter.retried} retried"
    if counter.skipped:
        text += f", {counter.skipped} skipped after lock timeouts (next run)"
    return text


def run_maintenance(
    engine: Engine,
    settings: RetentionSettings,
    config: RoutingConfig | None,
    *,
    run_id: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    analyze: bool = True,
) -> MaintenanceResult:
    """Purge the store per ``settings`` (raised by ``config``'s rules where needed)."""
    plan = make_plan(settings, config, now or utcnow())
    result = MaintenanceResult(plan=plan, dry_run=dry_run)
    skip = set(settings.skip_tables)
    for note in plan.notes.values():
        log.warning("retention: %s", note)
        result.steps.append(Step("settings", "kept", 0, 0.0, None, note))
    verb = "would delete" if dry_run else "deleted"

    def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
        started = time.perf_counter()
        value = fn()
        return value, time.perf_counter() - started

    # 1. whole batches: events, decisions, quarantine
    if not skip & {event.name, decision.name, quarantine.name, batch.name}:
        purged, seconds = timed(lambda: batch_purge.purge_batches(engine, plan, dry_run=dry_run))
        detail = f"{purged.batches} batch(es); {_chunks(purged.counter)}"
        for table in (decision, quarantine, event):
            # one pass deletes all three: its time goes on tf_event's row (the others say so)
            timed_here = table is event
            result.steps.append(Step(
                table.name, "delete", purged.rows[table.name], seconds if timed_here else 0.0, plan.batch_cutoff,
                detail if timed_here else f"{detail}; deleted with tf_event (time on its row)",
            ))
            log.info("%s: %s %d rows (%s)", table.name, verb, purged.rows[table.name], detail)
        kept = sum(purged.kept.values())
        result.steps.append(Step(batch.name, "kept", kept, 0.0, plan.batch_cutoff, batch_purge.kept_detail(purged)))
        if kept:
            log.info("%s", batch_purge.kept_detail(purged))
    # 2. tf_batch rows of purged batches, after run_days
    if batch.name not in skip:
        counter = ChunkCounter()
        done, seconds = timed(lambda: batch_purge.purge_tombstones(engine, plan, dry_run=dry_run, counter=counter))
        result.steps.append(Step(batch.name, "delete", done.get(batch.name, 0), seconds, plan.run_cutoff, _chunks(counter)))
    # 3. the ledger: strip early, delete late (children first)
    if send.name not in skip:
        counter = ChunkCounter()
        (stripped, through), seconds = timed(lambda: ledger_purge.strip_details(engine, plan, dry_run=dry_run, counter=counter))
        strip_detail = f"{', '.join(ledger_purge.DETAIL_COLUMNS)} set to NULL; {_chunks(counter)}"
        if through is not None and not dry_run:
            strip_detail += f"; through send_id {through}"
        result.steps.append(Step(send.name, "strip", stripped, seconds, plan.ledger_detail_cutoff, strip_detail))
        counter = ChunkCounter()
        totals, seconds = timed(lambda: ledger_purge.delete_ledger(engine, plan, dry_run=dry_run, counter=counter))
        raised_note = plan.notes.get("ledger_days")
        detail = "final rows (sent, failed) only; " + _chunks(counter) + (f"; {raised_note}" if raised_note else "")
        result.steps.append(Step(send.name, "delete", totals[send.name], seconds, plan.ledger_cutoff, detail))
        for child in (send_log, dry_run_table):
            result.steps.append(Step(child.name, "delete", totals[child.name], 0.0, plan.ledger_cutoff, "with their ledger rows"))
        log.info("%s: stripped %d, %s %d rows (%s)", send.name, stripped, verb, totals[send.name], detail)
    # 4. send log and dry runs by their own age
    for table in (send_log, dry_run_table):
        if table.name in skip:
            continue
        counter = ChunkCounter()
        started = time.perf_counter()
        n = table_purge.purge_by_age_walk(engine, table, plan, dry_run=dry_run, counter=counter)
        seconds = time.perf_counter() - started
        result.steps.append(Step(table.name, "delete", n, seconds, plan.send_log_cutoff, _chunks(counter)))
        log.info("%s: %s %d rows", table.name, verb, n)
    # 5. the small tables
    for aged in table_purge.aged_tables(plan):
        if aged.table.name in skip:
            continue
        counter = ChunkCounter()
        started = time.perf_counter()
        n = table_purge.purge_aged(engine, aged, plan, dry_run=dry_run, counter=counter)
        seconds = time.perf_counter() - started
        result.steps.append(Step(aged.table.name, "delete", n, seconds, aged.cutoff, _chunks(counter)))
        log.info("%s: %s %d rows", aged.table.name, verb, n)
    # 6. fresh statistics where many rows went
    if analyze and not dry_run:
        big = sorted({t for t, n in result.rows("delete").items() if n >= settings.analyze_min_rows})
        if result.rows("strip").get(send.name, 0) >= settings.analyze_min_rows:
            big = sorted(set(big) | {send.name})
        for table_name, action, seconds in table_purge.analyze(engine, big, vacuum=settings.vacuum):
            result.steps.append(Step(table_name, action, 0, seconds, None, None))
    record(engine, result, run_id)
    return result


def record(engine: Engine, result: MaintenanceResult, run_id: str | None) -> None:
    """One tf_maintenance row per step (a dry run's rows say so in their detail)."""
    at = utcnow()
    rows = [
        {
            "run_id": run_id,
            "table_name": s.table,
            "action": s.action,
            "cutoff": s.cutoff,
            "rows": s.rows,
            "seconds": round(s.seconds, 3),
            "detail": (f"dry run ({'would ' + s.action}): " + (s.detail or "")) if result.dry_run else s.detail,
            "at": at,
        }
        for s in result.steps
    ]
    if rows:
        with engine.begin() as conn:
            conn.execute(insert(maintenance), rows)


def run_metadata_clean(
    engine: Engine, settings: RetentionSettings, routing: RoutingConfig, *,
    run_id: str | None, dry_run: bool = False, all_dags: bool = False,
) -> dict[str, Any]:
    """``airflow db clean`` older than the plan's metadata cutoff (never inside the failed-batch
    window), recorded as one tf_maintenance row; off when ``metadata_days`` is 0."""
    from include.triggerflow.maintenance.metadata_clean import TRIGGERFLOW_DAGS, clean_metadata

    plan = make_plan(settings, routing, utcnow())
    cutoff = plan.metadata_cutoff
    if cutoff is None:
        log.info("metadata_days is 0: Airflow metadata cleanup is off (the deployment cleans it)")
        return {"cleaned": False}
    cleaned = clean_metadata(
        cutoff, dag_ids=None if all_dags else TRIGGERFLOW_DAGS, dry_run=dry_run, batch_size=settings.chunk_rows,
    )
    step = Step("airflow:" + ",".join(cleaned.tables), "db-clean", cleaned.rows, cleaned.seconds, cutoff, cleaned.summary())
    record(engine, MaintenanceResult(plan=plan, dry_run=dry_run, steps=[step]), run_id)
    return {"cleaned": not dry_run, "cutoff": cutoff.isoformat(), "seconds": round(cleaned.seconds, 1)}
