"""Tests for include.triggerflow.profiles: CSV -> profiles table, all-or-nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.triggerflow.profiles import CSV_COLUMNS, LoadResult, ProfileCsvError, load_profiles_csv, read_csv
from include.triggerflow.store.schema import profiles

HEADER = "customer_id,email,first_name,last_name,locale,timezone,shopper_id,ecid,declared_id,opted_out"
GOOD_ROWS = [
    "C1,ada@example.com,Ada,Lovelace,en_GB,Europe/London,SHOP-ADA,,,false",
    "C2,grace@example.com,Grace,Hopper,en-US,America/New_York,SHOP-GRACE,12345678901234567890123456789012345678,CRM-2,no",
    "C3,donald@example.com,Donald,Knuth,fr,,SHOP-OPTOUT,,,YES",
]


def write_csv(tmp_path: Path, *lines: str, name: str = "profiles.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def by_id(kit) -> dict[str, dict]:
    return {r["customer_id"]: r for r in kit.rows(profiles)}


def test_good_csv_loads_then_updates(kit, tmp_path: Path) -> None:
    path = write_csv(tmp_path, HEADER, *GOOD_ROWS)

    result = load_profiles_csv(kit.engine, path)

    assert result == LoadResult(inserted=3, updated=0, skipped=[])
    rows = by_id(kit)
    assert set(rows) == {"C1", "C2", "C3"}
    c1 = rows["C1"]
    assert (c1["email"], c1["first_name"], c1["locale"], c1["timezone"], c1["shopper_id"]) == (
        "ada@example.com", "Ada", "en_GB", "Europe/London", "SHOP-ADA"
    )
    assert (c1["ecid"], c1["declared_id"], c1["opted_out"]) == (None, None, False)  # blanks are NULL
    assert (rows["C2"]["ecid"], rows["C2"]["declared_id"], rows["C2"]["opted_out"]) == ("1234567890" * 3 + "12345678", "CRM-2", False)
    assert rows["C3"]["opted_out"] is True and rows["C3"]["timezone"] is None

    # second load: C1 changed, C4 new, C2/C3 unchanged but present
    path2 = write_csv(
        tmp_path, HEADER, "C1,ada.lovelace@example.com,Ada,Byron,en_GB,Europe/London,SHOP-ADA,,,true",
        *GOOD_ROWS[1:], "C4,alan@example.com,Alan,Turing,en,,SHOP-ALAN,,,", name="second.csv",
    )
    assert load_profiles_csv(kit.engine, path2) == LoadResult(inserted=1, updated=3, skipped=[])
    rows = by_id(kit)
    assert len(rows) == 4
    assert (rows["C1"]["email"], rows["C1"]["last_name"], rows["C1"]["opted_out"]) == ("ada.lovelace@example.com", "Byron", True)
    assert rows["C1"]["updated_at"] is not None
    assert rows["C4"]["opted_out"] is False


def test_columns_in_any_order_with_only_the_required_ones(kit, tmp_path: Path) -> None:
    path = write_csv(tmp_path, " email , customer_id ", "ada@example.com,C1")
    assert load_profiles_csv(kit.engine, path).inserted == 1
    assert by_id(kit)["C1"]["email"] == "ada@example.com"


def test_columns_absent_from_the_file_are_left_unchanged_on_update(kit, tmp_path: Path) -> None:
    load_profiles_csv(kit.engine, write_csv(tmp_path, HEADER, *GOOD_ROWS))
    # An email-only update of C2 and C3 must keep their shopper ids, ecid and opt-out.
    update = write_csv(tmp_path, "customer_id,email", "C2,g.hopper@example.com", "C3,dk@example.com", name="emails.csv")
    assert load_profiles_csv(kit.engine, update) == LoadResult(inserted=0, updated=2, skipped=[])
    rows = by_id(kit)
    assert (rows["C2"]["email"], rows["C2"]["shopper_id"], rows["C2"]["declared_id"]) == ("g.hopper@example.com", "SHOP-GRACE", "CRM-2")
    assert (rows["C3"]["email"], rows["C3"]["opted_out"], rows["C3"]["first_name"]) == ("dk@example.com", True, "Donald")


def test_utf8_bom_and_quoted_fields(kit, tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeff" + HEADER + '\nC1,ada@example.com,"Ada, Countess",Lovelace,,,,,,\n').encode("utf-8"))
    assert load_profiles_csv(kit.engine, path).inserted == 1
    assert by_id(kit)["C1"]["first_name"] == "Ada, Countess"


BAD_ROW_CASES = [
    ("bad-email", "C9,not-an-email,X,,,,,,,", "line 3, column email: not a valid address"),
    ("empty-customer-id", " ,nine@example.com,X,,,,,,,", "line 3, column customer_id: empty"),
    ("empty-email", "C9,,X,,,,,,,", "line 3, column email: empty"),
    ("bad-timezone", "C9,nine@example.com,X,,,Mars/Olympus,,,,", "line 3, column timezone: not an IANA time zone name"),
    ("bad-opted-out", "C9,nine@example.com,X,,,,,,,maybe", "line 3, column opted_out: not true/false"),
    ("bad-locale", "C9,nine@example.com,X,,english!,,,,,", "line 3, column locale: not like 'en' or 'en_US'"),
    ("duplicate-customer-id", "C1,other@example.com,X,,,,,,,", "line 3, column customer_id: the same id as line 2"),
    ("extra-fields", "C9,nine@example.com,X,,,,,,,,surprise", "line 3: 11 fields, the header has 10"),
    ("long-email", f"C9,{'n' * 310}@example.com,X,,,,,,,", "line 3, column email: 322 characters, the store holds at most 320"),
    ("long-first-name", f"C9,nine@example.com,{'N' * 201},,,,,,,", "line 3, column first_name: 201 characters, the store holds at most 200"),
    ("long-customer-id", f"{'9' * 101},nine@example.com,X,,,,,,,", "line 3, column customer_id: 101 characters, the store holds at most 100"),
    ("long-ecid", f"C9,nine@example.com,X,,,,,{'E' * 65},,", "line 3, column ecid: 65 characters, the store holds at most 64"),
    ("nul-in-name", "C9,nine@example.com,Ni\x00ne,,,,,,,", "line 3, column first_name: contains the control character NUL at character 3"),
    ("escape-in-name", "C9,nine@example.com,X,Ni\x1bne,,,,,,", "line 3, column last_name: contains the control character U+001B at character 3"),
    ("quoted-newline-in-name", 'C9,nine@example.com,"Ni\nne",,,,,,,', "lines 3-4, column first_name: contains the control character U+000A at character 3"),
]


@pytest.mark.parametrize(("row", "problem"), [c[1:] for c in BAD_ROW_CASES], ids=[c[0] for c in BAD_ROW_CASES])
def test_a_bad_row_names_file_line_and_problem_and_nothing_is_written(kit, tmp_path: Path, row: str, problem: str) -> None:
    kit.add_profiles({"customer_id": "C0", "email": "zero@example.com"})
    path = write_csv(tmp_path, HEADER, GOOD_ROWS[0], row)
    before = by_id(kit)

    with pytest.raises(ProfileCsvError) as info:
        load_profiles_csv(kit.engine, path)

    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith(f"profiles.csv {problem}")
    message = str(info.value)
    assert message.startswith(f"{path}: 1 bad row(s), nothing was loaded:")
    assert f"profiles.csv {problem}" in message
    # Never a value of the row in the report (the address, the names, the bad value itself).
    assert [v for v in row.split(",") if len(v.strip()) >= 4 and v.strip() in message] == []
    assert by_id(kit) == before  # C1 (a good row) was not written either


def test_every_bad_row_is_reported_at_once(kit, tmp_path: Path) -> None:
    path = write_csv(tmp_path, HEADER, "C1,bad,,,,,,,,", GOOD_ROWS[1], "C3,x@y.z,,,,Nowhere/Land,,,,perhaps")
    with pytest.raises(ProfileCsvError) as info:
        load_profiles_csv(kit.engine, path)
    assert info.value.errors == [
        "profiles.csv line 2, column email: not a valid address (expected name@domain.tld)",
        "profiles.csv line 4, column timezone: not an IANA time zone name (e.g. Europe/Paris)",
        "profiles.csv line 4, column opted_out: not true/false/yes/no/1/0",
    ]
    assert kit.count(profiles) == 0


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (HEADER + ",loyalty_tier", "unknown column(s) loyalty_tier (expected: " + ", ".join(CSV_COLUMNS) + ")"),
        ("customer_id,first_name", "missing column(s) email"),
        ("first_name,e-mail", "missing column(s) customer_id, email; unknown column(s) e-mail"),
    ],
    ids=["unknown-column", "missing-email", "missing-and-unknown"],
)
def test_bad_header_is_refused(kit, tmp_path: Path, header: str, problem: str) -> None:
    path = write_csv(tmp_path, header, "C1,ada@example.com")
    with pytest.raises(ProfileCsvError) as info:
        load_profiles_csv(kit.engine, path)
    assert info.value.errors[0].startswith(f"{path} line 1 (header): {problem}")
    assert kit.count(profiles) == 0


def test_missing_file(kit, tmp_path: Path) -> None:
    with pytest.raises(ProfileCsvError, match="no such file"):
        load_profiles_csv(kit.engine, tmp_path / "nope.csv")


def test_skip_bad_rows_loads_the_good_ones_and_lists_the_rest(kit, tmp_path: Path) -> None:
    path = write_csv(tmp_path, HEADER, GOOD_ROWS[0], "C9,not-an-email,,,,,,,,", GOOD_ROWS[1], "C1,dup@example.com,,,,,,,,")

    result = load_profiles_csv(kit.engine, path, skip_bad_rows=True)

    assert (result.inserted, result.updated) == (2, 0)
    assert result.skipped == [
        "profiles.csv line 3, column email: not a valid address (expected name@domain.tld)",
        "profiles.csv line 5, column customer_id: the same id as line 2",
    ]
    assert set(by_id(kit)) == {"C1", "C2"}
    assert by_id(kit)["C1"]["email"] == "ada@example.com"  # the first C1 wins, the duplicate is skipped


def test_read_csv_strips_values(tmp_path: Path) -> None:
    rows, errors = read_csv(write_csv(tmp_path, HEADER, "  C1 , ada@example.com ,  Ada ,,,,,,,  TRUE "))
    assert errors == []
    assert rows == [{
        "customer_id": "C1", "email": "ada@example.com", "first_name": "Ada", "last_name": None, "locale": None,
        "timezone": None, "shopper_id": None, "ecid": None, "declared_id": None, "opted_out": True,
    }]


def test_every_field_of_every_line_is_checked_and_reported_by_line_and_column(kit, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path, HEADER,
        GOOD_ROWS[0],
        f"C2,{'g' * 320}@example.com,Gr\x00ace,{'H' * 300},en,,SHOP-2,,,",
        GOOD_ROWS[2],
        f"C4,alan@example.com,Alan,Turing,en,,{'S' * 201},,,",
    )
    with pytest.raises(ProfileCsvError) as info:
        load_profiles_csv(kit.engine, path)
    assert info.value.errors == [
        "profiles.csv line 3, column email: 332 characters, the store holds at most 320",
        "profiles.csv line 3, column first_name: contains the control character NUL at character 3",
        "profiles.csv line 3, column last_name: 300 characters, the store holds at most 200",
        "profiles.csv line 5, column shopper_id: 201 characters, the store holds at most 200",
    ]
    assert kit.count(profiles) == 0


def test_bytes_that_are_not_utf8_are_a_reported_field_not_an_unreadable_file(kit, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "\n" + GOOD_ROWS[0] + "\n").encode() + b"C2,g@example.com,Ren\xe9,,,,,,,\n")
    with pytest.raises(ProfileCsvError) as info:
        load_profiles_csv(kit.engine, path)
    assert info.value.errors == ["latin1.csv line 3, column first_name: is not valid UTF-8 (byte 0xE9 at character 4)"]
    assert kit.count(profiles) == 0


def test_a_row_at_every_column_limit_loads_and_round_trips(kit, tmp_path: Path) -> None:
    # The limits come from the schema: a value exactly as long as its column is stored whole.
    longest = {c.name: length for c in profiles.columns if (length := getattr(c.type, "length", None))}
    email = "e" * (longest["email"] - len("@example.com")) + "@example.com"
    row = f"{'7' * longest['customer_id']},{email},{'F' * longest['first_name']},Ünïcødé 名前 😀,en,,,{'E' * longest['ecid']},,"
    load_profiles_csv(kit.engine, write_csv(tmp_path, HEADER, row))
    stored = by_id(kit)["7" * longest["customer_id"]]
    assert (stored["email"], stored["first_name"], stored["last_name"], stored["ecid"]) == (
        email, "F" * longest["first_name"], "Ünïcødé 名前 😀", "E" * longest["ecid"]
    )


def test_a_store_error_names_no_address_or_other_row_value(kit) -> None:
    from sqlalchemy.exc import IntegrityError

    from include.triggerflow.profiles import upsert_profiles

    # Two new rows with the same key in one insert: refused by the store on both backends (the
    # CSV reader never hands this over; the store's own error text is what is checked here).
    rows = [
        {"customer_id": "C1", "email": "secret.person@example.com", "first_name": "Secretname", "visitor_ids": []},
        {"customer_id": "C1", "email": "other.secret@example.com", "first_name": "Othername", "visitor_ids": []},
    ]
    with pytest.raises(IntegrityError) as raw:
        upsert_profiles(kit.engine, rows)
    text = str(raw.value)
    assert "parameters hidden" in text  # SQLAlchemy's own marker: the engine hides bound values
    for value in ("secret.person@example.com", "other.secret@example.com", "Secretname", "Othername"):
        assert value not in text
    assert kit.count(profiles) == 0


def test_load_turns_a_store_error_into_one_line_without_values(kit, tmp_path: Path, monkeypatch) -> None:
    from include.triggerflow import profiles as profiles_module

    # A store that refuses: the CSV is valid, the store's unique key is not (a second loader
    # racing this one); simulated by inserting the same rows twice inside one transaction.
    real = profiles_module.upsert_profiles

    def twice(engine, rows):
        rows = list(rows)
        return real(engine, rows + rows)

    monkeypatch.setattr(profiles_module, "upsert_profiles", twice)
    path = write_csv(tmp_path, HEADER, *GOOD_ROWS)
    with pytest.raises(profiles_module.ProfileStoreError) as info:
        load_profiles_csv(kit.engine, path)
    message = str(info.value)
    assert message.startswith(f"{path}: the store refused the profiles, nothing was loaded: ")
    assert "\n" not in message
    for value in ("ada@example.com", "grace@example.com", "Lovelace", "SHOP-ADA"):
        assert value not in message
    assert kit.count(profiles) == 0


# Addresses the old loader pattern (anything@anything.tld) accepted and the mailer refuses, and
# addresses both accept: the loader now applies the mailer's own check, so the two always agree.
ADDRESSES = [
    "ada@example.com", "a.b+tag@sub.example.co.uk", "x@y.z", "o'brien@example.com",
    "a@b..com", "a@.example.com", "a@example.com.", "<a@example.com>", "a@example.com>,c@d.com",
    "a;b@example.com", "(a)@example.com", 'a"b@example.com', "zoë@example.com", "a@exämple.com",
    "a@example", "@example.com", "a@@example.com", "a b@example.com", "a@example.com\u2028",
]


@pytest.mark.parametrize("address", ADDRESSES)
def test_the_loader_accepts_exactly_the_addresses_the_mailer_sends_to(address: str) -> None:
    from include.triggerflow.mailer import InvalidAddressError, validate_address
    from include.triggerflow.profiles import parse_row

    try:
        validate_address(address)
        mailer_accepts = True
    except InvalidAddressError:
        mailer_accepts = False
    row, errors = parse_row({"customer_id": "C1", "email": address}, "p.csv line 2")
    email_errors = [e for e in errors if e.startswith("p.csv line 2, column email:")]
    assert (row is not None) == mailer_accepts, errors
    assert email_errors == ([] if mailer_accepts else ["p.csv line 2, column email: not a valid address (expected name@domain.tld)"])


@pytest.mark.parametrize(
    ("locale", "accepted"),
    [("en", True), ("en_US", True), ("fr-CA", True), ("zh-Hant-TW", True), ("EN_us", True), ("english!", False),
     ("e", False), ("fr_FR.UTF-8", False), ("de_DE@euro", False), ("../fr", False)],
)
def test_the_loader_accepts_the_locales_the_renderer_can_use(locale: str, accepted: bool) -> None:
    from include.triggerflow.locales import normalize_locale
    from include.triggerflow.profiles import parse_row

    row, errors = parse_row({"customer_id": "C1", "email": "a@example.com", "locale": locale}, "p.csv line 2")
    assert (row is not None) is accepted is (normalize_locale(locale) is not None), errors
    if row is not None:
        assert row["locale"] == locale  # stored as written; normalised where it is used
