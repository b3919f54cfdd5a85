"""The hook's SMTP transaction against any bytes a server may answer (in process: smtplib's own
reply parsing over a scripted socket). Whatever arrives, the transaction returns a classified
outcome or raises a session error, never anything else; nothing counts as accepted without a
2xx to the end of DATA after the whole message was written."""

from __future__ import annotations

import io
import smtplib

from hypothesis import given, settings
from hypothesis import strategies as st

from include.triggerflow.hooks.smtp import _transaction
from include.triggerflow.smtp_replies import REPLY_TEXT_LIMIT, DeliveryUncertain, ReplyClass, SmtpOutcome

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"


class ScriptedSocket:
    def __init__(self) -> None:
        self.sent = bytearray()

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        pass


def client(replies: bytes, *, pipelining: bool) -> tuple[smtplib.SMTP, ScriptedSocket]:
    smtp = smtplib.SMTP()  # not connected: the socket and its reply stream are scripted
    sock = ScriptedSocket()
    smtp.sock = sock  # type: ignore[assignment]
    smtp.file = io.BytesIO(replies)  # type: ignore[assignment]
    smtp.ehlo_resp = b"scripted"
    smtp.does_esmtp = True
    smtp.esmtp_features = {"pipelining": ""} if pipelining else {}
    return smtp, sock


reply_line = st.one_of(
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"") + b"\r\n"),
    st.builds(lambda code, sep, text: f"{code}{sep}".encode() + text.replace(b"\n", b"") + b"\r\n",
              st.integers(min_value=100, max_value=699), st.sampled_from([" ", "-"]), st.binary(max_size=120)),
    st.just(b"250 2.0.0 ok\r\n"),
    st.just(b"354 go ahead\r\n"),
)


@settings(max_examples=400, deadline=None)
@given(replies=st.lists(reply_line, max_size=8).map(b"".join), pipelining=st.booleans())
def test_any_server_replies_give_an_outcome_or_a_session_error(replies: bytes, pipelining: bool) -> None:
    smtp, sock = client(replies, pipelining=pipelining)
    try:
        outcome = _transaction(smtp, "shop@example.com", "ada@example.com", MESSAGE)
    except DeliveryUncertain:
        assert bytes(sock.sent).endswith(MESSAGE + b".\r\n")  # only once the final "." was written
        return
    except smtplib.SMTPServerDisconnected:
        return
    except smtplib.SMTPResponseException as exc:  # smtplib's "line too long"
        assert exc.smtp_code == 500
        return
    assert isinstance(outcome, SmtpOutcome) and isinstance(outcome.reply_class, ReplyClass)
    assert len(outcome.reply) <= REPLY_TEXT_LIMIT and "\x00" not in outcome.reply
    if outcome.accepted:
        assert bytes(sock.sent).endswith(MESSAGE + b".\r\n")
        assert 200 <= (outcome.code or 0) < 300
