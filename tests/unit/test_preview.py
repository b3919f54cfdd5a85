"""Tests for include.triggerflow.preview: previews rendered from the shipped templates and samples,
and test sends over a fake session (the MailSession protocol); against the real SMTP sink:
tests/integration/test_preview.py."""

from __future__ import annotations

import dataclasses
import email
import json
import smtplib
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from include.triggerflow import DEFAULT_ROUTING_FILE
from include.triggerflow.config import load_routing
from include.triggerflow.hooks.smtp import TriggerMailHook
from include.triggerflow.preview import (
    DEFAULT_UNSUBSCRIBE_URL,
    PREVIEW_FILES,
    PreviewError,
    TestSendResult,
    complete_profile,
    render_preview,
    sample_event,
    sample_profile,
    send_test,
)
from include.triggerflow.smtp_replies import SmtpStage, accepted, read_reply
from tests.preview_support import FRENCH, PROFILE, SENDER, body, cart_event, parse_eml


# -- preview -----------------------------------------------------------------------------------------
def test_preview_writes_the_four_files(tmp_path: Path) -> None:
    paths = render_preview("cart_abandonment", cart_event(), PROFILE, out_dir=tmp_path / "out")

    assert list(paths) == list(PREVIEW_FILES)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(PREVIEW_FILES)
    assert paths["subject.txt"].read_text() == "Grace, you left something in your cart\n"
    html = paths["email.html"].read_text()
    text = paths["email.txt"].read_text()
    assert html.startswith("<!DOCTYPE html>") and "Trail Runner 2 Running Shoes" in html
    assert "on 14 Mar 2026 at 13:42 EDT." in text  # the event time in the profile's zone
    assert f"Unsubscribe with one click: {DEFAULT_UNSUBSCRIBE_URL}\n" in text

    msg = parse_eml(paths["message.eml"])
    assert msg["From"] == "triggerflow preview <preview@triggerflow.local>"
    assert msg["To"] == "grace.hopper@example.com"
    assert msg["Subject"] == "Grace, you left something in your cart"
    assert msg["Message-ID"] == "<triggerflow-preview@triggerflow.local>"
    assert msg["List-Unsubscribe"] == f"<{DEFAULT_UNSUBSCRIBE_URL}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["X-Triggerflow-Route"] == "cart_abandonment"
    assert body(msg, "plain") == text
    assert body(msg, "html") == html + "\n"  # the MIME part ends its last line


def test_preview_uses_the_profile_locale_and_the_given_unsubscribe_url(tmp_path: Path) -> None:
    url = "https://airflow.example.com/triggerflow/unsubscribe/?t=v1.abc.def"
    paths = render_preview("cart_abandonment", cart_event(), FRENCH, out_dir=tmp_path, unsubscribe_url=url)
    text = paths["email.txt"].read_text()
    assert "Bonjour Marie, votre panier vous attend" in text
    assert "le 14/03/2026 à 18:42 CET." in text
    assert f'href="{url}"' in paths["email.html"].read_text()
    assert parse_eml(paths["message.eml"])["List-Unsubscribe"] == f"<{url}>"


@pytest.mark.parametrize("shape", ["envelope", "json text", "producer message", "trigger body"])
def test_preview_accepts_the_usual_event_shapes(tmp_path: Path, shape: str) -> None:
    envelope = cart_event()
    pipeline = envelope["com.adobe.mcloud.pipeline.pipelineMessage"]
    trigger = pipeline["com.adobe.mcloud.protocol.trigger"]
    payload: Any = {
        "envelope": envelope,
        "json text": json.dumps(envelope),
        "producer message": {**pipeline["header"], "message": trigger},
        "trigger body": trigger,
    }[shape]
    paths = render_preview("cart_abandonment", payload, PROFILE, out_dir=tmp_path)
    assert "Alpine Shell Waterproof Jacket" in paths["email.txt"].read_text()


