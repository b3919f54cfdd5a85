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
transaction, still nothing accepted without the 250 to the end of DATA. Without PIPELINING the
same commands go one by one.

**Outcomes.** Every reply is returned as an :class:`SmtpOutcome` carrying the stage it answered
(MAIL, RCPT, DATA, end-of-DATA) and its class (``smtp_replies``); the send stage decides from the
class. A broken connection raises, and *where* it broke matters (RFC 1047): before the final "."
was written the message cannot have arrived (``SMTPServerDisconnected``, a safe resend); after it
and before the reply the server may have queued it (:class:`DeliveryUncertain`).
"""

from __future__ import annotations

import re
import smtplib
from dataclasses import replace

from airflow.providers.smtp.hooks.smtp import SmtpHook

from include.triggerflow.mailer import PLAIN_ADDRESS
from include.triggerflow.smtp_replies import DeliveryUncertain, ReplyClass, SmtpOutcome, SmtpStage, accepted, read_reply

__all__ = ["DeliveryUncertain", "SmtpOutcome", "TriggerMailHook"]


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
        """Send one message as one SMTP transaction; every server reply is returned, classified
        (``smtp_replies``) with the stage it answered.

        A session failure raises. Before the end of DATA (the final "." not fully written) it is
        ``smtplib.SMTPServerDisconnected`` (or another ``OSError``): the server cannot have the
        message, sending it again is safe. After the final "." was written and before the reply
        it is :class:`DeliveryUncertain`: the server may have queued the message (RFC 1047).
        """
        client = self._smtp_client
        if client is None:
            raise RuntimeError("TriggerMailHook must be used as a context manager (with ... as mail)")
        return _transaction(client, self.sender, recipient, message)


_LEADING_DOT = re.compile(rb"(?m)^\.")


def _quoteaddr(address: str) -> str:
    """``smtplib.quoteaddr``, without its RFC 822 parser for plain addresses (a dot-atom addr-spec,
    for which it gives ``<addr>``)."""
    return f"<{address}>" if PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


def _refused(client: smtplib.SMTP, stage: SmtpStage, code: int, reply: bytes) -> SmtpOutcome:
    """The outcome of a transaction the server did not let through ``stage``. After a 421 the
    session is closed (the server is going away); after any other 4xx/5xx the transaction is reset
    so the session can carry the next message. Any other reply (250 to DATA, garbage) means the
    server and this client disagree on where the transaction is: the session is closed and the
    email deferred (its message was not sent)."""
    outcome = read_reply(stage, code, reply)
    if 400 <= code <= 599 and code != 421:
        client._rset()
        return outcome
    client.close()
    if 400 <= code <= 599:
        return outcome
    return replace(outcome, reply_class=ReplyClass.TRANSIENT)


def _transaction(client: smtplib.SMTP, sender: str, recipient: str, message: bytes) -> SmtpOutcome:
    """One transaction: MAIL, RCPT and DATA (pipelined when the server offers PIPELINING, one by
    one otherwise), then the message. Refusals come back as outcomes; after a 421 the connection
    is closed, after any other refusal the transaction is reset so the session can carry the next
    message. The command lines and dot-stuffing are smtplib's."""
    client.ehlo_or_helo_if_needed()
    esmtp = bool(getattr(client, "does_esmtp", False))
    options = f" size={len(message)}" if esmtp and client.has_extn("size") else ""
    mail_cmd = f"mail from:{_quoteaddr(sender)}{options}\r\n"
    rcpt_cmd = f"rcpt to:{_quoteaddr(recipient)}\r\n"
    # 0: not asked (the transaction stopped at an earlier refusal)
    rcpt_code, rcpt_reply, data_code, data_reply = 0, b"", 0, b""
    if esmtp and client.has_extn("pipelining"):
        client.send(mail_cmd + rcpt_cmd + "data\r\n")
        mail_code, mail_reply = client.getreply()
        if mail_code == 421:
            return _refused(client, SmtpStage.MAIL, mail_code, mail_reply)
        rcpt_code, rcpt_reply = client.getreply()
        if rcpt_code == 421:
            return _refused(client, SmtpStage.RCPT, rcpt_code, rcpt_reply)
        data_code, data_reply = client.getreply()
        if data_code == 354 and (mail_code != 250 or rcpt_code not in (250, 251)):
            # A server that opened DATA without a valid transaction: end it empty, never send the message.
            client.send(b".\r\n")
            client.getreply()
    else:
        client.send(mail_cmd)
        mail_code, mail_reply = client.getreply()
        if mail_code == 250:
            client.send(rcpt_cmd)
            rcpt_code, rcpt_reply = client.getreply()
            if rcpt_code in (250, 251):
                client.send("data\r\n")
                data_code, data_reply = client.getreply()
    if mail_code != 250:
        return _refused(client, SmtpStage.MAIL, mail_code, mail_reply)
    if rcpt_code not in (250, 251):
        return _refused(client, SmtpStage.RCPT, rcpt_code, rcpt_reply)
    if data_code != 354:
        return _refused(client, SmtpStage.DATA, data_code, data_reply)
    # smtplib's dot-stuffing; the scan is skipped for the usual message that has no line starting
    # with "." (quoted-printable bodies rarely do)
    quoted = _LEADING_DOT.sub(b"..", message) if message[:1] == b"." or b"\n." in message else message
    if quoted[-2:] != b"\r\n":
        quoted += b"\r\n"
    # A failure while writing raises here: the final "." did not (all) leave, a resend is safe.
    client.send(quoted + b".\r\n")
    try:
        code, reply = client.getreply()
    except smtplib.SMTPServerDisconnected as exc:
        raise DeliveryUncertain(
            f"connection lost after the end of DATA, before the server's reply ({exc}): the message may have been queued"
        ) from exc
    except smtplib.SMTPResponseException as exc:  # a reply line longer than smtplib reads
        client.close()
        raise DeliveryUncertain(f"unreadable reply to the end of DATA ({exc.smtp_code}): the message may have been queued") from exc
    if 200 <= code < 300:
        return accepted(code)
    if not 400 <= code <= 599:
        client.close()
        raise DeliveryUncertain(f"unreadable reply to the end of DATA (code {code}): the message may have been queued")
    return _refused(client, SmtpStage.END_OF_DATA, code, reply)
