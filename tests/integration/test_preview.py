"""Test sends delivered to a real SMTP sink process (devstack.smtp_sink), through TriggerMailHook:
with a hook (the contract ``cli test-send`` uses) and with the old keyword arguments. In-process
versions with a fake session: tests/unit/test_preview.py."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from devstack.processes import RunningSmtpSink
from include.triggerflow.hooks.smtp import TriggerMailHook
from include.triggerflow.preview import (
    DEFAULT_UNSUBSCRIBE_URL,
    PreviewError,
    TestSendResult,
    send_test,
)
from tests.preview_support import FRENCH, PROFILE, SENDER, body, cart_event


# -- test send (real SMTP sink) ----------------------------------------------------------------------
@pytest.fixture
def sink(smtp_sink_process: RunningSmtpSink) -> RunningSmtpSink:
    for path in smtp_sink_process.out_dir.glob("*.eml"):
        path.unlink()
    smtp_sink_process.clear_faults()
    return smtp_sink_process


@pytest.fixture
def mail_to(monkeypatch: pytest.MonkeyPatch):
    """A TriggerMailHook on connection ``test_send``: plain SMTP to ``host:port``, no retries."""

    def make(host: str, port: int, *, sender: str = SENDER, from_name: str | None = None, timeout: float = 10) -> TriggerMailHook:
        extra: dict[str, Any] = {
            "from_email": sender, "disable_ssl": True, "disable_tls": True, "retry_limit": 0, "timeout": timeout,
        }
        if from_name is not None:
            extra["from_name"] = from_name
        conn = {"conn_type": "smtp", "host": host, "port": port, "extra": extra}
        monkeypatch.setenv("AIRFLOW_CONN_TEST_SEND", json.dumps(conn))
        return TriggerMailHook("test_send")

    return make


@pytest.fixture
def send(sink: RunningSmtpSink, mail_to):
    def send(seeds: list[str], profile: dict[str, Any] = PROFILE, *, from_name: str | None = None, **kwargs: Any) -> list[TestSendResult]:
        mail = mail_to(sink.host, sink.port, from_name=from_name)
        return send_test("cart_abandonment", cart_event(), profile, seeds, mail=mail, **kwargs)

    return send


def test_send_test_delivers_to_every_seed(sink: RunningSmtpSink, send) -> None:
    results = send(["qa1@example.com", "qa2@example.org"], from_name="triggerflow shop")

    assert [(r.recipient, r.accepted, r.code) for r in results] == [("qa1@example.com", True, 250), ("qa2@example.org", True, 250)]
    messages = sink.wait_for(2)
    assert len(messages) == 2
    by_to = {str(m["To"]): m for m in messages}
    assert set(by_to) == {"qa1@example.com", "qa2@example.org"}
    for seed, msg in by_to.items():
        assert msg["X-Envelope-To"] == seed
        assert msg["X-Envelope-From"] == SENDER
        assert msg["From"] == f"triggerflow shop <{SENDER}>"
        assert msg["Subject"] == "[TEST] Grace, you left something in your cart"
        assert msg["X-Triggerflow-Test"] == "true"
        assert msg["List-Unsubscribe"] == f"<{DEFAULT_UNSUBSCRIBE_URL}>"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "Hi Grace, your cart is waiting" in body(msg, "plain")
    assert {r.message_id for r in results} == {str(m["Message-ID"]) for m in messages}
    assert len({r.message_id for r in results}) == 2


def test_send_test_french_profile_and_custom_prefix(sink: RunningSmtpSink, send) -> None:
    send(["qa@example.com"], profile=FRENCH, subject_prefix="[QA fr] ")
    (msg,) = sink.wait_for(1)
    assert msg["Subject"] == "[QA fr] Marie, you left something in your cart"
    assert "Bonjour Marie, votre panier vous attend" in body(msg, "plain")


@pytest.mark.parametrize(
    "bad",
    ["not-an-address", "qa@example.com\r\nBcc: victim@example.com", "qa@example.com, victim@example.com", ""],
)
def test_one_bad_seed_refuses_them_all(sink: RunningSmtpSink, send, bad: str) -> None:
    with pytest.raises(PreviewError, match=r"^refusing to send to any seed: "):
        send(["qa1@example.com", bad, "qa2@example.com"])
    with pytest.raises(PreviewError, match="at least one seed"):
        send([])
    # nothing reached the server
    assert sink.eml_paths() == []


def test_a_seed_refused_by_the_server_is_reported(sink: RunningSmtpSink, send) -> None:
    sink.set_faults([{"rcpt": "full@example.com", "code": 552, "message": "5.2.2 mailbox full"}])
    results = send(["full@example.com", "qa@example.com", "QA@example.com"])  # the duplicate is dropped
    assert [(r.recipient, r.accepted, r.code) for r in results] == [("full@example.com", False, 552), ("qa@example.com", True, 250)]
    assert "mailbox full" in results[0].reply
    assert [str(m["To"]) for m in sink.wait_for(1)] == ["qa@example.com"]


def test_bad_sender_and_unreachable_server(sink: RunningSmtpSink, mail_to) -> None:
    with pytest.raises(PreviewError, match="bad sender"):
        send_test("cart_abandonment", cart_event(), PROFILE, ["qa@example.com"], mail=mail_to(sink.host, sink.port, sender="shop@localhost"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # bound, never listening: connection refused
        with pytest.raises(PreviewError, match=rf"^SMTP session with 127.0.0.1:{closed_port} failed: ConnectionRefusedError"):
            send_test("cart_abandonment", cart_event(), PROFILE, ["qa@example.com"], mail=mail_to("127.0.0.1", closed_port, timeout=5))
    assert sink.eml_paths() == []


def test_send_test_through_a_hook_made_of_the_command_line_flags(sink: RunningSmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_CONN", raising=False)
    mail = TriggerMailHook("no_such_conn", host=sink.host, port=sink.port, from_email=SENDER)
    results = send_test("cart_abandonment", cart_event(), PROFILE, ["qa@example.com"], mail=mail)
    assert [(r.recipient, r.accepted, r.code, r.reply) for r in results] == [("qa@example.com", True, 250, "accepted")]
    (msg,) = sink.wait_for(1)
    assert (msg["X-Envelope-From"], msg["From"], msg["Subject"]) == (SENDER, SENDER, "[TEST] Grace, you left something in your cart")
    assert str(msg["Message-ID"]).endswith("@triggerflow.local>") and results[0].message_id == str(msg["Message-ID"])
