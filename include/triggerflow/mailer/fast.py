"""The send stage's message builder: what ``build_message`` writes, without the email package's
message objects (about a quarter of the cost of putting a message on the wire).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email import policy
from email.utils import format_datetime
from functools import lru_cache

from include.triggerflow.mailer.message import (
    _FOLD_AT,
    _MAX_LINE,
    _SERIALIZE,
    _boundary,
    _checked_inputs,
    _fold_verbatim,
    _from_value,
)

# -- the fast path -------------------------------------------------------------------------------------
# build_message_fast writes what build_message writes, without building an EmailMessage (about a
# quarter of the cost of putting the message on the wire). Its header lines are byte for byte those of
# the email package: plain values that the package would write unchanged are written directly, and
# every other value (non-ASCII subjects and names, long lines, unusual addresses) is folded by the
# package itself, per header, with the same policy (cached: a chunk repeats its From line and many of
# its subjects). The bodies are quoted-printable from binascii (C) instead of email.quoprimime: soft
# line breaks may fall elsewhere (76 instead of 78 columns), the decoded bodies are the same.
#: A plain addr-spec: dot-atom local part and domain (what needs no quoting in a header or in
#: SMTP's MAIL FROM/RCPT TO). Also used by hooks.smtp.
PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
)
_PLAIN_MESSAGE_ID = re.compile(r"<[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+>")
# Printable ASCII words separated by single spaces: what the email package writes back unchanged.
_PLAIN_TEXT = re.compile(r"[!-~]+(?: [!-~]+)*")
_PART_HEAD = {
    subtype: (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode("ascii")
    for subtype in ("plain", "html")
}


@lru_cache(maxsize=4096)
def _package_header(name: str, value: str) -> bytes:
    """One header line (folded, CRLF) exactly as build_message's email package writes it."""
    return _SERIALIZE.fold_binary(*policy.SMTP.header_store_parse(name, value))


def _header(name: str, value: str, plain: bool) -> bytes:
    if plain and len(name) + 2 + len(value) <= _FOLD_AT:
        return f"{name}: {value}\r\n".encode("ascii")
    return _package_header(name, value)


_ZERO = timedelta(0)


@lru_cache(maxsize=64)
def _utc_date_header(second: int) -> bytes:
    return f"Date: {format_datetime(datetime.fromtimestamp(second, UTC))}\r\n".encode("ascii")


def _date_header(date: datetime) -> bytes:
    """The Date line of a UTC date (whole seconds, as format_datetime writes it), made once per second."""
    return _utc_date_header(int(date.replace(microsecond=0).timestamp()))


def _qp_body(text: str) -> bytes:
    """Quoted-printable body with CRLF line ends, after the email package's normalisation
    (contentmanager._encode_text: lines split on CR, LF and CRLF, joined with LF, one final LF).

    Exactly ``binascii.b2a_qp(body, istext=True)``, computed line by line: quoted-printable encodes
    each line on its own, and most lines of an email are its template's markup, the same in every
    email, so their encoding is remembered (bounded) and only the lines carrying data are encoded."""
    return b"\r\n".join([_qp_line(line) for line in text.encode("utf-8").splitlines()]) + b"\r\n"


@lru_cache(maxsize=8192)
def _qp_line(line: bytes) -> bytes:
    # with its line break, as inside the whole body (trailing spaces, soft breaks near the end)
    return binascii.b2a_qp(line + b"\n", istext=True)[:-1].replace(b"\n", b"\r\n")


def build_message_fast(
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
    """:func:`build_message` without the email package's message objects: the same checks and
    errors, the same headers byte for byte, the same parts, charsets and decoded bodies (only the
    quoted-printable soft line breaks may differ)."""
    from_addr, to_addr, extra, date = _checked_inputs(
        from_addr=from_addr, from_name=from_name, to_addr=to_addr, subject=subject, message_id=message_id,
        headers=headers, date=date,
    )
    offset = date.utcoffset()
    lines = [
        _package_header("From", _from_value(from_name, from_addr)),
        _header("To", to_addr, PLAIN_ADDRESS.fullmatch(to_addr) is not None),
        _header("Subject", subject, "=?" not in subject and _PLAIN_TEXT.fullmatch(subject) is not None),
        _date_header(date) if offset == _ZERO else
        _header("Date", format_datetime(date), offset is not None and offset.seconds % 60 == 0 and not offset.microseconds),
        # a plain Message-ID has no place to fold: the package writes it on one line whatever its length
        f"Message-ID: {message_id}\r\n".encode("ascii")
        if _PLAIN_MESSAGE_ID.fullmatch(message_id) is not None and len(message_id) <= _MAX_LINE - 12
        else _package_header("Message-ID", message_id),
        b"MIME-Version: 1.0\r\n",
    ]
    for name, value in extra.items():
        if value.isascii() and value.isprintable():
            # as the reference's set_raw + refold_source="none": the folded value, CRLF line ends
            folded = _fold_verbatim(name, value).replace("\n", "\r\n")
            lines.append(f"{name}: {folded}\r\n".encode("ascii"))
        else:
            lines.append(_package_header(name, value))
    boundary = _boundary(message_id).encode("ascii")
    text_body = _qp_body(text)
    html_body = _qp_body(html)
    lines += [
        b'Content-Type: multipart/alternative;\r\n boundary="', boundary, b'"\r\n\r\n',
        b"--", boundary, b"\r\n", _PART_HEAD["plain"], text_body,
        b"\r\n--", boundary, b"\r\n", _PART_HEAD["html"], html_body,
        b"\r\n--", boundary, b"--\r\n",
    ]
    return b"".join(lines)
