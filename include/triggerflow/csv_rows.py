"""The row loop shared by the CSV loaders of profiles and of the catalogue.

Both files are read the same way: each row is parsed by the loader's own ``parse_row``, its problems
are named by file and line range (a quoted field may span lines), a repeated key is refused with
the line that had it first, and a good row keeps only the file's own columns, so a file with fewer
columns updates those and leaves the others of stored rows as they are.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

#: a loader's row parser: (raw row, "file line N") -> (row or None, problems)
RowParser = Callable[[Mapping[str, Any], str], tuple[dict[str, Any] | None, list[str]]]


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
            errors.append(f"{where}: {len(header) + len(raw[None])} fields, the header has {len(header)}")  # type: ignore[index]
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
