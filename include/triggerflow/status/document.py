"""The ``pipelined`` status document: Campaign's monitoring JSON, computed from the store.

Campaign's ``pipelined`` answers ``GET /pipelined/status`` with counters that monitoring tools poll
(reference/adobe-triggers.md §4). :func:`build_status` returns the same indicator names, computed
from the triggerflow store, so a monitor written for Campaign keeps working (served by
``plugins/pipelined_status.py`` and printed by ``python -m include.triggerflow.cli status``, both
through :func:`.collector.collect_status`)::

    {"consumer": "...", "source": "journal:/events/...", "generated-at": "2026-11-27T07:12:03Z",
     "http-request": {"last-alive-ms-ago", "last-failed-cnx-ms-ago", "pipeline-host", "last-error"},
     "pointer": {"current-offsets": "0:1090921,1:1071369", "last-flush-ms-ago", "processed-since-last-flush"},
     "routing": {"triggers": {"<uid or *>": "<jsConnector or template>"}, "aliases": {...}},
     "stats": {...}, "settings": {...}, "messages-per-hour": [{"hour": "...Z", "messages": n}, ...]}

Where each indicator comes from (``S`` = the source). The event and ledger counters come from the
summary tables ``tf_source_stats`` (per source) and ``tf_batch_stats`` (per batch), which every
stage refreshes from the rows of the batch it changed (include/triggerflow/stats.py, where
"unprocessed" = an event with status ``landed``, or ``valid`` without a ``tf_decision`` row):
building the document never reads ``tf_event``, ``tf_send``, ``tf_decision`` or ``tf_quarantine``,
so it costs the same at 10 k or 10 M stored events. ``cli status --recount`` rebuilds the summaries.

==================================== ==================================================================
indicator                            from the store
==================================== ==================================================================
consumer                             given by the caller (:func:`.settings.resolve_consumer`)
http-request.last-alive-ms-ago       now - ``tf_source_health.last_alive_at`` (last successful read), null if never
http-request.last-failed-cnx-ms-ago  now - ``tf_source_health.last_failed_at`` (last failed read), null if never
http-request.pipeline-host           scheme://host[:port] of ``tf_source_health.endpoint``
http-request.last-error              ``tf_source_health.last_error`` (triggerflow addition)
http-request.last-data-ms-ago        now - ``tf_source_health.last_data_at`` (last read that received at
                                     least one message, not only keep-alives), null if never (addition)
http-request.empty-reads             ``tf_source_health.empty_reads``: reads in a row since then that
                                     received only keep-alives (addition)
pointer.current-offsets              ``tf_source_position`` of S as ``partition:position`` CSV, by partition
pointer.last-flush-ms-ago            now - max(``tf_source_position.updated_at``) of S, null if none
pointer.processed-since-last-flush   ``tf_batch_stats.unprocessed`` of S's latest batch (by
                                     ``batch_created_at``): unprocessed events of what the last pull
                                     landed (its pointer flushes) and the run has not yet validated and
                                     reconciled; 0 when caught up. (Campaign's sense, messages handled
                                     ahead of the saved pointer, is always 0 here: the pointer moves in
                                     the transaction that lands the messages it covers.)
stats.trigger-received               ``tf_source_stats.received``: ``tf_event`` rows of S (every message landed)
stats.trigger-processed              events of S with a decision or quarantined
                                     = trigger-received - current-messages (statuses partition them)
stats.trigger-discarded              ``tf_source_stats.discarded``: events of S still ``quarantined``
                                     (Campaign: discarded after retries; must be 0 normally)
stats.trigger-failures               ``tf_source_stats.failures``: ``tf_send`` rows of S's batches ``failed``
stats.current-messages               ``tf_source_stats.unprocessed``: unprocessed events of S; should
                                     stay near 0 (a batch being pulled counts once it has landed)
stats.current-retries                ``tf_source_stats.retries``: ``tf_send`` rows of S's batches
                                     ``deferred`` (4xx, to retry)
stats.bytes-read                     ``tf_source_health.bytes_read`` (response bytes of every page)
stats.pointer-flushes                ``tf_source_health.pointer_flushes`` (pages that moved the position)
stats.average-trigger-processing-time-ms  mean(``sent_at`` - event ``received_at``) of the ``sent``
                                     ledger rows of S's latest batches with sends (``tf_batch_stats``
                                     ``processing_ms_sum / sent``, newest first until 1000 emails or
                                     50 batches), null if none
stats.gaps                           count of ``tf_source_gap`` rows of S (resumed past the stored position)
stats.lines-dropped                  ``tf_source_health.lines_dropped``: lines the reader received but
                                     could not land as an event (not JSON, not an object, blank...;
                                     per batch in ``tf_batch.dropped``) (addition)
warnings                             what a monitor should look at, as ``{"code", "detail"}`` (addition):
                                     ``keep-alives-only`` when the last N reads or more (default 30)
                                     received only keep-alives and the last data is older than T
                                     (default 1800 s) or never came: a source that pings but never
                                     delivers looks green otherwise. N and T are settings
                                     (status/settings.py: connection extra or environment)
settings                             given by the caller (:func:`.settings.status_settings_from_connection`)
messages-per-hour                    ``tf_source_hourly`` of S for the last 120 hours (5 days), the
                                     current hour last, hours without messages as 0
==================================== ==================================================================

Counters are cumulative over what the store holds (Campaign's reset when the process restarts).

Every query is SQLAlchemy Core and bounded by a key or an index on ``source``: one row each of
``tf_source_health`` and ``tf_source_stats``, S's partitions in ``tf_source_position``, at most 51
``tf_batch_stats`` rows (``ix_tf_batch_stats_source``), 120 ``tf_source_hourly`` rows, and a count
of ``tf_source_gap`` (which grows with gaps, not with events). tests/unit/test_status.py captures
the SQL to prove it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from sqlalchemy import Connection, Engine, func, select

from include.triggerflow.status.settings import (
    KEEPALIVE_WARNING_AGE_S,
    KEEPALIVE_WARNING_READS,
    KeepaliveThresholds,
    keepalive_thresholds,
)
from include.triggerflow.store.schema import (
    STATS_COLUMNS,
    batch_stats,
    source_gap,
    source_health,
    source_hourly,
    source_position,
    source_stats,
)
from include.triggerflow.timeutil import as_utc_or_none, utcnow

if TYPE_CHECKING:
    from include.triggerflow.config import RoutingConfig

HOURS_SHOWN = 120  # Campaign's "Pipeline messages" report: messages per hour over 5 days
#: the processing-time average is taken over the latest sent emails, at least this many ...
AVERAGE_OVER_SENT = 1000
#: ... taken from at most this many of the latest batches (tf_batch_stats rows, not ledger rows)
AVERAGE_OVER_BATCHES = 50


class StatusWarning(StrEnum):
    """Codes of the document's ``warnings``."""

    KEEPALIVES_ONLY = "keep-alives-only"


