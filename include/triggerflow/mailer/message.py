"""The checks every header value and address goes through, and the reference :func:`build_message`.

Header values come from untrusted events and profiles, directly or through templates: each is
checked for CR, LF, NUL and the other line breaks before it reaches the message, and addresses must
be one plain ``local@domain`` each, so no data can add a header (``Bcc:``) or a recipient. The
package docstring (``mailer/__init__.py``) says how this module, ``unsubscribe`` and ``fast`` fit.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

from include.triggerflow.addresses import shown as _shown
from include.triggerflow.addresses import validate_address
from include.triggerflow.headers import INJECTION_RE, OTHER_LINE_BREAKS_RE
from include.triggerflow.timeutil import utcnow

# Character classes as regular expressions: one C-level scan each, for the send stage's hot loop.
# The other line breaks (VT, FF, NEL, U+2028...): the email package refuses them in some headers
# with a bare ValueError and would encode them into others, so they are refused here, as injection.
_HEADER_BREAKS_RE = INJECTION_RE
_OTHER_LINE_BREAKS_RE = OTHER_LINE_BREAKS_RE
# exactly what str.isspace() matches (both use Py_UNICODE_ISSPACE)
_WHITESPACE_RE = re.compile(r"\s")
# RFC 5322 field-name: printable ASCII except ":".
_HEADER_NAME_RE = re.compile(r"[!-9;-~]+")
_MESSAGE_ID_KEY_RE = re.compile(r"[A-Za-z0-9._-]+")
_DOMAIN_RE = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_MESSAGE_ID_RE = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")
# Headers build_message sets itself; extra headers may not replace or duplicate them.
_RESERVED_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version", "content-type",
     "content-transfer-encoding"}
)
# RFC 5322 §2.1.1: lines SHOULD be at most 78 characters and MUST be at most 998 (excluding CRLF).
_FOLD_AT = 78
_MAX_LINE = 998
# Header objects fold themselves as usual; refold_source="none" only concerns values set with
# set_raw (the verbatim extra headers), which are written exactly as _fold_verbatim left them.
_SERIALIZE = policy.SMTP.clone(refold_source="none")


class HeaderInjectionError(ValueError):
    """A header name or value would break out of its header line (CR, LF or NUL)."""


#: default cap on a rendered email's size in bytes, headers included (Pipeline's own limit on a
#: trigger is 1 MB; an email larger than this came from data nobody meant to send)
MAX_EMAIL_BYTES = 1_000_000


class EmailTooLargeError(ValueError):
    """A rendered email over the size cap."""


def check_email_size(message: bytes, limit: int = MAX_EMAIL_BYTES) -> bytes:
    """Return ``message``, or raise EmailTooLargeError when it is larger than ``limit`` bytes."""
    if len(message) > limit:
        raise EmailTooLargeError(f"email larger than {limit} bytes ({len(message)} bytes)")
    return message


def check_header_value(name: str, value: str) -> str:
    """Return ``value`` unchanged, or raise HeaderInjectionError if it contains CR, LF or NUL, or any
    other character Python treats as a line boundary (VT, FF, FS, GS, RS, NEL, U+2028, U+2029)."""
    if not isinstance(value, str):
        raise TypeError(f"header {name}: value must be a str, got {type(value).__name__}")
    if _HEADER_BREAKS_RE.search(value) is not None:
        raise HeaderInjectionError(f"header {name}: value contains CR, LF or NUL: {_shown(value)}")
    if _OTHER_LINE_BREAKS_RE.search(value) is not None:
        raise HeaderInjectionError(f"header {name}: value contains a line separator character: {_shown(value)}")
    return value


def message_id_for(idempotency_key: str, domain: str = "triggerflow.local") -> str:
    """``<{key}@{domain}>``: a Message-ID derived from the send ledger's idempotency key, so a retried
    send carries the same Message-ID and receivers can recognise the duplicate."""
    if not isinstance(idempotency_key, str) or not _MESSAGE_ID_KEY_RE.fullmatch(idempotency_key):
        raise ValueError(f"idempotency key {idempotency_key!r} must match [A-Za-z0-9._-]+")
    if not isinstance(domain, str) or not _DOMAIN_RE.fullmatch(domain):
        raise ValueError(f"Message-ID domain {domain!r} is not a dotted domain name")
    return f"<{idempotency_key}@{domain}>"


def _fold_verbatim(name: str, value: str) -> str:
    """``value`` folded (LF + space, before an existing space) so lines stay within 78 characters
    where its own spaces allow; it is otherwise written as is. ValueError when a line would still
    exceed RFC 5322's hard limit of 998 characters (no server has to accept it)."""
    words = value.split(" ")
    lines = [f"{name}: {words[0]}"]
    for word in words[1:]:
        # never fold before an empty word (double or trailing space): a continuation line must
        # carry more than whitespace
        if word and len(lines[-1]) + 1 + len(word) > _FOLD_AT:
            lines.append(f" {word}")
        else:
            lines[-1] += f" {word}"
    if max(len(line) for line in lines) > _MAX_LINE:
        raise ValueError(f"header {name}: a line would exceed {_MAX_LINE} characters; shorten the value")
    return "\n".join(lines)[len(name) + 2:]


