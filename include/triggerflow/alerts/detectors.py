"""The conditions an operator is alerted about, each a function of store facts: a
:class:`~.kinds.Firing` when it holds, None when it does not (the caller then resolves it).

Where each one is checked (so none adds a failure to a run that would not fail anyway):

* failed runs — a task's final failure (``on_failure_callback``, after the last retry) records the
  run as failed in ``tf_run_outcome``; the report records it as succeeded. The consecutive failed
  runs are the failed ones after the last succeeded one.
* source stalled — after every pull (it succeeded or not), from the pointer and the source health.
* credentials refused — when the pull raises a :class:`~include.triggerflow.adobe.ims_refusal.CredentialsRefused`.
* quarantine share, ambiguous sends — from the run's report counts.
* relay refusing — when a send chunk raises ``RelayRefusing`` (``refusal_limit`` identical
  message-level refusals).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select

from include.triggerflow.alerts.kinds import AlertKind, Firing
from include.triggerflow.alerts.texts import clean
from include.triggerflow.states import BatchState
from include.triggerflow.store.schema import batch, run_outcome, source_health, source_position
from include.triggerflow.timeutil import as_utc, utcnow


class RunOutcome(StrEnum):
    """``tf_run_outcome.outcome``."""

    FAILED = "failed"
    SUCCEEDED = "succeeded"


def record_outcome(
    engine: Engine, dag_id: str, run_id: str, outcome: RunOutcome, *, task_id: str | None = None,
    error: str | None = None, now: datetime | None = None,
) -> bool:
    """One row per run: the last word wins (a cleared and re-run run that then succeeds is
    succeeded). True when the run's outcome changed (two failed tasks of one run: once)."""
    with engine.begin() as conn:
        before = conn.execute(
            select(run_outcome.c.outcome).where(run_outcome.c.dag_id == dag_id, run_outcome.c.run_id == run_id)
        ).scalar()
        conn.execute(delete(run_outcome).where(run_outcome.c.dag_id == dag_id, run_outcome.c.run_id == run_id))
        conn.execute(
            insert(run_outcome).values(
                dag_id=dag_id, run_id=run_id, outcome=outcome.value, task_id=task_id,
                error=None if error is None else clean(error, 1000), at=now or utcnow(),
            )
        )
    return before != outcome.value


def consecutive_failures(engine: Engine, dag_id: str) -> int:
    """Failed runs of ``dag_id`` recorded after its last succeeded one."""
    with engine.connect() as conn:
        last_ok = conn.execute(
            select(func.max(run_outcome.c.at)).where(
                run_outcome.c.dag_id == dag_id, run_outcome.c.outcome == RunOutcome.SUCCEEDED
            )
        ).scalar()
        query = select(func.count()).select_from(run_outcome).where(
            run_outcome.c.dag_id == dag_id, run_outcome.c.outcome == RunOutcome.FAILED
        )
        if last_ok is not None:
            query = query.where(run_outcome.c.at > last_ok)
        return int(conn.execute(query).scalar_one())


def failed_runs(engine: Engine, dag_id: str, run_id: str, *, threshold: int, task_id: str, error: str) -> Firing | None:
    failures = consecutive_failures(engine, dag_id)
    if failures < threshold:
        return None
    return Firing(
        kind=AlertKind.FAILED_RUNS, subject=dag_id, value=failures, threshold=threshold, dag_id=dag_id, run_id=run_id,
        detail=f"{failures} runs of {dag_id} failed in a row (threshold {threshold}); the last one failed in task "
        f"{task_id}: {clean(error, 500)}",
    )


