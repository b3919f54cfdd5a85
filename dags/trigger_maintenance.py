"""
### trigger_maintenance — retention of the store and Airflow metadata cleanup, daily

At a million triggers an hour the store takes ~24 M events a day and Airflow records 1,440 runs of
`trigger_emails`; this DAG keeps both bounded. Once a day:

1. **purge_store** — deletes by age, table by table, in chunks of `chunk_rows` rows, each its own
   short transaction (PostgreSQL: `lock_timeout`, retry, then skip to the next run), so the
   minute runs go on:
   - whole batches (events, decisions, quarantine) after `event_days` / `decision_days`
     (3 days: Campaign's purge figure), except a batch whose run failed (kept `failed_batch_days`),
     a batch with ledger rows still to be sent (pending, scheduled, sending, deferred, ambiguous),
     and a batch with an event quarantined within `quarantine_days` (its reprocess window);
   - the send ledger: `subject` / `smtp_reply` set to NULL after `ledger_detail_days`, final rows
     (sent, failed) deleted after `ledger_days`, never shorter than the routing file's longest
     dedup window or frequency-cap period (raised, and the run says so);
   - send log, dry runs, run summaries and outcomes, hourly counts, resolved alerts, source gaps and
     health, and its own `tf_maintenance` rows by their own settings; expired IMS tokens, and chunk
     leases older than the ledger's staleness limit (left by send tasks killed and never retried);
   - then ANALYZE (PostgreSQL: VACUUM (ANALYZE)) of every table that lost `analyze_min_rows` rows.
   One `tf_maintenance` row per table and action: rows, seconds, cutoff.
2. **clean_metadata** — `airflow db clean` of dag_run, task_instance(_history), task_reschedule,
   xcom, log and job older than `metadata_days` (never inside the failed-batch window), for the
   triggerflow DAGs only unless `metadata_all_dags`. `metadata_days` 0 switches it off for a
   deployment that already cleans its metadata.

Every setting's default can be set without editing this file: `TRIGGERFLOW_RETENTION_<NAME>`
(e.g. `TRIGGERFLOW_RETENTION_EVENT_DAYS=5`). `dry_run` counts what would go and deletes nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task

from include.triggerflow.maintenance.settings import env_default

_DAYS = {
    "event_days": "Raw events (tf_event), by batch. Campaign purges pipeline events after 3 days.",
    "decision_days": "Decisions (tf_decision); a batch's events and decisions go together.",
    "quarantine_days": "Reprocess window: a batch with an event quarantined more recently than this is kept.",
    "failed_batch_days": "A batch whose run failed or never reported is kept this long (for a replay).",
    "ledger_days": "Send ledger rows (sent, failed). Never shorter than the routing file's dedup windows / caps.",
    "ledger_detail_days": "Ledger subject and SMTP reply are set to NULL after this.",
    "send_log_days": "Send log and dry-run rows.",
    "run_days": "Run summaries, run outcomes and the tf_batch rows of purged batches.",
    "hourly_days": "Messages per source and hour (tf_source_hourly).",
    "alert_days": "Resolved alerts (an active alert is never deleted).",
    "source_days": "Source gaps, and health rows of sources not read for this long.",
    "maintenance_days": "This DAG's own tf_maintenance rows.",
    "metadata_days": "Airflow metadata older than this is cleaned with `airflow db clean`; 0 = off.",
}


def _params() -> dict[str, Param]:
    params: dict[str, Param] = {
        name: Param(env_default(name), type="number", minimum=0, title=name.replace("_", " ").capitalize(), description=text)
        for name, text in _DAYS.items()
    }
    params.update(
        chunk_rows=Param(env_default("chunk_rows"), type="integer", minimum=1, title="Rows per chunk",
                         description="Each chunk of a delete is one short transaction."),
        lock_timeout_ms=Param(env_default("lock_timeout_ms"), type="integer", minimum=0, title="Lock timeout (ms)",
                              description="PostgreSQL: a chunk waits this long for a lock, is retried twice, then skipped."),
        analyze_min_rows=Param(env_default("analyze_min_rows"), type="integer", minimum=0, title="ANALYZE after (rows)",
                               description="ANALYZE / VACUUM (ANALYZE) a table that lost at least this many rows."),
        vacuum=Param(env_default("vacuum"), type="boolean", title="VACUUM (PostgreSQL)",
                     description="VACUUM (ANALYZE) rather than ANALYZE after large deletes; never VACUUM FULL."),
        skip_tables=Param(env_default("skip_tables"), type="array", items={"type": "string"}, title="Skip tables",
                          description="Store tables this run leaves alone, e.g. tf_send."),
        metadata_all_dags=Param(False, type="boolean", title="Clean metadata of all DAGs",
                                description="Off: only the triggerflow DAGs' metadata is cleaned."),
        dry_run=Param(False, type="boolean", title="Dry run", description="Count what would go; delete nothing."),
    )
    return params


@dag(
    dag_id="trigger_maintenance",
    # daily, at a quiet minute past the hour: never on the hour with everybody else's jobs
    schedule=CronTriggerTimetable("17 3 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args={"owner": "triggerflow", "retries": 1, "retry_delay": timedelta(minutes=5)},
    params=_params(),
    tags=["triggerflow", "maintenance"],
    doc_md=__doc__,
)
def trigger_maintenance() -> None:
    @task
    def purge_store() -> dict[str, Any]:
        from include.triggerflow.maintenance.runner import run_maintenance
        from include.triggerflow.maintenance.settings import RetentionSettings
        from include.triggerflow.runtime import routing, store_engine

        context = get_current_context()
        params = context["params"]
        settings = RetentionSettings.from_params(params)
        result = run_maintenance(
            store_engine(), settings, routing(),
            run_id=context["dag_run"].run_id, dry_run=bool(params.get("dry_run")),
        )
        return result.as_xcom()

    @task
    def clean_metadata() -> dict[str, Any]:
        from include.triggerflow.maintenance.runner import run_metadata_clean
        from include.triggerflow.maintenance.settings import RetentionSettings
        from include.triggerflow.runtime import routing, store_engine

        context = get_current_context()
        params = context["params"]
        return run_metadata_clean(
            store_engine(), RetentionSettings.from_params(params), routing(),
            run_id=context["dag_run"].run_id, dry_run=bool(params.get("dry_run")),
            all_dags=bool(params.get("metadata_all_dags")),
        )

    purge_store() >> clean_metadata()


trigger_maintenance()