def test_unknown_route_names_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(PreviewError, match=r"^unknown route 'cart'; available routes: browse_abandonment, cart_abandonment$"):
        render_preview("cart", cart_event(), PROFILE, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_render_error_is_reported_and_nothing_is_written(tmp_path: Path) -> None:
    routing = load_routing(DEFAULT_ROUTING_FILE)
    # a subject that formats a value that is no number: the render fails, naming why
    route = dataclasses.replace(routing.routes[0], subject="{{ 'free!'|money }}")
    broken = dataclasses.replace(routing, routes=(route, *routing.routes[1:]))
    with pytest.raises(PreviewError) as info:
        render_preview("cart_abandonment", cart_event(), PROFILE, out_dir=tmp_path / "out", routing=broken)
    assert str(info.value).startswith("cannot render: route 'cart_abandonment': subject, line 1")
    assert "ValueError: money: 'free!' is not a number" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_forged_sample_price_does_not_reach_the_preview(tmp_path: Path) -> None:
    """Catalogue mode: the event's own price, name and URLs are ignored; the sample catalogue's shown."""
    event = cart_event()
    trigger = event["com.adobe.mcloud.pipeline.pipelineMessage"]["com.adobe.mcloud.protocol.trigger"]
    trigger["enrichments"]["analyticsHitSummary"]["products"]["TRL-RUN-42"].update(
        price="free!", name="Evil shoes", url="https://evil.example/", image_url="https://evil.example/p.gif")
    paths = render_preview("cart_abandonment", event, PROFILE, out_dir=tmp_path / "out")
    for name in ("email.html", "email.txt"):
        shown = paths[name].read_text(encoding="utf-8")
        assert "Trail Runner 2 Running Shoes" in shown and "$129.95" in shown
        assert "evil" not in shown.lower() and "free!" not in shown


@pytest.mark.parametrize(
    ("event", "match"),
    [("{not json", "event is not valid JSON"), ({"hello": 1}, "event cannot be read: envelope has no")],
)
def test_unreadable_event(tmp_path: Path, event: Any, match: str) -> None:
    with pytest.raises(PreviewError, match=match):
        render_preview("cart_abandonment", event, PROFILE, out_dir=tmp_path)


def test_bad_profile_email_and_unsubscribe_url_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PreviewError, match=r"the profile's email cannot be a recipient: invalid email address 'nope'"):
        render_preview("cart_abandonment", cart_event(), {**PROFILE, "email": "nope"}, out_dir=tmp_path)
    with pytest.raises(PreviewError, match="must use https"):
        render_preview("cart_abandonment", cart_event(), PROFILE, out_dir=tmp_path, unsubscribe_url="http://shop.example.com/u")
    with pytest.raises(PreviewError, match="is not an absolute http"):
        render_preview("cart_abandonment", cart_event(), PROFILE, out_dir=tmp_path, unsubscribe_url="javascript:x")


def test_profile_injection_cannot_reach_the_headers(tmp_path: Path) -> None:
    with pytest.raises(PreviewError, match="subject would contain a line break"):
        render_preview("cart_abandonment", cart_event(), {**PROFILE, "first_name": "G\r\nBcc: v@example.com"}, out_dir=tmp_path)
    with pytest.raises(PreviewError, match="contains CR, LF or NUL"):
        render_preview("cart_abandonment", cart_event(), {**PROFILE, "email": "g@example.com\nBcc: v@example.com"}, out_dir=tmp_path)


def test_samples_and_profile_completion() -> None:
    assert sample_event()["com.adobe.mcloud.pipeline.pipelineMessage"]["com.adobe.mcloud.protocol.trigger"]["triggerId"]
    assert sample_profile()["locale"] == "en_US"
    assert sample_profile("fr")["locale"] == "fr_FR"
    assert sample_profile("xx") == sample_profile()
    completed = complete_profile({"email": "a@example.com"})
    assert completed["timezone"] is None and completed["first_name"] is None and completed["opted_out"] is False
    assert completed["email"] == "a@example.com"


def test_browse_preview_from_the_samples(tmp_path: Path) -> None:
    from include.triggerflow.config import load_routing

    route = next(r for r in load_routing().routes if r.name == "browse_abandonment")
    paths = render_preview("browse_abandonment", sample_event(route), sample_profile(), out_dir=tmp_path)
    text = paths["email.txt"].read_text()
    assert "Hi Grace, still looking?" in text and "Headlamp 400 Lumen Rechargeable: $54.00" in text


