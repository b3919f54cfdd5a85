"""The one status collector: everything the document needs besides the store rows.

The CLI (``cli status``) and the plugin (``GET /pipelined/status``) read their Airflow connections
their own way (the CLI through the task SDK, the API server through the metastore models), then
both call :func:`collect_status` with the ``adobe_triggers`` connection they found (or None): it
loads the routing (a broken routing file is shown as ``routing.error``, not fatal), reads the send
pool's slots, resolves the source and the consumer, the ``settings`` block and the keep-alive
warning thresholds, and builds the document on the caller's engine or connection.

Store errors (``SQLAlchemyError``) propagate: each caller words them for its audience.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine

from include.triggerflow.status import document as _document
from include.triggerflow.status.settings import (
    SEND_POOL,
    keepalive_thresholds,
    pool_slots,
    resolve_consumer,
    source_key_for_connection,
    status_settings_from_connection,
)


class UnknownSource(LookupError):
    """A source was asked for that the store has never read (no ``tf_source_health`` row)."""


def connection_fields(conn: Any) -> tuple[str | None, dict[str, Any]]:
    """``(host, extra)`` of an ``adobe_triggers`` connection object (either Airflow flavour), or
    ``(None, {})`` without one: the status then shows the defaults and the latest source."""
    if conn is None:
        return None, {}
    return conn.host, dict(conn.extra_dejson or {})


def collect_status(
    store: Engine | Connection,
    source_conn: Any = None,
    *,
    source: str | None = None,
    consumer: str | None = None,
    known_only: bool = False,
) -> dict[str, Any]:
    """The status document of ``source`` (default: the one ``source_conn`` reads, else the most
    recently active one), read on ``store`` (an engine, or the caller's guarded connection).

    :param source_conn: the ``adobe_triggers`` connection, or None when it is not defined here.
    :param consumer: the consumer name to show (a --consumer flag, ``?consumer=``).
    :param known_only: refuse a ``source`` the store has never read (:class:`UnknownSource`); the
        plugin sets it so that a caller cannot make it read arbitrary keys.
    """
    from include.triggerflow.config import RoutingConfigError, load_routing

    host, extra = connection_fields(source_conn)
    routing_error = None
    try:
        routing = load_routing()
    except RoutingConfigError as exc:
        routing, routing_error = None, str(exc)
    settings = status_settings_from_connection(extra, pool_slots=pool_slots(SEND_POOL))
    with _document.reading(store) as conn:
        if known_only and source is not None and not _document.known_source(conn, source):
            raise UnknownSource(source)
        source_key = source or source_key_for_connection(host, extra) or _document.latest_source_in(conn)
        document = _document.build_status(
            conn,
            routing,
            source_key=source_key,
            consumer=resolve_consumer(explicit=consumer, extra=extra, routing=routing, host=host, source_key=source_key),
            settings=settings,
            thresholds=keepalive_thresholds(extra),
        )
    if routing_error is not None:
        document["routing"]["error"] = routing_error
    return document