def source_stalled(
    engine: Engine, source_key: str, *, stall_s: float, max_events: int, dag_id: str, run_id: str,
    now: datetime | None = None,
) -> Firing | None:
    """The source's pointer has not moved for ``stall_s`` while the source shows it holds messages.

    "Not moved": the newest ``tf_source_position.updated_at`` of the source (pipelined's
    ``pointer.last-flush-ms-ago``) is at least ``stall_s`` old. "Holds messages", one of:

    * reads fail — ``tf_source_health.last_failed_at`` is after that flush and after the last
      successful read: the source answers with errors where a source at its end answers 204 or
      keep-alives;
    * a backlog was left — the newest batch of the source that landed anything stopped at
      ``max_events``, so more messages were waiting, and nothing was landed since.

    A source never read (no pointer yet) is not stalled: there is nothing to compare with.
    """
    now = now or utcnow()
    with engine.connect() as conn:
        flushed = conn.execute(
            select(func.max(source_position.c.updated_at)).where(source_position.c.source == source_key)
        ).scalar()
        if flushed is None:
            return None
        health = conn.execute(
            select(source_health.c.last_failed_at, source_health.c.last_alive_at, source_health.c.last_error)
            .where(source_health.c.source == source_key)
        ).first()
        last_pulled = conn.execute(
            select(batch.c.pulled)
            .where(batch.c.source == source_key, batch.c.state == BatchState.LANDED, batch.c.pulled > 0)
            .order_by(batch.c.created_at.desc())
            .limit(1)
        ).scalar()
    flushed = as_utc(flushed)
    age_s = (now - flushed).total_seconds()
    if age_s < stall_s:
        return None
    failed_at = as_utc(health.last_failed_at) if health is not None and health.last_failed_at is not None else None
    alive_at = as_utc(health.last_alive_at) if health is not None and health.last_alive_at is not None else None
    failing = failed_at is not None and failed_at > flushed and (alive_at is None or failed_at >= alive_at)
    backlog = last_pulled is not None and int(last_pulled) >= max_events
    if not (failing or backlog):
        return None
    assert health is not None or backlog
    why = (
        f"its reads fail (last error: {clean(health.last_error or 'unknown', 300)})"
        if failing and health is not None
        else f"the last pull stopped at max_events ({max_events}) with more messages waiting"
    )
    return Firing(
        kind=AlertKind.SOURCE_STALLED, subject=source_key, value=round(age_s, 3), threshold=stall_s, dag_id=dag_id,
        run_id=run_id,
        detail=f"source {source_key} has not advanced for {age_s / 60:.1f} min (threshold {stall_s / 60:g} min) "
        f"while it holds messages: {why}",
    )


def credentials_refused(exc: BaseException, *, subject: str, dag_id: str, run_id: str) -> Firing:
    """The refusal's own message names the connection and the extra to fix; never a secret
    (ims_refusal.refusal_message quotes ids and settings only)."""
    return Firing(
        kind=AlertKind.CREDENTIALS_REFUSED, subject=subject, dag_id=dag_id, run_id=run_id,
        detail=f"the pull was refused: {clean(str(exc), 1000)}",
    )


def quarantine_share(
    counts: Mapping[str, Any], *, share: float, min_events: int, dag_id: str, run_id: str, batch_id: str,
) -> Firing | None:
    pulled, quarantined = int(counts.get("pulled") or 0), int(counts.get("quarantined") or 0)
    if pulled < max(min_events, 1) or quarantined / pulled <= share:
        return None
    return Firing(
        kind=AlertKind.QUARANTINE_SHARE, subject=dag_id, value=round(quarantined / pulled, 4), threshold=share,
        dag_id=dag_id, run_id=run_id, batch_id=batch_id,
        detail=f"{quarantined} of the {pulled} triggers of batch {batch_id} were quarantined "
        f"({quarantined / pulled:.0%}, threshold {share:.0%})",
    )


def ambiguous_sends(counts: Mapping[str, Any], *, dag_id: str, run_id: str, batch_id: str) -> Firing | None:
    ambiguous = int(counts.get("ambiguous") or 0)
    if not ambiguous:
        return None
    return Firing(
        kind=AlertKind.AMBIGUOUS_SENDS, subject=dag_id, value=ambiguous, threshold=0, dag_id=dag_id, run_id=run_id,
        batch_id=batch_id,
        detail=f"{ambiguous} email(s) of batch {batch_id} may or may not have been accepted: the connection or "
        "the task died during the SMTP transaction; the ledger holds them as 'ambiguous' and they are not sent again",
    )


def relay_refusing(exc: BaseException, *, subject: str, dag_id: str, run_id: str, batch_id: str) -> Firing:
    return Firing(
        kind=AlertKind.RELAY_REFUSING, subject=subject, dag_id=dag_id, run_id=run_id, batch_id=batch_id,
        detail=f"a send chunk stopped: {clean(str(exc), 1000)}",
    )
