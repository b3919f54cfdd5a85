"""What the CSV loaders of profiles and of the catalogue share: reading, row loop, errors, upsert.

Both files are read the same way: the header is checked by the loader, each row is parsed by the
loader's own ``parse_row``, its problems are named by file and line range (a quoted field may span
lines), a repeated key is refused with the line that had it first, and a good row keeps only the
file's own columns, so a file with fewer columns updates those and leaves the others of stored rows
as they are. Reports never quote a value from the file (addresses and names are personal data that
would end up in logs), and a store refusal is reduced to the first line of the database's reason.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, bindparam, select, update
from sqlalchemy.exc import SQLAlchemyError

from include.triggerflow.store.bulk import chunked

__all__ = [
    "CsvRowsError",
    "LoadResult",
    "RowParser",
    "character_problem",
    "parse_rows",
    "read_rows",
    "store_reason",
    "upsert_by_key",
]

#: a loader's row parser: (raw row, "file line N") -> (row or None, problems)
RowParser = Callable[[Mapping[str, Any], str], tuple[dict[str, Any] | None, list[str]]]
#: how many problems an error message lists (all of them are in ``errors``)
MAX_SHOWN_ERRORS = 50
#: keys per ``IN (...)`` look-up
KEY_CHUNK = 500


@dataclass
class LoadResult:
    inserted: int = 0
    updated: int = 0
    skipped: list[str] = field(default_factory=list)


class CsvRowsError(ValueError):
    """The CSV has bad rows; ``errors`` lists each one (file, line, column and what is wrong; never a
    value from the row: they are customers' personal data and end up in logs)."""

    def __init__(self, path: str, errors: list[str]):
        self.errors = errors
        shown = "\n  ".join(errors[:MAX_SHOWN_ERRORS])
        more = f"\n  ... and {len(errors) - MAX_SHOWN_ERRORS} more" if len(errors) > MAX_SHOWN_ERRORS else ""
        super().__init__(f"{path}: {len(errors)} bad row(s), nothing was loaded:\n  {shown}{more}")


def character_problem(value: str) -> str | None:
    """Why a field's text cannot be stored, or None. PostgreSQL refuses NUL in text; other control
    characters (a stray CR, an escape) would end up in headers and templates. A character decoded
    from bytes that were not UTF-8 comes back as a lone surrogate (the file is read with
    ``surrogateescape`` so one bad byte is one bad field, not an unreadable file)."""
    for index, char in enumerate(value, start=1):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            return f"is not valid UTF-8 (byte 0x{code - 0xDC00:02X} at character {index})"
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            name = "NUL" if code == 0 else f"U+{code:04X}"
            return f"contains the control character {name} at character {index}"
        if 0xD800 <= code <= 0xDFFF:
            return f"contains a lone surrogate at character {index}"
    return None


def read_rows(
    path: str | Path,
    *,
    error: type[CsvRowsError],
    header_problems: Callable[[list[str]], list[str]],
    keep: Callable[[list[str]], Collection[str]],
    parse_row: RowParser,
    key: str,
    key_label: str,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The file's good rows and the problems of the bad ones; a missing file or a header with
    problems raises ``error`` (nothing of such a file can be loaded).

    :param keep: the columns a good row keeps, from the (stripped) header
    """
    path = Path(path)
    if not path.is_file():
        raise error(str(path), [f"{path}: no such file"])
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        problems = header_problems(header)
        if problems:
            raise error(str(path), [f"{path} line 1 (header): " + "; ".join(problems)])
        return parse_rows(reader, path, header, parse_row, key=key, key_label=key_label, keep=keep(header))


def parse_rows(
    reader: csv.DictReader,
    path: Path,
    header: list[str],
    parse_row: RowParser,
    *,
    key: str,
    key_label: str,
    keep: Collection[str],
) -> tuple[list[dict[str, Any]], list[str]]:
    """The good rows (only the ``keep`` columns) and the problems of the bad ones, in file order.

    :param key: the column that identifies a row; a second row with the same value is refused
    :param key_label: how the problem names it ("id", "SKU")
    """
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    seen: dict[Any, int] = {}
    previous_end = reader.line_num
    for raw in reader:
        first, previous_end = previous_end + 1, reader.line_num
        lines = f"line {first}" if first == reader.line_num else f"lines {first}-{reader.line_num}"
        where = f"{path.name} {lines}"
        if None in raw:  # more fields than the header
            errors.append(f"{where}: {len(header) + len(raw[None])} fields, the header has {len(header)}")
            continue
        row, row_errors = parse_row(raw, where)
        if row is None:
            errors.extend(row_errors)
            continue
        if row[key] in seen:
            errors.append(f"{where}, column {key}: the same {key_label} as line {seen[row[key]]}")
            continue
        seen[row[key]] = reader.line_num
        rows.append({k: v for k, v in row.items() if k in keep})
    return rows, errors


def upsert_by_key(
    conn: Connection,
    table: Table,
    key: str,
    rows: Sequence[Mapping[str, Any]],
    now: datetime,
    *,
    defaults: Mapping[str, Any] | None = None,
) -> tuple[int, int]:
    """Insert the rows whose ``key`` is new and update the stored ones; ``(inserted, updated)``.

    Set-based: one ``IN`` look-up per 500 keys, one insert, and one executemany per set of columns
    (rows from one file share theirs). A new row gets ``defaults`` for the columns it lacks; a stored
    row is updated in the row's own columns only. Both get ``updated_at = now``.
    """
    key_column = table.c[key]
    existing: set[Any] = set()
    for part in chunked([r[key] for r in rows], KEY_CHUNK):
        existing.update(conn.execute(select(key_column).where(key_column.in_(list(part)))).scalars())
    new = [{**(defaults or {}), **r, "updated_at": now} for r in rows if r[key] not in existing]
    if new:
        conn.execute(table.insert(), new)
    changed = [r for r in rows if r[key] in existing]
    by_columns: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for r in changed:
        by_columns.setdefault(tuple(sorted(c for c in r if c != key)), []).append(r)
    for columns, group in by_columns.items():
        # bind names differ from the column names: SQLAlchemy reserves those for the SET values
        stmt = (
            update(table)
            .where(key_column == bindparam(f"b_{key}"))
            .values({**{c: bindparam(f"b_{c}") for c in columns}, "updated_at": now})
        )
        conn.execute(stmt, [{f"b_{k}": v for k, v in r.items()} for r in group])
    return len(new), len(changed)


def store_reason(exc: SQLAlchemyError) -> str:
    """The first line of the database's reason: PostgreSQL's DETAIL line quotes key values, and
    engines already hide bound parameters."""
    return str(getattr(exc, "orig", None) or exc.__class__.__name__).strip().splitlines()[0]
