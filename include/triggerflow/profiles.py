"""Loading customer profiles from CSV into the ``profiles`` table.

CSV format (header row required; column order free; unknown columns are an error):

    customer_id   required, unique            the profile's key in triggerflow
    email         required, a valid address (the mailer's own rule: addresses.address_problem)
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

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from include.triggerflow.addresses import address_problem
from include.triggerflow.csv_rows import (
    CsvRowsError,
    LoadResult,
    character_problem,
    read_rows,
    store_reason,
    upsert_by_key,
)
from include.triggerflow.locales import find_zone, normalize_locale
from include.triggerflow.store.bulk import chunked
from include.triggerflow.store.schema import (
    PROFILE_COLUMNS,
    profile_visitor_ids,
    profiles,
)
from include.triggerflow.timeutil import utcnow

__all__ = [
    "CSV_COLUMNS",
    "MAX_LENGTHS",
    "REQUIRED",
    "LoadResult",
    "ProfileCsvError",
    "ProfileStoreError",
    "load_profiles_csv",
    "parse_row",
    "read_csv",
    "upsert_profiles",
]

CSV_COLUMNS = (*(c for c in PROFILE_COLUMNS if c != "updated_at"), "visitor_ids")
_ECID_CHARS = 64
_ECID = re.compile(rf"^[A-Za-z0-9-]{{1,{_ECID_CHARS}}}$")
REQUIRED = ("customer_id", "email")
_TRUE = {"true", "yes", "1", "y", "t"}
_FALSE = {"false", "no", "0", "n", "f", ""}


class ProfileCsvError(CsvRowsError):
    """The CSV has bad rows; ``errors`` lists each one (file, line, column and what is wrong; never a
    value from the row: they are customers' personal data and end up in logs)."""


class ProfileStoreError(RuntimeError):
    """The store refused the rows (nothing was written): the database's reason, without the rows'
    values (engines hide bound parameters; the error's detail lines, which can quote a key, are dropped)."""


def _max_lengths() -> dict[str, int]:
    """Longest value each text column holds, from the schema: SQLite would store a longer one
    silently and PostgreSQL refuse the whole load, so both are checked here, per row."""
    lengths = {c.name: length for c in profiles.columns if (length := getattr(c.type, "length", None))}
    lengths["visitor_ids"] = getattr(profile_visitor_ids.c.visitor_id.type, "length", None) or _ECID_CHARS
    return lengths


MAX_LENGTHS = _max_lengths()


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
        problem = character_problem(value)
        if problem:
            errors.append(f"{where}, column {column}: {problem}")
            row[column] = None  # checked no further: one problem per field is enough
        elif column in MAX_LENGTHS and column != "visitor_ids" and len(value) > MAX_LENGTHS[column]:
            errors.append(f"{where}, column {column}: {len(value)} characters, the store holds at most {MAX_LENGTHS[column]}")
            row[column] = None
    if errors:
        return None, errors
    errors.extend(f"{where}, column {column}: empty" for column in REQUIRED if not row[column])
    email = row["email"]
    # The mailer's own check (addresses.validate_address): an address loaded here is one it sends to.
    if email and address_problem(email) is not None:
        errors.append(f"{where}, column email: not a valid address (expected name@domain.tld)")
    locale = row["locale"]
    # The renderer's rule: a locale that normalises can pick a template variant (en_US too).
    if locale and normalize_locale(locale) is None:
        errors.append(f"{where}, column locale: not like 'en' or 'en_US'")
    tz = row["timezone"]
    if tz and find_zone(tz) is None:
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
    """The file's good rows (only the file's columns: re-loading a CSV without, say, ``ecid`` must
    not blank the ecid of existing profiles) and the problems of the bad ones; a bad header or a
    missing file raises :class:`ProfileCsvError`."""
    return read_rows(
        path,
        error=ProfileCsvError,
        header_problems=_header_problems,
        keep=lambda header: header,
        parse_row=parse_row,
        key="customer_id",
        key_label="id",
    )


def _header_problems(header: list[str]) -> list[str]:
    problems = []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        # Header names are the file's structure, not customer data; shown safely escaped.
        names = ", ".join(ascii(h)[1:-1] for h in unknown)
        problems.append(f"unknown column(s) {names} (expected: {', '.join(CSV_COLUMNS)})")
    return problems


def upsert_profiles(engine: Engine, rows: Iterable[Mapping[str, Any]]) -> LoadResult:
    """Insert new customers and update existing ones, in one transaction.

    ``visitor_ids``, when a row has it, replaces that customer's stored list of ECIDs."""
    rows = list(rows)
    now = utcnow()
    visitor_ids = {r["customer_id"]: r["visitor_ids"] for r in rows if "visitor_ids" in r}
    columns = [{k: v for k, v in r.items() if k != "visitor_ids"} for r in rows]
    with engine.begin() as conn:
        inserted, updated = upsert_by_key(conn, profiles, "customer_id", columns, now)
        for part in chunked(sorted(visitor_ids), 500):
            conn.execute(profile_visitor_ids.delete().where(profile_visitor_ids.c.customer_id.in_(list(part))))
        links = [
            {"visitor_id": v, "customer_id": cid, "seen_at": now}
            for cid, ids in visitor_ids.items()
            for v in dict.fromkeys(ids)
        ]
        if links:
            conn.execute(profile_visitor_ids.insert(), links)
    return LoadResult(inserted=inserted, updated=updated)


def load_profiles_csv(engine: Engine, path: str | Path, *, skip_bad_rows: bool = False) -> LoadResult:
    rows, errors = read_csv(path)
    if errors and not skip_bad_rows:
        raise ProfileCsvError(str(path), errors)
    try:
        result = upsert_profiles(engine, rows)
    except SQLAlchemyError as exc:
        reason = store_reason(exc)
        raise ProfileStoreError(f"{path}: the store refused the profiles, nothing was loaded: {reason}") from None
    result.skipped = errors
    return result
