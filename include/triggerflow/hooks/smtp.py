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

**The client.** The provider (3.2) keeps its smtplib client private (``get_conn()`` returns the hook,
and its own ``test_connection`` reads ``_smtp_client``), so the session opens its own client from the
provider's *public* connection properties (``host``, ``port``, ``use_ssl``, ``smtp_starttls``,
``timeout``, ``smtp_user``/``smtp_password``, ``ssl_context``, ``auth_type``/``access_token``,
``smtp_retry_limit``): SSL unless ``disable_ssl``, STARTTLS on a plain connection unless
``disable_tls``, login when both login and password are set. ``cli test-send`` uses the same hook,
with its ``--smtp-host/--smtp-port/--from`` flags as keyword overrides.
"""

from __future__ import annotations

import json
import re
import smtplib
import ssl
from dataclasses import replace
from functools import cached_property
from typing import TYPE_CHECKING

from airflow.providers.common.compat.sdk import AirflowNotFoundException
from airflow.providers.smtp.hooks.smtp import SmtpHook, build_xoauth2_string

from include.triggerflow.ledger import MAX_GROUP_SIZE
from include.triggerflow.mailer import PLAIN_ADDRESS
from include.triggerflow.smtp_replies import DeliveryUncertain, ReplyClass, SmtpOutcome, SmtpStage, accepted, read_reply

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Connection

__all__ = ["DeliveryUncertain", "SmtpOutcome", "TriggerMailHook"]

#: What a message id gets when the connection names no domain (extra ``message_id_domain``).
DEFAULT_MESSAGE_ID_DOMAIN = "triggerflow.local"


def _missing_settings(conn_id: str, *, defined: bool, host: bool, sender: bool) -> ValueError:
    """The error for a session that lacks its host (and maybe its sender): names the connection and
    the command-line flags that supply them (``cli test-send``)."""
    missing = [flag for flag, absent in (("--smtp-host", not host), ("--from", not sender)) if absent]
    where = f"connection {conn_id!r}" + (" lacks them" if defined else " is not defined")
    return ValueError(f"no SMTP {' and '.join(missing)}: {where}; pass {', '.join(missing)}")


class TriggerMailHook(SmtpHook):
    """One SMTP session (``with TriggerMailHook() as mail:``) sending many prepared messages.

    ``host``, ``port`` and ``from_email`` override the connection's (``cli test-send``'s
    ``--smtp-host/--smtp-port/--from``). When the connection does not exist and ``host`` is given,
    the session is a plain one to host:port (no TLS, no login); without a host it is a ValueError.
    """

    default_conn_name = "smtp_triggers"

    def __init__(
        self,
        smtp_conn_id: str = default_conn_name,
        *,
        host: str | None = None,
        port: int | None = None,
        from_email: str | None = None,
    ) -> None:
        super().__init__(smtp_conn_id=smtp_conn_id)
        self._host_override = host or None
        self._port_override = port or None
        self._from_override = from_email or None
        self._client: smtplib.SMTP | None = None
        #: False when the session is made of the keyword overrides alone (no such connection)
        self._conn_defined = True

    # -- the connection ---------------------------------------------------------------------------
    @cached_property
    def conn(self) -> Connection:
        """The connection, loaded on first use (reading the sender needs no SMTP session)."""
        if self.smtp_connection is None:
            self.smtp_connection = self._load_connection()
        return self.smtp_connection

    def _load_connection(self) -> Connection:
        try:
            conn = self.get_connection(self.smtp_conn_id)
        except AirflowNotFoundException:
            if self._host_override is None:
                raise _missing_settings(
                    self.smtp_conn_id, defined=False, host=False, sender=self._from_override is not None
                ) from None
            from airflow.providers.common.compat.sdk import Connection

            self._conn_defined = False
            # given on the command line only: a plain session, as to a local relay or a sink
            return Connection(
                conn_id=self.smtp_conn_id, conn_type="smtp", host=self._host_override, port=self._port_override,
                extra=json.dumps({"disable_ssl": True, "disable_tls": True, "retry_limit": 0}),
            )
        if not (self._host_override or conn.host):
            sender = self._from_override or conn.extra_dejson.get("from_email")
            raise _missing_settings(self.smtp_conn_id, defined=True, host=False, sender=bool(sender))
        return conn

    @property
    def host(self) -> str:
        return self._host_override or super().host

    @property
    def port(self) -> int:
        return self._port_override or super().port

    @property
    def from_email(self) -> str | None:
        return self._from_override or super().from_email

    @property
    def sender(self) -> str:
        # Read once per hook (= per SMTP session): the provider parses the connection's extra JSON
        # on every access, and send_prepared needs the envelope sender for every message.
        sender = self.__dict__.get("_tf_sender")
        if sender is None:
            _ = self.conn  # a session without its host fails here, naming what to set
            sender = self.from_email
            if not sender and not self._conn_defined:
                raise _missing_settings(self.smtp_conn_id, defined=False, host=True, sender=False)
            if not sender:
                raise ValueError(f"connection {self.smtp_conn_id!r}: set extra.from_email (the From address)")
            self.__dict__["_tf_sender"] = sender
        return str(sender)

    @property
    def from_name(self) -> str | None:
        name = self.conn.extra_dejson.get("from_name")
        return None if name is None else str(name)

    @property
    def message_id_domain(self) -> str:
        return str(self.conn.extra_dejson.get("message_id_domain") or DEFAULT_MESSAGE_ID_DOMAIN)

    @property
    def send_group_size(self) -> int | None:
        """Extra ``send_group_size``: this deployment's G, the emails committed ``sending`` in one
        transaction (README "Exactly once"); None when the connection does not set it."""
        try:
            extra = self.conn.extra_dejson
        except ValueError:
            return None  # no usable connection: opening the session says what is missing
        value = extra.get("send_group_size")
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit() \
                or not 1 <= int(value) <= MAX_GROUP_SIZE:
            raise ValueError(
                f"connection {self.smtp_conn_id!r}: extra.send_group_size must be a whole number from 1 to "
                f"{MAX_GROUP_SIZE}, not {value!r}"
            )
        return int(value)

    # -- the session ------------------------------------------------------------------------------
    def get_conn(self) -> TriggerMailHook:
        """Open the SMTP session (connect, STARTTLS, login) unless it is open; returns the hook."""
        if self._client is None:
            self._client = self._open_client()
        return self

    def __enter__(self) -> TriggerMailHook:
        return self.get_conn()

    def __exit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    @property
    def client(self) -> smtplib.SMTP:
        """The open session's smtplib client."""
        if self._client is None:
            raise RuntimeError("TriggerMailHook must be used as a context manager (with ... as mail)")
        return self._client

    def _ssl_context(self) -> ssl.SSLContext | None:
        # the provider's extra: "default" (or unset) verifies the server, "none" does not
        if self.ssl_context not in (None, "default", "none"):
            raise ValueError(f"connection {self.smtp_conn_id!r}: extra.ssl_context must be 'default' or 'none', not {self.ssl_context!r}")
        return None if self.ssl_context == "none" else ssl.create_default_context()

    def _open_client(self) -> smtplib.SMTP:
        host, port, timeout = self.host, self.port or 0, self.timeout
        use_ssl = self.use_ssl
        client: smtplib.SMTP
        for attempt in range(self.smtp_retry_limit + 1):
            try:
                if use_ssl:
                    client = smtplib.SMTP_SSL(host, port, timeout=timeout, context=self._ssl_context())
                else:
                    client = smtplib.SMTP(host, port, timeout=timeout)
                break
            except smtplib.SMTPServerDisconnected:
                # the provider's connect retries (extra retry_limit); nothing was sent yet
                if attempt >= self.smtp_retry_limit:
                    raise
        try:
            if self.smtp_starttls and not use_ssl:
                client.starttls(context=self._ssl_context())
                client.ehlo()
            if self.auth_type == "oauth2":
                token, user = self.access_token, self.smtp_user or self.from_email
                if not token or not user:
                    raise ValueError(f"connection {self.smtp_conn_id!r}: OAuth2 needs extra.access_token and a login or from_email")
                client.auth("XOAUTH2", lambda _=None: build_xoauth2_string(user, token))
            elif self.smtp_user and self.smtp_password:
                client.login(self.smtp_user, self.smtp_password)
        except BaseException:
            client.close()
            raise
        return client

    def test_connection(self) -> tuple[bool, str]:
        """The connection form's test button: open a session and NOOP."""
        try:
            with self as mail:
                code, _ = mail.client.noop()
        except Exception as exc:
            return False, str(exc)
        return (True, "Connection successfully tested") if code == 250 else (False, f"NOOP answered {code}")

    def send_prepared(self, recipient: str, message: bytes) -> SmtpOutcome:
        """Send one message as one SMTP transaction; every server reply is returned, classified
        (``smtp_replies``) with the stage it answered.

        A session failure raises. Before the end of DATA (the final "." not fully written) it is
        ``smtplib.SMTPServerDisconnected`` (or another ``OSError``): the server cannot have the
        message, sending it again is safe. After the final "." was written and before the reply
        it is :class:`DeliveryUncertain`: the server may have queued the message (RFC 1047).
        """
        return _transaction(self.client, self.sender, recipient, message)


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
        _reset(client)
        return outcome
    client.close()
    if 400 <= code <= 599:
        return outcome
    return replace(outcome, reply_class=ReplyClass.TRANSIENT)


def _reset(client: smtplib.SMTP) -> None:
    """RSET after a refusal, so the session can carry the next message. A server already gone is
    left for the next transaction to find (it raises there, before anything is written); a reply
    other than 250 means the server does not agree the transaction is over: the session is closed,
    and the next message fails as a broken session (its row goes back to pending)."""
    try:
        code, _ = client.rset()
    except smtplib.SMTPServerDisconnected:
        return
    if code != 250:
        client.close()


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
