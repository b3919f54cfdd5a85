"""The alert's words: hostile text escaped, no template evaluated, the subject from the kind only."""

from __future__ import annotations

from datetime import UTC, datetime

from include.triggerflow.alerts import AlertKind, Firing
from include.triggerflow.alerts.texts import HEADLINES, WHAT_TO_DO, alert_message, clean

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOSTILE = "550 <script>alert(1)</script> {{ conf }} \r\nBcc: victim@evil.test \u202e"


def test_every_kind_has_a_headline_and_advice() -> None:
    assert set(HEADLINES) == set(AlertKind) == set(WHAT_TO_DO)


def test_hostile_detail_is_escaped_in_html_cleaned_everywhere_and_never_in_the_subject() -> None:
    firing = Firing(kind=AlertKind.RELAY_REFUSING, subject=HOSTILE, detail=HOSTILE, dag_id="trigger_emails", run_id="r1")
    message = alert_message(firing, alert_id=7, fired_at=NOW)
    assert message.subject == "[triggerflow] trigger_emails: the SMTP relay refuses the messages"
    assert "<script>" not in message.html and "&lt;script&gt;" in message.html
    for text in (message.text, message.html, message.payload["text"], message.payload["subject"]):
        assert "\r" not in text and "\u202e" not in text
    assert message.text.count("\n") == message.text.replace(HOSTILE, "").count("\n")  # no line from the detail
    assert message.payload["kind"] == "relay-refusing" and message.payload["alert_id"] == 7
    assert message.payload["fired_at"] == "2026-12-01T12:00:00+00:00"


def test_clean_caps_the_length() -> None:
    assert len(clean("x" * 5000)) == 2000 and clean("x" * 5000).endswith("…")
    assert clean("a\x00b") == "a\ufffdb"
