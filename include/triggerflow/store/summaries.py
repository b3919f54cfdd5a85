"""The status summary tables: each batch's counters (``tf_batch_stats``) and their sums per source
(``tf_source_stats``), kept by include/triggerflow/stats.py so the status document never counts
``tf_event`` itself. Same metadata as every other table (re-exported by ``store.schema``)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, String, Table

from include.triggerflow.store.metadata import metadata
from include.triggerflow.store.types import UtcDateTime

#: The status counters of one batch, recomputed from that batch's rows only (bounded by the batch
#: size) by include/triggerflow/stats.py after each stage; tf_source_stats holds their sums.
STATS_COLUMNS = (
    "received",  # tf_event rows (every message landed)
    "unprocessed",  # events landed, or valid without a tf_decision row
    "discarded",  # events still quarantined
    "failures",  # tf_send rows in state failed
    "retries",  # tf_send rows in state deferred
    "sent",  # tf_send rows in state sent
)

batch_stats = Table(
    "tf_batch_stats",
    metadata,
    Column("batch_id", String(250), primary_key=True),
    Column("source", String(200), nullable=False),
    *(Column(name, BigInteger, nullable=False, default=0) for name in STATS_COLUMNS),
    # sum over the batch's sent rows of (sent_at - event received_at), in ms: the average
    # processing time is taken over the latest batches without reading tf_send
    Column("processing_ms_sum", Float, nullable=False, default=0.0),
    # tf_batch.created_at, copied: "the latest batch" of a source without reading tf_batch
    Column("batch_created_at", UtcDateTime, nullable=False),
    Column("refreshed_at", UtcDateTime, nullable=False),
)
Index("ix_tf_batch_stats_source", batch_stats.c.source, batch_stats.c.batch_created_at)

source_stats = Table(
    "tf_source_stats",
    metadata,
    Column("source", String(200), primary_key=True),
    *(Column(name, BigInteger, nullable=False, default=0) for name in STATS_COLUMNS),
    Column("updated_at", UtcDateTime, nullable=False),
)
