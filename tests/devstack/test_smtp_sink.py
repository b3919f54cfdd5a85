"""Tests of the SMTP sink, run as a real subprocess and spoken to over SMTP."""

from __future__ import annotations

import re
import smtplib
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from devstack.processes import RunningSmtpSink, start_smtp_sink

NAME_RE = re.compile(r"^\d{8}T\d{6}\.\d{6}-(\d{6})\.eml$")


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[RunningSmtpSink]:
    # A nested, not yet existing directory: the sink must create it.
    with start_smtp_sink(tmp_path / "mail" / "outbox", log_path=tmp_path / "sink.log") as running:
        yield running


def make_message(subject: str, to: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Shop <noreply@shop.example.com>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message


def read_eml(path: Path) -> tuple[list[bytes], bytes]:
    data = path.read_bytes()
    first, second, rest = data.split(b"\r\n", 2)
    return [first, second], rest


def test_three_messages_one_session_two_recipients(sink: RunningSmtpSink) -> None:
    alice, bob = "alice@example.org", "bob@example.org"
    # (To header, envelope recipients, Subject, body)
    sent = [
        (alice, [alice], "Your cart misses you", "Hi Alice,\nyour trail shoes are waiting.\n"),
        (bob, [bob], "Still thinking about it?", "Hi Bob,\nthe jacket is still in stock.\n"),
        (f"{alice}, {bob}", [alice, bob], "Für euch beide", "Grüße\n"),
    ]
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        for to_header, rcpts, subject, body in sent:
            message = make_message(subject, to_header, body)
            refused = smtp.send_message(message, from_addr="bounce@shop.example.com", to_addrs=rcpts)
            assert refused == {}
        # all three went over this one connection: the sink must still be talking to us
        assert smtp.noop()[0] == 250

    paths = sink.eml_paths()
    assert len(paths) == 3
    assert [int(NAME_RE.match(p.name).group(1)) for p in paths] == [1, 2, 3]
    assert not list(sink.out_dir.glob("*.tmp")) and not list(sink.out_dir.glob(".*"))

    for path, (_, rcpts, _, _) in zip(paths, sent):
        headers, _ = read_eml(path)
        expected_to = b"X-Envelope-To: " + ", ".join(rcpts).encode()
        assert headers == [b"X-Envelope-From: bounce@shop.example.com", expected_to]

    parsed = sink.messages()
    assert [m["X-Envelope-To"] for m in parsed] == [alice, bob, f"{alice}, {bob}"]
    assert [m["Subject"] for m in parsed] == [s[2] for s in sent]
    assert [m.get_content() for m in parsed] == [s[3] for s in sent]
    assert all(m["From"] == "Shop <noreply@shop.example.com>" for m in parsed)


def test_message_bytes_are_stored_as_received(sink: RunningSmtpSink) -> None:
    # A line starting with "." is dot-stuffed on the wire; the sink must store it un-stuffed.
    raw = (
        b"From: a@shop.example.com\r\nTo: c@example.org\r\nSubject: raw\r\nX-Trace: 42\r\n\r\n"
        b"first line\r\n.leading dot\r\n..two dots\r\nlast\r\n"
    )
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        smtp.sendmail("a@shop.example.com", ["c@example.org"], raw)
    [path] = sink.eml_paths()
    headers, content = read_eml(path)
    assert headers == [b"X-Envelope-From: a@shop.example.com", b"X-Envelope-To: c@example.org"]
    assert content == raw


def test_sink_survives_a_client_that_disconnects_mid_session(sink: RunningSmtpSink) -> None:
    with socket.create_connection((sink.host, sink.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        for command, code in ((b"EHLO broken.example\r\n", b"250 "), (b"MAIL FROM:<x@example.org>\r\n", b"250"),
                              (b"RCPT TO:<y@example.org>\r\n", b"250"), (b"DATA\r\n", b"354")):
            sock.sendall(command)
            line = reader.readline()
            while line.startswith(b"250-"):  # multi-line EHLO reply
                line = reader.readline()
            assert line.startswith(code), (command, line)
        sock.sendall(b"Subject: half\r\n\r\nthis message never ends")
        reader.close()
    # abrupt close above; the half message must not be stored and the server must keep serving
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        smtp.send_message(make_message("after the crash", "z@example.org", "still here\n"))
    assert sink.process.poll() is None
    messages = sink.messages()
    assert [m["Subject"] for m in messages] == ["after the crash"]
    assert messages[0]["X-Envelope-To"] == "z@example.org"
    assert not [p for p in sink.out_dir.iterdir() if not p.name.endswith(".eml")]


def test_ready_line_and_clean_shutdown(tmp_path: Path) -> None:
    out = tmp_path / "created" / "here"
    log = tmp_path / "sink.log"
    with start_smtp_sink(out, log_path=log) as running:
        assert out.is_dir()
        with smtplib.SMTP(running.host, running.port, timeout=10) as smtp:
            assert smtp.ehlo()[0] == 250
        process = running.process
        port = running.port
    assert process.returncode == 0
    lines = log.read_text().splitlines()
    assert lines[0] == f"smtp-sink listening on 127.0.0.1:{port}, writing to {out.resolve()}"
    assert lines[-1] == "smtp-sink stopped"
