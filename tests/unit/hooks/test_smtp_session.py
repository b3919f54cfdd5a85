"""TriggerMailHook in process: its settings (connection, keyword overrides, the errors naming what
is missing), how it opens a session (SSL, STARTTLS, login: the provider's rules) and its SMTP
transaction over a scripted socket (refusals per stage, RSET, 421, PIPELINING). The same against
the real SMTP sink: tests/integration/hooks/."""

from __future__ import annotations

import io
import json
import smtplib
from typing import Any, ClassVar

import pytest

from include.triggerflow.hooks import smtp as smtp_module
from include.triggerflow.hooks.smtp import TriggerMailHook
from include.triggerflow.smtp_replies import ReplyClass, SmtpStage, accepted

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"
SENDER = "shop@triggerflow.test"


def conn_json(**extra: Any) -> str:
    fields = {k: extra.pop(k) for k in ("host", "port", "login", "password") if k in extra}
    return json.dumps({"conn_type": "smtp", "host": "relay.test", "port": 2525, **fields,
                       "extra": {"from_email": SENDER, "disable_ssl": True, "disable_tls": True, "retry_limit": 0, **extra}})


# -- settings ------------------------------------------------------------------------------------------
def test_connection_settings_and_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", conn_json(from_name="Shop", message_id_domain="mail.shop.test"))
    mail = TriggerMailHook()
    assert (mail.host, mail.port, mail.sender, mail.from_name, mail.message_id_domain) == (
        "relay.test", 2525, SENDER, "Shop", "mail.shop.test")
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", conn_json())
    assert (TriggerMailHook().from_name, TriggerMailHook().message_id_domain) == (None, "triggerflow.local")


def test_keyword_overrides_win_over_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", conn_json())
    mail = TriggerMailHook(host="other.test", port=587, from_email="qa@shop.test")
    assert (mail.host, mail.port, mail.sender) == ("other.test", 587, "qa@shop.test")


def test_without_a_connection_the_overrides_make_a_plain_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_CONN", raising=False)
    mail = TriggerMailHook("no_such_conn", host="127.0.0.1", port=2525, from_email="qa@shop.test")
    assert (mail.host, mail.port, mail.sender, mail.use_ssl, mail.smtp_starttls, mail.smtp_user, mail.smtp_retry_limit) == (
        "127.0.0.1", 2525, "qa@shop.test", False, False, "", 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "no SMTP --smtp-host and --from: connection 'no_such_conn' is not defined; pass --smtp-host, --from"),
        ({"from_email": "qa@shop.test"}, "no SMTP --smtp-host: connection 'no_such_conn' is not defined; pass --smtp-host"),
        ({"host": "127.0.0.1"}, "no SMTP --from: connection 'no_such_conn' is not defined; pass --from"),
    ],
)
def test_missing_host_or_sender_names_the_connection_and_the_flag(monkeypatch, kwargs, message) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_CONN", raising=False)
    with pytest.raises(ValueError) as info:
        _ = TriggerMailHook("no_such_conn", **kwargs).sender
    assert str(info.value) == message


def test_a_connection_without_host_or_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", conn_json(host="", from_email=None))
    with pytest.raises(ValueError, match=r"^no SMTP --smtp-host and --from: connection 'smtp_triggers' lacks them; pass --smtp-host, --from$"):
        _ = TriggerMailHook().sender
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", conn_json(from_email=None))
    with pytest.raises(ValueError, match=r"^connection 'smtp_triggers': set extra.from_email \(the From address\)$"):
        _ = TriggerMailHook().sender


# -- opening the session ---------------------------------------------------------------------------------
class FakeClient:
    """Stands in for smtplib.SMTP / SMTP_SSL: records what the hook asks of it."""

    opened: ClassVar[list[FakeClient]] = []

    def __init__(self, host: str, port: int, *, timeout: float, context: Any = None) -> None:
        self.args = (host, port, timeout)
        self.calls: list[str] = []
        self.ssl = context is not None
        FakeClient.opened.append(self)

    def starttls(self, context: Any = None) -> None:
        self.calls.append("starttls")

    def ehlo(self) -> None:
        self.calls.append("ehlo")

    def login(self, user: str, password: str) -> None:
        self.calls.append(f"login {user}")

    def noop(self) -> tuple[int, bytes]:
        return 250, b"ok"

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture
def fake_smtplib(monkeypatch: pytest.MonkeyPatch) -> list[FakeClient]:
    FakeClient.opened = []
    monkeypatch.setattr(smtp_module.smtplib, "SMTP", FakeClient)
    monkeypatch.setattr(smtp_module.smtplib, "SMTP_SSL", FakeClient)
    return FakeClient.opened


@pytest.mark.parametrize(
    ("extra", "ssl", "calls"),
    [
        ({"disable_ssl": True, "disable_tls": True}, False, ["login ada", "close"]),
        ({"disable_ssl": True}, False, ["starttls", "ehlo", "login ada", "close"]),
        ({"disable_tls": True}, True, ["login ada", "close"]),
    ],
    ids=["plain", "starttls", "ssl"],
)
def test_the_session_follows_the_providers_ssl_starttls_and_login_rules(monkeypatch, fake_smtplib, extra, ssl, calls) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", json.dumps({
        "conn_type": "smtp", "host": "relay.test", "port": 2525, "login": "ada", "password": "pw",
        "extra": {"from_email": SENDER, "timeout": 7, **extra},
    }))
    with TriggerMailHook() as mail:
        assert mail.client is fake_smtplib[0]
    (client,) = fake_smtplib
    assert (client.args, client.ssl, client.calls) == (("relay.test", 2525, 7), ssl, calls)
    with pytest.raises(RuntimeError, match="must be used as a context manager"):
        _ = mail.client


