"""The triggerflow store: every table, as SQLAlchemy Core, portable between SQLite and PostgreSQL.

One batch = one DAG run's landed events. Every stage reads its input here by ``batch_id`` and
writes its output here; XCom only ever carries ids and counts.

    tf_source_position   where each source partition has been read up to (advanced with landing)
    tf_batch             one row per landed batch (the unit a run processes, clears and replays)
    tf_event             every pulled message, raw, unique on its source position
    tf_quarantine        events that failed validation, with the failed expectations as reasons
    tf_decision          what reconciliation decided for each valid event (and why no email)
    tf_send              the send ledger: one row per email, unique idempotency key, written
                         before the SMTP transaction
    tf_run_summary       the report: counts, their balance, latency
    tf_source_health     per source: last successful/failed contact, host, bytes, pointer flushes
    tf_source_gap        every time a source resumed past where we asked (retention, reset)
    tf_source_hourly     messages received per source per hour (Campaign's 5-day report)
    tf_ims_token         IMS access tokens shared by tasks and runs, encrypted
    tf_send_log          every send action per run and try (sent, resent, deferred, failed,
                         ambiguous, dry-run, skipped-sent): the per-run audit of the ledger
    tf_suppression       addresses never to mail again (hard bounces, block list, manual)
    tf_dry_run           messages rendered by dry runs, with where they were written
    tf_chunk_lease       which task is sending a ledger chunk (overlapping runs and backfills
                         never send one chunk from two tasks at once)
    tf_unsubscribe       every opt-out received through a signed unsubscribe link (one row per
                         customer and token: a repeated POST adds nothing)
    tf_batch_stats       per batch: the status counters of its events and sends (refreshed by the
                         stages; the status document never counts tf_event itself)
    tf_source_stats      per source: the sum of its batches' tf_batch_stats (kept by delta)
    tf_schema_version    which additive migrations of existing tables have been applied
    tf_alert             operator alerts fired (SLA breach, failed runs, stalled source, refused
                         credentials, quarantine share, ambiguous sends, stopped chunks); an
                         alert is active until ``resolved_at`` is set
    tf_run_outcome       per DAG run: failed or succeeded (the consecutive-failures alert)
    tf_maintenance       what each maintenance run deleted, stripped, analysed or cleaned
    profiles             the customers (default schema; see README "Profiles")
    profile_visitor_ids  ECIDs (Experience Cloud visitor ids) known for each customer
    catalog              the products (optional; see README "Catalogue"): what an email shows of a SKU
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# The status summaries (tf_batch_stats, tf_source_stats) live in their own module, on the same
# metadata; they stay importable from here.
from include.triggerflow.store.metadata import metadata
from include.triggerflow.store.summaries import STATS_COLUMNS as STATS_COLUMNS
from include.triggerflow.store.summaries import batch_stats as batch_stats
from include.triggerflow.store.summaries import source_stats as source_stats
from include.triggerflow.store.types import BigId, UtcDateTime

# Every date-time column is a UtcDateTime: bound as UTC, read back aware UTC on SQLite too.

source_position = Table(
    "tf_source_position",
    metadata,
    # e.g. "journal:<registration>" or "pipeline:<consumer>:<topic>"
    Column("source", String(200), primary_key=True),
    # Pipeline partition; the I/O Events journal is one ordered stream, recorded as partition 0.
    Column("partition", Integer, primary_key=True),
    # Opaque to us: a journal position string, or a Pipeline offset written as text.
    Column("position", String(200), nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

batch = Table(
    "tf_batch",
    metadata,
    Column("batch_id", String(250), primary_key=True),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("run_type", String(50)),
    Column("interval_start", UtcDateTime),
    Column("interval_end", UtcDateTime),
    Column("source", String(200), nullable=False),
    # pulling -> landed. A batch left in "pulling" (task died between pages) is resumed by the
    # same run's retry; only a "landed" batch is frozen.
    Column("state", String(20), nullable=False),
    Column("pulled", Integer, nullable=False, default=0),
    Column("created_at", UtcDateTime, nullable=False),
    Column("landed_at", UtcDateTime),
    # Lines/items the reader received but could not place at a position (not JSON, not an
    # object, blank...): counted here so the run summary shows them; JSON {reason: count}.
    Column("dropped", Integer),
    Column("dropped_reasons", Text),
    # Set by reconcile when it decided the batch. Runs overlap (max_active_runs > 1) but batches
    # are decided in landing order: a batch's reconcile waits for earlier batches without one
    # whose runs are still going (include/triggerflow/stages/batch_order.py).
    Column("reconciled_at", UtcDateTime),
)
# Retention finds the old batches by age (include/triggerflow/maintenance); one row a minute.
Index("ix_tf_batch_created", batch.c.created_at)

event = Table(
    "tf_event",
    metadata,
    Column("event_id", BigId, primary_key=True, autoincrement=True),
    Column("batch_id", String(250), ForeignKey("tf_batch.batch_id"), nullable=False),
    Column("source", String(200), nullable=False),
    Column("src_partition", Integer, nullable=False),
    Column("src_position", String(200), nullable=False),
    # Lifted from the payload at landing when readable; the payload stays the source of truth.
    Column("message_id", String(200)),
    Column("trigger_id", String(200)),
    Column("trigger_ts", BigInteger),
    # The message as text the store can hold whatever arrived: decoded with replacement where the
    # bytes were not UTF-8, NUL and lone surrogates replaced, cut at the size cap.
    Column("payload", Text, nullable=False),
    # What arrived, untouched, when ``payload`` differs from it (capped like the payload); and
    # why it differs (invalid UTF-8, NUL, over the size cap...). Validate quarantines such events
    # with ``landing_note`` as the reason.
    Column("raw_payload", LargeBinary),
    Column("raw_size", BigInteger),  # bytes as received, before any cap
    Column("landing_note", Text),
    Column("received_at", UtcDateTime, nullable=False),
    # landed -> valid | quarantined (set by validate; reprocessing may flip quarantined -> valid)
    Column("status", String(20), nullable=False),
    UniqueConstraint("source", "src_partition", "src_position", name="uq_tf_event_source_position"),
)
Index("ix_tf_event_batch", event.c.batch_id)
# No index on message_id: nothing looks events up by it, and its random keys cost every landed
# event a random leaf page once tf_event outgrows memory (migration 0012 drops it from old stores).

quarantine = Table(
    "tf_quarantine",
    metadata,
    Column("event_id", BigId, ForeignKey("tf_event.event_id"), primary_key=True),
    Column("batch_id", String(250), nullable=False),
    # JSON list of {"expectation", "column", "value"}; values truncated.
    Column("reasons", Text, nullable=False),
    Column("quarantined_at", UtcDateTime, nullable=False),
    Column("reprocessed_at", UtcDateTime),
)
Index("ix_tf_quarantine_batch", quarantine.c.batch_id)

decision = Table(
    "tf_decision",
    metadata,
    Column("event_id", BigId, ForeignKey("tf_event.event_id"), primary_key=True),
    Column("batch_id", String(250), nullable=False),
    Column("trigger_id", String(200)),
    Column("route", String(100)),
    Column("customer_key", String(200)),
    Column("profile_id", String(100)),
    # matched | unmatched | ignored | suppressed:opt-out | duplicate | render-error ...
    Column("decision", String(50), nullable=False),
    Column("detail", Text),
    Column("decided_at", UtcDateTime, nullable=False),
)
Index("ix_tf_decision_batch", decision.c.batch_id)
Index("ix_tf_decision_profile", decision.c.profile_id)

send = Table(
    "tf_send",
    metadata,
    Column("send_id", BigId, primary_key=True, autoincrement=True),
    # sha256(trigger id, trigger timestamp, customer, template): the same trigger for the same
    # customer can never produce two emails, whichever batch or retry it comes through. Unique
    # together with trigger_ts (ux_tf_send_ts_key below).
    Column("idempotency_key", String(64), nullable=False),
    Column("batch_id", String(250), nullable=False),
    Column("chunk", Integer, nullable=False),
    # No foreign key to tf_event: the ledger outlives the events (retention keeps it as long as
    # the dedup windows and frequency caps look back; events go after three days). Migration 0011
    # drops the key of older stores. A row that still has to be sent keeps its batch's events.
    Column("event_id", BigId, nullable=False),
    Column("profile_id", String(100), nullable=False),
    Column("trigger_id", String(200), nullable=False),
    Column("route", String(100), nullable=False),
    Column("recipient", String(320), nullable=False),
    # pending -> sending -> sent | deferred (4xx) | failed (5xx, render or address error)
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("message_id", String(300)),
    Column("subject", Text),
    Column("smtp_code", Integer),
    Column("smtp_reply", Text),
    Column("trigger_ts", BigInteger),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("sent_at", UtcDateTime),
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("resend", Boolean, nullable=False, default=False),
    # Quiet hours: a row in state "scheduled" is not sent before this instant (the end of the
    # customer's quiet window); any later run's send stage picks it up once it is due.
    Column("not_before", UtcDateTime),
    # The template locale the email was rendered in (None: the default templates).
    Column("locale", String(20)),
)
# The ledger's uniqueness. The key hashes trigger_ts in, so (trigger_ts, key) is unique exactly when
# the key is (reconcile always writes trigger_ts); leading with the trigger time puts each batch's
# new keys at the index's recent end instead of on random leaf pages of a table of days of emails:
# on the soak's filled store reconcile ran 36 % slower than on an empty one with the key alone, 11 %
# with this order (migration 0014 replaces the old unique key of existing stores).
Index("ux_tf_send_ts_key", send.c.trigger_ts, send.c.idempotency_key, unique=True)
Index("ix_tf_send_batch_chunk", send.c.batch_id, send.c.chunk, send.c.state)
# Frequency caps and deduplication windows look up a customer's recent emails.
Index("ix_tf_send_profile_created", send.c.profile_id, send.c.created_at)
Index("ix_tf_send_state_not_before", send.c.state, send.c.not_before)

run_summary = Table(
    "tf_run_summary",
    metadata,
    Column("batch_id", String(250), primary_key=True),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("pulled", Integer, nullable=False),
    Column("valid", Integer, nullable=False),
    Column("quarantined", Integer, nullable=False),
    Column("matched", Integer, nullable=False),
    Column("unmatched", Integer, nullable=False),
    Column("ignored", Integer, nullable=False),
    Column("sent", Integer, nullable=False),
    Column("suppressed", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("duplicate", Integer, nullable=False),
    Column("pending", Integer, nullable=False),
    Column("balanced", Boolean, nullable=False),
    Column("oldest_sent_age_s", Float),
    Column("counts", Text, nullable=False),  # the full JSON report
    Column("reported_at", UtcDateTime, nullable=False),
)

source_health = Table(
    "tf_source_health",
    metadata,
    Column("source", String(200), primary_key=True),
    Column("endpoint", String(500)),  # the host actually read (pipelined's `pipeline-host`)
    Column("last_alive_at", UtcDateTime),
    Column("last_failed_at", UtcDateTime),
    Column("last_error", Text),
    Column("bytes_read", BigInteger, nullable=False, default=0),
    Column("messages_received", BigInteger, nullable=False, default=0),
    Column("pointer_flushes", BigInteger, nullable=False, default=0),
    Column("updated_at", UtcDateTime, nullable=False),
    # Lines/items received but not placeable at a position, in total.
    Column("lines_dropped", BigInteger),
    # The last read that received at least one message, and how many reads in a row since then
    # received only keep-alives (a source that pings forever while it holds messages shows here).
    Column("last_data_at", UtcDateTime),
    Column("empty_reads", BigInteger),
)

source_gap = Table(
    "tf_source_gap",
    metadata,
    Column("gap_id", BigId, primary_key=True, autoincrement=True),
    Column("source", String(200), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("expected_position", String(200)),  # where we asked to read from (None: nothing stored)
    Column("resumed_position", String(200), nullable=False),  # where the source actually resumed
    Column("reason", Text, nullable=False),
    Column("batch_id", String(250)),
    Column("detected_at", UtcDateTime, nullable=False),
)

source_hourly = Table(
    "tf_source_hourly",
    metadata,
    Column("source", String(200), primary_key=True),
    Column("hour", UtcDateTime, primary_key=True),  # UTC, truncated to the hour
    Column("messages", BigInteger, nullable=False),
)

ims_token = Table(
    "tf_ims_token",
    metadata,
    # sha256 of (IMS URL, client id, scopes, auth mode): never the client id itself in clear
    Column("cache_key", String(64), primary_key=True),
    # Fernet ciphertext; the key is derived from the client secret, which only lives in the
    # connection, so a reader of the store alone cannot use the token.
    Column("ciphertext", Text, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("minted_at", UtcDateTime, nullable=False),
)

send_log = Table(
    "tf_send_log",
    metadata,
    Column("log_id", BigId, primary_key=True, autoincrement=True),
    Column("send_id", BigId, ForeignKey("tf_send.send_id"), nullable=False),
    Column("batch_id", String(250), nullable=False),
    Column("run_id", String(250)),
    Column("try_number", Integer),
    # sent | resent | deferred | failed | ambiguous | dry-run | skipped-sent
    Column("action", String(20), nullable=False),
    Column("smtp_code", Integer),
    Column("detail", Text),
    Column("at", UtcDateTime, nullable=False),
)
Index("ix_tf_send_log_batch_run", send_log.c.batch_id, send_log.c.run_id)
Index("ix_tf_send_log_send", send_log.c.send_id)

suppression = Table(
    "tf_suppression",
    metadata,
    Column("address", String(320), primary_key=True),  # lower-cased
    # the category: hard-bounce | complaint | manual | block-list | unsubscribe
    Column("source", String(50), nullable=False),
    Column("reason", Text),
    Column("smtp_code", Integer),
    Column("created_at", UtcDateTime, nullable=False),
    # None: for good. A row past its expiry no longer suppresses.
    Column("expires_at", UtcDateTime),
    # the run whose send added it (hard bounces): lets an operator lift a bad day's suppressions
    Column("batch_id", String(250)),
)

chunk_lease = Table(
    "tf_chunk_lease",
    metadata,
    Column("batch_id", String(250), primary_key=True),
    Column("chunk", Integer, primary_key=True),
    # the DAG run (and task) holding it: a retry of the same task takes its own lease back
    Column("holder", String(300), nullable=False),
    Column("acquired_at", UtcDateTime, nullable=False),
)

dry_run = Table(
    "tf_dry_run",
    metadata,
    Column("dry_run_id", BigId, primary_key=True, autoincrement=True),
    Column("send_id", BigId, ForeignKey("tf_send.send_id"), nullable=False),
    Column("batch_id", String(250), nullable=False),
    Column("run_id", String(250)),
    Column("path", Text, nullable=False),
    Column("rendered_at", UtcDateTime, nullable=False),
)
Index("ix_tf_dry_run_batch", dry_run.c.batch_id)

unsubscribe = Table(
    "tf_unsubscribe",
    metadata,
    Column("unsubscribe_id", BigId, primary_key=True, autoincrement=True),
    Column("customer_id", String(100), nullable=False),
    Column("route", String(100)),  # the trigger route of the email whose link was used
    Column("method", String(20), nullable=False),  # one-click (RFC 8058 POST) | page (confirm form)
    Column("issued_at", UtcDateTime),  # when the link was signed
    Column("received_at", UtcDateTime, nullable=False),
    # sha256 hex of the token's signed part (version.payload): one link = one key, so recording
    # an opt-out is idempotent per customer and token. Nullable only for the additive migration,
    # which fills it for rows written before it (include/triggerflow/unsubscribe.py).
    Column("token_key", String(64)),
)
Index("ix_tf_unsubscribe_customer", unsubscribe.c.customer_id)
Index("ux_tf_unsubscribe_customer_token", unsubscribe.c.customer_id, unsubscribe.c.token_key, unique=True)

alert = Table(
    "tf_alert",
    metadata,
    Column("alert_id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(50), nullable=False),  # alerts.AlertKind
    Column("dag_id", String(250)),
    Column("run_id", String(250)),
    Column("batch_id", String(250)),
    Column("oldest_waiting_age_s", Float),
    Column("threshold_s", Float),
    Column("detail", Text, nullable=False),
    Column("notified", Text),  # who was told (addresses), or why nobody was
    Column("fired_at", UtcDateTime, nullable=False),
    # the measured figure that crossed ``threshold_s`` (failed runs, a share, a count; the SLA
    # alert keeps its age in oldest_waiting_age_s)
    Column("value", Float),
    # what the alert is about within its kind (a source key, a route...): rate limits and
    # resolution are per (kind, subject)
    Column("subject", String(250)),
    Column("resolved_at", UtcDateTime),  # None: active (the condition has not cleared)
)
Index("ix_tf_alert_kind_fired", alert.c.kind, alert.c.fired_at)

run_outcome = Table(
    "tf_run_outcome",
    metadata,
    # one row per DAG run and outcome: a task's final failure writes "failed", the report writes
    # "succeeded"; consecutive failed runs are the failed ones after the last succeeded one
    Column("dag_id", String(250), primary_key=True),
    Column("run_id", String(250), primary_key=True),
    Column("outcome", String(20), nullable=False),  # failed | succeeded
    Column("task_id", String(250)),  # the task whose failure failed the run
    Column("error", Text),  # the exception's first line (never a secret: masked like the logs)
    Column("at", UtcDateTime, nullable=False),
)
Index("ix_tf_run_outcome_dag_at", run_outcome.c.dag_id, run_outcome.c.at)

maintenance = Table(
    "tf_maintenance",
    metadata,
    # one row per table and action of a maintenance run (include/triggerflow/maintenance)
    Column("maintenance_id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(250)),
    Column("table_name", String(100), nullable=False),
    Column("action", String(30), nullable=False),  # delete | strip | analyze | vacuum | db-clean | kept
    Column("cutoff", UtcDateTime),  # rows older than this were eligible
    Column("rows", BigInteger),
    Column("seconds", Float),
    Column("detail", Text),
    Column("at", UtcDateTime, nullable=False),
)
Index("ix_tf_maintenance_at", maintenance.c.at)

schema_version = Table(
    "tf_schema_version",
    metadata,
    Column("migration", String(100), primary_key=True),
    Column("applied_at", UtcDateTime, nullable=False),
)

profiles = Table(
    "profiles",
    metadata,
    Column("customer_id", String(100), primary_key=True),
    Column("email", String(320), nullable=False),
    Column("first_name", String(200)),
    Column("last_name", String(200)),
    Column("locale", String(20)),
    Column("timezone", String(64)),
    Column("shopper_id", String(200)),
    Column("ecid", String(64)),
    Column("declared_id", String(200)),
    Column("opted_out", Boolean, nullable=False, default=False),
    Column("updated_at", UtcDateTime, nullable=False),
)
Index("ix_profiles_shopper_id", profiles.c.shopper_id)
Index("ix_profiles_ecid", profiles.c.ecid)
Index("ix_profiles_declared_id", profiles.c.declared_id)
Index("ix_profiles_email", profiles.c.email)

profile_visitor_ids = Table(
    "profile_visitor_ids",
    metadata,
    # Campaign keeps the visitor ids of recipients who clicked its emails (nms:trackingLogRcp
    # @sourceID); a customer can have several (devices, browsers).
    Column("visitor_id", String(64), primary_key=True),
    Column("customer_id", String(100), primary_key=True),
    Column("seen_at", UtcDateTime),
)
Index("ix_profile_visitor_ids_customer", profile_visitor_ids.c.customer_id)

PROFILE_COLUMNS = tuple(c.name for c in profiles.columns)

catalog = Table(
    "catalog",
    metadata,
    Column("sku", String(100), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("price", Numeric(12, 2)),
    Column("currency", String(3)),  # ISO 4217; None: the template's default
    Column("url", String(2048)),
    Column("image_url", String(2048)),
    Column("in_stock", Boolean, nullable=False, default=True),
    # locale-specific names where given: {"fr": "...", "fr-CA": "..."} (CSV columns name.fr ...)
    Column("names", JSON),
    Column("updated_at", UtcDateTime, nullable=False),
)

