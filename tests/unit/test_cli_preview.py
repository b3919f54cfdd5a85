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
from typing import ClassVar

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


class FakeMailHook:
    """Stands in for ``TriggerMailHook`` (its session interface: sender, from_name,
    message_id_domain, a context manager with ``send_prepared``): records how the CLI built it and
    what it sent; ``refuse`` maps a recipient to a (code, reply) refusal."""

    built: ClassVar[list[dict[str, object]]] = []
    sent: ClassVar[list[tuple[str, bytes]]] = []
    refuse: ClassVar[dict[str, tuple[int, str]]] = {}

    def __init__(self, smtp_conn_id: str = "smtp_triggers", *, host=None, port=None, from_email=None) -> None:
        self.built.append({"conn": smtp_conn_id, "host": host, "port": port, "from_email": from_email})
        self.sender, self.from_name, self.message_id_domain = from_email or "shop@example.com", "Shop", "test.example"
        self.smtp_conn_id = smtp_conn_id

    def __enter__(self) -> FakeMailHook:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def send_prepared(self, recipient: str, message: bytes):
        from include.triggerflow.smtp_replies import SmtpStage, accepted, read_reply

        self.sent.append((recipient, message))
        if recipient in self.refuse:
            return read_reply(SmtpStage.RCPT, *self.refuse[recipient])
        return accepted()


@pytest.fixture
def fake_mail(monkeypatch: pytest.MonkeyPatch) -> type[FakeMailHook]:
    import include.triggerflow.hooks.smtp as smtp_hooks

    monkeypatch.setattr(FakeMailHook, "built", [])
    monkeypatch.setattr(FakeMailHook, "sent", [])
    monkeypatch.setattr(FakeMailHook, "refuse", {})
    monkeypatch.setattr(smtp_hooks, "TriggerMailHook", FakeMailHook)
    return FakeMailHook


def test_test_send_goes_through_the_mail_hook_with_the_flags(fake_mail: type[FakeMailHook]) -> None:
    """The sink-backed versions are in tests/integration/cli/test_cli_test_send.py."""
    fake_mail.refuse = {"full@example.com": (552, "5.2.2 mailbox full")}
    done = cli(
        "test-send", "--route", "cart_abandonment", "--to", "full@example.com", "--to", "qa@example.com",
        "--smtp-conn", "qa_smtp", "--smtp-host", "mail.example.com", "--smtp-port", "2525", "--from", "qa@example.org",
        "--subject-prefix", "[QA] ",
    )
    assert done.returncode == 1, done.stderr  # one seed refused
    assert fake_mail.built == [{"conn": "qa_smtp", "host": "mail.example.com", "port": 2525, "from_email": "qa@example.org"}]
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert [line[:2] for line in lines] == [["full@example.com", "refused 552: 5.2.2 mailbox full"], ["qa@example.com", "accepted"]]
    assert all(line[2].startswith("<test.") and line[2].endswith("@test.example>") for line in lines)
    [(_, _), (_, raw)] = fake_mail.sent
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == "[QA] Grace, you left something in your cart"
    assert msg["To"] == "qa@example.com" and msg["X-Triggerflow-Test"] == "true"


def test_test_send_defaults_to_the_smtp_triggers_connection(fake_mail: type[FakeMailHook]) -> None:
    done = cli("test-send", "--route", "browse_abandonment", "--to", "qa@example.com")
    assert done.returncode == 0, done.stderr
    assert fake_mail.built == [{"conn": "smtp_triggers", "host": None, "port": None, "from_email": None}]
    assert [recipient for recipient, _ in fake_mail.sent] == ["qa@example.com"]
