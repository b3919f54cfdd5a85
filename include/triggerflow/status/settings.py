"""What the status document is told rather than reads from the store: Campaign's ``settings``
block, the source key and consumer an ``adobe_triggers`` connection names, and the thresholds of
the keep-alives-only warning.

**Keep-alive warning thresholds.** A quiet night also reads only keep-alives, so the warning needs
both many empty reads in a row and old data; it says "look", not "broken". Defaults: 30 reads
(about one read a minute: half an hour) and 1800 s. Each can be set, first found wins, by

* the ``adobe_triggers`` connection's extra: ``keepalive_warning_reads`` (a whole number >= 1),
  ``keepalive_warning_age_s`` (seconds >= 0);
* the environment: ``TRIGGERFLOW_KEEPALIVE_WARNING_READS``, ``TRIGGERFLOW_KEEPALIVE_WARNING_AGE_S``
  (of the process that builds the document: the API server for the plugin, the shell for the CLI).

A value that is not a number is ignored with a log warning (the default applies): a typo must not
take the status page down.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from include.triggerflow.config import RoutingConfig

log = logging.getLogger(__name__)

#: default number of keep-alive-only reads in a row before the warning (about half an hour)
KEEPALIVE_WARNING_READS = 30
#: default age (seconds) the last data must have too before the warning
KEEPALIVE_WARNING_AGE_S = 1800
KEEPALIVE_READS_EXTRA, KEEPALIVE_AGE_EXTRA = "keepalive_warning_reads", "keepalive_warning_age_s"
KEEPALIVE_READS_ENV = "TRIGGERFLOW_KEEPALIVE_WARNING_READS"
KEEPALIVE_AGE_ENV = "TRIGGERFLOW_KEEPALIVE_WARNING_AGE_S"

# The trigger_emails DAG's settings (dags/trigger_emails.py), mirrored here rather than parsed from
# the DAG at request time; tests/unit/test_status.py fails if they drift apart.
DAG_SCHEDULE_PERIOD_MS = 60_000  # schedule "* * * * *": each run lands what arrived since the last one
DAG_RETRIES = 3
DAG_RETRY_DELAY_S = 10
DAG_RETRY_EXPONENTIAL_BACKOFF = 2.0
DAG_MAX_RETRY_DELAY_S = 300
DEFAULT_PAGE_LIMIT = 500  # hooks/triggers.py default for extra.page_limit (journal)
DEFAULT_PAGE_SIZE = 1000  # ... and for extra.page_size (pipeline: pipelined's pointerFlushMessageCount)
DEFAULT_TOPIC = "triggers"
ENVIRONMENT_VARIABLE = "TRIGGERFLOW_ENVIRONMENT"  # replaces {env} in extra.consumer, as the hook does
DEFAULT_ENVIRONMENT = "dev"
SEND_POOL = "smtp_sessions"


@dataclass(frozen=True)
class KeepaliveThresholds:
    """When the ``keep-alives-only`` warning is raised (see the module docstring)."""

    reads: int = KEEPALIVE_WARNING_READS
    age_s: float = KEEPALIVE_WARNING_AGE_S


def _setting(extra: Mapping[str, Any], key: str, env: str, default: float, *, least: float, whole: bool) -> float:
    for where, raw in ((f"adobe_triggers extra.{key}", extra.get(key)), (f"${env}", os.environ.get(env))):
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        try:
            value = float(raw) if not isinstance(raw, bool) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if math.isfinite(value) and value >= least and (not whole or value.is_integer()):
            return value
        log.warning("status: %s=%r is not a %s >= %s; using %s", where, raw, "whole number" if whole else "number", least, default)
        return default
    return default


def keepalive_thresholds(extra: Mapping[str, Any] | None = None) -> KeepaliveThresholds:
    """The warning's thresholds: the connection extra, else the environment, else the defaults."""
    extra = extra or {}
    reads = _setting(extra, KEEPALIVE_READS_EXTRA, KEEPALIVE_READS_ENV, KEEPALIVE_WARNING_READS, least=1, whole=True)
    age = _setting(extra, KEEPALIVE_AGE_EXTRA, KEEPALIVE_AGE_ENV, KEEPALIVE_WARNING_AGE_S, least=0, whole=False)
    return KeepaliveThresholds(reads=int(reads), age_s=age)