# -- the document ------------------------------------------------------------------------------------
def _ms_ago(now: datetime, then: datetime | None) -> int | None:
    then = as_utc_or_none(then)
    if then is None:
        return None
    return max(0, int((now - then).total_seconds() * 1000))


def _host_of(endpoint: str | None) -> str | None:
    if not endpoint:
        return None
    parsed = urlparse(endpoint)
    if not parsed.scheme or not parsed.hostname:
        return endpoint
    host = parsed.hostname if ":" not in parsed.hostname else f"[{parsed.hostname}]"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{host}{port}"  # never the path, query or user info


def latest_source_in(conn: Connection) -> str | None:
    """:func:`latest_source` on an open connection (the caller's transaction)."""
    return conn.execute(
        select(source_health.c.source)
        .order_by(source_health.c.updated_at.desc(), source_health.c.source)
        .limit(1)
    ).scalar_one_or_none()


def latest_source(engine: Engine) -> str | None:
    """The source with the most recent activity in ``tf_source_health`` (the only one, usually)."""
    with engine.connect() as conn:
        return latest_source_in(conn)


@contextmanager
def reading(engine: Engine | Connection) -> Iterator[Connection]:
    """A connection to read on: the caller's own (and its transaction), or a new one of ``engine``."""
    if isinstance(engine, Connection):
        yield engine  # the caller's connection and transaction
    else:
        with engine.connect() as conn:
            yield conn


def known_source(engine: Engine | Connection, source: str) -> bool:
    """Whether ``source`` is a source the store has read (a ``tf_source_health`` row): the only
    sources the plugin lets a caller ask for."""
    with reading(engine) as conn:
        return conn.execute(select(source_health.c.source).where(source_health.c.source == source)).first() is not None


def _count(conn: Any, stmt: Any) -> int:
    return int(conn.execute(stmt).scalar_one() or 0)


