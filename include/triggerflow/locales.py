"""Locales and time zones: the one home for what a profile's ``locale`` and ``timezone`` may be.

Profile data is untrusted: a locale only ever becomes part of a template file name after
:func:`normalize_locale` accepted it, and a zone name only ever reaches zoneinfo through
:func:`find_zone`, which refuses what is not a zone this machine knows.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# BCP 47-ish: a 2-3 letter language, then subtags of 2-8 letters or digits. Only such a tag is ever
# put into a template file name, so no profile value can name a path ("../", "/", "\\", ".").
LOCALE_RE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")
#: RFC 5646 advises supporting tags of at least 35 characters
MAX_LOCALE_CHARS = 35
_MAX_ZONE_CHARS = 64


def is_locale_tag(text: Any) -> bool:
    """True for a tag written as it is used in file names and routing keys (``fr``, ``fr-CA``)."""
    return isinstance(text, str) and len(text) <= MAX_LOCALE_CHARS and LOCALE_RE.fullmatch(text) is not None


def normalize_locale(locale: Any) -> str | None:
    """``fr_CA``, ``FR-ca``, `` fr-CA `` → ``fr-CA``; None for anything that is not a plain tag.

    Case follows BCP 47 conventions (language lower, 2-letter region upper, 4-letter script title)
    so that ``email.fr-CA.html`` is found on case-sensitive file systems whatever the profile holds.
    POSIX suffixes (``fr_FR.UTF-8``, ``de_DE@euro``) are refused, not guessed at.
    """
    if not isinstance(locale, str):
        return None
    text = locale.strip().replace("_", "-")
    if not is_locale_tag(text):
        return None
    first, *rest = text.split("-")
    parts = [first.lower()]
    for sub in rest:
        if len(sub) == 2 and sub.isalpha():
            parts.append(sub.upper())
        elif len(sub) == 4 and sub.isalpha():
            parts.append(sub.title())
        else:
            parts.append(sub.lower())
    return "-".join(parts)


def locale_chain(locale: str | None) -> list[str]:
    """The variant tags to try for a profile locale, most specific first: ``fr_CA`` →
    ``["fr-CA", "fr"]``; ``[]`` for None, blank or anything that is not a BCP 47-ish tag.

    Every tag returned matches ``[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*``: it is safe in a file name.
    """
    tag = normalize_locale(locale)
    if tag is None:
        return []
    parts = tag.split("-")
    return ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]


@lru_cache(maxsize=512)
def _zone(key: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError, UnicodeError):
        return None


def find_zone(name: Any) -> ZoneInfo | None:
    """The IANA zone called ``name``, or None for a blank, unknown or malformed name.

    Callers choose their own fallback (UTC when rendering a time, "no quiet hours" for a rule).
    Cached (bounded) because the send stage converts one time per email; zoneinfo refuses keys that
    would leave its data directory (``../``, absolute paths) with ValueError, caught like a typo.
    """
    if not isinstance(name, str):
        return None
    key = name.strip()
    if not key or len(key) > _MAX_ZONE_CHARS:
        return None
    return _zone(key)
