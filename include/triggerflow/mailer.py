"""Build the MIME message of one email. No network here: the SMTP session lives in the send stage.

Header values come, directly or through templates, from untrusted events and profiles. Every header
value is checked for CR, LF and NUL before it reaches the message, and addresses are checked to be
one plain ``local@domain`` each, so no data can add a header (``Bcc:``) or a recipient.

:func:`build_message` is a pure function of its arguments (only the Date defaults to now): given the
same inputs, including ``date``, it returns the same bytes, so a retried send can be rebuilt unchanged.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

__all__ = [
    "HeaderInjectionError",
    "InvalidAddressError",
    "build_message",
    "check_header_value",
    "message_id_for",
    "validate_address",
]

_HEADER_BREAKS = ("\r", "\n", "\0")
# RFC 5322 field-name: printable ASCII except ":".
_HEADER_NAME_RE = re.compile(r"[!-9;-~]+")
_MESSAGE_ID_KEY_RE = re.compile(r"[A-Za-z0-9._-]+")
_DOMAIN_RE = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_MESSAGE_ID_RE = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")
# Characters with a meaning in address headers (RFC 5322 specials). Allowing them would let a value
# such as 'a@b.com>, <c@d.com' add a recipient; plain addr-specs never need them.
_ADDRESS_SPECIALS = frozenset('<>()[]\\,;:"')
# Headers build_message sets itself; extra headers may not replace or duplicate them.
_RESERVED_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version", "content-type",
     "content-transfer-encoding"}
)
_MAX_SHOWN = 80


class HeaderInjectionError(ValueError):
    """A header name or value would break out of its header line (CR, LF or NUL)."""


class InvalidAddressError(ValueError):
    """An email address is not a single plain ``local@domain`` address."""


def _shown(value: str) -> str:
    """A value for an error message: truncated, and repr() so control characters are visible."""
    return repr(value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "...")


def check_header_value(name: str, value: str) -> str:
    """Return ``value`` unchanged, or raise HeaderInjectionError if it contains CR, LF or NUL."""
    if not isinstance(value, str):
        raise TypeError(f"header {name}: value must be a str, got {type(value).__name__}")
    if any(char in value for char in _HEADER_BREAKS):
        raise HeaderInjectionError(f"header {name}: value contains CR, LF or NUL: {_shown(value)}")
    return value


def validate_address(addr: str) -> str:
    """Return the stripped address, or raise InvalidAddressError naming it and saying why."""
    if not isinstance(addr, str):
        raise InvalidAddressError(f"email address must be a str, got {type(addr).__name__}")
    text = addr.strip()

    def bad(reason: str) -> InvalidAddressError:
        return InvalidAddressError(f"invalid email address {_shown(text)}: {reason}")

    if not text:
        raise bad("empty")
    if any(char in text for char in _HEADER_BREAKS):
        raise bad("contains CR, LF or NUL")
    if any(char.isspace() for char in text):
        raise bad("contains whitespace")
    if text.count("@") != 1:
        raise bad("must contain exactly one '@'")
    if not text.isascii():
        # A non-ASCII address needs SMTPUTF8; the email package would RFC 2047-encode it instead,
        # which is not a valid address, so refuse it rather than send to a mangled recipient.
        raise bad("contains non-ASCII characters (SMTPUTF8 addresses are not supported)")
    if any(char in _ADDRESS_SPECIALS for char in text):
        raise bad("contains a character not allowed in a plain address (one of <>()[]\\,;:\")")
    local, domain = text.split("@")
    if not local:
        raise bad("empty local part before '@'")
    if "." not in domain:
        raise bad("domain has no dot")
    if any(not label for label in domain.split(".")):
        raise bad("domain has an empty label")
    return text


def message_id_for(idempotency_key: str, domain: str = "triggerflow.local") -> str:
    """``<{key}@{domain}>``: a Message-ID derived from the send ledger's idempotency key, so a retried
    send carries the same Message-ID and receivers can recognise the duplicate."""
    if not isinstance(idempotency_key, str) or not _MESSAGE_ID_KEY_RE.fullmatch(idempotency_key):
        raise ValueError(f"idempotency key {idempotency_key!r} must match [A-Za-z0-9._-]+")
    if not isinstance(domain, str) or not _DOMAIN_RE.fullmatch(domain):
        raise ValueError(f"Message-ID domain {domain!r} is not a dotted domain name")
    return f"<{idempotency_key}@{domain}>"


def _check_extra_header(name: str, value: str) -> None:
    if not isinstance(name, str) or not _HEADER_NAME_RE.fullmatch(name):
        raise HeaderInjectionError(f"header name {name!r} is not a valid field name")
    if name.lower() in _RESERVED_HEADERS:
        raise ValueError(f"header {name} is set by build_message and cannot be given as an extra header")
    check_header_value(name, value)


def build_message(
    *,
    from_addr: str,
    from_name: str | None,
    to_addr: str,
    subject: str,
    text: str,
    html: str,
    message_id: str,
    headers: Mapping[str, str] | None = None,
    date: datetime | None = None,
) -> bytes:
    """The complete message, as bytes with CRLF line endings, ready for ``SMTP.sendmail``.

    ``multipart/alternative`` with the text/plain part first and text/html last (clients show the last
    part they support). Bodies are UTF-8, quoted-printable, so the message is 7-bit clean and never
    depends on the server's 8BITMIME support. Non-ASCII display names and subjects are RFC 2047 encoded.

    :raises HeaderInjectionError: a header name or value (addresses included) contains CR, LF or NUL.
    :raises InvalidAddressError: ``from_addr`` or ``to_addr`` is not a plain address.
    :raises ValueError: malformed ``message_id``, naive ``date``, or an extra header that would replace
        one set here.
    """
    # Header checks run on the raw values, before validate_address strips them: a CR or LF anywhere in
    # an address from a profile is an injection attempt (HeaderInjectionError), not a typo to tidy up.
    if isinstance(from_addr, str):
        check_header_value("From", from_addr)
    if isinstance(to_addr, str):
        check_header_value("To", to_addr)
    from_addr = validate_address(from_addr)
    to_addr = validate_address(to_addr)
    if from_name is not None:
        check_header_value("From", from_name)
    check_header_value("Subject", subject)
    check_header_value("Message-ID", message_id)
    if not _MESSAGE_ID_RE.fullmatch(message_id):
        raise ValueError(f"Message-ID {message_id!r} must look like <id@domain>")
    extra = dict(headers or {})
    for name, value in extra.items():
        _check_extra_header(name, value)
    if date is None:
        date = datetime.now(timezone.utc)
    elif date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("date must be timezone-aware (a naive datetime has no defined Date header)")

    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = formataddr((from_name.strip(), from_addr)) if from_name and from_name.strip() else from_addr
    msg["To"] = to_addr
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    msg["MIME-Version"] = "1.0"
    for name, value in extra.items():
        msg[name] = value
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    for part in msg.iter_parts():
        # add_alternative builds the part as an EmailMessage, which stamps its own MIME-Version.
        del part["MIME-Version"]
    # A boundary derived from the Message-ID keeps the output deterministic. It starts with "=_", which
    # quoted-printable bodies can never contain ("=" is always encoded as "=3D"), so it is always safe.
    msg.set_boundary("=_tf_" + hashlib.sha256(message_id.encode("ascii", "replace")).hexdigest()[:32])
    return msg.as_bytes(policy=policy.SMTP)
