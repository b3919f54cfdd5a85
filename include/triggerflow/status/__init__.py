"""The ``pipelined`` status document (Campaign's monitoring JSON), computed from the store.

    document.py    :func:`build_status` from the summary tables (every field documented there)
    settings.py    what the caller tells it: Campaign's ``settings`` block, source key and consumer
                   of an ``adobe_triggers`` connection, keep-alive warning thresholds
    collector.py   :func:`collect_status`: the one collector the CLI and the plugin share

Every public name of the former ``status.py`` is importable from here.
"""

from include.triggerflow.status.collector import UnknownSource, collect_status, connection_fields
from include.triggerflow.status.document import (
    AVERAGE_OVER_BATCHES,
    AVERAGE_OVER_SENT,
    HOURS_SHOWN,
    StatusWarning,
    build_status,
    known_source,
    latest_source,
    latest_source_in,
    source_warnings,
)
from include.triggerflow.status.settings import (
    DAG_MAX_RETRY_DELAY_S,
    DAG_RETRIES,
    DAG_RETRY_DELAY_S,
    DAG_RETRY_EXPONENTIAL_BACKOFF,
    DAG_SCHEDULE_PERIOD_MS,
    DEFAULT_PAGE_LIMIT,
    DEFAULT_PAGE_SIZE,
    KEEPALIVE_WARNING_AGE_S,
    KEEPALIVE_WARNING_READS,
    SEND_POOL,
    KeepaliveThresholds,
    keepalive_thresholds,
    pool_slots,
    resolve_consumer,
    retry_validity_ms,
    source_key_for_connection,
    status_settings_from_connection,
)

__all__ = [
    "AVERAGE_OVER_BATCHES",
    "AVERAGE_OVER_SENT",
    "DAG_MAX_RETRY_DELAY_S",
    "DAG_RETRIES",
    "DAG_RETRY_DELAY_S",
    "DAG_RETRY_EXPONENTIAL_BACKOFF",
    "DAG_SCHEDULE_PERIOD_MS",
    "DEFAULT_PAGE_LIMIT",
    "DEFAULT_PAGE_SIZE",
    "HOURS_SHOWN",
    "KEEPALIVE_WARNING_AGE_S",
    "KEEPALIVE_WARNING_READS",
    "SEND_POOL",
    "KeepaliveThresholds",
    "StatusWarning",
    "UnknownSource",
    "build_status",
    "collect_status",
    "connection_fields",
    "keepalive_thresholds",
    "known_source",
    "latest_source",
    "latest_source_in",
    "pool_slots",
    "resolve_consumer",
    "retry_validity_ms",
    "source_key_for_connection",
    "source_warnings",
    "status_settings_from_connection",
]
