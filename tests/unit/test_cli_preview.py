"""Tests for the ``preview`` and ``test-send`` commands, run in-process through the CLI's ``main``
(tests/cli_support.py) against the shipped templates and the store of the test. The test sends
that need the SMTP sink process are in tests/integration/cli/test_cli_test_send.py."""

from __future__ import annotations

import email
import json
from datetime import UTC, datetime
from decimal import Decimal
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import insert

from include.triggerflow.preview import DEFAULT_UNSUBSCRIBE_URL, SAMPLES_DIR
from include.triggerflow.store.schema import catalog
from tests.cli_support import run_cli as cli


# -- preview -----------------------------------------------------------------------------------------
def test_preview_with_the_samples(tmp_path: Path) -> None:
    out = tmp_path / "preview"
    done = cli("preview", "--route", "cart_abandonment", "--out", str(out))

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "subject: Grace, you left something in your cart",
        *(f"wrote {out / name}" for name in ("subject.txt", "email.html", "email.txt", "message.eml")),
    ]
    msg = email.message_from_bytes((out / "message.eml").read_bytes(), policy=policy.default)
    assert msg["To"] == "grace.hopper@example.com"
    assert msg["List-Unsubscribe"] == f"<{DEFAULT_UNSUBSCRIBE_URL}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_preview_with_files_and_a_locale_override(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text((SAMPLES_DIR / "cart_abandonment.event.json").read_text())
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"email": "zoe@example.fr", "first_name": "Zoé", "timezone": "Europe/Paris"}))
    out = tmp_path / "out"

    done = cli(
        "preview", "--route", "cart_abandonment", "--event", str(event), "--profile", str(profile),
        "--locale", "fr_CA", "--unsubscribe-url", "https://u.example.com/x?t=1", "--out", str(out),
    )

    assert done.returncode == 0, done.stderr
    text = (out / "email.txt").read_text()
    assert "Bonjour Zoé, votre panier vous attend" in text
    assert "le 14/03/2026 à 18:42 CET." in text
    assert "Se désabonner en un clic : https://u.example.com/x?t=1" in text


def test_preview_reads_the_profile_from_the_store(kit, store_url: str, tmp_path: Path) -> None:
    kit.add_profiles({"customer_id": "C9", "email": "lin@example.com", "first_name": "Lin", "timezone": "Asia/Tokyo"})
    out = tmp_path / "out"

    done = cli("--db-url", store_url, "preview", "--route", "browse_abandonment", "--customer-id", "C9", "--out", str(out))

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("subject: Lin, still looking? Your picks are waiting\n")
    assert "on 15 Mar 2026 at 02:42 JST." in (out / "email.txt").read_text()
    # the store's catalogue, not the sample one: the sample event's two SKUs, one of them stored
    assert "Store-only Day Pack" not in (out / "email.txt").read_text()
    with kit.engine.begin() as conn:
        conn.execute(insert(catalog).values(
            sku="UL-DAY-PCK", name="Store-only Day Pack", price=Decimal("12.00"), currency="USD",
            url="https://shop.example.com/p/UL-DAY-PCK", in_stock=True, updated_at=datetime.now(UTC),
        ))
    done = cli("--db-url", store_url, "preview", "--route", "browse_abandonment", "--customer-id", "C9", "--out", str(out))
    assert done.returncode == 0, done.stderr
    text = (out / "email.txt").read_text()
    assert "Store-only Day Pack" in text and "Headlamp" not in text  # HDL-LMP-400 is not in the store

    missing = cli("--db-url", store_url, "preview", "--route", "browse_abandonment", "--customer-id", "C404", "--out", str(out))
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: no profile with customer_id 'C404' in the store at ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--route", "nope"), "error: unknown route 'nope'; available routes: browse_abandonment, cart_abandonment\n"),
        (("--route", "cart_abandonment", "--event", "/nonexistent/event.json"), "error: cannot read the event file /nonexistent/event.json: No such file or directory\n"),
    ],
)
def test_preview_errors_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    done = cli("preview", *args, "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr == message
    assert not (tmp_path / "out").exists()


def test_preview_render_error_exits_2(tmp_path: Path) -> None:
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"email": "a@example.com", "first_name": "A\nBcc: v@example.com"}))
    done = cli("preview", "--route", "cart_abandonment", "--profile", str(profile), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot render: route 'cart_abandonment': subject would contain a line break")



# -- test-send ---------------------------------------------------------------------------------------
def test_test_send_without_smtp_settings() -> None:
    done = cli("test-send", "--route", "cart_abandonment", "--to", "qa@example.com", "--smtp-conn", "no_such_conn")
    assert done.returncode == 2
    assert done.stderr == (
        "error: no SMTP --smtp-host and --from: connection 'no_such_conn' is not defined; pass --smtp-host, --from\n"
    )
