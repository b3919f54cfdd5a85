"""Tests for include.triggerflow.catalog: CSV -> catalog table (all-or-nothing), look-ups by SKU."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from include.triggerflow.catalog import (
    CatalogCsvError,
    CatalogItem,
    CatalogStoreError,
    LoadResult,
    catalog_size,
    load_catalog_csv,
    lookup,
    parse_row,
    read_csv,
    upsert_catalog,
)
from include.triggerflow.store.schema import catalog

HEADER = "sku,name,price,currency,url,image_url,in_stock,name.fr,name.fr_CA"
GOOD_ROWS = [
    "SKU-1,Trail shoe,89.90,EUR,https://shop.example.com/p/1,https://shop.example.com/i/1.jpg,,Chaussure de trail,",
    "SKU-2,Wool hat,12,usd,https://shop.example.com/p/2,,no,,Tuque en laine",
    "SKU-3,Gift card,,,,,yes,,",
]


def write_csv(tmp_path: Path, *lines: str, name: str = "catalog.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def by_sku(kit) -> dict[str, dict]:
    return {r["sku"]: r for r in kit.rows(catalog)}


def find(kit, *skus: str) -> dict[str, CatalogItem]:
    with kit.engine.connect() as conn:
        return lookup(conn, skus)


def test_good_csv_loads_and_looks_up(kit, tmp_path: Path) -> None:
    result = load_catalog_csv(kit.engine, write_csv(tmp_path, HEADER, *GOOD_ROWS))

    assert result == LoadResult(inserted=3, updated=0, skipped=[])
    items = find(kit, "SKU-1", "SKU-2", "SKU-3")
    assert items["SKU-1"] == CatalogItem(
        sku="SKU-1", name="Trail shoe", price=Decimal("89.90"), currency="EUR",
        url="https://shop.example.com/p/1", image_url="https://shop.example.com/i/1.jpg", in_stock=True,
        names={"fr": "Chaussure de trail"},
    )
    hat = items["SKU-2"]
    assert (hat.price, hat.currency, hat.image_url, hat.in_stock) == (Decimal("12.00"), "USD", None, False)
    assert dict(hat.names) == {"fr-CA": "Tuque en laine"}  # the column's tag, normalised
    card = items["SKU-3"]
    assert (card.price, card.currency, card.url, card.in_stock, dict(card.names)) == (None, None, None, True, {})
    with kit.engine.connect() as conn:
        assert catalog_size(conn) == 3


def test_name_for_picks_the_most_specific_locale_then_the_default_name() -> None:
    item = CatalogItem(sku="S", name="Hat", names={"fr": "Chapeau", "fr-CA": "Tuque"})
    assert item.name_for("fr_CA") == "Tuque"
    assert item.name_for("FR-ca") == "Tuque"
    assert item.name_for("fr-BE") == "Chapeau"
    assert item.name_for("fr") == "Chapeau"
    assert item.name_for("de") == "Hat"
    assert item.name_for(None) == "Hat"
    assert item.name_for("../etc") == "Hat"
    assert CatalogItem(sku="S", name="Hat").name_for("fr") == "Hat"


def test_reload_updates_and_inserts(kit, tmp_path: Path) -> None:
    load_catalog_csv(kit.engine, write_csv(tmp_path, HEADER, *GOOD_ROWS))
    second = write_csv(
        tmp_path, HEADER,
        "SKU-1,Trail shoe 2,79.00,EUR,https://shop.example.com/p/1b,,false,,Soulier",
        "SKU-4,Socks,5.5,EUR,,,,Chaussettes,",
        name="second.csv",
    )
    assert load_catalog_csv(kit.engine, second) == LoadResult(inserted=1, updated=1, skipped=[])
    items = find(kit, "SKU-1", "SKU-2", "SKU-4")
    shoe = items["SKU-1"]
    assert (shoe.name, shoe.price, shoe.url, shoe.image_url, shoe.in_stock) == (
        "Trail shoe 2", Decimal("79.00"), "https://shop.example.com/p/1b", None, False
    )
    assert dict(shoe.names) == {"fr-CA": "Soulier"}  # the file has name.* columns: they replace the stored ones
    assert items["SKU-2"].name == "Wool hat"  # not in the second file: untouched
    assert items["SKU-4"].price == Decimal("5.50")


def test_columns_absent_from_the_file_are_left_unchanged_on_update(kit, tmp_path: Path) -> None:
    load_catalog_csv(kit.engine, write_csv(tmp_path, HEADER, *GOOD_ROWS))
    before = by_sku(kit)["SKU-1"]["updated_at"]
    prices = write_csv(tmp_path, "price,sku,name", "99.00,SKU-1,Trail shoe", name="prices.csv")
    assert load_catalog_csv(kit.engine, prices) == LoadResult(inserted=0, updated=1, skipped=[])
    shoe = find(kit, "SKU-1")["SKU-1"]
    assert shoe.price == Decimal("99.00")
    assert (shoe.url, shoe.currency, dict(shoe.names)) == ("https://shop.example.com/p/1", "EUR", {"fr": "Chaussure de trail"})
    assert by_sku(kit)["SKU-1"]["updated_at"] >= before


def test_a_new_sku_from_a_minimal_file_gets_the_defaults(kit, tmp_path: Path) -> None:
    load_catalog_csv(kit.engine, write_csv(tmp_path, " name , sku ", "Scarf,SKU-9"))
    assert find(kit, "SKU-9")["SKU-9"] == CatalogItem(sku="SKU-9", name="Scarf", in_stock=True, names={})


BAD_ROW_CASES = [
    ("empty-sku", " ,Thing,,,,,,,", "line 3, column sku: empty"),
    ("empty-name", "SKU-9,,,,,,,,", "line 3, column name: empty"),
    ("space-in-sku", "SKU 9,Thing,,,,,,,", "line 3, column sku: contains whitespace at character 4"),
    ("nbsp-in-sku", "SKU\u00a09,Thing,,,,,,,", "line 3, column sku: contains whitespace at character 4"),
    ("format-char-in-sku", "SKU\u200b9,Thing,,,,,,,", "line 3, column sku: contains the non-printable character U+200B at character 4"),
    ("long-sku", f"{'S' * 101},Thing,,,,,,,", "line 3, column sku: 101 characters, the store holds at most 100"),
    ("long-name", f"SKU-9,{'N' * 201},,,,,,,", "line 3, column name: 201 characters, the store holds at most 200"),
    ("long-fr-name", f"SKU-9,Thing,,,,,,{'N' * 201},", "line 3, column name.fr: 201 characters, the store holds at most 200"),
    ("nul-in-name", "SKU-9,Thi\x00ng,,,,,,,", "line 3, column name: contains the control character NUL at character 4"),
    ("escape-in-fr-name", "SKU-9,Thing,,,,,,Tr\x1buc,", "line 3, column name.fr: contains the control character U+001B at character 3"),
    ("quoted-newline-in-name", 'SKU-9,"Thi\nng",,,,,,,', "lines 3-4, column name: contains the control character U+000A at character 4"),
    ("price-not-a-number", "SKU-9,Thing,twelve,,,,,,", "line 3, column price: not an amount like 12.99"),
    ("price-comma", "SKU-9,Thing,\"12,50\",,,,,,", "line 3, column price: not an amount like 12.99"),
    ("price-exponent", "SKU-9,Thing,1e3,,,,,,", "line 3, column price: not an amount like 12.99"),
    ("price-negative", "SKU-9,Thing,-1.00,,,,,,", "line 3, column price: negative"),
    ("price-decimals", "SKU-9,Thing,1.999,,,,,,", "line 3, column price: more than 2 decimals"),
    ("price-too-large", "SKU-9,Thing,10000000000,,,,,,", "line 3, column price: 10,000,000,000 or more"),
    ("currency-word", "SKU-9,Thing,1,EURO,,,,,", "line 3, column currency: not a 3-letter ISO 4217 code"),
    ("currency-symbol", "SKU-9,Thing,1,€,,,,,", "line 3, column currency: not a 3-letter ISO 4217 code"),
    ("url-http", "SKU-9,Thing,,,http://shop.example.com/p,,,,", "line 3, column url: not an https:// URL (only https links are accepted)"),
    ("url-javascript", "SKU-9,Thing,,,javascript:alert(1),,,,", "line 3, column url: not an https:// URL"),
    ("url-relative", "SKU-9,Thing,,,/p/9,,,,", "line 3, column url: not an https:// URL"),
    ("url-no-host", "SKU-9,Thing,,,https:///p/9,,,,", "line 3, column url: has no host"),
    ("url-userinfo", "SKU-9,Thing,,,https://shop.example.com@evil.example/p,,,,", "line 3, column url: carries a user name or password"),
    ("url-space", "SKU-9,Thing,,,https://shop.example.com/p 9,,,,", "line 3, column url: contains whitespace at character 27"),
    ("url-bad-port", "SKU-9,Thing,,,https://shop.example.com:http/p,,,,", "line 3, column url: not a URL"),
    ("image-http", "SKU-9,Thing,,,,http://shop.example.com/i.jpg,,,", "line 3, column image_url: not an https:// URL"),
    ("url-too-long", f"SKU-9,Thing,,,https://shop.example.com/{'p' * 2030},,,,", "line 3, column url: 2055 characters, the store holds at most 2048"),
    ("bad-in-stock", "SKU-9,Thing,,,,,maybe,,", "line 3, column in_stock: not true/false/yes/no/1/0"),
    ("duplicate-sku", "SKU-1,Again,,,,,,,", "line 3, column sku: the same SKU as line 2"),
    ("extra-fields", "SKU-9,Thing,,,,,,,,surprise", "line 3: 10 fields, the header has 9"),
]


@pytest.mark.parametrize(("row", "problem"), [c[1:] for c in BAD_ROW_CASES], ids=[c[0] for c in BAD_ROW_CASES])
def test_a_bad_row_names_file_line_and_problem_and_nothing_is_written(kit, tmp_path: Path, row: str, problem: str) -> None:
    upsert_catalog(kit.engine, [{"sku": "SKU-0", "name": "Stored"}])
    before = by_sku(kit)
    path = write_csv(tmp_path, HEADER, GOOD_ROWS[0], row)

    with pytest.raises(CatalogCsvError) as info:
        load_catalog_csv(kit.engine, path)

    assert info.value.errors == [info.value.errors[0]]
    assert info.value.errors[0].startswith(f"catalog.csv {problem}")
    message = str(info.value)
    assert message.startswith(f"{path}: 1 bad row(s), nothing was loaded:")
    # Never a value of the row in the report.
    assert [v for v in row.split(",") if len(v.strip()) >= 5 and v.strip() in message] == []
    assert by_sku(kit) == before  # SKU-1 (a good row) was not written either; SKU-0 is kept


def test_every_bad_row_is_reported_at_once_and_stored_rows_survive(kit, tmp_path: Path) -> None:
    load_catalog_csv(kit.engine, write_csv(tmp_path, HEADER, *GOOD_ROWS, name="first.csv"))
    before = by_sku(kit)
    path = write_csv(
        tmp_path, HEADER,
        "SKU-1,Changed,1.001,EURO,http://shop.example.com/p,,perhaps,,",
        GOOD_ROWS[1],
        "SKU-5,,,,,,,,",
    )
    with pytest.raises(CatalogCsvError) as info:
        load_catalog_csv(kit.engine, path)
    assert info.value.errors == [
        "catalog.csv line 2, column price: more than 2 decimals",
        "catalog.csv line 2, column currency: not a 3-letter ISO 4217 code (e.g. EUR)",
        "catalog.csv line 2, column url: not an https:// URL (only https links are accepted)",
        "catalog.csv line 2, column in_stock: not true/false/yes/no/1/0",
        "catalog.csv line 4, column name: empty",
    ]
    assert by_sku(kit) == before


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("sku,name,colour", "unknown column(s) colour (expected: sku, name, price, currency, url, image_url, in_stock, name.<locale>)"),
        ("sku,price", "missing column(s) name"),
        ("title,price", "missing column(s) sku, name; unknown column(s) title"),
        ("sku,name,name.english!", "column(s) name.english!: not a locale tag (expected name.fr, name.fr-CA ...)"),
        ("sku,name,name.", "column(s) name.: not a locale tag"),
        ("sku,name,price,price", "repeated column(s) price"),
        ("sku,name,name.fr_CA,name.fr-ca", "repeated column(s) name.fr-ca (the same locale as name.fr_CA)"),
    ],
    ids=["unknown", "missing-name", "missing-and-unknown", "bad-locale", "empty-locale", "repeated", "same-locale"],
)
def test_bad_header_is_refused(kit, tmp_path: Path, header: str, problem: str) -> None:
    path = write_csv(tmp_path, header, "SKU-1,Thing")
    with pytest.raises(CatalogCsvError) as info:
        load_catalog_csv(kit.engine, path)
    assert info.value.errors[0].startswith(f"{path} line 1 (header): {problem}")
    assert kit.count(catalog) == 0


def test_missing_file(kit, tmp_path: Path) -> None:
    with pytest.raises(CatalogCsvError, match="no such file"):
        load_catalog_csv(kit.engine, tmp_path / "nope.csv")


def test_skip_bad_rows_loads_the_good_ones_and_lists_the_rest(kit, tmp_path: Path) -> None:
    path = write_csv(tmp_path, HEADER, GOOD_ROWS[0], "SKU-9,Thing,,,ftp://x.example/p,,,,", GOOD_ROWS[1], "SKU-1,Dup,,,,,,,")

    result = load_catalog_csv(kit.engine, path, skip_bad_rows=True)

    assert (result.inserted, result.updated) == (2, 0)
    assert result.skipped == [
        "catalog.csv line 3, column url: not an https:// URL (only https links are accepted)",
        "catalog.csv line 5, column sku: the same SKU as line 2",
    ]
    assert set(by_sku(kit)) == {"SKU-1", "SKU-2"}
    assert by_sku(kit)["SKU-1"]["name"] == "Trail shoe"  # the first wins, the duplicate is skipped


def test_read_csv_strips_values_and_keeps_only_the_files_columns(tmp_path: Path) -> None:
    rows, errors = read_csv(write_csv(tmp_path, "sku,name,in_stock", "  SKU-1 ,  Trail shoe ,  NO "))
    assert errors == []
    assert rows == [{"sku": "SKU-1", "name": "Trail shoe", "in_stock": False}]
    rows, errors = read_csv(write_csv(tmp_path, "sku,name,name.pt_br", "SKU-1,Shoe,Sapato", name="pt.csv"))
    assert rows == [{"sku": "SKU-1", "name": "Shoe", "names": {"pt-BR": "Sapato"}}]


def test_utf8_bom_quoted_fields_and_unicode_names(kit, tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeffsku,name,name.ja\n" + 'SKU-1,"Shoe, trail",靴 😀\n').encode("utf-8"))
    load_catalog_csv(kit.engine, path)
    item = find(kit, "SKU-1")["SKU-1"]
    assert (item.name, item.name_for("ja_JP")) == ("Shoe, trail", "靴 😀")


def test_bytes_that_are_not_utf8_are_a_reported_field(kit, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"sku,name\nSKU-1,Shoe\nSKU-2,Chaussure d\xe9tente\n")
    with pytest.raises(CatalogCsvError) as info:
        load_catalog_csv(kit.engine, path)
    assert info.value.errors == ["latin1.csv line 3, column name: is not valid UTF-8 (byte 0xE9 at character 12)"]
    assert kit.count(catalog) == 0


def test_a_row_at_every_limit_loads_and_round_trips(kit, tmp_path: Path) -> None:
    url = "https://shop.example.com/" + "p" * (2048 - len("https://shop.example.com/"))
    row = f"{'S' * 100},{'N' * 200},9999999999.99,EUR,{url},{url},1,{'F' * 200},"
    load_catalog_csv(kit.engine, write_csv(tmp_path, HEADER, row))
    item = find(kit, "S" * 100)["S" * 100]
    assert (item.name, item.price, item.url, item.image_url, item.names["fr"]) == (
        "N" * 200, Decimal("9999999999.99"), url, url, "F" * 200
    )


def test_lookup_of_more_skus_than_one_in_list_holds(kit) -> None:
    upsert_catalog(kit.engine, [{"sku": f"SKU-{n:04d}", "name": f"Item {n}", "price": Decimal(n)} for n in range(1200)])
    wanted = [f"SKU-{n:04d}" for n in range(0, 1200, 2)] + [f"NOPE-{n}" for n in range(300)]
    items = find(kit, *wanted)
    assert set(items) == {f"SKU-{n:04d}" for n in range(0, 1200, 2)}
    assert items["SKU-1198"].price == Decimal("1198.00")
    with kit.engine.connect() as conn:
        assert catalog_size(conn) == 1200


def test_lookup_ignores_skus_that_could_not_be_stored(kit) -> None:
    upsert_catalog(kit.engine, [{"sku": "SKU-1", "name": "Shoe"}])
    hostile = ["SKU-1", "", "SKU-1\x00", "SKU 1", "S" * 5000, None, 42, ["SKU-1"], "SKU-1 ", "sku-1", "\udc80"]
    with kit.engine.connect() as conn:
        assert list(lookup(conn, hostile)) == ["SKU-1"]  # exact match only, no error on the rest
        assert lookup(conn, []) == {}


def test_load_turns_a_store_error_into_one_line_without_values(kit, tmp_path: Path, monkeypatch) -> None:
    from include.triggerflow import catalog as catalog_module

    # A store that refuses: the same new SKU twice in one insert (a second loader racing this one).
    real = catalog_module.upsert_catalog
    monkeypatch.setattr(catalog_module, "upsert_catalog", lambda engine, rows: real(engine, list(rows) * 2))
    path = write_csv(tmp_path, HEADER, *GOOD_ROWS)
    with pytest.raises(CatalogStoreError) as info:
        load_catalog_csv(kit.engine, path)
    message = str(info.value)
    assert message.startswith(f"{path}: the store refused the catalogue, nothing was loaded: ")
    assert "\n" not in message
    for value in ("SKU-1", "Trail shoe", "shop.example.com"):
        assert value not in message
    assert kit.count(catalog) == 0


def test_parse_row_on_its_own() -> None:
    row, errors = parse_row({"sku": "A", "name": "B", "price": "0", "name.de": "C", "name.xx!": "D"}, "f line 2")
    assert row is None
    assert errors == ["f line 2, column name.xx!: not a locale tag (expected name.fr, name.fr-CA ...)"]
    row, errors = parse_row({"sku": "A", "name": "B", "price": "0", "name.de": "C"}, "f line 2")
    assert errors == []
    assert row == {"sku": "A", "name": "B", "price": Decimal(0), "currency": None, "url": None, "image_url": None,
                   "in_stock": True, "names": {"de": "C"}}