def retry_validity_ms(
    retries: int = DAG_RETRIES,
    retry_delay_s: float = DAG_RETRY_DELAY_S,
    backoff: float = DAG_RETRY_EXPONENTIAL_BACKOFF,
    max_retry_delay_s: float = DAG_MAX_RETRY_DELAY_S,
) -> int:
    """How long a failing stage is retried before its run fails for good: the sum of the longest
    waits Airflow 3.3 can pick before each retry (``TaskInstance.next_retry_datetime``: with a
    backoff, try n waits between ceil(delay * backoff**(n-1)) and twice that, minus 1 s, capped)."""
    total = 0.0
    for try_number in range(1, retries + 1):
        if backoff and backoff != 1.0:
            least = max(1, math.ceil(retry_delay_s * backoff ** (try_number - 1)))
            longest: float = 2 * least - 1
        else:
            longest = retry_delay_s
        total += min(longest, max_retry_delay_s)
    return int(total * 1000)


def status_settings_from_connection(
    extra: Mapping[str, Any] | None, *, pool_slots: int | None = None
) -> dict[str, int | None]:
    """Campaign's ``settings`` block from the ``adobe_triggers`` connection extras and the DAG.

    ===========================  ============================================================
    flush-pointer-msg-count      messages per landed page, with which the position is saved:
                                 ``extra.page_limit`` of a journal (default 500), or
                                 ``extra.page_size`` of a pipeline source (default 1000)
    flush-pointer-period-ms      60000: the DAG pulls (and flushes) once a minute
    processing-threads-JS        slots of the ``smtp_sessions`` pool (parallel send sessions)
                                 when known, else null: there is no JS
    retry-period-ms              10000: the DAG's ``retry_delay`` (then exponential backoff)
    retry-validity-duration-ms   :func:`retry_validity_ms` of the DAG's retry settings
    ===========================  ============================================================
    """
    extra = extra or {}
    if _kind(extra) == "pipeline":
        raw_limit = extra.get("page_size", DEFAULT_PAGE_SIZE)
    else:
        raw_limit = extra.get("page_limit", DEFAULT_PAGE_LIMIT)
    try:
        page_limit: int | None = int(raw_limit)
    except (TypeError, ValueError):
        page_limit = None  # the source would refuse it too; show that it is unusable
    return {
        "flush-pointer-msg-count": page_limit,
        "flush-pointer-period-ms": DAG_SCHEDULE_PERIOD_MS,
        "processing-threads-JS": int(pool_slots) if pool_slots is not None else None,
        "retry-period-ms": DAG_RETRY_DELAY_S * 1000,
        "retry-validity-duration-ms": retry_validity_ms(),
    }


def _kind(extra: Mapping[str, Any]) -> str:
    return str(extra.get("kind", "journal"))


def _connection_consumer(extra: Mapping[str, Any]) -> str | None:
    """``extra.consumer`` with ``{env}`` replaced, as the adobe_triggers hook does."""
    raw = extra.get("consumer")
    if not isinstance(raw, str) or not raw.strip():
        return None
    env = str(extra.get("environment") or os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_ENVIRONMENT).strip()
    return raw.strip().replace("{env}", env)


def source_key_for_connection(host: str | None, extra: Mapping[str, Any] | None) -> str | None:
    """The store key of the source an ``adobe_triggers`` connection reads, as the sources key it:
    ``journal:<registration path>`` for the journal, ``pipeline:<consumer>:<topic>`` for the
    Pipeline; None when the connection does not say (then the most recently active source is shown)."""
    extra = extra or {}
    if _kind(extra) == "pipeline":
        consumer = _connection_consumer(extra)
        topic = str(extra.get("topic") or DEFAULT_TOPIC).strip()
        return f"pipeline:{consumer}:{topic}" if consumer else None
    url = (host or "").strip()
    if _kind(extra) != "journal" or not url.startswith(("http://", "https://")):
        return None
    return f"journal:{urlparse(url).path}"


def resolve_consumer(
    *,
    explicit: str | None = None,
    extra: Mapping[str, Any] | None = None,
    routing: RoutingConfig | None = None,
    host: str | None = None,
    source_key: str | None = None,
) -> str:
    """The consumer name shown: ``explicit`` (a --consumer flag), else ``extra.consumer`` of the
    ``adobe_triggers`` connection (``{env}`` replaced), else the consumer of the pasted Campaign
    option's ``triggers`` topic, else the I/O Events registration id (last segment of the journal
    URL: like a Pipeline consumer, each registration gets its own copy of every event), else the
    source key."""
    extra = extra or {}
    candidates = [
        explicit,
        _connection_consumer(extra),
        routing.campaign_consumer if routing is not None else None,
    ]
    if _kind(extra) == "journal" and source_key_for_connection(host, extra) is not None:
        candidates.append(urlparse(str(host).strip()).path.rstrip("/").rpartition("/")[2])
    candidates.append(source_key)
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()
    return "triggerflow"


def pool_slots(pool_name: str) -> int | None:
    """Slots of an Airflow pool, or None when the metadata DB is not reachable from here."""
    try:
        from airflow.models.pool import Pool

        pool = Pool.get_pool(pool_name)
        return int(pool.slots) if pool is not None else None
    except Exception:
        return None
