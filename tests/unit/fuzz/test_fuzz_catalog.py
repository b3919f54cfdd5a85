"""Fuzzing the catalogue loader: on any cell text, ``catalog.parse_row`` returns, a row it accepts
is safe to store and to put in an email (an https link with a host, a plain SKU, a bounded name, a
price the store's Numeric(12, 2) holds), and its reports never quote a value. Through the store:
a CSV of such rows either loads whole and reads back as parsed, or is refused and the stored
catalogue is unchanged.

Bounded by the ``ci`` Hypothesis profile in the default suite; ``HYPOTHESIS_PROFILE=long`` runs
2,000 random examples per test (tests/unit/fuzz/conftest.py)."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hypothesis import event, example, given
from hypothesis import strategies as st

from include.triggerflow.catalog import (
    CSV_COLUMNS,
    MAX_LENGTHS,
    CatalogCsvError,
    load_catalog_csv,
    lookup,
    parse_row,
    read_csv,
    upsert_catalog,
)
from include.triggerflow.render import normalize_locale
from include.triggerflow.store.schema import catalog
from tests.unit.fuzz.strategies import hostile_chars, hostile_text

# what must never reach the store or an email from a catalogue cell: NUL, C0, DEL, C1, surrogates
BAD = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
NAME_COLUMNS = ("name.fr", "name.fr_CA", "name.de-de")

plausible = {
    "sku": st.from_regex(r"[A-Z0-9][A-Z0-9_.-]{0,20}", fullmatch=True),
    "name": st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=60),
    "price": st.one_of(
        st.decimals(min_value=0, max_value=Decimal("9999999999.99"), places=2).map(str),
        st.sampled_from(["0", "12", "12.5", "-1", "1e3", "1.999", "10000000000", "NaN", "12,50", " 3.10 "]),
    ),
    "currency": st.sampled_from(["EUR", "usd", "Gbp", "EURO", "€", "E1R", ""]),
    "url": st.one_of(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(
            lambda s: "https://shop.example.com/p/" + s
        ),
        st.sampled_from([
            "http://shop.example.com/p", "javascript:alert(1)", "https:///p", "https://a@evil.example/",
            "https://shop.example.com:99999/p", "//evil.example/p", "HTTPS://SHOP.EXAMPLE.COM/P",
        ]),
    ),
    "in_stock": st.sampled_from(["true", "FALSE", "yes", "No", "1", "0", "", "maybe"]),
}
plausible["image_url"] = plausible["url"]
for column in NAME_COLUMNS:
    plausible[column] = plausible["name"]


@st.composite
def raw_rows(draw: st.DrawFn) -> dict[str, str | None]:
    """A CSV row as csv.DictReader gives it: each column a plausible, a hostile or no value."""
    row: dict[str, str | None] = {}
    for column in (*CSV_COLUMNS, *NAME_COLUMNS):
        row[column] = draw(st.one_of(plausible[column], hostile_text, st.none(), st.text(hostile_chars, max_size=300)))
    return row


def assert_storable(row: dict[str, Any]) -> None:
    sku = row["sku"]
    assert isinstance(sku, str) and 0 < len(sku) <= MAX_LENGTHS["sku"]
    assert sku.isprintable() and not any(c.isspace() for c in sku)
    for text in (row["name"], *row["names"].values()):
        assert 0 < len(text) <= MAX_LENGTHS["name"] and BAD.search(text) is None, repr(text)
        text.encode("utf-8")
    price = row["price"]
    if price is not None:
        assert isinstance(price, Decimal) and price.is_finite() and 0 <= price < 10**10
        assert price.as_tuple().exponent >= -2  # type: ignore[operator]
    assert row["currency"] is None or re.fullmatch("[A-Z]{3}", row["currency"])
    for column in ("url", "image_url"):
        url = row[column]
        if url is not None:
            parts = urlsplit(url)
            assert parts.scheme.lower() == "https" and parts.hostname and parts.username is None, url
            assert len(url) <= MAX_LENGTHS[column] and BAD.search(url) is None and not any(c.isspace() for c in url)
    assert isinstance(row["in_stock"], bool)
    assert all(normalize_locale(tag) == tag for tag in row["names"])


@given(raw_rows())
@example({"sku": "A", "name": "B", "url": "https://shop.example.com/p/\u2028x"})
@example({"sku": "A\u00a0B", "name": "B"})
@example({"sku": "A", "name": "B", "price": "0.10", "name.fr_CA": "Tuque\x85"})
def test_parse_row_returns_a_storable_row_or_reports_without_values(raw: dict[str, str | None]) -> None:
    row, errors = parse_row(raw, "fuzz.csv line 2")

    if row is None:
        assert errors
        for error in errors:
            assert re.match(r"fuzz\.csv line 2, column [a-z_.A-Z-]+: \S", error), error
            # never a value of the row (long enough not to occur in the fixed texts by chance)
            leaked = [v.strip() for v in raw.values() if v and len(v.strip()) >= 12 and v.strip() in error]
            assert leaked == [], (leaked, error)
    else:
        assert errors == []
        assert_storable(row)


#: rows the loader accepts (most of the time: a SKU may repeat), so files load as well as fail
good_rows = st.fixed_dictionaries({
    "sku": plausible["sku"],
    "name": st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=60).map(
        lambda s: "N" + s.strip()
    ),
    "price": st.one_of(st.none(), st.decimals(min_value=0, max_value=Decimal("9999999999.99"), places=2).map(str)),
    "currency": st.sampled_from([None, "EUR", "usd"]),
    "url": st.sampled_from([None, "https://shop.example.com/p/1", "HTTPS://Shop.Example.com:8443/p?q=1#x"]),
    "image_url": st.sampled_from([None, "https://cdn.shop.example.com/i/1.jpg"]),
    "in_stock": st.sampled_from([None, "yes", "0", "TRUE"]),
    **{column: st.one_of(st.none(), st.just("Nom " + column)) for column in NAME_COLUMNS},
})


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[str, list[dict[str, str | None]]]:
    """The text of a small catalogue CSV (header with every column) and its rows."""
    rows = draw(st.lists(st.one_of(good_rows, raw_rows()), min_size=1, max_size=4))
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    columns = (*CSV_COLUMNS, *NAME_COLUMNS)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[c] is None else row[c] for c in columns])
    return buffer.getvalue(), rows


@given(csv_files())
def test_a_csv_loads_whole_and_reads_back_or_leaves_the_store_as_it_was(kit, tmp_path: Path, file: tuple[str, Any]) -> None:
    text, _ = file
    upsert_catalog(kit.engine, [{"sku": "KEEP-1", "name": "Stored"}])
    before = sorted(kit.rows(catalog), key=lambda r: r["sku"])
    path = tmp_path / "fuzz.csv"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))

    try:
        result = load_catalog_csv(kit.engine, path)
    except CatalogCsvError as exc:
        event("refused")
        assert exc.errors
        assert sorted(kit.rows(catalog), key=lambda r: r["sku"]) == before  # all or nothing
        return

    event("loaded")
    rows, errors = read_csv(path)
    assert errors == [] and result.inserted + result.updated == len(rows)
    with kit.engine.connect() as conn:
        items = lookup(conn, [r["sku"] for r in rows])
    for row in rows:
        assert_storable({**row})
        item = items[row["sku"]]
        assert (item.name, item.currency, item.url, item.image_url, item.in_stock, dict(item.names)) == (
            row["name"], row["currency"], row["url"], row["image_url"], row["in_stock"], row["names"]
        )
        assert item.price == (None if row["price"] is None else row["price"].quantize(Decimal("0.01")))
