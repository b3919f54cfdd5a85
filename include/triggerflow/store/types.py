"""Column types shared by every table: :class:`UtcDateTime` and the autoincrement key :data:`BigId`.

Why one UTC type: SQLite has no time zone type, so ``DateTime(timezone=True)`` hands back naive
values there and aware ones on PostgreSQL, and every reader used to coerce them by hand. With
:class:`UtcDateTime` every date-time column binds UTC and reads back aware UTC on both dialects, so
readers compare and subtract what they read without a coercion.

The type in the database does not change (``impl`` is the same ``DateTime(timezone=True)``: DATETIME
on SQLite, TIMESTAMP WITH TIME ZONE on PostgreSQL), so existing stores need no migration. SQLite
stores the UTC wall clock as text, exactly as before (the stages always wrote UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that binds UTC and returns aware UTC datetimes on every dialect.

    A naive value is taken as UTC (how the store has always written them); an aware value in
    another zone is converted, so SQLite, which keeps no offset, stores the right instant."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value if value.tzinfo is UTC else value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite: the stored UTC wall clock
            return value.replace(tzinfo=UTC)
        return value if value.tzinfo is UTC else value.astimezone(UTC)


#: Autoincrement primary keys must be INTEGER on SQLite to alias ROWID; BIGINT on PostgreSQL.
BigId = BigInteger().with_variant(Integer(), "sqlite")
