"""Time helpers: the one place naive datetimes become UTC.

The store's datetime columns are :class:`store.types.UtcDateTime`, so rows come back aware on SQLite
and PostgreSQL alike; :func:`as_utc` is for the values that do not come through the store (Airflow
context values, parsed arguments, caller input).
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive value is taken to be UTC already (how the store writes them)."""
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def as_utc_or_none(value: datetime | None) -> datetime | None:
    """:func:`as_utc`, passing None through (a nullable column)."""
    return None if value is None else as_utc(value)


def epoch_ms(value: datetime) -> int:
    """Milliseconds since the epoch (a naive value taken as UTC): the unit of a trigger's timestamp."""
    return int(as_utc(value).timestamp() * 1000)
