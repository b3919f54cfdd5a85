"""SMTP sessions for the send stage, on the smtp provider's connection handling.

Connection ``smtp_triggers`` (conn_type ``smtp``, the provider's own fields and extras): host,
port, login/password, and extras ``from_email``, ``disable_ssl``, ``disable_tls``, ``timeout``.
Two extras are triggerflow's: ``from_name`` (display name) and ``message_id_domain``.

Why not ``SmtpHook.send_email_smtp``: it re-sends on any exception over the same socket
(``retry_limit``, default 5) and discards refused recipients, so it can send duplicates and
lose failures. Here every message is one SMTP transaction whose outcome the ledger records.

**Pipelining.** When the server advertises PIPELINING (RFC 2920; Postfix, Exchange and the big
relays do), ``MAIL FROM``, ``RCPT TO`` and ``DATA`` go out in one write and their three replies
are read together: two round trips per message instead of four, still one message per SMTP
transaction, still nothing accepted without the 250 to the end of DATA. The outcomes are those of
``smtplib.SMTP.sendmail`` (same exceptions, same replies); without PIPELINING ``sendmail`` is used.
"""

from __future__ import annotations

import re
import smtplib
from dataclasses import dataclass

from airflow.providers.smtp.hooks.smtp import SmtpHook

from include.triggerflow.mailer import PLAIN_ADDRESS


@dataclass(frozen=True)
class SmtpOutcome:
    accepted: bool
    code: int | None
    reply: str
    permanent: bool  # 5xx: do not retry this recipient


class TriggerMailHook(SmtpHook):
    """One SMTP session (``with TriggerMailHook() as mail:``) sending many prepared messages."""

    default_conn_name = "smtp_triggers"

    def __init__(self, smtp_conn_id: str = default_conn_name) -> None:
        super().__init__(smtp_conn_id=smtp_conn_id)

    @property
    def sender(self) -> str:
        # Read once per hook (= per SMTP session): the provider parses the connection's extra JSON
        # on every access, and send_prepared needs the envelope sender for every message.
        sender = self.__dict__.get("_tf_sender")
        if sender is None:
            sender = self.from_email
            if not sender:
                raise ValueError(f"connection {self.smtp_conn_id!r}: set extra.from_email (the From address)")
            self.__dict__["_tf_sender"] = sender
        return sender

    @property
    def from_name(self) -> str | None:
        return self.conn.extra_dejson.get("from_name")

    @property
    def message_id_domain(self) -> str:
        return str(self.conn.extra_dejson.get("message_id_domain") or "triggerflow.local")

    def send_prepared(self, recipient: str, message: bytes) -> SmtpOutcome:
        """Send one message; recipient-level refusals are returned, session failures raised.

        A session failure (disconnect, timeout) propagates: the server did not answer 250 to the
        end of DATA, so the message was not accepted and stays retryable.
        """
        client = self._smtp_client
        if client is None:
            raise RuntimeError("TriggerMailHook must be used as a context manager (with ... as mail)")
        sender = self.sender
        try:
            # The first message of a session goes through sendmail, which says EHLO; from then on
            # the server's extensions are known.
            if getattr(client, "does_esmtp", False) and client.has_extn("pipelining"):
                refused = _sendmail_pipelined(client, sender, recipient, message)
            else:
                refused = client.sendmail(sender, [recipient], message)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = exc.recipients.get(recipient, (None, b"recipient refused"))
            return _refused(code, reply)
        except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as exc:
            # The server answered; a 4xx/5xx here concerns this message only.
            code = exc.smtp_code
            if code >= 400:
                return _refused(code, exc.smtp_error)
            raise
        if refused:
            code, reply = refused.get(recipient, (None, b"recipient refused"))
            return _refused(code, reply)
        return SmtpOutcome(accepted=True, code=250, reply="accepted", permanent=False)


_LEADING_DOT = re.compile(rb"(?m)^\.")


def _quoteaddr(address: str) -> str:
    """``smtplib.quoteaddr``, without its RFC 822 parser for plain addresses (a dot-atom addr-spec,
    for which it gives ``<addr>``)."""
    return f"<{address}>" if PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


def _end_refused(client: smtplib.SMTP, code: int) -> None:
    """After a refusal: a 421 closes the session (the server is going away), anything else resets
    the transaction so the session can carry the next message."""
    if code == 421:
        client.close()
    else:
        client._rset()


def _sendmail_pipelined(client: smtplib.SMTP, sender: str, recipient: str, message: bytes) -> dict:
    """``client.sendmail(sender, [recipient], message)`` with MAIL, RCPT and DATA pipelined.

    Raises what ``sendmail`` raises (SMTPSenderRefused, SMTPRecipientsRefused, SMTPDataError,
    SMTPServerDisconnected), closes the connection on a 421 and resets the transaction after any
    other refusal, so the session stays usable for the next message. Returns ``{}`` (accepted)."""
    options = f" size={len(message)}" if client.has_extn("size") else ""
    # the command lines smtplib's mail(), rcpt() and data() write
    client.send(f"mail from:{_quoteaddr(sender)}{options}\r\nrcpt to:{_quoteaddr(recipient)}\r\ndata\r\n")
    mail_code, mail_reply = client.getreply()
    if mail_code == 421:
        client.close()
        raise smtplib.SMTPSenderRefused(mail_code, mail_reply, sender)
    rcpt_code, rcpt_reply = client.getreply()
    if rcpt_code == 421:
        client.close()
        raise smtplib.SMTPRecipientsRefused({recipient: (rcpt_code, rcpt_reply)})
    data_code, data_reply = client.getreply()
    if data_code == 354 and (mail_code != 250 or rcpt_code not in (250, 251)):
        # A server that opened DATA without a valid transaction: end it empty, never send the message.
        client.send(b".\r\n")
        client.getreply()
    if mail_code != 250:
        client._rset()
        raise smtplib.SMTPSenderRefused(mail_code, mail_reply, sender)
    if rcpt_code not in (250, 251):
        client._rset()
        raise smtplib.SMTPRecipientsRefused({recipient: (rcpt_code, rcpt_reply)})
    if data_code != 354:
        _end_refused(client, data_code)
        raise smtplib.SMTPDataError(data_code, data_reply)
    # smtplib's dot-stuffing; the scan is skipped for the usual message that has no line starting
    # with "." (quoted-printable bodies rarely do)
    quoted = _LEADING_DOT.sub(b"..", message) if message[:1] == b"." or b"\n." in message else message
    if quoted[-2:] != b"\r\n":
        quoted += b"\r\n"
    client.send(quoted + b".\r\n")
    code, reply = client.getreply()
    if code != 250:
        _end_refused(client, code)
        raise smtplib.SMTPDataError(code, reply)
    return {}


def _refused(code: int | None, reply: bytes | str) -> SmtpOutcome:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return SmtpOutcome(accepted=False, code=code, reply=text, permanent=bool(code and code >= 500))
