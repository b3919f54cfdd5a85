"""SMTP sessions for the send stage, on the smtp provider's connection handling.

Connection ``smtp_triggers`` (conn_type ``smtp``, the provider's own fields and extras): host,
port, login/password, and extras ``from_email``, ``disable_ssl``, ``disable_tls``, ``timeout``.
Two extras are triggerflow's: ``from_name`` (display name) and ``message_id_domain``.

Why not ``SmtpHook.send_email_smtp``: it re-sends on any exception over the same socket
(``retry_limit``, default 5) and discards refused recipients, so it can send duplicates and
lose failures. Here every message is one ``sendmail`` whose outcome the ledger records.
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass

from airflow.providers.smtp.hooks.smtp import SmtpHook


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
        sender = self.from_email
        if not sender:
            raise ValueError(f"connection {self.smtp_conn_id!r}: set extra.from_email (the From address)")
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
        try:
            refused = client.sendmail(self.sender, [recipient], message)
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


def _refused(code: int | None, reply: bytes | str) -> SmtpOutcome:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return SmtpOutcome(accepted=False, code=code, reply=text, permanent=bool(code and code >= 500))