def test_connection_test_button(monkeypatch, fake_smtplib) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", conn_json())
    assert TriggerMailHook().test_connection() == (True, "Connection successfully tested")


def test_send_outside_the_context_manager_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", conn_json())
    with pytest.raises(RuntimeError, match="must be used as a context manager"):
        TriggerMailHook().send_prepared("ada@example.com", MESSAGE)


# -- the transaction over a scripted socket ----------------------------------------------------------------
class ScriptedSocket:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        pass


def scripted(replies: bytes, *, pipelining: bool = False) -> tuple[smtplib.SMTP, ScriptedSocket]:
    client = smtplib.SMTP()  # not connected: the socket and its reply stream are scripted
    sock = ScriptedSocket()
    client.sock = sock  # type: ignore[assignment]
    client.file = io.BytesIO(replies)  # type: ignore[assignment]
    client.ehlo_resp = b"scripted"
    client.does_esmtp = True
    client.esmtp_features = {"pipelining": ""} if pipelining else {}
    return client, sock


def sent(sock: ScriptedSocket) -> bytes:
    return b"".join(sock.writes)


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
def test_an_accepted_message(pipelining: bool) -> None:
    client, sock = scripted(b"250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n", pipelining=pipelining)
    assert smtp_module._transaction(client, SENDER, "ada@example.com", MESSAGE) == accepted()
    assert sent(sock) == (
        b"mail from:<shop@triggerflow.test>\r\nrcpt to:<ada@example.com>\r\ndata\r\n" + MESSAGE + b".\r\n"
    )
    # pipelined: MAIL, RCPT and DATA in one write
    assert (sock.writes[0].count(b"\r\n") == 3) is pipelining


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
@pytest.mark.parametrize(
    ("replies", "stage", "code", "reply_class"),
    [
        (b"250 ok\r\n550 5.1.1 unknown user\r\n", SmtpStage.RCPT, 550, ReplyClass.MAILBOX_PERMANENT),
        (b"250 ok\r\n452 4.2.2 mailbox full\r\n", SmtpStage.RCPT, 452, ReplyClass.MAILBOX_TRANSIENT),
        (b"553 5.7.1 sender refused\r\n", SmtpStage.MAIL, 553, ReplyClass.MESSAGE_REFUSED),
        (b"250 ok\r\n250 ok\r\n554 5.7.1 no\r\n", SmtpStage.DATA, 554, ReplyClass.MESSAGE_REFUSED),
    ],
    ids=["rcpt-550", "rcpt-452", "mail-553", "data-554"],
)
def test_a_refusal_is_returned_with_its_stage_and_the_transaction_is_reset(pipelining, replies, stage, code, reply_class) -> None:
    # a pipelining server answers all three commands; the replies after the refusal are its own refusals
    tail = {SmtpStage.MAIL: b"503 no\r\n503 no\r\n", SmtpStage.RCPT: b"503 no\r\n", SmtpStage.DATA: b""}[stage]
    client, sock = scripted(replies + (tail if pipelining else b"") + b"250 reset\r\n", pipelining=pipelining)
    outcome = smtp_module._transaction(client, SENDER, "ada@example.com", MESSAGE)
    assert (outcome.stage, outcome.code, outcome.reply_class) == (stage, code, reply_class)
    assert sock.writes[-1] == b"rset\r\n"
    assert client.sock is not None  # the session goes on


def test_a_refusal_at_end_of_data_is_reset() -> None:
    client, sock = scripted(b"250 ok\r\n250 ok\r\n354 go\r\n451 4.3.0 try later\r\n250 reset\r\n")
    outcome = smtp_module._transaction(client, SENDER, "ada@example.com", MESSAGE)
    assert (outcome.stage, outcome.code, outcome.reply_class) == (SmtpStage.END_OF_DATA, 451, ReplyClass.TRANSIENT)
    assert sock.writes[-1] == b"rset\r\n"


def test_a_421_closes_the_session_without_reset() -> None:
    client, sock = scripted(b"421 4.3.2 shutting down\r\n")
    outcome = smtp_module._transaction(client, SENDER, "ada@example.com", MESSAGE)
    assert (outcome.stage, outcome.code) == (SmtpStage.MAIL, 421)
    assert client.sock is None
    assert b"rset" not in sent(sock)


def test_a_reset_the_server_does_not_accept_closes_the_session() -> None:
    client, _ = scripted(b"250 ok\r\n550 5.1.1 unknown\r\n500 what\r\n")
    outcome = smtp_module._transaction(client, SENDER, "ada@example.com", MESSAGE)
    assert outcome.reply_class is ReplyClass.MAILBOX_PERMANENT
    assert client.sock is None  # the next message fails as a broken session, before anything is written
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp_module._transaction(client, SENDER, "ada@example.com", MESSAGE)


def test_a_server_gone_at_reset_leaves_the_outcome() -> None:
    client, _ = scripted(b"250 ok\r\n550 5.1.1 unknown\r\n")  # then EOF
    assert smtp_module._transaction(client, SENDER, "ada@example.com", MESSAGE).code == 550
