"""Tests of the SMTP sink, run as a real subprocess and spoken to over SMTP."""

from __future__ import annotations

import re
import smtplib
import socket
import time
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


# -- fault injection (--faults-file) ------------------------------------------------------------


def _send(smtp: smtplib.SMTP, to: str, subject: str = "hello") -> dict:
    return smtp.send_message(make_message(subject, to, "body\n"), from_addr="bounce@shop.example.com", to_addrs=[to])


def test_rcpt_rule_answers_the_code_then_is_spent(sink: RunningSmtpSink) -> None:
    sink.set_faults([{"rcpt": "Later@Example.org", "code": 451, "message": "4.2.1 try later", "times": 1}])
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            _send(smtp, "later@example.org", "first try")
        assert refused.value.recipients == {"later@example.org": (451, b"4.2.1 try later")}
        _send(smtp, "other@example.org", "not concerned")
        # times: 1 -> spent: the same address is accepted now, in the same session
        assert _send(smtp, "later@example.org", "second try") == {}
    assert [m["Subject"] for m in sink.messages()] == ["not concerned", "second try"]
    assert [f["rcpt_to"] for f in sink.fired_faults()] == ["later@example.org"]


def test_rcpt_domain_rule_without_times_fires_every_time(sink: RunningSmtpSink) -> None:
    sink.set_faults([{"rcpt_domain": "bounce.test", "code": 550, "message": "5.1.1 user unknown"}])
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        for address in ("a@bounce.test", "b@BOUNCE.test", "a@bounce.test"):
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                _send(smtp, address)
            assert refused.value.recipients[address] == (550, b"5.1.1 user unknown")
        _send(smtp, "a@notbounce.test")
        _send(smtp, "a@sub.bounce.test")  # exact domain only
    assert [m["X-Envelope-To"] for m in sink.messages()] == ["a@notbounce.test", "a@sub.bounce.test"]
    assert len(sink.fired_faults()) == 3


def test_drop_after_messages_closes_at_the_next_mail_from(sink: RunningSmtpSink) -> None:
    sink.set_faults([{"drop_after_messages": 2, "times": 1}])
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        _send(smtp, "one@example.org", "one")
        _send(smtp, "two@example.org", "two")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            _send(smtp, "three@example.org", "three")
    # the third message was never accepted and never written
    assert [m["Subject"] for m in sink.messages()] == ["one", "two"]
    [fired] = sink.fired_faults()
    assert fired["accepted_in_session"] == 2
    # spent: a new session can send any number of messages
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        for n in range(3):
            _send(smtp, "three@example.org", f"again {n}")
    assert len(sink.eml_paths()) == 5
    assert sink.process.poll() is None


def test_drop_counts_per_session(sink: RunningSmtpSink) -> None:
    sink.set_faults([{"drop_after_messages": 1}])  # no times: every session, after one message
    for session in range(2):
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
            _send(smtp, "x@example.org", f"session {session}")
            with pytest.raises(smtplib.SMTPServerDisconnected):
                _send(smtp, "x@example.org", "dropped")
    assert [m["Subject"] for m in sink.messages()] == ["session 0", "session 1"]


def test_data_delay_writes_the_file_before_the_delayed_250(sink: RunningSmtpSink) -> None:
    import threading
    import time

    sink.set_faults([{"data_delay_ms": 3000}])
    seen_before_reply: list[int] = []
    replied = threading.Event()

    def probe() -> None:
        # Poll the outbox while the client is still waiting for the reply to end-of-data: the
        # file must appear before the delayed 250 does.
        while not replied.is_set():
            if sink.eml_paths():
                seen_before_reply.append(len(sink.eml_paths()))
                return
            time.sleep(0.02)

    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        watcher = threading.Thread(target=probe)
        watcher.start()
        assert _send(smtp, "slow@example.org") == {}
        replied.set()
        watcher.join()
    assert seen_before_reply == [1]


