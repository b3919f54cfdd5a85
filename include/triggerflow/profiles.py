"""Loading customer profiles from CSV into the ``profiles`` table.

CSV format (header row required; column order free; unknown columns are an error):

    customer_id   required, unique            the profile's key in triggerflow
    email         required, a valid address
    first_name, last_name                     optional, used by templates
    locale        optional, e.g. en, en_US, fr-FR
    timezone      optional, an IANA name (Europe/Paris)
    shopper_id    optional, matched against an eVar (e.g. eVar01) of the trigger
    ecid          optional, Experience Cloud ID (the trigger's mcId)
    declared_id   optional, a declared/CRM id
    visitor_ids   optional, more ECIDs seen for this customer, separated by ';' (other devices and
                  browsers; Campaign keeps them from tracking logs). Matched by identity rules with
                  ``profile_column: visitor_id``, as is ``ecid``. Given, it replaces the stored list.
    opted_out     optional, true/false/yes/no/1/0 (blank = false)

Rows are upserted by ``customer_id``; columns absent from the file are left as they are. Loading is
all-or-nothing by default: one bad row and nothing is written, and every problem is reported with
its line number, column and what is wrong: values longer than the store's column, control
characters (NUL...), bytes that are not UTF-8, bad formats. Reports never quote a value from the
file (addresses and names are personal data that would end up in logs).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import SQLAlchemyError

from include.triggerflow.csv_rows import parse_rows
from include.triggerflow.store.db import chunked
from include.triggerflow.store.schema import (
    PROFILE_COLUMNS,
    profile_visitor_ids,
    profiles,
)

CSV_COLUMNS = (*(c for c in PROFILE_COLUMNS if c != "updated_at"), "visitor_ids")
_ECID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
REQUIRED = ("customer_id", "email")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")
_TRUE = {"true", "yes", "1", "y", "t"}
_FALSE = {"false", "no", "0", "n", "f", ""}


class ProfileCsvError(ValueError):
    """The CSV has bad rows; ``errors`` lists each one (file, line, column and what is wrong; never a
    value from the row: they are customers' personal data and end up in logs)."""

    def __init__(self, path: str, errors: list[str]):
        self.errors = errors
        shown = "\n  ".join(errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        super().__init__(f"{path}: {len(errors)} bad row(s), nothing was loaded:\n  {shown}{more}")


class ProfileStoreError(RuntimeError):
    """The store refused the rows (nothing was written): the database's reason, without the rows'
    values (engines hide bound parameters; the error's detail lines, which can quote a key, are dropped)."""


@dataclass
class LoadResult:
    inserted: int = 0
    updated: int = 0
    skipped: list[str] = field(default_factory=list)


def _max_lengths() -> dict[str, int]:
    """Longest value each text column holds, from the schema: SQLite would store a longer one
    silently and PostgreSQL refuse the whole load, so both are checked here, per row."""
    lengths = {c.name: c.type.length for c in profiles.columns if getattr(c.type, "length", None)}
    lengths["visitor_ids"] = profile_visitor_ids.c.visitor_id.type.length
    return lengths


MAX_LENGTHS = _max_lengths()


def _character_problem(value: str) -> str | None:
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


def parse_row(raw: Mapping[str, str | None], where: str) -> tuple[dict[str, Any] | None, list[str]]:
    """Validate one CSV row; returns (row, []) or (None, [errors]).

    Every error names the column and what is wrong, never the value: the texts go to terminals,
    logs and CI output, and the values are customers' addresses and names."""
    errors: list[str] = []
    row: dict[str, Any] = {}
    for column in CSV_COLUMNS:
        value = (raw.get(column) or "").strip()
        row[column] = value or None
        if not value:
            continue
        problem = _character_problem(value)
        if problem:
            errors.append(f"{where}, column {column}: {problem}")
            row[column] = None  # checked no further: one problem per field is enough
        elif column in MAX_LENGTHS and column != "visitor_ids" and len(value) > MAX_LENGTHS[column]:
            errors.append(f"{where}, column {column}: {len(value)} characters, the store holds at most {MAX_LENGTHS[column]}")
            row[column] = None
    if errors:
        return None, errors
    for column in REQUIRED:
        if not row[column]:
            errors.append(f"{where}, column {column}: empty")
    email = row["email"]
    if email and not _EMAIL.match(email):
        errors.append(f"{where}, column email: not a valid address (expected name@domain.tld)")
    locale = row["locale"]
    if locale and not _LOCALE.match(locale):
        errors.append(f"{where}, column locale: not like 'en' or 'en_US'")
    tz = row["timezone"]
    if tz:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            errors.append(f"{where}, column timezone: not an IANA time zone name (e.g. Europe/Paris)")
    visitor_ids = [v.strip() for v in (row.get("visitor_ids") or "").split(";") if v.strip()]
    bad = [n for n, v in enumerate(visitor_ids, start=1) if not _ECID.match(v)]
    if bad:
        errors.append(
            f"{where}, column visitor_ids: entry {bad[0]} is not an ECID "
            f"(letters, digits, '-'; at most {MAX_LENGTHS['visitor_ids']})"
        )
    row["visitor_ids"] = visitor_ids
    opted = (raw.get("opted_out") or "").strip().lower()
    if opted in _TRUE:
        row["opted_out"] = True
    elif opted in _FALSE:
        row["opted_out"] = False
    else:
        errors.append(f"{where}, column opted_out: not true/false/yes/no/1/0")
    return (None, errors) if errors else (row, [])


def read_csv(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    path = Path(path)
    if not path.is_file():
        raise ProfileCsvError(str(path), [f"{path}: no such file"])
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        unknown = [h for h in header if h not in CSV_COLUMNS]
        missing = [c for c in REQUIRED if c not in header]
        if unknown or missing:
            problems = []
            if missing:
                problems.append(f"missing column(s) {', '.join(missing)}")
            if unknown:
                # Header names are the file's structure, not customer data; shown safely escaped.
                names = ", ".join(ascii(h)[1:-1] for h in unknown)
                problems.append(f"unknown column(s) {names} (expected: {', '.join(CSV_COLUMNS)})")
            raise ProfileCsvError(str(path), [f"{path} line 1 (header): " + "; ".join(problems)])
        # Only the file's columns: re-loading a CSV without, say, `ecid` must not blank the ecid of
        # existing profiles.
        return parse_rows(reader, path, header, parse_row, key="customer_id", key_label="id", keep=header)


def upsert_profiles(engine: Engine, rows: Iterable[Mapping[str, Any]]) -> LoadResult:
    """Insert new customers and update existing ones, in one transaction."""
    rows = list(rows)
    result = LoadResult()
    now = datetime.now(UTC)
    with engine.begin() as conn:
        existing: set[str] = set()
        ids = [r["customer_id"] for r in rows]
        for part in chunked(ids, 500):
            existing.update(conn.execute(select(profiles.c.customer_id).where(profiles.c.customer_id.in_(list(part)))).scalars())
        visitor_ids = {r["customer_id"]: r["visitor_ids"] for r in rows if "visitor_ids" in r}
        rows = [{k: v for k, v in r.items() if k != "visitor_ids"} for r in rows]
        new = [{**r, "updated_at": now} for r in rows if r["customer_id"] not in existing]
        if new:
            conn.execute(profiles.insert(), new)
        for r in rows:
            if r["customer_id"] in existing:
                values = {k: v for k, v in r.items() if k != "customer_id"}
                conn.execute(update(profiles).where(profiles.c.customer_id == r["customer_id"]).values(**values, updated_at=now))
        for part in chunked(sorted(visitor_ids), 500):
            conn.execute(profile_visitor_ids.delete().where(profile_visitor_ids.c.customer_id.in_(list(part))))
        links = [
            {"visitor_id": v, "customer_id": cid, "seen_at": now}
            for cid, ids in visitor_ids.items()
            for v in dict.fromkeys(ids)
        ]
        if links:
            conn.execute(profile_visitor_ids.insert(), links)
        result.inserted = len(new)
        result.updated = len(rows) - len(new)
    return result


def load_profiles_csv(engine: Engine, path: str | Path, *, skip_bad_rows: bool = False) -> LoadResult:
    rows, errors = read_csv(path)
    if errors and not skip_bad_rows:
        raise ProfileCsvError(str(path), errors)
    try:
        result = upsert_profiles(engine, rows)
    except SQLAlchemyError as exc:
        # Only the first line of the driver's message: PostgreSQL's DETAIL line quotes key values.
        reason = str(getattr(exc, "orig", None) or exc.__class__.__name__).strip().splitlines()[0]
        raise ProfileStoreError(f"{path}: the store refused the profiles, nothing was loaded: {reason}") from None
    result.skipped = errors
    return result
