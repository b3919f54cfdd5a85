"""TriggerMailHook with a server that advertises PIPELINING (the SMTP sink's lean engine): MAIL,
RCPT and DATA go out in one write, and every reply gives the same outcome as without PIPELINING."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from devstack.processes import RunningSmtpSink, start_smtp_sink
from include.triggerflow.hooks import smtp as smtp_module
from include.triggerflow.hooks.smtp import SmtpOutcome, TriggerMailHook
from include.triggerflow.mailer import build_message_fast
from include.triggerflow.smtp_replies import SmtpStage, accepted, read_reply
from tests.fixtures import FROM_EMAIL, FROM_NAME, smtp_conn

ACCEPTED = accepted()


@pytest.fixture(scope="module")
def lean_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSmtpSink]:
    base = tmp_path_factory.mktemp("lean")
    with start_smtp_sink(None, store="none", log_path=base / "sink.log", stats_interval=0.05) as sink:
        yield sink


@pytest.fixture
def lean(lean_sink: RunningSmtpSink, monkeypatch: pytest.MonkeyPatch) -> RunningSmtpSink:
    lean_sink.set_faults([])
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", smtp_conn(lean_sink))
    return lean_sink


@pytest.fixture
def pipelined(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Records every message that went through the pipelined path."""
    calls: list[tuple[str, str]] = []
    real = smtp_module._transaction

    def spy(client, sender, recipient, message):
        try:
            return real(client, sender, recipient, message)
        finally:  # the server's extensions are known once the transaction said EHLO
            if client.has_extn("pipelining"):
                calls.append((sender, recipient))

    monkeypatch.setattr(smtp_module, "_transaction", spy)
    return calls


def message(to_addr: str, text: str = "Hi,\nyour cart is waiting.\n") -> bytes:
    return build_message_fast(
        from_addr=FROM_EMAIL, from_name=FROM_NAME, to_addr=to_addr, subject="Hello", text=text,
        html="<p>Hi</p>\n", message_id=f"<{abs(hash((to_addr, text)))}@triggerflow.local>",
        date=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
    )


def settled_count(sink: RunningSmtpSink) -> int:
    """The sink's accepted count once its stats file has caught up (it is rewritten every 50 ms)."""
    import time

    time.sleep(0.3)
    return sink.accepted()


def send_all(recipients: list[str]) -> list[SmtpOutcome]:
    with TriggerMailHook() as mail:
        return [mail.send_prepared(r, message(r)) for r in recipients]


def test_messages_are_pipelined_and_accepted(lean, pipelined) -> None:
    before = settled_count(lean)
    outcomes = send_all([f"c{i}@example.com" for i in range(5)])
    assert outcomes == [ACCEPTED] * 5
    assert [r for _, r in pipelined] == [f"c{i}@example.com" for i in range(5)]
    assert settled_count(lean) == before + 5


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"rcpt": "bad@example.com", "code": 550, "message": "5.1.1 user unknown"}, read_reply(SmtpStage.RCPT, 550, "5.1.1 user unknown")),
        ({"rcpt": "bad@example.com", "code": 451, "message": "4.2.1 try later"}, read_reply(SmtpStage.RCPT, 451, "4.2.1 try later")),
        ({"rcpt_domain": "example.com", "code": 452, "message": "4.2.2 full", "times": 1}, read_reply(SmtpStage.RCPT, 452, "4.2.2 full")),
        ({"data_code": 554, "message": "5.7.1 rejected", "rcpt": "bad@example.com"}, read_reply(SmtpStage.END_OF_DATA, 554, "5.7.1 rejected")),
        ({"data_code": 451, "message": "4.3.0 later", "rcpt": "bad@example.com"}, read_reply(SmtpStage.END_OF_DATA, 451, "4.3.0 later")),
        ({"data_command_code": 554, "message": "5.7.1 no", "rcpt": "bad@example.com"}, read_reply(SmtpStage.DATA, 554, "5.7.1 no")),
    ],
    ids=["rcpt-550", "rcpt-451", "rcpt-domain-452", "data-554", "data-451", "data-command-554"],
)
def test_refusals_give_the_same_outcomes_with_and_without_pipelining(lean, pipelined, monkeypatch, rule, expected) -> None:
    recipients = ["first@example.org", "bad@example.com", "after@example.org"]
    lean.set_faults([rule])
    before = settled_count(lean)
    outcomes = send_all(recipients)
    assert outcomes == [ACCEPTED, expected, ACCEPTED]
    assert [r for _, r in pipelined] == recipients
    assert settled_count(lean) == before + 2

    # the same replies, the commands one by one (no PIPELINING), give the same outcomes
    lean.set_faults([])
    lean.set_faults([rule])
    real_has_extn = smtplib.SMTP.has_extn
    monkeypatch.setattr(smtplib.SMTP, "has_extn", lambda self, name: name.lower() != "pipelining" and real_has_extn(self, name))
    assert send_all(recipients) == [ACCEPTED, expected, ACCEPTED]


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refused_sender_fails_that_message_and_the_session_goes_on(lean, monkeypatch, pipelining: bool) -> None:
    if not pipelining:
        real_has_extn = smtplib.SMTP.has_extn
        monkeypatch.setattr(smtplib.SMTP, "has_extn", lambda self, name: name.lower() != "pipelining" and real_has_extn(self, name))
    lean.set_faults([{"mail_code": 530, "message": "5.7.0 Authentication required", "times": 1}])
    outcomes = send_all(["a@example.com", "b@example.com"])
    assert outcomes == [read_reply(SmtpStage.MAIL, 530, "5.7.0 Authentication required"), ACCEPTED]
    assert outcomes[0].reply_class == "message-refused"


def test_a_dropped_connection_raises_for_the_message_in_flight(lean, pipelined) -> None:
    lean.set_faults([{"drop_after_messages": 2}])
    with TriggerMailHook() as mail:
        assert mail.send_prepared("a@example.com", message("a@example.com")) == ACCEPTED
        assert mail.send_prepared("b@example.com", message("b@example.com")) == ACCEPTED
        with pytest.raises(smtplib.SMTPServerDisconnected):
            mail.send_prepared("c@example.com", message("c@example.com"))
    assert [r for _, r in pipelined] == ["a@example.com", "b@example.com", "c@example.com"]


def test_lines_starting_with_a_dot_are_stuffed_as_smtplib_does(lean, pipelined, monkeypatch) -> None:
    written: list[bytes] = []
    real_send = smtplib.SMTP.send

    def spy(self, s):
        written.append(s if isinstance(s, bytes) else s.encode())
        return real_send(self, s)

    monkeypatch.setattr(smtplib.SMTP, "send", spy)
    raw = message("dots@example.com")
    dotted = raw.replace(b"your cart", b"\r\n.hidden\r\n..two\r\n.")  # lines starting with "."
    with TriggerMailHook() as mail:
        assert mail.send_prepared("warmup@example.com", message("warmup@example.com")) == ACCEPTED
        written.clear()
        assert mail.send_prepared("dots@example.com", dotted) == ACCEPTED
    commands, data = written
    assert commands == (f"mail from:<{FROM_EMAIL}> size={len(dotted)}\r\nrcpt to:<dots@example.com>\r\ndata\r\n").encode()
    assert data == smtplib._quote_periods(dotted) + b".\r\n"
    assert b"\r\n..hidden\r\n...two\r\n.. is waiting." in data
