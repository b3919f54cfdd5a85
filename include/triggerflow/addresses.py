"""Email addresses: the one syntax check, used by the profile loader, reconcile and the mailer.

One rule everywhere, so an address the CSV loader accepts is never one the mailer later refuses:
a single plain ``local@domain`` (ASCII, no whitespace, no RFC 5322 specials, a dotted domain
without empty labels). Display names and SMTPUTF8 addresses are out of scope.
"""

from __future__ import annotations

import re

from include.triggerflow.headers import INJECTION_RE

# exactly what str.isspace() matches (both use Py_UNICODE_ISSPACE)
_WHITESPACE_RE = re.compile(r"\s")
# Characters with a meaning in address headers (RFC 5322 specials). Allowing them would let a value
# such as 'a@b.com>, <c@d.com' add a recipient; plain addr-specs never need them.
_ADDRESS_SPECIALS_RE = re.compile("[" + re.escape('"(),:;<>[\\]') + "]")
_MAX_SHOWN = 80


class InvalidAddressError(ValueError):
    """An email address is not a single plain ``local@domain`` address."""


def shown(value: str) -> str:
    """A value for an error message: truncated, and repr() so control characters are visible."""
    return repr(value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "...")


def address_problem(text: str) -> str | None:
    """Why the (already stripped) ``text`` is not a plain address, or None when it is one."""
    if not text:
        return "empty"
    if INJECTION_RE.search(text) is not None:
        return "contains CR, LF or NUL"
    if _WHITESPACE_RE.search(text) is not None:
        return "contains whitespace"
    if text.count("@") != 1:
        return "must contain exactly one '@'"
    if not text.isascii():
        # A non-ASCII address needs SMTPUTF8; the email package would RFC 2047-encode it instead,
        # which is not a valid address, so refuse it rather than send to a mangled recipient.
        return "contains non-ASCII characters (SMTPUTF8 addresses are not supported)"
    if _ADDRESS_SPECIALS_RE.search(text) is not None:
        return "contains a character not allowed in a plain address (one of <>()[]\\,;:\")"
    local, domain = text.split("@")
    if not local:
        return "empty local part before '@'"
    if "." not in domain:
        return "domain has no dot"
    if any(not label for label in domain.split(".")):
        return "domain has an empty label"
    return None


def validate_address(addr: str) -> str:
    """Return the stripped address, or raise InvalidAddressError naming it and saying why."""
    if not isinstance(addr, str):
        raise InvalidAddressError(f"email address must be a str, got {type(addr).__name__}")
    text = addr.strip()
    problem = address_problem(text)
    if problem is not None:
        raise InvalidAddressError(f"invalid email address {shown(text)}: {problem}")
    return text
