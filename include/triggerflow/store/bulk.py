"""Bulk writes for the stages: :func:`bulk_insert` (PostgreSQL COPY, SQLite executemany),
:func:`insert_ignore`, and :class:`DriverStatement` / :class:`RowsStatement` / :class:`DriverSession`
for the send stage's ledger writes on a raw DBAPI connection.

Every path stores exactly what SQLAlchemy Core would store (the column types' bind processors run,
or the values are written as PostgreSQL reads them).
"""

from __future__ import annotations

import io
import itertools
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Engine, Table, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from include.triggerflow.store.engines import StoreConfigError

log = logging.getLogger(__name__)

def insert_ignore(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], *, keys: Iterable[str]) -> int:
    """INSERT ... ON CONFLICT (keys) DO NOTHING; returns how many rows were new."""
    if not rows:
        return 0
    stmt = dialect_insert(conn, table).on_conflict_do_nothing(index_elements=list(keys))
    result = conn.execute(stmt, list(rows))
    return max(result.rowcount or 0, 0)


def chunked(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Slices of at most ``size`` items; keeps IN-lists under every dialect's parameter limit."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def dialect_insert(conn_or_engine: Connection | Engine, table: Table) -> Any:
    """``insert(table)`` of the dialect's own module (for ``on_conflict_do_nothing``)."""
    return dialect_insert_for(conn_or_engine.dialect.name, table)


class RawStatement(Protocol):
    """SQL for the driver and its positional parameters: :class:`DriverStatement` (one row's values)
    or :class:`RowsStatement` (many rows')."""

    sql: str

    def params(self, values: Any, /) -> tuple[Any, ...]: ...


class DriverStatement:
    """A Core statement compiled once, run on a raw DBAPI cursor with positional parameters.

    For the send stage's per-email ledger writes, where SQLAlchemy's per-execute work (cache key,
    execution context, result object) costs more than the statement itself. The SQL text is still
    SQLAlchemy's (quoting, dialect syntax); parameters are bound by name (``bindparam``) and go
    through the column types' bind processors, so stored values are exactly what Core would store
    (SQLite date-times as SQLAlchemy's text format, booleans as 0/1).
    """

    def __init__(self, stmt: Any, dialect: Any, *, names: Mapping[str, str] | None = None) -> None:
        if dialect.name == "postgresql":
            # positional ("format") so several statements can be sent in one round trip
            compile_with = type(dialect)(paramstyle="format")
        else:
            compile_with = dialect
        compiled = stmt.compile(dialect=compile_with)
        if not compiled.positional:  # pragma: no cover - both dialects compile positionally here
            raise StoreConfigError(f"{dialect.name}: expected a positional paramstyle")
        self.sql = str(compiled)
        self._params: list[tuple[str, Any, Any]] = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            # a value given to the statement itself (``.values(state="sending")``) is its default
            constant = _NO_VALUE if bind.required else bind.effective_value
            key = names.get(name, name) if names else name
            self._params.append((key, constant, _bind_processor(bind.type, dialect)))

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, constant, proc in self._params:
            value = values[name] if constant is _NO_VALUE or name in values else constant
            out.append(value if proc is None else proc(value))
        return tuple(out)

    def params_many(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """:meth:`params` for many rows, column by column; a bind processor runs once per distinct
        value (a bulk insert repeats the same timestamps)."""
        columns = []
        for name, constant, proc in self._params:
            if constant is _NO_VALUE:
                column = [row[name] for row in rows]
            else:
                column = [row.get(name, constant) for row in rows]
            if proc is not None:
                memo: dict[Any, Any] = {}
                converted = []
                for value in column:
                    key = (type(value), value)
                    if key not in memo:
                        memo[key] = proc(value)
                    converted.append(memo[key])
                column = converted
            columns.append(column)
        return list(zip(*columns))


_NO_VALUE = object()


class RowsStatement:
    """One PostgreSQL statement for many rows: each value column as an array, ``unnest``-ed.

    With ``key=(k, kv)`` (the key column and the name of its value) an UPDATE, ``UPDATE t SET c =
    v.p, ... FROM unnest(%s::type[], ...) AS v(...) WHERE t.k = v.kv``; without, ``INSERT INTO t
    (c, ...) SELECT ... FROM unnest(...)``. The SQL text is the same for any number of rows, so the
    server parses and plans one statement per group of rows where :class:`DriverStatement` costs
    one per row. ``columns`` maps each column set to the name of its
    value in the row dicts (one value may feed two columns); ``constants`` are the same for every
    row. Values go through the columns' bind processors, as :class:`DriverStatement`'s do. The rows
    of an UPDATE must have distinct keys (a row matched twice is updated once, by either).
    """

    def __init__(self, table: Table, dialect: Any, *, columns: Mapping[str, str], key: tuple[str, str] | None = None,
                 constants: Mapping[str, Any] | None = None) -> None:
        if dialect.name != "postgresql":
            raise StoreConfigError(f"{dialect.name}: RowsStatement is PostgreSQL's (unnest of arrays)")
        constants = dict(constants or {})
        #: (value name, column whose type it takes), in the order of the arrays
        names: dict[str, str] = {}
        if key is not None:
            names[key[1]] = key[0]
        for column, name in columns.items():
            names.setdefault(name, column)
        self.names = list(names)
        self._array_procs = [_bind_processor(table.c[column].type, dialect) for column in names.values()]
        self._constants = [(_bind_processor(table.c[column].type, dialect), value) for column, value in constants.items()]
        arrays = ", ".join(f"%s::{table.c[column].type.compile(dialect=dialect)}[]" for column in names.values())
        as_v = ", ".join(f'"{n}"' for n in self.names)
        if key is None:
            if constants:
                raise ValueError("RowsStatement: an INSERT takes its values from the rows")
            cols = ", ".join(f'"{c}"' for c in columns)
            picked = ", ".join(f'v."{n}"' for n in columns.values())
            self.sql = f'INSERT INTO "{table.name}" ({cols}) SELECT {picked} FROM unnest({arrays}) AS v({as_v})'
        else:
            sets = [f'"{c}" = %s' for c in constants] + [f'"{c}" = v."{n}"' for c, n in columns.items()]
            self.sql = (f'UPDATE "{table.name}" SET {", ".join(sets)} FROM unnest({arrays}) AS v({as_v}) '
                        f'WHERE "{table.name}"."{key[0]}" = v."{key[1]}"')

    def params(self, rows: Sequence[Mapping[str, Any]]) -> tuple[Any, ...]:
        out: list[Any] = [value if proc is None else proc(value) for proc, value in self._constants]
        for name, proc in zip(self.names, self._array_procs, strict=True):
            column = [row[name] for row in rows]
            out.append(column if proc is None else [proc(value) for value in column])
        return tuple(out)


def _bind_processor(type_: Any, dialect: Any) -> Any:
    return type_.dialect_impl(dialect).bind_processor(dialect)


class DriverSession:
    """One raw DBAPI connection of the engine's pool for a loop of small transactions.

    :meth:`transaction` runs statements and commits them as one transaction: on PostgreSQL as one
    round trip (``BEGIN; ...; COMMIT`` in one query, the connection in autocommit mode meanwhile),
    on SQLite as the driver's executes and a commit. The connection goes back to the pool, in its
    usual mode, on :meth:`close`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection = engine.raw_connection()
        #: the driver's own connection (psycopg2 or sqlite3), for its autocommit switch
        self._driver = cast(Any, self.connection.dbapi_connection)
        self._pg = engine.dialect.name == "postgresql"
        if self._pg:
            self._driver.autocommit = True
        self.cursor = self.connection.cursor()

    def transaction(self, items: Sequence[tuple[RawStatement, Any]]) -> None:
        """Execute the statements and commit them, all or nothing (:class:`RowsStatement`: PostgreSQL only)."""
        if not items:
            return
        if self._pg:
            params: list[Any] = []
            for stmt, values in items:
                params.extend(stmt.params(values))
            sql = "BEGIN;\n" + ";\n".join(stmt.sql for stmt, _ in items) + ";\nCOMMIT"
            try:
                self.cursor.execute(sql, tuple(params))
            except BaseException:
                # a statement failed: the server skipped the rest, the transaction is open and failed
                self._rollback_quietly()
                raise
            return
        try:
            for stmt, values in items:
                self.cursor.execute(stmt.sql, stmt.params(values))
            self.connection.commit()
        except BaseException:
            self._rollback_quietly()
            raise

    def _rollback_quietly(self) -> None:
        try:
            if self._pg:
                self.cursor.execute("ROLLBACK")
            else:
                self.connection.rollback()
        except Exception:
            # the statement's own error is the one to raise; a dead connection is invalidated on close
            log.debug("rollback after a failed transaction failed too", exc_info=True)

    def close(self) -> None:
        try:
            self.cursor.close()
            if self._pg:
                self._driver.autocommit = False
        except Exception:
            self.connection.invalidate()
        finally:
            self.connection.close()  # back to the pool, which rolls back anything left open

    def __enter__(self) -> DriverSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- bulk writes ---------------------------------------------------------------------------------------
def bulk_insert(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    ignore_conflicts_on: Sequence[str] | None = None,
) -> int:
    """Insert many rows in the connection's transaction, faster than ``conn.execute(insert(t), rows)``.
    Returns how many rows were inserted (fewer than given only with ``ignore_conflicts_on``).

    PostgreSQL: ``COPY ... FROM STDIN`` (text format), or with ``ignore_conflicts_on`` a COPY into a
    temporary table and one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. SQLite: the driver's
    ``executemany`` with tuples (``INSERT ... ON CONFLICT DO NOTHING`` with ``ignore_conflicts_on``).
    Values go through the column types' bind processors (SQLite) or are written as PostgreSQL reads
    them, so the stored values are those Core would store. Every row must have the same keys; a
    constraint violation raises ``sqlalchemy.exc.IntegrityError`` as ``conn.execute`` would.
    """
    if not rows:
        return 0
    columns = list(rows[0].keys())
    # Column defaults Core would fill in (``default=False``...): scalar ones only, in every row.
    defaults = {}
    for column in table.columns:
        if column.name in columns or column.default is None:
            continue
        if not column.default.is_scalar:  # pragma: no cover - the schema has scalar defaults only
            raise ValueError(f"bulk_insert: give {table.name}.{column.name} (its default is not a constant)")
        defaults[column.name] = cast(Any, column.default).arg
    if defaults:
        rows = [{**row, **defaults} for row in rows]
        columns += list(defaults)
    dialect = conn.dialect
    dbapi_conn: Any = conn.connection.dbapi_connection
    try:
        if dialect.name == "postgresql":
            return _pg_copy(dbapi_conn, table, columns, rows, ignore_conflicts_on)
        stmt = _bulk_statement(dialect, table, tuple(columns), tuple(ignore_conflicts_on or ()))
        cursor = dbapi_conn.cursor()
        try:
            cursor.executemany(stmt.sql, stmt.params_many(rows))
            # the sum of the rows each INSERT changed (0 for a conflict skipped)
            return cursor.rowcount if ignore_conflicts_on else len(rows)
        finally:
            cursor.close()
    except dialect.loaded_dbapi.IntegrityError as exc:
        raise IntegrityError(f"bulk insert into {table.name}", None, exc) from exc


_BULK_STATEMENTS: dict[tuple[Any, ...], DriverStatement] = {}


def _bulk_statement(dialect: Any, table: Table, columns: tuple[str, ...], conflict: tuple[str, ...]) -> DriverStatement:
    key = (dialect.name, table.name, columns, conflict)
    found = _BULK_STATEMENTS.get(key)
    if found is None:
        stmt = dialect_insert_for(dialect.name, table).values({c: bindparam(f"b_{c}", type_=table.c[c].type) for c in columns})
        if conflict:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
        else:
            stmt = stmt.inline()
        found = DriverStatement(stmt, dialect, names={f"b_{c}": c for c in columns})
        _BULK_STATEMENTS[key] = found
    return found


def dialect_insert_for(dialect_name: str, table: Table) -> Any:
    """``insert(table)`` of the named dialect's module (``on_conflict_do_nothing``)."""
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    if dialect_name == "sqlite":
        return sqlite.insert(table)
    raise StoreConfigError(f"unsupported database dialect {dialect_name!r}")  # pragma: no cover - two dialects


_staging_ids = itertools.count(1)

# COPY text format: backslash escapes for the characters that delimit fields and rows.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_SPECIAL = re.compile("[\\\\\t\n\r]")


def _copy_text(value: Any) -> str:
    kind = type(value)
    if kind is str:
        # most values need no escape: one scan instead of a translation
        return value.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(value) is not None else value
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if kind is int:
        return str(value)
    if isinstance(value, str):
        return _copy_text(str(value))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("bulk_insert: naive datetime for a PostgreSQL column")  # never written by the stages
        return value.isoformat()
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(int(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        # bytea in hex form; the backslash is doubled because COPY's text format unescapes it
        return "\\\\x" + bytes(value).hex()
    raise TypeError(f"bulk_insert: cannot COPY a {type(value).__name__}")


def _pg_copy(dbapi_conn: Any, table: Table, columns: list[str], rows: Sequence[Mapping[str, Any]],
             ignore_conflicts_on: Sequence[str] | None) -> int:
    cols = ", ".join(f'"{c}"' for c in columns)
    # column by column (one conversion per distinct date-time: a bulk insert repeats its timestamps)
    fields = []
    for c in columns:
        values = [row[c] for row in rows]
        memo: dict[Any, str] = {}
        converted = []
        for value in values:
            if type(value) is str:
                converted.append(value if _COPY_SPECIAL.search(value) is None else value.translate(_COPY_ESCAPES))
            elif isinstance(value, datetime):
                text = memo.get(value)
                if text is None:
                    text = memo[value] = _copy_text(value)
                converted.append(text)
            else:
                converted.append(_copy_text(value))
        fields.append(converted)
    text = "".join(["\t".join(line) + "\n" for line in zip(*fields)])
    cursor = dbapi_conn.cursor()
    try:
        if not ignore_conflicts_on:
            cursor.copy_expert(f'COPY "{table.name}" ({cols}) FROM STDIN', io.StringIO(text))
            return len(rows)
        # COPY cannot skip conflicting rows: stage them, then one INSERT ... ON CONFLICT DO NOTHING.
        # (the columns' types, no constraints or defaults; gone with the transaction if it fails)
        staging = f"tf_bulk_{table.name}_{next(_staging_ids)}"
        cursor.execute(f'CREATE TEMPORARY TABLE "{staging}" ON COMMIT DROP AS SELECT {cols} FROM "{table.name}" WITH NO DATA')
        cursor.copy_expert(f'COPY "{staging}" ({cols}) FROM STDIN', io.StringIO(text))
        keys = ", ".join(f'"{c}"' for c in ignore_conflicts_on)
        cursor.execute(f'INSERT INTO "{table.name}" ({cols}) SELECT {cols} FROM "{staging}" ON CONFLICT ({keys}) DO NOTHING')
        inserted = cursor.rowcount
        cursor.execute(f'DROP TABLE "{staging}"')
        return inserted
    finally:
        cursor.close()