# -- test send (fake session) ------------------------------------------------------------------------
class FakeMail:
    """A TriggerMailHook stand-in: records what would be sent; refuses or breaks on request."""

    host, port, use_ssl, smtp_conn_id = "relay.test", 25, False, "smtp_triggers"

    def __init__(self, sender: str = SENDER, from_name: str | None = None, *, refuse: dict[str, Any] | None = None,
                 fail_at: int | None = None, message_id_domain: str = "triggerflow.local") -> None:
        self.sender, self.from_name, self.message_id_domain = sender, from_name, message_id_domain
        self.refuse = refuse or {}
        self.fail_at = fail_at
        self.sent: list[tuple[str, EmailMessage]] = []
        self.sessions = 0

    def __enter__(self) -> FakeMail:
        self.sessions += 1
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def send_prepared(self, recipient: str, message: bytes) -> Any:
        if self.fail_at is not None and len(self.sent) == self.fail_at:
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        if recipient in self.refuse:
            return self.refuse[recipient]
        msg = email.message_from_bytes(message, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.sent.append((recipient, msg))
        return accepted()


def fake_send(mail: FakeMail, seeds: list[str], profile: dict[str, Any] = PROFILE, **kwargs: Any) -> list[TestSendResult]:
    return send_test("cart_abandonment", cart_event(), profile, seeds, mail=mail, **kwargs)  # type: ignore[arg-type]


def test_send_test_sends_to_every_seed_in_one_session() -> None:
    mail = FakeMail(from_name="triggerflow shop")
    results = fake_send(mail, ["qa1@example.com", "qa2@example.org"])

    assert [(r.recipient, r.accepted, r.code, r.reply) for r in results] == [
        ("qa1@example.com", True, 250, "accepted"), ("qa2@example.org", True, 250, "accepted")]
    assert mail.sessions == 1
    assert [to for to, _ in mail.sent] == ["qa1@example.com", "qa2@example.org"]
    for (seed, msg), result in zip(mail.sent, results, strict=True):
        assert msg["To"] == seed
        assert msg["From"] == f"triggerflow shop <{SENDER}>"
        assert msg["Subject"] == "[TEST] Grace, you left something in your cart"
        assert msg["X-Triggerflow-Test"] == "true"
        assert msg["X-Triggerflow-Route"] == "cart_abandonment"
        assert msg["List-Unsubscribe"] == f"<{DEFAULT_UNSUBSCRIBE_URL}>"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "Hi Grace, your cart is waiting" in body(msg, "plain")
        assert str(msg["Message-ID"]) == result.message_id
    assert len({r.message_id for r in results}) == 2


def test_send_test_uses_the_sessions_message_id_domain_and_the_profile_locale() -> None:
    mail = FakeMail(message_id_domain="mail.shop.test")
    (result,) = fake_send(mail, ["qa@example.com"], profile=FRENCH, subject_prefix="[QA fr] ")
    (_, msg), = mail.sent
    assert result.message_id.endswith("@mail.shop.test>")
    assert msg["Subject"] == "[QA fr] Marie, you left something in your cart"
    assert "Bonjour Marie, votre panier vous attend" in body(msg, "plain")


@pytest.mark.parametrize(
    "bad",
    ["not-an-address", "qa@example.com\r\nBcc: victim@example.com", "qa@example.com, victim@example.com", ""],
)
def test_one_bad_seed_refuses_them_all_before_the_session(bad: str) -> None:
    mail = FakeMail()
    with pytest.raises(PreviewError, match=r"^refusing to send to any seed: "):
        fake_send(mail, ["qa1@example.com", bad, "qa2@example.com"])
    with pytest.raises(PreviewError, match="at least one seed"):
        fake_send(mail, [])
    assert (mail.sessions, mail.sent) == (0, [])


def test_a_seed_refused_by_the_server_is_reported() -> None:
    mail = FakeMail(refuse={"full@example.com": read_reply(SmtpStage.RCPT, 552, "5.2.2 mailbox full")})
    results = fake_send(mail, ["full@example.com", "qa@example.com", "QA@example.com"])  # the duplicate is dropped
    assert [(r.recipient, r.accepted, r.code) for r in results] == [("full@example.com", False, 552), ("qa@example.com", True, 250)]
    assert "mailbox full" in results[0].reply
    assert [to for to, _ in mail.sent] == ["qa@example.com"]


@pytest.mark.parametrize("sender", ["shop@localhost", "shop@example.com\r\nBcc: x@example.com"])
def test_a_bad_sender_is_refused_before_the_session(sender: str) -> None:
    mail = FakeMail(sender=sender)
    with pytest.raises(PreviewError, match=r"^bad sender: "):
        fake_send(mail, ["qa@example.com"])
    assert mail.sessions == 0


def test_a_session_failure_names_the_server_and_what_was_accepted() -> None:
    mail = FakeMail(fail_at=1)
    with pytest.raises(PreviewError, match=r"^SMTP session with relay.test:25 failed: SMTPServerDisconnected: "
                       r"Connection unexpectedly closed \(accepted before the failure: qa1@example.com\)$"):
        fake_send(mail, ["qa1@example.com", "qa2@example.com"])


def test_a_session_missing_its_settings_is_a_preview_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_CONN", raising=False)
    with pytest.raises(PreviewError) as info:
        send_test("cart_abandonment", cart_event(), PROFILE, ["qa@example.com"], mail=TriggerMailHook("no_such_conn"))
    assert str(info.value) == "no SMTP --smtp-host and --from: connection 'no_such_conn' is not defined; pass --smtp-host, --from"