def _hour_floor(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_status(
    engine: Engine | Connection,
    routing: RoutingConfig | None,
    *,
    source_key: str | None = None,
    consumer: str,
    settings: Mapping[str, Any],
    now: datetime | None = None,
    thresholds: KeepaliveThresholds | None = None,
) -> dict[str, Any]:
    """The status document of one source (see the module docstring for every field).

    :param engine: the store, or a connection to read it on (the plugin's, with its timeouts).
    :param source_key: the source (``tf_source_health.source``); None = the most recently updated.
    :param routing: shown as ``routing``; None shows no routes.
    :param thresholds: of the keep-alives-only warning (default: :func:`.settings.keepalive_thresholds`
        of the environment alone).
    """
    now = as_utc_or_none(now) or utcnow()
    thresholds = thresholds or keepalive_thresholds()
    with reading(engine) as conn:
        source = source_key if source_key is not None else latest_source_in(conn)
        health = (
            conn.execute(select(source_health).where(source_health.c.source == source)).mappings().first()
            if source is not None
            else None
        )
        positions = conn.execute(
            select(source_position.c.partition, source_position.c.position, source_position.c.updated_at)
            .where(source_position.c.source == source)
            .order_by(source_position.c.partition)
        ).all()

        totals = (
            conn.execute(select(source_stats).where(source_stats.c.source == source)).mappings().first()
            if source is not None
            else None
        )
        since_flush = conn.execute(
            select(batch_stats.c.unprocessed)
            .where(batch_stats.c.source == source)
            .order_by(batch_stats.c.batch_created_at.desc(), batch_stats.c.batch_id.desc())
            .limit(1)
        ).scalar_one_or_none()
        timed = conn.execute(
            select(batch_stats.c.sent, batch_stats.c.processing_ms_sum)
            .where(batch_stats.c.source == source, batch_stats.c.sent > 0)
            .order_by(batch_stats.c.batch_created_at.desc(), batch_stats.c.batch_id.desc())
            .limit(AVERAGE_OVER_BATCHES)
        ).all()
        gaps = _count(conn, select(func.count()).select_from(source_gap).where(source_gap.c.source == source))
        first_hour = _hour_floor(now) - timedelta(hours=HOURS_SHOWN - 1)
        hourly = conn.execute(
            select(source_hourly.c.hour, source_hourly.c.messages).where(
                source_hourly.c.source == source, source_hourly.c.hour >= first_hour
            )
        ).all()

    per_hour: dict[datetime, int] = {}
    for hour, messages in hourly:
        key = _hour_floor(hour)  # NOT NULL, and aware UTC (store.types.UtcDateTime)
        per_hour[key] = per_hour.get(key, 0) + int(messages)
    sent_timed, ms_timed = 0, 0.0
    for sent, ms in timed:  # the latest batches with sends, until AVERAGE_OVER_SENT emails
        if sent_timed >= AVERAGE_OVER_SENT:
            break
        sent_timed, ms_timed = sent_timed + int(sent), ms_timed + float(ms or 0.0)
    counters = {name: int(totals[name] or 0) if totals else 0 for name in STATS_COLUMNS}
    received, current = counters["received"], counters["unprocessed"]
    last_flush = max((updated for _, _, updated in positions), default=None)  # NOT NULL, aware UTC
    empty_reads = int(health["empty_reads"] or 0) if health else 0
    last_data_ms_ago = _ms_ago(now, health["last_data_at"]) if health else None

    return {
        "consumer": consumer,
        "source": source,
        "generated-at": _iso(now),
        "http-request": {
            "last-alive-ms-ago": _ms_ago(now, health["last_alive_at"]) if health else None,
            "last-failed-cnx-ms-ago": _ms_ago(now, health["last_failed_at"]) if health else None,
            "pipeline-host": _host_of(health["endpoint"]) if health else None,
            "last-error": health["last_error"] if health else None,
            "last-data-ms-ago": last_data_ms_ago,
            "empty-reads": empty_reads,
        },
        "pointer": {
            "current-offsets": ",".join(f"{int(p)}:{position}" for p, position, _ in positions),
            "last-flush-ms-ago": _ms_ago(now, last_flush),
            "processed-since-last-flush": int(since_flush or 0),
        },
        "routing": routing.routing_map() if routing is not None else {"triggers": {}},
        "stats": {
            "trigger-received": received,
            "trigger-processed": received - current,
            "trigger-discarded": counters["discarded"],
            "trigger-failures": counters["failures"],
            "current-messages": current,
            "current-retries": counters["retries"],
            "bytes-read": int(health["bytes_read"]) if health else 0,
            "average-trigger-processing-time-ms": round(ms_timed / sent_timed) if sent_timed else None,
            "pointer-flushes": int(health["pointer_flushes"]) if health else 0,
            "gaps": gaps,
            "lines-dropped": int(health["lines_dropped"] or 0) if health else 0,
        },
        "settings": dict(settings),
        "messages-per-hour": [
            {"hour": _iso(hour), "messages": per_hour.get(hour, 0)}
            for hour in (first_hour + timedelta(hours=i) for i in range(HOURS_SHOWN))
        ],
        "warnings": source_warnings(
            empty_reads=empty_reads, last_data_ms_ago=last_data_ms_ago, min_reads=thresholds.reads, min_age_s=thresholds.age_s
        ),
    }


def source_warnings(
    *,
    empty_reads: int,
    last_data_ms_ago: int | None,
    min_reads: int = KEEPALIVE_WARNING_READS,
    min_age_s: float = KEEPALIVE_WARNING_AGE_S,
) -> list[dict[str, str]]:
    """The document's ``warnings`` from a source's read health (see the module docstring)."""
    warnings: list[dict[str, str]] = []
    stale = last_data_ms_ago is None or last_data_ms_ago >= min_age_s * 1000
    if empty_reads >= min_reads and stale:
        since = "no read has ever received a message" if last_data_ms_ago is None else (
            f"the last message arrived {last_data_ms_ago // 60_000} min ago"
        )
        warnings.append({
            "code": StatusWarning.KEEPALIVES_ONLY.value,
            "detail": f"the last {empty_reads} reads received only keep-alives and {since}: check that "
            "the source still delivers to this consumer (Adobe's own status, the registration, the topic)",
        })
    return warnings