def test_data_code_refuses_without_writing(sink: RunningSmtpSink) -> None:
    sink.set_faults([{"data_code": 452, "message": "4.3.1 out of space", "times": 1}])
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            _send(smtp, "full@example.org", "refused")
        assert (refused.value.smtp_code, refused.value.smtp_error) == (452, b"4.3.1 out of space")
        _send(smtp, "full@example.org", "accepted")
    assert [m["Subject"] for m in sink.messages()] == ["accepted"]
    assert not [p for p in sink.out_dir.iterdir() if not p.name.endswith(".eml")]


def test_rules_change_while_the_server_runs(sink: RunningSmtpSink) -> None:
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        _send(smtp, "a@example.org", "before")
        sink.set_faults([{"rcpt": "a@example.org", "code": 550, "message": "5.7.1 blocked"}])
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            _send(smtp, "a@example.org", "during")
        sink.clear_faults()
        _send(smtp, "a@example.org", "after")
    assert [m["Subject"] for m in sink.messages()] == ["before", "after"]


def test_faults_file_given_at_start(tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text('[{"rcpt_domain": "x.test", "code": 421, "message": "4.7.0 slow down"}]')
    with start_smtp_sink(tmp_path / "out", faults_file=faults) as running:
        with smtplib.SMTP(running.host, running.port, timeout=10) as smtp, pytest.raises(smtplib.SMTPRecipientsRefused):
            _send(smtp, "y@x.test")
        assert running.faults_file == faults.resolve()


def test_bad_rules_are_refused_by_set_faults_and_ignored_by_the_sink(sink: RunningSmtpSink) -> None:
    from devstack.smtp_sink import FaultRuleError

    for bad in ({"rcpt": "a@b"}, {"rcpt": "a@b", "code": 250}, {"data_code": 452, "typo": 1},
                {"drop_after_messages": -1}, {"nothing": True}, {"rcpt": "a@b", "rcpt_domain": "b", "code": 550}):
        with pytest.raises(FaultRuleError):
            sink.set_faults([bad])
    # A broken file written behind the helper's back: the sink logs it and accepts mail.
    sink.faults_file.write_text("[{not json")
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        assert _send(smtp, "a@example.org") == {}
    assert "ignoring faults file" in sink.log_path.read_text()


# -- fast mode (--store none): accept and count, write nothing ---------------------------------------
def keyed_message(n: int, *, key: bool = True) -> EmailMessage:
    message = make_message(f"Message {n}", f"c{n:07d}@example.test", f"Hello {n}\n.a line starting with a dot\n")
    message["Message-ID"] = f"<msg-{n}@triggerflow.local>"
    if key:
        message["X-Triggerflow-Key"] = f"{n:064x}"
    return message


class RawSession:
    """A hand-driven SMTP conversation: bytes in, reply lines out."""

    def __init__(self, sink: RunningSmtpSink) -> None:
        self.sock = socket.create_connection((sink.host, sink.port), timeout=10)
        self.fh = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One complete reply (all its continuation lines)."""
        lines = []
        while True:
            line = self.fh.readline().decode().rstrip("\r\n")
            assert line, "connection closed"
            lines.append(line)
            if line[3:4] != "-":
                return "\n".join(lines)

    def close(self) -> None:
        self.fh.close()
        self.sock.close()


@pytest.fixture
def fast_sink(tmp_path: Path) -> Iterator[RunningSmtpSink]:
    with start_smtp_sink(
        tmp_path / "outbox", store="none", accept_log=tmp_path / "accepted.log", stats_interval=0.05,
        log_path=tmp_path / "sink.log",
    ) as running:
        yield running


def test_fast_mode_counts_and_logs_without_writing_files(fast_sink: RunningSmtpSink) -> None:
    started = time.time()
    with smtplib.SMTP(fast_sink.host, fast_sink.port, timeout=10) as one, smtplib.SMTP(
        fast_sink.host, fast_sink.port, timeout=10
    ) as two:
        for n in range(30):
            session = one if n % 2 else two
            refused = session.send_message(keyed_message(n, key=n != 7), from_addr="bounce@shop.example.com")
            assert refused == {}
    assert fast_sink.wait_accepted(30, timeout=5) == 30
    stats = fast_sink.stats()
    assert (stats["accepted"], stats["refused"], stats["sessions"], stats["store"]) == (30, 0, 2, "none")
    assert stats["bytes"] > 30 * 300
    assert not fast_sink.out_dir.exists() and fast_sink.eml_paths() == []
    fast_sink.process.terminate()  # the sink flushes the accept log and the stats at exit
    fast_sink.process.wait(timeout=10)
    lines = fast_sink.accept_log_lines()
    assert sorted(key for _, key in lines) == sorted(
        ["<msg-7@triggerflow.local>"] + [f"{n:064x}" for n in range(30) if n != 7]
    )
    assert all(started <= stamp <= time.time() for stamp, _ in lines)
    assert "smtp-sink stored" not in fast_sink.log_path.read_text()


def test_fast_mode_speaks_smtp(fast_sink: RunningSmtpSink) -> None:
    conversation = RawSession(fast_sink)
    try:
        assert conversation.reply().startswith("220 ")
        conversation.send(b"MAIL FROM:<a@shop.example.com>\r\n")
        assert conversation.reply().startswith("503 ")  # no HELO/EHLO yet
        conversation.send(b"EHLO client.example\r\n")
        ehlo = conversation.reply()
        assert ehlo.startswith("250-") and "PIPELINING" in ehlo and ehlo.splitlines()[-1].startswith("250 ")
        conversation.send(b"RCPT TO:<x@example.org>\r\n")
        assert conversation.reply().startswith("503 ")  # no MAIL yet
        conversation.send(b"MAIL FROM:<a@shop.example.com>\r\nDATA\r\n")
        assert conversation.reply().startswith("250 ")
        assert conversation.reply().startswith("503 ")  # no RCPT yet
        # pipelined envelope, then a dot-stuffed body trickling in one byte at a time
        conversation.send(b"RCPT TO:<x@example.org>\r\nRCPT TO:<y@example.org>\r\nDATA\r\n")
        assert [conversation.reply()[:3] for _ in range(3)] == ["250", "250", "354"]
        body = b"X-Triggerflow-Key: k-1\r\nSubject: hi\r\n\r\n..dot line\r\nlast\r\n.\r\n"
        for byte in body:
            conversation.send(bytes([byte]))
        assert conversation.reply().startswith("250 2.0.0 OK")
        # an empty message, and another one right behind it in the same write
        conversation.send(
            b"MAIL FROM:<a@shop.example.com>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n.\r\n"
            b"MAIL FROM:<a@shop.example.com>\r\nRCPT TO:<x@example.org>\r\nDATA\r\nMessage-ID: <m-3@x>\r\n\r\nbody\r\n.\r\n"
        )
        assert [conversation.reply()[:3] for _ in range(8)] == ["250", "250", "354", "250", "250", "250", "354", "250"]
        for command, code in ((b"RSET", "250"), (b"NOOP", "250"), (b"VRFY x", "252"), (b"BOGUS", "500"), (b"QUIT", "221")):
            conversation.send(command + b"\r\n")
            assert conversation.reply()[:3] == code, command
    finally:
        conversation.close()
    stats_bytes = len(b"X-Triggerflow-Key: k-1\r\nSubject: hi\r\n\r\n.dot line\r\nlast\r\n") + len(b"Message-ID: <m-3@x>\r\n\r\nbody\r\n")
    assert fast_sink.wait_accepted(3, timeout=5) == 3
    assert fast_sink.stats()["bytes"] == stats_bytes  # dot-unstuffed, terminator excluded
    fast_sink.process.terminate()
    fast_sink.process.wait(timeout=10)
    assert [key for _, key in fast_sink.accept_log_lines()] == ["k-1", "-", "<m-3@x>"]


def test_fast_mode_applies_fault_rules(fast_sink: RunningSmtpSink) -> None:
    fast_sink.set_faults([
        {"rcpt_domain": "bounce.test", "code": 550, "message": "5.1.1 user unknown"},
        {"data_code": 452, "message": "4.3.1 out of space", "times": 1},
    ])
    with smtplib.SMTP(fast_sink.host, fast_sink.port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail("a@shop.example.com", ["x@bounce.test"], b"Subject: a\r\n\r\nA\r\n")
        assert refused.value.recipients["x@bounce.test"][0] == 550
        with pytest.raises(smtplib.SMTPDataError) as data_error:
            smtp.sendmail("a@shop.example.com", ["x@example.org"], b"Subject: b\r\n\r\nB\r\n")
        assert data_error.value.smtp_code == 452
        smtp.sendmail("a@shop.example.com", ["x@example.org"], b"Subject: c\r\n\r\nC\r\n")
    fast_sink.set_faults({"drop_after_messages": 1})
    with smtplib.SMTP(fast_sink.host, fast_sink.port, timeout=10) as smtp:
        smtp.sendmail("a@shop.example.com", ["x@example.org"], b"Subject: d\r\n\r\nD\r\n")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.sendmail("a@shop.example.com", ["x@example.org"], b"Subject: e\r\n\r\nE\r\n")
    assert fast_sink.wait_accepted(2, timeout=5) == 2
    assert fast_sink.stats()["refused"] == 1
    assert [f.get("code") or f.get("data_code") or f.get("drop_after_messages") for f in fast_sink.fired_faults()] == [550, 452, 1]


def test_fast_mode_with_aiosmtpd_and_eml_mode_count_too(tmp_path: Path) -> None:
    with start_smtp_sink(None, store="none", engine="aiosmtpd", stats_interval=0.05) as slow:
        with smtplib.SMTP(slow.host, slow.port, timeout=10) as smtp:
            for n in range(3):
                smtp.send_message(keyed_message(n))
        assert slow.wait_accepted(3, timeout=5) == 3
        assert "aiosmtpd engine" in slow.log_path.read_text()
    with start_smtp_sink(tmp_path / "outbox", stats_interval=0.05) as eml:
        with smtplib.SMTP(eml.host, eml.port, timeout=10) as smtp:
            for n in range(4):
                smtp.send_message(keyed_message(n))
        assert eml.wait_accepted(4, timeout=5) == 4 == len(eml.eml_paths())
        assert eml.stats()["store"] == "eml"


def test_store_modes_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="out_dir"), start_smtp_sink(None):
        pass
    with pytest.raises(RuntimeError, match="lean"), start_smtp_sink(tmp_path / "o", engine="lean"):
        pass


def test_smtp_ceiling_bench_measures_and_checks_the_count() -> None:
    from bench.smtp_ceiling import build_message, measure_ceiling, message_bytes

    message = message_bytes(build_message(6000), 42)
    assert 6000 <= len(message) < 7000 and b"multipart/alternative" in message
    assert f"X-Triggerflow-Key: {42:064x}".encode() in message
    result = measure_ceiling(300, (1, 3), smtp_source=False)
    assert [run["sessions"] for run in result["runs"]] == [1, 3]
    for run in result["runs"]:
        assert run["sink_accepted"] == run["messages"] == 300
        assert run["msgs_per_s"] > 0 and len(run["per_session_msgs_per_s"]) == run["sessions"]
    assert result["message_bytes"] == len(message)


# -- reply classes at each stage, and drops on both sides of the end of DATA ------------------------
@pytest.fixture(params=["aiosmtpd", "lean"])
def any_engine_sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningSmtpSink]:
    """The eml sink (aiosmtpd) and the lean counting sink: every fault works on both."""
    if request.param == "aiosmtpd":
        with start_smtp_sink(tmp_path / "outbox", log_path=tmp_path / "sink.log", stats_interval=0.05) as running:
            yield running
    else:
        with start_smtp_sink(None, store="none", log_path=tmp_path / "sink.log", stats_interval=0.05) as running:
            yield running


RAW = b"Subject: s\r\n\r\nline one\r\nline two\r\n"


def test_mail_code_refuses_the_sender_and_the_session_goes_on(any_engine_sink: RunningSmtpSink) -> None:
    any_engine_sink.set_faults([{"mail_code": 530, "message": "5.7.0 Authentication required", "times": 1}])
    with smtplib.SMTP(any_engine_sink.host, any_engine_sink.port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            smtp.sendmail("a@shop.example.com", ["x@example.org"], RAW)
        assert (refused.value.smtp_code, refused.value.smtp_error) == (530, b"5.7.0 Authentication required")
        assert smtp.sendmail("a@shop.example.com", ["x@example.org"], RAW) == {}
    assert any_engine_sink.wait_accepted(1, timeout=5) == 1
    assert [f["mail_code"] for f in any_engine_sink.fired_faults()] == [530]


@pytest.mark.parametrize("message", ["5.7.1 Message rejected as spam", "Message rejected"], ids=["enhanced", "bare"])
def test_data_command_code_answers_data_before_354(any_engine_sink: RunningSmtpSink, message: str) -> None:
    any_engine_sink.set_faults([{"data_command_code": 554, "message": message, "rcpt": "x@example.org"}])
    with smtplib.SMTP(any_engine_sink.host, any_engine_sink.port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.mail("a@shop.example.com")[0] == 250
        assert smtp.rcpt("x@example.org")[0] == 250
        assert smtp.docmd("DATA") == (554, message.encode())
        smtp.rset()
        assert smtp.sendmail("a@shop.example.com", ["y@example.org"], RAW) == {}  # another recipient
    assert any_engine_sink.wait_accepted(1, timeout=5) == 1
    assert any_engine_sink.stats()["refused"] == 1


def test_drop_at_data_command_closes_before_354(any_engine_sink: RunningSmtpSink) -> None:
    any_engine_sink.set_faults([{"drop_at": "data_command", "times": 1}])
    with smtplib.SMTP(any_engine_sink.host, any_engine_sink.port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("a@shop.example.com")
        smtp.rcpt("x@example.org")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.docmd("DATA")
    assert [f["drop_at"] for f in any_engine_sink.fired_faults()] == ["data_command"]
    time.sleep(0.2)
    assert any_engine_sink.stats()["accepted"] == 0


def test_drop_mid_data_resets_after_the_first_line_and_stores_nothing(any_engine_sink: RunningSmtpSink) -> None:
    any_engine_sink.set_faults([{"drop_at": "mid_data", "times": 1}])
    with smtplib.SMTP(any_engine_sink.host, any_engine_sink.port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("a@shop.example.com")
        smtp.rcpt("x@example.org")
        assert smtp.docmd("DATA")[0] == 354
        smtp.send(b"Subject: s\r\n")  # the first line only: the sink resets the connection on it
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.getreply()
    assert [f["drop_at"] for f in any_engine_sink.fired_faults()] == ["mid_data"]
    time.sleep(0.2)
    assert any_engine_sink.stats()["accepted"] == 0
    if any_engine_sink.store == "eml":
        assert any_engine_sink.eml_paths() == []


def test_drop_at_end_of_data_keeps_the_message_but_never_answers(any_engine_sink: RunningSmtpSink) -> None:
    any_engine_sink.set_faults([{"drop_at": "end_of_data", "rcpt_domain": "example.org", "times": 1}])
    with (
        smtplib.SMTP(any_engine_sink.host, any_engine_sink.port, timeout=10) as smtp,
        pytest.raises(smtplib.SMTPServerDisconnected),
    ):
        smtp.sendmail("a@shop.example.com", ["x@example.org"], RAW)
    # RFC 1047's window: the server has the message, the client never heard so
    assert any_engine_sink.wait_accepted(1, timeout=5) == 1
    if any_engine_sink.store == "eml":
        [stored] = any_engine_sink.messages()
        assert stored["X-Envelope-To"] == "x@example.org"
    assert [f["drop_at"] for f in any_engine_sink.fired_faults()] == ["end_of_data"]


def test_new_rules_are_checked(sink: RunningSmtpSink) -> None:
    from devstack.smtp_sink import FaultRuleError

    for bad in ({"drop_at": "later"}, {"mail_code": 250}, {"mail_code": 530, "rcpt": "a@b"}, {"data_command_code": 600}):
        with pytest.raises(FaultRuleError):
            sink.set_faults([bad])