def _check_extra_header(name: str, value: str) -> None:
    if not isinstance(name, str) or not _HEADER_NAME_RE.fullmatch(name):
        raise HeaderInjectionError(f"header name {name!r} is not a valid field name")
    if name.lower() in _RESERVED_HEADERS:
        raise ValueError(f"header {name} is set by build_message and cannot be given as an extra header")
    check_header_value(name, value)


def _checked_inputs(
    *,
    from_addr: str,
    from_name: str | None,
    to_addr: str,
    subject: str,
    message_id: str,
    headers: Mapping[str, str] | None,
    date: datetime | None,
) -> tuple[str, str, dict[str, str], datetime]:
    """Every check both builders make, in the same order: (from_addr, to_addr, extra, date)."""
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
    seen: set[str] = set()
    for name, value in extra.items():
        _check_extra_header(name, value)
        if name.lower() in seen:
            raise ValueError(f"header {name} is given twice (header names are case-insensitive)")
        seen.add(name.lower())
    if date is None:
        date = utcnow()
    elif date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("date must be timezone-aware (a naive datetime has no defined Date header)")
    return from_addr, to_addr, extra, date


def _from_value(from_name: str | None, from_addr: str) -> str:
    return formataddr((from_name.strip(), from_addr)) if from_name and from_name.strip() else from_addr


def _boundary(message_id: str) -> str:
    # A boundary derived from the Message-ID keeps the output deterministic. It starts with "=_", which
    # quoted-printable bodies can never contain ("=" is always encoded as "=3D"), so it is always safe.
    return "=_tf_" + hashlib.sha256(message_id.encode("ascii", "replace")).hexdigest()[:32]


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

    This is the reference, built with the email package; the send stage uses
    :func:`build_message_fast`, which writes the same message without it.

    :raises HeaderInjectionError: a header name or value (addresses included) contains CR, LF or NUL.
    :raises InvalidAddressError: ``from_addr`` or ``to_addr`` is not a plain address.
    :raises ValueError: malformed ``message_id``, naive ``date``, or an extra header that would replace
        one set here.
    """
    from_addr, to_addr, extra, date = _checked_inputs(
        from_addr=from_addr, from_name=from_name, to_addr=to_addr, subject=subject, message_id=message_id,
        headers=headers, date=date,
    )
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = _from_value(from_name, from_addr)
    msg["To"] = to_addr
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    msg["MIME-Version"] = "1.0"
    for name, value in extra.items():
        if value.isascii() and value.isprintable():
            # Verbatim: the serialising policy below keeps raw values as they are (refold_source
            # "none"), so a long URL is not turned into RFC 2047 encoded-words.
            msg.set_raw(name, _fold_verbatim(name, value))
        else:
            msg[name] = value
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    for part in msg.iter_parts():
        # add_alternative builds the part as an EmailMessage, which stamps its own MIME-Version.
        del part["MIME-Version"]
    msg.set_boundary(_boundary(message_id))
    return msg.as_bytes(policy=_SERIALIZE)
