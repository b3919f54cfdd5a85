"""Tests for include.triggerflow.hooks.smtp against the real SMTP sink process."""

from __future__ import annotations

import smtplib
from datetime import UTC, datetime

import pytest

from include.triggerflow.hooks.smtp import TriggerMailHook
from include.triggerflow.mailer import build_message
from include.triggerflow.smtp_replies import accepted
from tests.fixtures import FROM_EMAIL, FROM_NAME, smtp_conn


def message(to_addr: str = "ada@example.com", subject: str = "Hello Ada") -> bytes:
    return build_message(
        from_addr=FROM_EMAIL, from_name=FROM_NAME, to_addr=to_addr, subject=subject,
        text="Hi Ada,\nyour cart is waiting.\n", html="<p>Hi Ada</p>\n", message_id="<k1@triggerflow.local>",
        date=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
    )


def test_send_prepared_is_accepted_and_the_message_arrives(smtp) -> None:
    raw = message()
    with TriggerMailHook() as mail:
        assert (mail.sender, mail.from_name, mail.message_id_domain) == (FROM_EMAIL, FROM_NAME, "triggerflow.local")
        outcome = mail.send_prepared("ada@example.com", raw)
        second = mail.send_prepared("grace@example.com", message("grace@example.com", "Hello Grace"))

    assert outcome == accepted()
    assert second.accepted
    paths = smtp.eml_paths()
    assert len(paths) == 2
    stored = paths[0].read_bytes()
    # the envelope, then the exact bytes that were sent
    assert stored.startswith(b"X-Envelope-From: " + FROM_EMAIL.encode() + b"\r\nX-Envelope-To: ada@example.com\r\n")
    assert stored.endswith(raw)
    mails = smtp.messages()
    assert [(m["To"], m["Subject"]) for m in mails] == [("ada@example.com", "Hello Ada"), ("grace@example.com", "Hello Grace")]
    assert mails[0]["Message-ID"] == "<k1@triggerflow.local>"


def test_extras_for_display_name_and_message_id_domain(smtp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", smtp_conn(smtp, from_name=None, message_id_domain="mail.shop.test"))
    with TriggerMailHook() as mail:
        assert (mail.from_name, mail.message_id_domain) == (None, "mail.shop.test")


def test_missing_from_email_is_a_clear_value_error(smtp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", smtp_conn(smtp, from_email=None))
    with TriggerMailHook() as mail:
        with pytest.raises(ValueError, match=r"^connection 'smtp_triggers': set extra.from_email \(the From address\)$"):
            _ = mail.sender
        with pytest.raises(ValueError, match=r"set extra\.from_email"):
            mail.send_prepared("ada@example.com", message())
    assert smtp.eml_paths() == []


def test_send_outside_the_context_manager_is_refused(smtp) -> None:
    with pytest.raises(RuntimeError, match="must be used as a context manager"):
        TriggerMailHook().send_prepared("ada@example.com", message())


def test_other_connection_id(smtp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_OTHER_RELAY", smtp_conn(smtp, from_email="news@shop.test"))
    with TriggerMailHook("other_relay") as mail:
        assert mail.sender == "news@shop.test"
        assert mail.send_prepared("ada@example.com", message()).accepted
    assert smtp.wait_for(1)[0]["To"] == "ada@example.com"


def test_a_dropped_session_raises(smtp) -> None:
    with TriggerMailHook() as mail:
        mail.client.close()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            mail.send_prepared("ada@example.com", message())
    assert smtp.eml_paths() == []


@pytest.mark.parametrize(
    ("rule", "stage", "code", "reply", "reply_class"),
    [
        ({"rcpt": "ada@example.com", "code": 550, "message": "5.1.1 unknown user"}, "rcpt", 550, "5.1.1 unknown user", "mailbox-permanent"),
        ({"data_code": 451, "message": "4.3.0 try later"}, "end-of-data", 451, "4.3.0 try later", "transient"),
        ({"mail_code": 553, "message": "5.7.1 sender refused"}, "mail", 553, "5.7.1 sender refused", "message-refused"),
        ({"rcpt": "ada@example.com", "code": 452, "message": "4.2.2 mailbox full"}, "rcpt", 452, "4.2.2 mailbox full", "mailbox-transient"),
        ({"data_command_code": 554, "message": "5.7.1 no"}, "data", 554, "5.7.1 no", "message-refused"),
    ],
    ids=["rcpt-550", "data-451", "sender-553", "rcpt-452", "data-command-554"],
)
def test_refusals_are_returned_with_their_stage_and_the_session_goes_on(smtp, rule, stage, code, reply, reply_class) -> None:
    smtp.set_faults([{**rule, "times": 1}])
    with TriggerMailHook() as mail:
        outcome = mail.send_prepared("ada@example.com", message())
        assert (outcome.stage, outcome.code, outcome.reply, outcome.reply_class) == (stage, code, reply, reply_class)
        assert not outcome.accepted
        assert mail.send_prepared("ada@example.com", message()) == accepted()
    assert len(smtp.eml_paths()) == 1
