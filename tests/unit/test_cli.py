"""Tests for include.triggerflow.cli, run in-process through ``main(argv)`` (tests/cli_support.py);
tests/integration/cli/test_cli_process.py runs the real ``python -m include.triggerflow.cli``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert, inspect

from include.triggerflow.store.schema import quarantine, run_summary
from tests.cli_support import Done, run_cli
from tests.fixtures import envelope_json

HEADER = "customer_id,email,first_name,shopper_id,opted_out"


def cli(store_url: str | None, *args: str, env: dict[str, str] | None = None) -> Done:
    prefix = ("--db-url", store_url) if store_url is not None else ()
    return run_cli(*prefix, *args, env=env)


def test_init_db_creates_the_tables(store_url: str) -> None:
    done = cli(store_url, "init-db")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("store ready at ")
    from include.triggerflow.store.engines import get_engine

    assert {"tf_event", "tf_send", "tf_run_summary", "profiles"} <= set(inspect(get_engine(store_url)).get_table_names())


def test_db_url_from_the_environment(store_url: str) -> None:
    done = cli(None, "init-db", env={"TRIGGERFLOW_DB_URL": store_url})
    assert done.returncode == 0, done.stderr
    from include.triggerflow.store.engines import get_engine

    assert "tf_batch" in inspect(get_engine(store_url)).get_table_names()


def test_load_profiles_prints_counts(kit, store_url: str, tmp_path: Path) -> None:
    csv = tmp_path / "profiles.csv"
    csv.write_text(f"{HEADER}\nC1,ada@example.com,Ada,SHOP-ADA,\nC2,grace@example.com,Grace,SHOP-GRACE,no\n")

    done = cli(store_url, "load-profiles", str(csv))

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"profiles loaded from {csv}: 2 new, 0 updated"
    assert done.stderr == ""
    from include.triggerflow.store.schema import profiles

    assert kit.count(profiles) == 2
    again = cli(store_url, "load-profiles", str(csv))
    assert again.stdout.strip() == f"profiles loaded from {csv}: 0 new, 2 updated"


def test_bad_csv_exits_2_with_the_error_on_stderr(kit, store_url: str, tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(f"{HEADER}\nC1,ada@example.com,Ada,SHOP-ADA,\nC2,not-an-email,Grace,SHOP-GRACE,\n")

    done = cli(store_url, "load-profiles", str(csv))

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: {csv}: 1 bad row(s), nothing was loaded:")
    assert "bad.csv line 3, column email: not a valid address" in done.stderr
    from include.triggerflow.store.schema import profiles

    assert kit.count(profiles) == 0


def test_skip_bad_rows_loads_the_rest_and_lists_skips(kit, store_url: str, tmp_path: Path) -> None:
    csv = tmp_path / "mixed.csv"
    csv.write_text(f"{HEADER}\nC1,ada@example.com,Ada,SHOP-ADA,\nC2,not-an-email,Grace,SHOP-GRACE,\n")

    done = cli(store_url, "load-profiles", "--skip-bad-rows", str(csv))

    assert done.returncode == 0
    assert done.stdout.strip() == f"profiles loaded from {csv}: 1 new, 0 updated"
    assert done.stderr.strip() == "skipped: mixed.csv line 3, column email: not a valid address (expected name@domain.tld)"


def test_runs_prints_the_reports_newest_first(kit, store_url: str) -> None:
    empty = cli(store_url, "runs")
    assert empty.returncode == 0
    assert empty.stdout.splitlines() == [
        "batch_id\tpulled\tvalid\tquarantined\tmatched\tunmatched\tignored\tsent\tsuppressed\tfailed"
        "\tduplicate\tno_products\tdeferred\tambiguous\tpending\tscheduled\tdropped\tbalanced"
    ]
    counts = {"no_products": 7, "deferred": 2, "ambiguous": 1, "pending": 3, "scheduled": 4, "dropped": 5, "dropped_reasons": {"not JSON": 5}}
    with kit.engine.begin() as conn:
        for batch_id, minute, balanced, stored in (("b-old", 1, True, "{}"), ("b-new", 2, False, json.dumps(counts))):
            conn.execute(insert(run_summary).values(
                batch_id=batch_id, dag_id="trigger_emails", run_id=f"run-{batch_id}", pulled=9, valid=5,
                quarantined=4, matched=3, unmatched=1, ignored=1, sent=2, suppressed=1, failed=0, duplicate=6,
                pending=9, balanced=balanced, oldest_sent_age_s=1.5, counts=stored,
                reported_at=datetime(2026, 3, 1, 12, minute, tzinfo=UTC),
            ))

    done = cli(store_url, "runs")

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        "b-new\t9\t5\t4\t3\t1\t1\t2\t1\t0\t6\t7\t2\t1\t3\t4\t5\tFalse",
        # a summary written before these counts existed: '-', not a made-up 0
        "b-old\t9\t5\t4\t3\t1\t1\t2\t1\t0\t6\t-\t-\t-\t-\t-\t-\tTrue",
    ]
    assert cli(store_url, "runs", "--limit", "1").stdout.splitlines()[1:] == [
        "b-new\t9\t5\t4\t3\t1\t1\t2\t1\t0\t6\t7\t2\t1\t3\t4\t5\tFalse"
    ]


def test_runs_shows_a_row_still_deferred_after_the_last_try(kit, store_url: str, routing, demo_catalog) -> None:
    from sqlalchemy import update

    from include.triggerflow.stages.reconcile import reconcile_batch
    from include.triggerflow.stages.report import report_batch
    from include.triggerflow.store.schema import batch, send

    kit.add_profiles({"customer_id": "C1", "email": "ada@example.com", "shopper_id": "SHOP-ADA"},
                     {"customer_id": "C2", "email": "grace@example.com", "shopper_id": "SHOP-GRACE"})
    b = kit.add_batch("b1")
    kit.add_event(b, envelope_json(shopper_id="SHOP-ADA"))
    kit.add_event(b, envelope_json(shopper_id="SHOP-GRACE"))
    reconcile_batch(kit.engine, b, routing)
    with kit.engine.begin() as conn:  # the mail server answered 4xx on every try for Ada
        conn.execute(update(send).where(send.c.recipient == "ada@example.com").values(state="deferred", smtp_code=451))
        conn.execute(update(send).where(send.c.recipient == "grace@example.com").values(state="ambiguous"))
        conn.execute(update(batch).where(batch.c.batch_id == b).values(dropped=2, dropped_reasons='{"blank": 2}'))
    report_batch(kit.engine, b, dag_id="trigger_emails", run_id="run-b1")

    done = cli(store_url, "runs")

    assert done.returncode == 0, done.stderr
    header, line = done.stdout.splitlines()
    shown = dict(zip(header.split("\t"), line.split("\t"), strict=True))
    assert {k: shown[k] for k in ("pulled", "matched", "sent", "deferred", "ambiguous", "pending", "scheduled", "dropped", "balanced")} == {
        "pulled": "2", "matched": "2", "sent": "0", "deferred": "1", "ambiguous": "1", "pending": "0",
        "scheduled": "0", "dropped": "2", "balanced": "True",
    }


def test_quarantine_prints_one_json_line_per_event(kit, store_url: str) -> None:
    kit.add_batch("b1")
    kit.add_batch("b2")
    first = kit.add_event("b1", "not even an object", status="quarantined")
    second = kit.add_event("b2", envelope_json(shopper_id=None), status="quarantined")
    reasons = {
        first: [{"expectation": "expect_column_values_to_be_null", "column": "parse_error", "value": "payload is not valid JSON"}],
        second: [{"expectation": "expect_column_values_to_not_be_null", "column": "identity", "value": None}],
    }
    with kit.engine.begin() as conn:
        for eid, batch_id in ((first, "b1"), (second, "b2")):
            conn.execute(insert(quarantine).values(
                event_id=eid, batch_id=batch_id, reasons=json.dumps(reasons[eid]), quarantined_at=datetime.now(UTC),
            ))

    done = cli(store_url, "quarantine")

    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines == [
        {"event_id": first, "batch_id": "b1", "position": "pos-000001", "reasons": reasons[first]},
        {"event_id": second, "batch_id": "b2", "position": "pos-000002", "reasons": reasons[second]},
    ]
    only_b2 = cli(store_url, "quarantine", "--batch", "b2")
    assert [json.loads(line)["event_id"] for line in only_b2.stdout.splitlines()] == [second]


def test_a_command_is_required(store_url: str) -> None:
    done = cli(store_url)
    assert done.returncode == 2
    assert "the following arguments are required: command" in done.stderr


def test_suppress_add_list_remove_and_a_bad_entry(kit, store_url: str) -> None:
    added = cli(store_url, "suppress", "add", "Complaint@Example.com", "@spam.example", "--reason", "feed")
    assert added.returncode == 0 and "added 2 of 2" in added.stdout
    listed = [json.loads(line) for line in cli(store_url, "suppress", "list").stdout.splitlines()]
    assert sorted((r["address"], r["source"], r["reason"]) for r in listed) == [
        ("@spam.example", "block-list", "feed"), ("complaint@example.com", "block-list", "feed")]
    bad = cli(store_url, "suppress", "add", "ok@example.com", "not an address")
    assert bad.returncode == 2 and "'not an address'" in bad.stderr
    assert len(cli(store_url, "suppress", "list").stdout.splitlines()) == 2  # nothing of the bad call was added
    assert "removed 1" in cli(store_url, "suppress", "remove", "@spam.example").stdout


def test_decisions_per_run_customer_and_code(kit, store_url: str, routing, demo_catalog) -> None:
    from include.triggerflow.stages.reconcile import reconcile_batch

    kit.add_profiles({"customer_id": "C1", "email": "ada@example.com", "shopper_id": "SHOP-ADA"},
                     {"customer_id": "C2", "email": "grace@example.com", "shopper_id": "SHOP-GRACE", "opted_out": True})
    b = kit.add_batch("b1")
    kit.add_event(b, envelope_json(shopper_id="SHOP-ADA"))
    kit.add_event(b, envelope_json(shopper_id="SHOP-GRACE"))
    kit.add_event(b, envelope_json(shopper_id="SHOP-NOBODY"))
    reconcile_batch(kit.engine, b, routing)

    rows = [json.loads(line) for line in cli(store_url, "decisions", "--run", "run-b1").stdout.splitlines()]
    assert sorted(r["decision"] for r in rows) == ["matched", "suppressed:opt-out", "unmatched"]
    assert {r["decision"]: r["send_state"] for r in rows}["matched"] == "pending"
    grace = [json.loads(line) for line in cli(store_url, "decisions", "--customer", "C2").stdout.splitlines()]
    assert [(r["decision"], r["detail"]) for r in grace] == [("suppressed:opt-out", "profile opted out")]
    nobody = [json.loads(line) for line in cli(store_url, "decisions", "--customer", "SHOP-NOBODY").stdout.splitlines()]
    assert [r["decision"] for r in nobody] == ["unmatched"]
    suppressed = cli(store_url, "decisions", "--code", "suppressed").stdout.splitlines()
    assert len(suppressed) == 1
    counts = json.loads(cli(store_url, "decisions", "--run", "run-b1", "--counts").stdout)
    assert counts == {"matched": 1, "suppressed:opt-out": 1, "unmatched": 1}


def test_positions_skip_and_set_position(kit, store_url: str) -> None:
    from include.triggerflow.store.schema import source_gap, source_position

    source = "pipeline:customer_dev:triggers"
    with kit.engine.begin() as conn:
        conn.execute(insert(source_position).values(source=source, partition=0, position="41", updated_at=datetime.now(UTC)))

    skipped = cli(store_url, "skip", source, "--reason", "offset 41 stops the pull")
    assert skipped.returncode == 0, skipped.stderr
    assert skipped.stdout.strip() == f"{source} partition 0: 41 -> 42 (recorded in tf_source_gap as a deliberate skip)"
    set_ = cli(store_url, "set-position", source, "100", "--partition", "0")
    assert set_.returncode == 0, set_.stderr
    listed = cli(store_url, "positions").stdout.splitlines()
    assert listed[1].split("\t")[:3] == [source, "0", "100"]
    assert [(g["expected_position"], g["resumed_position"]) for g in kit.rows(source_gap, order_by=source_gap.c.gap_id)] == [
        ("41", "42"), ("42", "100")
    ]
    refused = cli(store_url, "set-position", "journal:/typo", "pos-1")
    assert refused.returncode == 2 and "no source 'journal:/typo'" in refused.stderr


CATALOG_HEADER = "sku,name,price,currency,url,in_stock,name.fr"


def test_catalog_load_show_and_count(kit, store_url: str, tmp_path: Path) -> None:
    csv = tmp_path / "catalog.csv"
    csv.write_text(
        f"{CATALOG_HEADER}\nSKU-1,Trail shoe,89.9,EUR,https://shop.example.com/p/1,,Chaussure\n"
        "SKU-2,Wool hat,,,,no,\n"
    )

    done = cli(store_url, "catalog", "load", str(csv))

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"catalogue loaded from {csv}: 2 new, 0 updated (2 products in all)"
    assert done.stderr == ""
    again = cli(store_url, "catalog", "load", str(csv))
    assert again.stdout.strip() == f"catalogue loaded from {csv}: 0 new, 2 updated (2 products in all)"

    count = cli(store_url, "catalog", "show")
    assert (count.returncode, count.stdout.strip()) == (0, "catalogue: 2 products")

    shown = cli(store_url, "catalog", "show", "SKU-2", "SKU-1")
    assert shown.returncode == 0, shown.stderr
    lines = [line.split() for line in shown.stdout.splitlines()]
    assert lines == [
        ["sku", "name", "price", "currency", "in_stock", "url", "image_url", "names"],
        ["SKU-2", "Wool", "hat", "no"],
        ["SKU-1", "Trail", "shoe", "89.90", "EUR", "yes", "https://shop.example.com/p/1", "fr=Chaussure"],
    ]


def test_catalog_show_of_an_unknown_sku_exits_1_and_names_it(kit, store_url: str, tmp_path: Path) -> None:
    csv = tmp_path / "catalog.csv"
    csv.write_text("sku,name\nSKU-1,Trail shoe\n")
    assert cli(store_url, "catalog", "load", str(csv)).returncode == 0

    done = cli(store_url, "catalog", "show", "SKU-1", "NOPE-9")

    assert done.returncode == 1
    assert done.stdout.splitlines()[1].split()[:3] == ["SKU-1", "Trail", "shoe"]
    assert done.stderr.strip() == "not in the catalogue: NOPE-9"


def test_catalog_bad_csv_exits_2_and_keeps_the_stored_catalogue(kit, store_url: str, tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("sku,name\nSKU-0,Stored\n")
    assert cli(store_url, "catalog", "load", str(good)).returncode == 0
    csv = tmp_path / "bad.csv"
    csv.write_text(f"{CATALOG_HEADER}\nSKU-1,Shoe,1,EUR,https://shop.example.com/p/1,,\nSKU-2,Hat,,,http://evil.example/x,,\n")

    done = cli(store_url, "catalog", "load", str(csv))

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: {csv}: 1 bad row(s), nothing was loaded:")
    assert "bad.csv line 3, column url: not an https:// URL" in done.stderr
    assert "evil.example" not in done.stderr
    from include.triggerflow.store.schema import catalog

    assert [r["sku"] for r in kit.rows(catalog)] == ["SKU-0"]


def test_catalog_skip_bad_rows_loads_the_rest_and_lists_skips(kit, store_url: str, tmp_path: Path) -> None:
    csv = tmp_path / "mixed.csv"
    csv.write_text(f"{CATALOG_HEADER}\nSKU-1,Shoe,1,EUR,,,\nSKU-2,Hat,-3,,,,\n")

    done = cli(store_url, "catalog", "load", "--skip-bad-rows", str(csv))

    assert done.returncode == 0
    assert done.stdout.strip() == f"catalogue loaded from {csv}: 1 new, 0 updated (1 product in all)"
    assert done.stderr.strip() == "skipped: mixed.csv line 3, column price: negative"


def test_catalog_needs_an_action(store_url: str) -> None:
    done = cli(store_url, "catalog")
    assert done.returncode == 2
    assert "load,show" in done.stderr
