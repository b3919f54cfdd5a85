"""The product catalogue: what an email shows of a SKU, loaded from CSV into the ``catalog`` table.

Why it exists (issue 11): a trigger's product names, prices, URLs and images come from
unauthenticated Analytics hits, so anyone can put a foreign link or text into them. A route in
catalogue mode takes only the SKUs from the event and shows what this table holds for them; an
unknown SKU is left out of the email.

CSV format (header row required; column order free; unknown columns are an error):

    sku           required, unique in the file; at most 100 characters, no whitespace or
                  control characters (matched exactly against the event's product SKU)
    name          required, at most 200 characters, no control characters
    price         optional, a non-negative amount with at most 2 decimals and '.' as the decimal
                  mark (12, 12.5, 12.99), below 10,000,000,000
    currency      optional, an ISO 4217 code (EUR, usd -> USD); blank: the template's default
    url           optional, the product page: an absolute https:// URL with a host, at most 2048
    image_url     optional, the product image: same rules as url
    in_stock      optional, true/false/yes/no/1/0 (blank = true)
    name.<locale> optional, any number of them: the name in that locale (name.fr, name.fr-CA,
                  name.pt_BR); the locale must be a tag locales.normalize_locale accepts

Rows are upserted by ``sku``; columns absent from the file are left as they are on stored rows
(a price-only file updates prices). When the file has any ``name.<locale>`` column, each row's
localised names replace the stored ones (a blank cell drops that locale); without such columns the
stored localised names are kept. Loading is all-or-nothing by default: one bad row and nothing is
written; every problem is reported with file, line, column and what is wrong, without quoting the
value (the same rules and style as :mod:`include.triggerflow.profiles`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, Engine, RowMapping, func, select
from sqlalchemy.exc import SQLAlchemyError

from include.triggerflow.csv_rows import (
    CsvRowsError,
    LoadResult,
    character_problem,
    read_rows,
    store_reason,
    upsert_by_key,
)
from include.triggerflow.locales import locale_chain, normalize_locale
from include.triggerflow.store.bulk import chunked
from include.triggerflow.store.schema import catalog
from include.triggerflow.timeutil import utcnow

__all__ = [
    "CSV_COLUMNS",
    "MAX_LENGTHS",
    "NAME_PREFIX",
    "REQUIRED",
    "CatalogCsvError",
    "CatalogItem",
    "CatalogStoreError",
    "LoadResult",
    "catalog_size",
    "load_catalog_csv",
    "lookup",
    "parse_row",
    "read_csv",
    "upsert_catalog",
]

#: the fixed columns; any number of ``name.<locale>`` columns come on top
CSV_COLUMNS = ("sku", "name", "price", "currency", "url", "image_url", "in_stock")
REQUIRED = ("sku", "name")
NAME_PREFIX = "name."
MAX_LENGTHS: dict[str, int] = {
    c.name: length for c in catalog.columns if (length := getattr(c.type, "length", None))
}
#: the column is Numeric(12, 2): ten digits before the point
MAX_PRICE = Decimal(10) ** (12 - 2)
_PRICE = re.compile(r"^-?[0-9]+(?:\.[0-9]+)?$")
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}
_EXPECTED = ", ".join((*CSV_COLUMNS, "name.<locale>"))


class CatalogCsvError(CsvRowsError):
    """The CSV has bad rows; ``errors`` lists each one (file, line, column and what is wrong; never a
    value from the row, as for profiles: the texts go to terminals, logs and CI output)."""


class CatalogStoreError(RuntimeError):
    """The store refused the rows (nothing was written): the database's reason, first line only
    (PostgreSQL's DETAIL line quotes key values)."""


@dataclass(frozen=True)
class CatalogItem:
    """One product as the catalogue holds it: everything an email in catalogue mode shows of a SKU."""

    sku: str
    name: str
    price: Decimal | None = None
    #: ISO 4217, upper case; None: the template's default
    currency: str | None = None
    url: str | None = None
    image_url: str | None = None
    in_stock: bool = True
    #: normalised locale tag -> name, e.g. {"fr": "...", "fr-CA": "..."}; read-only
    names: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def name_for(self, locale: str | None) -> str:
        """The name in ``locale``, most specific tag first (``fr_CA``: fr-CA, then fr), else ``name``."""
        if self.names:
            for tag in locale_chain(locale):
                found = self.names.get(tag)
                if found:
                    return found
        return self.name


def _locale_tag(column: str) -> str | None:
    """The normalised tag of a ``name.<locale>`` column, or None when it is not a locale tag."""
    return normalize_locale(column[len(NAME_PREFIX):]) if column.startswith(NAME_PREFIX) else None


def _sku_problem(sku: str) -> str | None:
    """Why a text cannot be a SKU, or None (the same rule for the CSV and for event SKUs looked up)."""
    problem = character_problem(sku)
    if problem:
        return problem
    if len(sku) > MAX_LENGTHS["sku"]:
        return f"{len(sku)} characters, the store holds at most {MAX_LENGTHS['sku']}"
    for index, char in enumerate(sku, start=1):
        if char.isspace():
            return f"contains whitespace at character {index}"
        if not char.isprintable():
            return f"contains the non-printable character U+{ord(char):04X} at character {index}"
    return None


def _price_problem(text: str) -> tuple[Decimal | None, str | None]:
    if not _PRICE.match(text):
        return None, "not an amount like 12.99 (digits, '.' as the decimal mark)"
    try:
        amount = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only plain decimals
        return None, "not an amount like 12.99 (digits, '.' as the decimal mark)"
    if amount < 0:
        return None, "negative"
    if "." in text and len(text.split(".", 1)[1]) > 2:
        return None, "more than 2 decimals"
    if amount >= MAX_PRICE:
        return None, f"{MAX_PRICE:,} or more (the store holds 10 digits before the point)"
    return amount, None


def _url_problem(text: str) -> str | None:
    """Why a text is not a URL the catalogue may hold: absolute https with a host, nothing else."""
    for index, char in enumerate(text, start=1):
        if char.isspace():
            return f"contains whitespace at character {index}"
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return "not a URL"
    if parts.scheme.lower() != "https":
        return "not an https:// URL (only https links are accepted)"
    if not parts.hostname:
        return "has no host (expected https://host/...)"
    if parts.username is not None or parts.password is not None:
        return "carries a user name or password before the host"
    return None


def parse_row(raw: Mapping[str, str | None], where: str) -> tuple[dict[str, Any] | None, list[str]]:
    """Validate one CSV row; returns (row, []) or (None, [errors]).

    The row holds every fixed column (blank = None; ``in_stock`` defaults to True) and ``names``,
    the ``name.<locale>`` cells that are not blank, keyed by normalised tag. Errors name the column
    and what is wrong, never the value."""
    errors: list[str] = []
    row: dict[str, Any] = {}
    texts: dict[str, str] = {}
    name_columns = sorted(k for k in raw if isinstance(k, str) and k.startswith(NAME_PREFIX))
    for column in (*CSV_COLUMNS, *name_columns):
        value = raw.get(column)
        text = value.strip() if isinstance(value, str) else ""
        if not text:
            continue
        problem = character_problem(text)
        # currency has its own rule (three letters), clearer than "4 characters, at most 3"
        limit = MAX_LENGTHS["name"] if column.startswith(NAME_PREFIX) else MAX_LENGTHS.get(column)
        limit = None if column == "currency" else limit
        if problem is None and limit is not None and len(text) > limit:
            problem = f"{len(text)} characters, the store holds at most {limit}"
        if problem:
            errors.append(f"{where}, column {_shown(column)}: {problem}")
            continue  # checked no further: one problem per field is enough
        texts[column] = text
    for column in REQUIRED:
        if column not in texts and not any(e.startswith(f"{where}, column {column}:") for e in errors):
            errors.append(f"{where}, column {column}: empty")
    sku = texts.get("sku")
    if sku:
        problem = _sku_problem(sku)
        if problem:
            errors.append(f"{where}, column sku: {problem}")
    row["sku"] = sku
    row["name"] = texts.get("name")
    row["price"] = None
    if "price" in texts:
        row["price"], problem = _price_problem(texts["price"])
        if problem:
            errors.append(f"{where}, column price: {problem}")
    row["currency"] = None
    if "currency" in texts:
        if _CURRENCY.match(texts["currency"]):
            row["currency"] = texts["currency"].upper()
        else:
            errors.append(f"{where}, column currency: not a 3-letter ISO 4217 code (e.g. EUR)")
    for column in ("url", "image_url"):
        row[column] = texts.get(column)
        if column in texts:
            problem = _url_problem(texts[column])
            if problem:
                errors.append(f"{where}, column {column}: {problem}")
    stock = texts.get("in_stock", "true").lower()
    row["in_stock"] = stock in _TRUE
    if stock not in _TRUE and stock not in _FALSE and "in_stock" in texts:
        errors.append(f"{where}, column in_stock: not true/false/yes/no/1/0")
    names: dict[str, str] = {}
    for column in name_columns:
        tag = _locale_tag(column)
        if tag is None:
            errors.append(f"{where}, column {_shown(column)}: not a locale tag (expected name.fr, name.fr-CA ...)")
        elif column in texts:
            names[tag] = texts[column]
    row["names"] = names
    return (None, errors) if errors else (row, [])


def _shown(column: str) -> str:
    """A header name as it may be printed: the file's structure, not its data, but escaped."""
    return ascii(column)[1:-1]


def _header_problems(header: list[str]) -> list[str]:
    problems: list[str] = []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    unknown = [h for h in header if h not in CSV_COLUMNS and not h.startswith(NAME_PREFIX)]
    if unknown:
        problems.append(f"unknown column(s) {', '.join(_shown(h) for h in unknown)} (expected: {_EXPECTED})")
    bad_tags = [h for h in header if h.startswith(NAME_PREFIX) and _locale_tag(h) is None]
    if bad_tags:
        problems.append(
            f"column(s) {', '.join(_shown(h) for h in bad_tags)}: not a locale tag (expected name.fr, name.fr-CA ...)"
        )
    seen: dict[str, str] = {}
    repeated: list[str] = []
    for h in header:
        key = (NAME_PREFIX + (_locale_tag(h) or h)) if h.startswith(NAME_PREFIX) else h
        if key in seen:
            repeated.append(_shown(h) if seen[key] == h else f"{_shown(h)} (the same locale as {_shown(seen[key])})")
        else:
            seen[key] = h
    if repeated:
        problems.append(f"repeated column(s) {', '.join(repeated)}")
    return problems


def read_csv(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The file's good rows (only the file's columns, plus ``names`` when it has name.<locale>
    columns) and the problems of the bad ones; a bad header or a missing file raises."""
    return read_rows(
        path,
        error=CatalogCsvError,
        header_problems=_header_problems,
        keep=_kept_columns,
        parse_row=parse_row,
        key="sku",
        key_label="SKU",
    )


def _kept_columns(header: list[str]) -> set[str]:
    """Only the file's columns: a price-only file must not blank the stored URLs."""
    has_names = any(h.startswith(NAME_PREFIX) for h in header)
    return {h for h in header if h in CSV_COLUMNS} | ({"names"} if has_names else set())


def upsert_catalog(engine: Engine, rows: Iterable[Mapping[str, Any]]) -> LoadResult:
    """Insert new SKUs and update stored ones, in one transaction.

    A new row gets the defaults for the columns it lacks (in stock, no localised names); a stored
    row is updated in the row's columns only."""
    items = [dict(r) for r in rows]
    with engine.begin() as conn:
        inserted, updated = upsert_by_key(conn, catalog, "sku", items, utcnow(), defaults=_NEW_ROW_DEFAULTS)
    return LoadResult(inserted=inserted, updated=updated)


_NEW_ROW_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"price": None, "currency": None, "url": None, "image_url": None, "in_stock": True, "names": {}}
)


