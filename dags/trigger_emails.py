"""
### trigger_emails — Adobe trigger messages to emails, every minute

Each run is one micro-batch:

1. **pull_and_land** — gets an IMS token (`adobe_ims`), reads the source (`adobe_triggers`) from
   the stored position and lands the raw messages in `tf_event`, advancing the position in the
   same transaction. A retry, clear or replay of this run reuses the batch it landed.
2. **validate** — Great Expectations checks every event; failures go to `tf_quarantine` with the
   failed expectations as the reason. The run carries on with the valid ones.
3. **reconcile** — finds each valid event's profile per the routing config
   (`include/routing.yaml`: identity rules with fallback), applies the route's rules (staleness,
   suppression, deduplication, frequency cap, quiet hours), records a decision per event in
   `tf_decision` and queues one `tf_send` ledger row per email under a unique idempotency key.
   It also picks up emails of earlier batches held for quiet hours that are now due.
4. **send** — one mapped task per chunk of the ledger, each over one SMTP session (`smtp_triggers`),
   limited by the `smtp_sessions` pool. The ledger decides what is sent: no email twice. Every
   email carries a signed one-click unsubscribe link (`triggerflow_unsubscribe`).
5. **report** — counts and their balance (`tf_run_summary`); a batch that does not balance fails.
   Also the latency of what this run sent (p50/p95/p99/max) and the age of the oldest trigger still
   waiting; past `sla_alert_minutes` an SLA alert fires (`tf_alert`, log, email to the Variable
   `triggerflow_alert_emails`).

**Alerts** (README "Operating triggerflow"): besides the SLA alert, this DAG alerts on N failed runs in
a row (`failed_runs_alert`), a source not advancing while it holds messages (`source_stall_minutes`),
IMS or the source refusing the credentials, a quarantine share above `quarantine_alert_share`,
ambiguous sends, and a chunk stopped by `refusal_limit` SMTP refusals. Each is a `tf_alert` row,
emailed (Variable `triggerflow_alert_emails`) and posted to `triggerflow_alert_webhook` if that
connection exists, at most once per `alert_renotify_minutes` while it lasts. An alert never fails a run.

Data moves through the store (`triggers_db`); XCom carries only batch ids and counts.
See the README for connections, the routing config and how to replay a run.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import cast

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

# Light (no SQLAlchemy at import): Airflow calls it in the task process after a final failure.
from include.triggerflow.alerts.callbacks import on_task_failure

# Typing only (TypedDicts): what the tasks hand each other through XCom.
from include.triggerflow.payloads import ChunkRef, LandedXCom, ReportXCom, SentXCom, ValidatedXCom

# Heavy imports (great_expectations, pandas, SQLAlchemy) stay inside the tasks: every task process
# re-parses this file, and the DAG processor does so every 30 s.


def _default(name: str, fallback: int) -> int:
    """A Param default a deployment may set without editing the DAG (scheduled runs use the
    defaults): TRIGGERFLOW_MAX_EVENTS, TRIGGERFLOW_CHUNK_SIZE, TRIGGERFLOW_MAX_CHUNKS."""
    return int(os.environ.get(f"TRIGGERFLOW_{name}", fallback))


@dag(
    dag_id="trigger_emails",
    # A bare cron string gives a zero-length interval in Airflow 3.3; batches are keyed on a real
    # one-minute data interval.
    schedule=CronDataIntervalTimetable("* * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    # Pulls follow the stored source position, not the interval, so skipped minutes lose no
    # events: the next run picks them up.
    catchup=False,
    # Runs overlap: the next minute's run lands and decides its batch while this one sends. Pulls
    # and decisions stay one at a time and in landing order (pull_and_land and reconcile below,
    # include/triggerflow/stages/batch_order.py). TRIGGERFLOW_MAX_ACTIVE_RUNS=1: one run at a time.
    max_active_runs=_default("MAX_ACTIVE_RUNS", 2),
    dagrun_timeout=timedelta(minutes=30),
    default_args={
        "owner": "triggerflow",
        "retries": 3,
        # TRIGGERFLOW_RETRY_DELAY_S only exists so fault tests need not wait; 10 s in production.
        "retry_delay": timedelta(seconds=float(os.environ.get("TRIGGERFLOW_RETRY_DELAY_S", "10"))),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=5),
        # a task's final failure fails the run: recorded in tf_run_outcome, N in a row alert
        "on_failure_callback": on_task_failure,
    },
    params={
        "max_events": Param(
            _default("MAX_EVENTS", 50_000),
            type="integer",
            minimum=1,
            title="Max events per batch",
            description="Upper bound on messages pulled by one run; a backlog drains over successive runs.",
        ),
        "chunk_size": Param(
            _default("CHUNK_SIZE", 2_000),
            type="integer",
            minimum=1,
            title="Emails per send chunk",
            description="Ledger rows per mapped send task (one SMTP session each).",
        ),
        "max_chunks": Param(
            _default("MAX_CHUNKS", 8),
            type="integer",
            minimum=1,
            maximum=64,
            title="Max send chunks",
            description="Upper bound on parallel send tasks for one batch (also bounded by the pool).",
        ),
        "replay_only": Param(
            False,
            type="boolean",
            title="Replay only",
            description="Never pull: reprocess the batch already landed for this run's interval "
            "(backfills always behave like this). An interval with no landed batch does nothing and says so.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Render every pending email and write it to the dry-run folder "
            "($TRIGGERFLOW_DRY_RUN_DIR, default $AIRFLOW_HOME/triggerflow-dry-run); send nothing. "
            "Recorded in tf_dry_run; the emails stay pending for a real run.",
        ),
        "force_resend": Param(
            False,
            type="boolean",
            title="Force resend",
            description="Send this batch's already-sent emails again, deliberately. Logged as 'resent' "
            "with a new Message-ID; never happens without this switch.",
        ),
        "sla_alert_minutes": Param(
            30,
            type="number",
            minimum=0,
            title="SLA alert after (minutes)",
            description="Alert (log, tf_alert, email to the Variable triggerflow_alert_emails) when the oldest "
            "trigger still waiting — in the source, the ledger or an unprocessed batch — is older than this. "
            "Adobe's response target is under an hour.",
        ),
        "alert_renotify_minutes": Param(
            60,
            type="number",
            minimum=0,
            title="Alerts: notify again after (minutes)",
            description="While an alert's condition lasts it is recorded (tf_alert) at every check but emailed / "
            "posted at most once per this period (the SLA alert: once per its threshold).",
        ),
        "failed_runs_alert": Param(
            3,
            type="integer",
            minimum=1,
            title="Alert after N failed runs in a row",
            description="A run fails when one of its tasks fails after its last retry; this many in a row alert.",
        ),
        "source_stall_minutes": Param(
            15,
            type="number",
            minimum=0,
            title="Alert when the source has not advanced for (minutes)",
            description="The source's stored position has not moved for this long while it holds messages "
            "(its reads fail, or the last pull stopped at max_events).",
        ),
        "quarantine_alert_share": Param(
            0.2,
            type="number",
            minimum=0,
            maximum=1,
            title="Alert when this share of a batch is quarantined",
            description="Quarantined / pulled above this (0.2 = 20 %) alerts, for batches of at least "
            "quarantine_alert_min_events triggers.",
        ),
        "quarantine_alert_min_events": Param(
            20,
            type="integer",
            minimum=1,
            title="Smallest batch for the quarantine alert",
            description="A batch smaller than this never raises the quarantine-share alert (one bad trigger of two is not news).",
        ),
        "ambiguous_policy": Param(
            "hold",
            enum=["hold", "resend"],
            title="Ambiguous sends",
            description="An email whose task died during the SMTP transaction may or may not have been "
            "accepted. hold: mark it ambiguous and do not send it again (default). resend: send it again "
            "with the same Message-ID.",
        ),
        "send_group_size": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=1000,
            title="Send group size (G)",
            description="Emails whose 'sending' marks, then outcomes, are committed in one ledger transaction. "
            "Larger is cheaper per email; a task killed mid-group leaves at most G emails ambiguous (held or "
            "resent by ambiguous_policy). Empty: the SMTP connection's extra send_group_size, else the default "
            "(README, Exactly once).",
        ),
        "hard_bounce_suppress_days": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            title="Hard-bounce suppression (days)",
            description="How long an address whose mailbox the server reported unknown (5.1.x, 5.2.1, a bare "
            "5xx at RCPT) stays suppressed. Empty: for good. Message-level refusals never suppress anyone.",
        ),
        "refusal_limit": Param(
            5,
            type="integer",
            minimum=1,
            title="Stop a chunk after N identical message-level refusals",
            description="The same 5xx about the message or the sender (relay authentication, DMARC, content "
            "filter, size) this many times in a chunk stops it and fails the task: an incident, not bounces. "
            "The rest of the chunk stays pending.",
        ),
        "max_email_bytes": Param(
            1_000_000,
            type="integer",
            minimum=1,
            title="Largest email (bytes)",
            description="A rendered email larger than this fails its row with 'email larger than N bytes'.",
        ),
    },
    tags=["triggerflow", "adobe", "email"],
    doc_md=__doc__,
)
def trigger_emails() -> None:
    @task(max_active_tis_per_dag=1)
    def pull_and_land() -> LandedXCom:
        from include.triggerflow.alerts.checks import PullAlerts
        from include.triggerflow.hooks.triggers import TriggerSourceHook
        from include.triggerflow.runtime import alerter, batch_ref, store_engine, wait_for_earlier_batches
        from include.triggerflow.stages.land import land_batch

        context = get_current_context()
        engine = store_engine()
        ref = batch_ref(context)
        max_events = int(context["params"]["max_events"])
        # Backfills replay what was landed for their intervals; they never read the source.
        allow_pull = not (context["params"]["replay_only"] or ref.run_type == "backfill")
        if allow_pull:
            wait_for_earlier_batches(engine, context, "pull", ref.batch_id)
        # Alerts: credentials refused, source not advancing (the exception, if any, goes on up).
        with PullAlerts(alerter(engine, context), max_events=max_events) as alerts:
            # The store also holds the (encrypted) IMS token, shared by every task and run.
            hook = TriggerSourceHook()
            source = hook.get_source(token_store=engine) if allow_pull else None
            alerts.source_key = source.source_key if source is not None else None
            result = land_batch(
                engine, source, ref, max_messages=max_events, allow_pull=allow_pull,
                **({"max_message_bytes": hook.max_message_bytes} if source is not None else {}),
            )
        return result.as_xcom()

    @task
    def validate(landed: LandedXCom) -> ValidatedXCom:
        from include.triggerflow.runtime import routing, store_engine
        from include.triggerflow.stages.validate import validate_batch

        validated = validate_batch(store_engine(), landed["batch_id"], routing()).as_xcom()
        validated["note"] = landed.get("note")  # carried along for the report
        return validated

    @task(max_active_tis_per_dag=1)
    def reconcile(validated: ValidatedXCom) -> list[ChunkRef]:
        """Returns one ``{"batch_id", "chunk"}`` per send chunk, for the mapped send task: this
        batch's chunks, then chunks of earlier batches whose quiet-hours emails are now due."""
        from include.triggerflow.runtime import routing, store_engine, wait_for_earlier_batches
        from include.triggerflow.stages.reconcile import due_scheduled, reconcile_batch

        context = get_current_context()
        params = context["params"]
        engine = store_engine()
        # batches are decided in landing order: the dedup window and frequency caps see the earlier ones
        wait_for_earlier_batches(engine, context, "reconcile", validated["batch_id"])
        result = reconcile_batch(
            engine,
            validated["batch_id"],
            routing(),
            chunk_size=int(params["chunk_size"]),
            max_chunks=int(params["max_chunks"]),
        )
        return result.chunk_refs() + due_scheduled(engine, exclude_batch=result.batch_id)

    # Names each mapped task instance in the UI: the unmapped task (``task`` in the template
    # context) holds this instance's own arguments in op_kwargs.
    @task(pool="smtp_sessions", map_index_template="chunk {{ task.op_kwargs['chunk'] }}")
    def send(batch_id: str, chunk: int) -> SentXCom:
        from include.triggerflow.alerts.checks import send_alerts
        from include.triggerflow.hooks.smtp import TriggerMailHook
        from include.triggerflow.render import Renderer
        from include.triggerflow.runtime import alerter, routing, send_options, store_engine
        from include.triggerflow.stages.send import send_chunk

        context = get_current_context()
        engine = store_engine()
        with send_alerts(alerter(engine, context), batch_id):  # a chunk stopped by refusal_limit alerts
            return send_chunk(
                engine, batch_id, chunk, routing(), Renderer(), TriggerMailHook, send_options(context)
            ).as_xcom()

    # A report that does not balance will not balance on a retry either.
    @task(retries=0)
    def report(landed: LandedXCom, validated: ValidatedXCom, sent: list[SentXCom]) -> ReportXCom:
        from include.triggerflow.alerts.checks import report_alerts
        from include.triggerflow.runtime import alerter, store_engine
        from include.triggerflow.stages.report import report_batch

        context = get_current_context()
        dag_run, params = context["dag_run"], context["params"]
        engine = store_engine()
        alerts = alerter(engine, context)
        result = report_batch(
            engine,
            validated["batch_id"],
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            # by index up to the count: iterating the mapped results ends on a 404 for the index
            # past the last, which Airflow's API client logs as an error in every run
            send_results=[dict(sent[i]) for i in range(len(sent))],
            note=validated.get("note"),
            source_capped=int(landed["newly_landed"] or 0) >= int(params["max_events"]),
            sla_alert_after_s=float(params["sla_alert_minutes"]) * 60,
            on_sla_breach=alerts.sla(validated["batch_id"]),
        )
        # the run succeeded: record it, clear what it clears, check its quarantine and ambiguous sends
        report_alerts(alerts, result.batch_id, result.counts)
        return result.as_xcom()

    # Calling a task gives an XComArg, resolved to the upstream task's return value at run time:
    # the casts say which value that is.
    landed = cast(LandedXCom, pull_and_land())
    validated = cast(ValidatedXCom, validate(landed))
    sent = send.expand_kwargs(reconcile(validated))
    report(landed, validated, cast(list[SentXCom], sent))


trigger_emails()
