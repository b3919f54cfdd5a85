"""The retention settings: how long each table keeps its rows, with documented defaults.

The maintenance DAG's Params carry them; each Param's default is read from an environment
variable ``TRIGGERFLOW_RETENTION_<NAME>`` (e.g. ``TRIGGERFLOW_RETENTION_EVENT_DAYS=5``) so a
deployment changes what its scheduled runs do without editing the DAG, and a manual run can
still override any of them in the trigger form.

Days are floats: a test (or an operator) may keep half a day.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

#: Campaign's own guidance: a daily workflow purges pipeline events older than three days
#: (shared/reference/adobe-triggers.md, "Purge").
CAMPAIGN_PURGE_DAYS = 3.0

ENV_PREFIX = "TRIGGERFLOW_RETENTION_"


@dataclass(frozen=True)
class RetentionSettings:
    """Retention per table, in days (see the README's "Operating triggerflow" for the table)."""

    #: tf_event: raw events (a batch's events go together, see batches.py)
    event_days: float = CAMPAIGN_PURGE_DAYS
    #: tf_decision: why each event did or did not become an email
    decision_days: float = CAMPAIGN_PURGE_DAYS
    #: tf_quarantine: the reprocess window, measured from ``quarantined_at``: a batch with an
    #: event still quarantined more recently than this is kept whole
    quarantine_days: float = CAMPAIGN_PURGE_DAYS
    #: a batch whose run failed (no balanced tf_run_summary) is kept this long for a replay
    failed_batch_days: float = 14.0
    #: tf_send: the ledger; raised to the routing file's longest dedup window / frequency cap
    ledger_days: float = 30.0
    #: tf_send detail columns (subject, smtp_reply) are set to NULL after this
    ledger_detail_days: float = 7.0
    #: tf_send_log and tf_dry_run (rows; the dry-run files on disk are not touched)
    send_log_days: float = 30.0
    #: tf_run_summary, tf_run_outcome and the tf_batch rows of purged batches (a cleared old run
    #: finds its batch already landed and pulls nothing)
    run_days: float = 30.0
    #: tf_source_hourly (Campaign's report shows five days)
    hourly_days: float = 35.0
    #: tf_alert, resolved alerts only (an active alert is never deleted)
    alert_days: float = 90.0
    #: tf_source_gap, and tf_source_health rows of sources not read for this long
    source_days: float = 90.0
    #: tf_maintenance: this DAG's own records
    maintenance_days: float = 90.0
    #: Airflow's metadata (``airflow db clean``); 0 switches it off
    metadata_days: float = 30.0
    #: rows per chunk: each chunk is one short transaction
    chunk_rows: int = 5_000
    #: PostgreSQL: a chunk waits at most this long for a lock, then is retried, then skipped
    lock_timeout_ms: int = 2_000
    #: ANALYZE (PostgreSQL: VACUUM (ANALYZE)) a table after at least this many rows went
    analyze_min_rows: int = 10_000
    #: PostgreSQL: VACUUM (ANALYZE) rather than ANALYZE after large deletes (never VACUUM FULL)
    vacuum: bool = True
    #: tables not to touch in this run (e.g. ``["tf_send"]``)
    skip_tables: tuple[str, ...] = field(default=())

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RetentionSettings:
        """The settings from a run's params (absent or None: the default)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = params.get(f.name)
            if raw is None:
                continue
            if f.name == "skip_tables":
                values[f.name] = _tables(raw)
            elif f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("bool", bool):
                values[f.name] = bool(raw)
            else:
                values[f.name] = float(raw)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"retention setting {f.name} must not be negative (got {value})")
        if self.chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")


def _tables(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        items: Iterable[Any] = raw.replace(",", " ").split()
    else:
        items = raw
    return tuple(sorted({str(t).strip() for t in items if str(t).strip()}))


def env_default(name: str) -> Any:
    """The Param default of setting ``name``: $TRIGGERFLOW_RETENTION_<NAME> when set, else the
    dataclass default (read when the DAG file is parsed, like trigger_emails' ``_default``)."""
    default = {f.name: f.default for f in fields(RetentionSettings)}[name]
    raw = os.environ.get(ENV_PREFIX + name.upper())
    if raw is None or raw.strip() == "":
        return list(default) if isinstance(default, tuple) else default
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return list(_tables(raw))