def load_catalog_csv(engine: Engine, path: str | Path, *, skip_bad_rows: bool = False) -> LoadResult:
    """Load a catalogue CSV: all-or-nothing unless ``skip_bad_rows`` (then ``skipped`` lists them)."""
    rows, errors = read_csv(path)
    if errors and not skip_bad_rows:
        raise CatalogCsvError(str(path), errors)
    try:
        result = upsert_catalog(engine, rows)
    except SQLAlchemyError as exc:
        reason = store_reason(exc)
        raise CatalogStoreError(f"{path}: the store refused the catalogue, nothing was loaded: {reason}") from None
    result.skipped = errors
    return result


def lookup(conn: Connection, skus: Iterable[Any]) -> dict[str, CatalogItem]:
    """The catalogue's items for ``skus``: {sku: item}; an unknown SKU is absent.

    ``skus`` come from events (hostile): anything that could not be a stored SKU (not a string,
    blank, too long, control characters, whitespace) is not even asked for. Set-based: one
    ``IN`` query per 500 SKUs."""
    wanted = sorted({s for s in skus if isinstance(s, str) and s and _sku_problem(s) is None})
    found: dict[str, CatalogItem] = {}
    for part in chunked(wanted, 500):
        for r in conn.execute(select(catalog).where(catalog.c.sku.in_(list(part)))).mappings():
            found[r["sku"]] = _item(r)
    return found


def _item(r: Mapping[str, Any] | RowMapping) -> CatalogItem:
    price = r["price"]
    if price is not None and not isinstance(price, Decimal):
        price = Decimal(str(price))
    if price is not None:
        price = price.quantize(Decimal("0.01"))
    names = r["names"] if isinstance(r["names"], dict) else {}
    return CatalogItem(
        sku=r["sku"],
        name=r["name"],
        price=price,
        currency=r["currency"],
        url=r["url"],
        image_url=r["image_url"],
        in_stock=bool(r["in_stock"]),
        names=MappingProxyType({str(k): str(v) for k, v in names.items()}),
    )


def catalog_size(conn: Connection) -> int:
    """How many SKUs the catalogue holds (0: empty or never loaded)."""
    return int(conn.execute(select(func.count()).select_from(catalog)).scalar_one())
