"""Build the MIME message of one email. No network here: the SMTP session lives in the send stage.

Header values come, directly or through templates, from untrusted events and profiles. Every header
value is checked for CR, LF and NUL before it reaches the message, and addresses are checked to be
one plain ``local@domain`` each, so no data can add a header (``Bcc:``) or a recipient.

:func:`build_message` is a pure function of its arguments (only the Date defaults to now): given the
same inputs, including ``date``, it returns the same bytes, so a retried send can be rebuilt unchanged.

:func:`list_unsubscribe_headers` builds the RFC 2369 ``List-Unsubscribe`` and RFC 8058
``List-Unsubscribe-Post`` headers. Machine-read extra headers such as these are written verbatim
(folded only at their own spaces), never RFC 2047-encoded: the email package would otherwise turn a
long URL into ``=?utf-8?q?...?=`` words, which mailbox providers do not decode in that header.

Modules: ``message`` (the checks and the reference :func:`build_message`), ``unsubscribe``
(:func:`list_unsubscribe_headers`), ``fast`` (:func:`build_message_fast`, the send stage's).
"""

from __future__ import annotations

from include.triggerflow.addresses import InvalidAddressError, validate_address
from include.triggerflow.mailer.fast import PLAIN_ADDRESS, build_message_fast
from include.triggerflow.mailer.message import (
    MAX_EMAIL_BYTES,
    EmailTooLargeError,
    HeaderInjectionError,
    build_message,
    check_email_size,
    check_header_value,
    message_id_for,
)
from include.triggerflow.mailer.unsubscribe import LIST_UNSUBSCRIBE_POST, list_unsubscribe_headers

__all__ = [
    "LIST_UNSUBSCRIBE_POST",
    "MAX_EMAIL_BYTES",
    "PLAIN_ADDRESS",
    "EmailTooLargeError",
    "HeaderInjectionError",
    "InvalidAddressError",
    "build_message",
    "build_message_fast",
    "check_email_size",
    "check_header_value",
    "list_unsubscribe_headers",
    "message_id_for",
    "validate_address",
]
