"""The characters that must never reach an email header: the one list everything checks against."""

from __future__ import annotations

import re

#: CR, LF and NUL: a header injection when they appear in a value.
INJECTION_CHARS = "\r\n\0"
#: Every other character ``str.splitlines()`` breaks on: VT, FF, FS, GS, RS, NEL, U+2028, U+2029.
#: Not an injection for SMTP, but a line break for mail clients and for Python's email package.
OTHER_LINE_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
#: All of them: what a header value (subject, name, address) may never contain.
LINE_BREAKS = INJECTION_CHARS + OTHER_LINE_BREAKS

INJECTION_RE = re.compile(f"[{re.escape(INJECTION_CHARS)}]")
OTHER_LINE_BREAKS_RE = re.compile(f"[{re.escape(OTHER_LINE_BREAKS)}]")
LINE_BREAKS_RE = re.compile(f"[{re.escape(LINE_BREAKS)}]")


def has_line_break(value: str) -> bool:
    """True when ``value`` holds any character a header value may not contain."""
    return LINE_BREAKS_RE.search(value) is not None
